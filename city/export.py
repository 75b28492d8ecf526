"""`edge-node export`: readings out in the shapes cities publish, streamed in constant memory.

- `csv`: one row per reading and value, in the spirit of the Sensor.Community archive:
  node, seq, sensor, time, location (the node's site), lat, lon, quantity, value, unit, flags
  (`;`-separated), clock, backfill.
- `geojson`: a FeatureCollection, one Point per node (nodes without a location have a null
  geometry), its properties the node, site, state, and each sensor's latest reading.
- `jsonl`: one line per stored reading as the node sent it: node, sensor, seq, ts, values,
  quality, clock ("unsynced" as sent, else null), backfill, units, meta (when sent).

`--from`/`--to` select `from <= ts < to`; flagged readings (a QC flag other than
`clock_corrected`, or an unsynced clock) are included with their flags unless `--exclude-flagged`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import TextIO

from . import queries
from .db import Database

FORMATS = ("csv", "geojson", "jsonl")
CSV_HEADER = (
    "node", "seq", "sensor", "time", "location", "lat", "lon", "quantity", "value", "unit", "flags", "clock",
    "backfill",
)  # fmt: skip


def _number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def write_csv(rows: Iterable[tuple], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    count = 0
    for node, seq, sensor, ts, lat, lon, site, quantity, value, unit, quality, clock, backfill in rows:
        writer.writerow(
            (
                node, seq, sensor, ts, site or "", "" if lat is None else lat, "" if lon is None else lon,
                quantity, _number(value), unit or "", ";".join(json.loads(quality)), clock or "",
                "true" if backfill else "false",
            )
        )  # fmt: skip
        count += 1
    return count


def write_jsonl(readings: Iterable[dict], out: TextIO) -> int:
    count = 0
    for reading in readings:
        out.write(json.dumps(reading, separators=(",", ":"), ensure_ascii=False) + "\n")
        count += 1
    return count


def features(latest: Iterable[dict]) -> Iterator[dict]:
    """One GeoJSON Feature per node from `queries.latest` (ordered by node)."""
    current: dict | None = None
    for item in latest:
        if current is None or current["properties"]["node"] != item["node"]:
            if current is not None:
                yield current
            lat, lon = item["lat"], item["lon"]
            current = {
                "type": "Feature",
                "id": item["node"],
                "geometry": None
                if lat is None or lon is None
                else {"type": "Point", "coordinates": [lon, lat]},
                "properties": {
                    "node": item["node"],
                    "site": item["site"],
                    "state": item["state"],
                    "ts": item["ts"],
                    "values": {},
                    "units": {},
                    "quality": [],
                    "sensors": {},
                },
            }
        props = current["properties"]
        props["ts"] = max(props["ts"], item["ts"])
        props["values"].update(item["values"])
        props["units"].update(item["units"])
        props["quality"] = sorted(set(props["quality"]) | set(item["quality"]))
        props["sensors"][item["sensor"]] = {
            k: item[k] for k in ("seq", "ts", "values", "quality", "backfill", "clock")
        }
    if current is not None:
        yield current


def geojson_collection(latest: Iterable[dict]) -> dict:
    return {"type": "FeatureCollection", "features": list(features(latest))}


def write_geojson(latest: Iterable[dict], out: TextIO) -> int:
    out.write('{"type":"FeatureCollection","features":[')
    count = 0
    for feature in features(latest):
        out.write(
            ("," if count else "") + "\n" + json.dumps(feature, separators=(",", ":"), ensure_ascii=False)
        )
        count += 1
    out.write("\n]}\n")
    return count


def export(
    db: Database,
    fmt: str,
    out: TextIO,
    *,
    time_from: str | None = None,
    time_to: str | None = None,
    exclude_flagged: bool = False,
) -> int:
    """Write the export; the number of rows (csv), readings (jsonl) or features (geojson)."""
    conn = db.open(read_only=True)
    try:
        if db.dialect == "postgresql":
            conn.autocommit = False  # a named cursor lives in a transaction
        if fmt == "csv":
            rows = queries.value_rows(
                db, conn, time_from=time_from, time_to=time_to, exclude_flagged=exclude_flagged
            )
            return write_csv(rows, out)
        if fmt == "jsonl":
            readings = queries.readings(
                db, conn, time_from=time_from, time_to=time_to, exclude_flagged=exclude_flagged
            )
            return write_jsonl(readings, out)
        if fmt == "geojson":
            return write_geojson(
                queries.latest(
                    db, conn, exclude_flagged=exclude_flagged, time_from=time_from, time_to=time_to
                ),
                out,
            )
        raise ValueError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    finally:
        conn.close()
