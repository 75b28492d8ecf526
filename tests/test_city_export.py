"""Open data out: `edge-node export` as csv, geojson and jsonl, --from/--to, --exclude-flagged,
and the JSON API answering the same queries. The database is filled through ingest's own storage
path (Storage.store), as `edge-node ingest` fills it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import urllib.request

import pytest

from city.db import Database
from city.ingest import Message, Storage
from tests.city_support import PREFIX, batch, iso, reading
from tests.test_city_db import get, serve

T0 = time.time() - 3 * 3600
PM_UNITS = {"pm2_5": "ug/m3", "pm10": "ug/m3", "pm2_5_corrected": "ug/m3", "pm10_corrected": "ug/m3"}


def message(topic: str, body) -> Message:
    return Message(f"{PREFIX}/{topic}", json.dumps(body).encode(), mid=0, qos=0, retain=False, generation=0)


def status(node: str, lat, lon, site) -> Message:
    body = {
        "state": "online",
        "since": iso(T0),
        "version": "0.1.0",
        "boot_id": "b",
        "config_hash": "c",
        "site": site,
    }
    if lat is not None:
        body["location"] = {"lat": lat, "lon": lon}
    return message(f"{node}/status", body)


@pytest.fixture
def city(city_dsn):
    """Two nodes, three hours: a bme280 reading every 10 min (one flagged an hour), an sds011 one
    every 30 min (with the corrected PM); a node without a location."""
    db = Database(city_dsn)
    conn = db.open()
    messages = [status("trs-0001", 41.563, 2.0089, "Rambla 12"), status("trs-0002", None, None, "Depot")]
    seq = {"trs-0001": 0, "trs-0002": 0}
    for minute in range(0, 180, 10):
        for node in seq:
            seq[node] += 1
            quality = ["stuck"] if minute % 60 == 0 else []
            r = reading(seq[node], ts=iso(T0 + minute * 60), quality=quality)
            messages.append(message(f"{node}/reading/bme280", batch(node, [r])))
            if minute % 30 == 0:
                seq[node] += 1
                values = {"pm2_5": 10 + minute / 10, "pm10": 20, "pm2_5_corrected": 8.5, "pm10_corrected": 17}
                r = reading(seq[node], ts=iso(T0 + minute * 60 + 1), values=values)
                messages.append(
                    message(f"{node}/reading/sds011", batch(node, [r], sensor="sds011", units=PM_UNITS))
                )
    with db.transaction(conn):
        counts = Storage(db, PREFIX).store(conn, messages)
    conn.close()
    assert counts.stored == 2 * (18 + 6) and not counts.quarantined
    return city_dsn


def export(dsn: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "export", "--db", dsn, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_jsonl_is_every_reading_as_sent_in_time_order(city):
    lines = [json.loads(line) for line in export(city, "--format", "jsonl").splitlines()]
    assert len(lines) == 48
    assert [r["ts"] for r in lines] == sorted(r["ts"] for r in lines)
    first = lines[0]
    assert set(first) >= {"node", "sensor", "seq", "ts", "values", "quality", "backfill"}
    assert first["quality"] == ["stuck"] and first["backfill"] is False
    assert first["clock"] is None  # the node sent none: its clock was synced
    clean = [json.loads(x) for x in export(city, "--format", "jsonl", "--exclude-flagged").splitlines()]
    assert len(clean) == 48 - 2 * 3 and not any(r["quality"] for r in clean)


def test_from_and_to_select_a_time_window(city):
    start, end = iso(T0 + 3600), iso(T0 + 7200)
    lines = [
        json.loads(x) for x in export(city, "--format", "jsonl", "--from", start, "--to", end).splitlines()
    ]
    assert lines and all(start <= r["ts"] < end for r in lines)
    assert len(lines) == 2 * (6 + 2)


def test_csv_is_one_row_per_reading_and_value_with_location_and_flags(city):
    table = list(csv.DictReader(io.StringIO(export(city, "--format", "csv"))))
    assert list(table[0]) == [
        "node", "seq", "sensor", "time", "location", "lat", "lon", "quantity", "value", "unit", "flags",
        "clock", "backfill",
    ]  # fmt: skip
    assert len(table) == 2 * (18 * 3 + 6 * 4)
    pm = [r for r in table if r["node"] == "trs-0001" and r["quantity"] == "pm2_5_corrected"]
    assert pm[0] | {"seq": "", "time": ""} == {
        "node": "trs-0001", "seq": "", "sensor": "sds011", "time": "", "lat": "41.563", "lon": "2.0089",
        "location": "Rambla 12", "quantity": "pm2_5_corrected", "value": "8.5", "unit": "ug/m3", "flags": "",
        "clock": "", "backfill": "false",
    }  # fmt: skip
    assert {r["flags"] for r in table} == {"", "stuck"}
    assert all(r["lat"] == "" for r in table if r["node"] == "trs-0002")


def test_geojson_is_the_latest_reading_of_each_node(city):
    collection = json.loads(export(city, "--format", "geojson"))
    assert collection["type"] == "FeatureCollection"
    features = {f["properties"]["node"]: f for f in collection["features"]}
    assert features["trs-0001"]["geometry"] == {"type": "Point", "coordinates": [2.0089, 41.563]}
    assert features["trs-0002"]["geometry"] is None
    props = features["trs-0001"]["properties"]
    assert props["site"] == "Rambla 12" and props["state"] == "online"
    assert set(props["sensors"]) == {"bme280", "sds011"}
    assert props["sensors"]["bme280"]["ts"] == iso(T0 + 170 * 60)
    assert props["values"]["pm2_5_corrected"] == 8.5


def test_the_api_answers_the_same_queries(city):
    proc, base = serve(city)
    try:
        status, nodes = get(f"{base}/api/nodes")
        assert [(n["node"], n["lat"], n["site"], n["last_seq"], n["open_gaps"]) for n in nodes] == [
            ("trs-0001", 41.563, "Rambla 12", 24, 0),
            ("trs-0002", None, "Depot", 24, 0),
        ]
        _, readings = get(f"{base}/api/readings?node=trs-0002&exclude_flagged=true&limit=5")
        assert len(readings) == 5 and all(r["node"] == "trs-0002" and not r["quality"] for r in readings)
        jsonl = [json.loads(x) for x in export(city, "--format", "jsonl").splitlines()]
        _, everything = get(f"{base}/api/readings?limit=10000")
        assert everything == jsonl
        with urllib.request.urlopen(f"{base}/api/latest", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/geo+json")
            assert json.loads(response.read()) == json.loads(export(city, "--format", "geojson"))
        assert get(f"{base}/api/gaps") == (200, [])
        assert get(f"{base}/api/nodes/trs-0001")[1]["node"] == "trs-0001"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/api/nodes/trs-9999", timeout=10)
        assert missing.value.code == 404
    finally:
        proc.terminate()
        proc.wait(10)
