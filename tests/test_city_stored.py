"""The map and its popup read from the database as ingest stores it, on SQLite and PostgreSQL:
readings stored by ingest's own Storage (no broker needed here), read back by city.webmap."""

from __future__ import annotations

import json
import time

from city.db import Database
from city.ingest import Message, Storage
from city.samples import HOUR_S
from city.webmap import day_data, map_data
from tests.city_support import iso

PREFIX = "city/terrassa/nodes"
PM_UNITS = {k: "ug/m3" for k in ("pm2_5", "pm10", "pm2_5_corrected", "pm10_corrected")}


def message(topic: str, payload: dict, mid: int) -> Message:
    return Message(f"{PREFIX}/{topic}", json.dumps(payload).encode(), mid, 1, False, 1)


def status(node: str, lat: float, lon: float, mid: int) -> Message:
    body = {"state": "online", "since": iso(), "version": "0.1.0", "boot_id": "b", "config_hash": "c",
            "site": f"{node} street", "location": {"lat": lat, "lon": lon}}  # fmt: skip
    return message(f"{node}/status", body, mid)


def pm_batch(node: str, now: float, *, pm: float, flags=(), first_seq=1, minutes=90) -> Message:
    readings = []
    for i in range(minutes):
        values = {"pm2_5": pm * 1.5, "pm10": pm * 2, "pm2_5_corrected": pm, "pm10_corrected": pm * 1.4}
        readings.append({"seq": first_seq + i, "ts": iso(now - (minutes - i) * 60), "values": values,
                         "quality": list(flags)})  # fmt: skip
    body = {"node": node, "sensor": "sds011", "units": PM_UNITS, "backfill": True, "readings": readings}
    return message(f"{node}/reading/sds011", body, first_seq)


def test_the_map_and_the_popup_from_what_ingest_stored(city_dsn):
    db = Database(city_dsn)
    conn = db.open()
    now = time.time()
    if now % HOUR_S < 20 * 60:  # the hour in progress is read once a quarter of it has passed
        now -= now % HOUR_S + 1
    air = {"temperature": 34.0, "humidity": 55.0, "pressure": 1010.0}
    env = {"seq": 500, "ts": iso(now - 30), "values": air, "quality": []}
    messages = [
        status("trs-001", 41.5636, 2.0111, 1),
        status("trs-002", 41.5700, 2.0150, 2),
        pm_batch("trs-001", now, pm=3.0),
        pm_batch("trs-002", now, pm=60.0, flags=("high_humidity",), first_seq=1),
        message(
            "trs-001/reading/bme280",
            {"node": "trs-001", "sensor": "bme280", "units": {}, "backfill": False, "readings": [env]},
            9,
        ),  # fmt: skip
    ]
    with db.transaction(conn):
        Storage(db, PREFIX).store(conn, messages)
    reader = db.open(read_only=True)
    view = map_data(db, reader, {}, now)
    by_node = {n["node"]: n for n in view["nodes"]}
    assert by_node["trs-001"]["band"] == "good" and by_node["trs-001"]["site"] == "trs-001 street"
    assert by_node["trs-001"]["heat"]["heat_index"] > 34.0
    fog = by_node["trs-002"]
    assert fog["band"] == "poor" and fog["humid_share"] == 1.0 and fog["means"]["pm2_5"] == 60.0
    day = day_data(db, reader, {}, "trs-002", now)
    assert day["flags"] == {"high_humidity": 90}
    assert day["series"]["pm2_5"][-1][1] == 90.0 and day["series"]["pm2_5_corrected"][-1][1] == 60.0
    assert day_data(db, reader, {}, "trs-404", now) is None
