"""The stored readings as the indices read them (`city.samples.Sample`), from i14's tables.

Two ways in, by what a reading's flags must say:
- PM readings come from `readings` with their full QC flags: `high_humidity` is kept (the index
  counts it) while warming_up / stuck / out_of_range are left out by the index itself;
- every other value (rain, temperature, humidity, laeq) comes from `reading_values` as plain
  numbers, flagged ones left out there (`flagged`: any QC flag, or an unsynced clock).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from .db import Database
from .samples import Sample
from .views import NodeDay, NodeInfo

PM_QUANTITY = "pm2_5"  # every PM sensor we drive gives it (sds011, pms5003)


def wire_time(ts: float) -> str:
    """Seconds since the epoch as the stored text form (RFC 3339 UTC, milliseconds)."""
    from datetime import UTC

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text).timestamp()


def node_infos(db: Database, conn, node: str | None = None) -> list[NodeInfo]:
    statement = "SELECT node, site, lat, lon, state, status_at, last_reading_ts FROM nodes"
    params: list = []
    if node is not None:
        statement += " WHERE node = %s"
        params.append(node)
    rows = db.execute(conn, statement + " ORDER BY node", params).fetchall()
    return [
        NodeInfo(
            node=row[0],
            site=row[1] or "",
            lat=row[2],
            lon=row[3],
            state=row[4] or "unknown",
            state_since=epoch(row[5]),
            last_seen=epoch(row[6]),
        )
        for row in rows
    ]


_NO_FLAGS: frozenset[str] = frozenset()


def _sample(ts: str, values: str, quality: str) -> Sample:
    flags = _NO_FLAGS if quality == "[]" else frozenset(json.loads(quality))
    return Sample(epoch(ts), json.loads(values), flags)


PM_VALUES = ("pm2_5", "pm10", "pm2_5_corrected", "pm10_corrected")


def _json_number(db: Database, key: str) -> str:
    """SQL for one number of the readings' JSON "values", extracted by the database itself."""
    if db.dialect == "sqlite":
        return f"""json_extract("values", '$.{key}')"""
    return f"""("values"::jsonb->>'{key}')::float8"""


def pm_readings(db: Database, conn, since: float) -> dict[str, list[Sample]]:
    """Every node's PM readings since `since`, with their flags.

    Found by their text ("values" holds "pm2_5") on the ts index, with no join to reading_values,
    and the four PM numbers taken out of the JSON by the database: the map's query for 300 nodes
    costs a third of what parsing each reading's JSON here did.
    """
    columns = ", ".join(_json_number(db, key) for key in PM_VALUES)
    rows = db.execute(
        conn,
        f'SELECT node, ts, quality, {columns} FROM readings WHERE ts >= %s AND "values" LIKE %s',
        [wire_time(since), f'%"{PM_QUANTITY}"%'],
    )
    out: dict[str, list[Sample]] = {}
    for node, ts, quality, *numbers in rows:
        values = {key: number for key, number in zip(PM_VALUES, numbers, strict=True) if number is not None}
        flags = _NO_FLAGS if quality == "[]" else frozenset(json.loads(quality))
        out.setdefault(node, []).append(Sample(epoch(ts), values, flags))
    return out


def value_readings(
    db: Database, conn, since: float, quantities: Iterable[str], node: str | None = None
) -> dict[str, list[Sample]]:
    """Unflagged values of the given quantities since `since`, one Sample per reading."""
    names = sorted(set(quantities))
    if not names:
        return {}
    statement = (
        "SELECT node, seq, ts, quantity, value FROM reading_values"
        f" WHERE quantity IN ({', '.join(['%s'] * len(names))}) AND ts >= %s AND NOT flagged"
    )
    params: list = [*names, wire_time(since)]
    if node is not None:
        statement += " AND node = %s"
        params.append(node)
    readings: dict[tuple[str, int], tuple[str, dict]] = {}
    for row_node, seq, ts, quantity, value in db.execute(conn, statement, params):
        readings.setdefault((row_node, seq), (ts, {}))[1][quantity] = value
    out: dict[str, list[Sample]] = {}
    for (row_node, _seq), (ts, values) in readings.items():
        out.setdefault(row_node, []).append(Sample(epoch(ts), values))
    return out


def latest_values(db: Database, conn, since: float, quantity: str) -> dict[str, Sample]:
    """Each node's newest unflagged reading carrying `quantity` since `since`, every value of it."""
    rows = db.execute(
        conn,
        'SELECT r.node, r.ts, r."values", r.quality FROM readings r JOIN ('
        "SELECT node, MAX(seq) AS seq FROM reading_values WHERE quantity = %s AND ts >= %s AND NOT flagged"
        " GROUP BY node) m ON r.node = m.node AND r.seq = m.seq",
        [quantity, wire_time(since)],
    )
    return {node: _sample(ts, values, quality) for node, ts, values, quality in rows}


def node_day(db: Database, conn, info: NodeInfo, since: float) -> NodeDay:
    """One node's readings since `since`, every sensor, with their flags."""
    rows = db.execute(
        conn,
        'SELECT sensor, ts, "values", quality FROM readings WHERE node = %s AND ts >= %s ORDER BY ts',
        [info.node, wire_time(since)],
    )
    day = NodeDay(info)
    for sensor, ts, values, quality in rows:
        day.by_sensor.setdefault(sensor, []).append(_sample(ts, values, quality))
    return day
