"""`edge-node ingest` against a real Mosquitto, into SQLite and PostgreSQL: every reading stored
once with its values, units, flags, backfill, clock and meta; statuses and heartbeats on the node;
gaps opened and closed; bad input quarantined with its reason, never a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.city_support import (
    ScriptedNode,
    iso,
    reading,
    rows,
    scalar,
    start_ingest,
    stop,
    wait_count,
)


@pytest.fixture
def ingest(broker, city_dsn, tmp_path):
    procs = []

    def start(*extra):
        proc = start_ingest(broker.url, city_dsn, *extra, log_path=tmp_path / f"ingest{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        stop(p, kill=True)


def edge_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_node.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_every_reading_is_stored_once_with_all_it_carries(broker, city_dsn, ingest):
    node = ScriptedNode(broker.port, "trs-0001")
    node.status()
    node.heartbeat(backlog=0)
    ingest()
    sent = [reading(s) for s in range(1, 6)]
    sent[1]["quality"] = ["warming_up"]
    sent[2]["clock"] = "unsynced"
    node.readings(sent[:3])
    node.readings(sent[:3])  # a redelivery: duplicates are no-ops
    pm = [
        reading(
            6, values={"pm2_5": 12.5, "pm10": 20, "pm2_5_corrected": 9.1, "pm10_corrected": 15.2},
            quality=["high_humidity"], meta={"pm_correction": {"model": "kappa-koehler", "humidity": 82.0}},
        )
    ]  # fmt: skip
    pm_units = {"pm2_5": "ug/m3", "pm10": "ug/m3", "pm2_5_corrected": "ug/m3", "pm10_corrected": "ug/m3"}
    node.readings(pm, sensor="sds011", units=pm_units)
    node.readings(sent[3:], backfill=True)
    wait_count(city_dsn, "SELECT COUNT(*) FROM readings", 6)
    wait_count(city_dsn, "SELECT COUNT(*) FROM reading_values", 5 * 3 + 4)

    assert rows(city_dsn, "SELECT node, site, lat, lon, state, backlog, first_seq, last_seq FROM nodes") == [
        ("trs-0001", "Rambla d'Ègara 12", 41.563, 2.0089, "online", 0, 1, 6)
    ]
    stored = rows(
        city_dsn, "SELECT seq, sensor, quality, flagged, clock, backfill FROM readings ORDER BY seq"
    )
    assert [(s, sensor, json.loads(q), bool(f), c, bool(b)) for s, sensor, q, f, c, b in stored] == [
        (1, "bme280", [], False, None, False),
        (2, "bme280", ["warming_up"], True, None, False),
        (3, "bme280", [], True, "unsynced", False),
        (4, "bme280", [], False, None, True),
        (5, "bme280", [], False, None, True),
        (6, "sds011", ["high_humidity"], True, None, False),
    ]
    assert rows(
        city_dsn, "SELECT quantity, value, unit FROM reading_values WHERE seq = 6 ORDER BY quantity"
    ) == [
        ("pm10", 20.0, "ug/m3"),
        ("pm10_corrected", 15.2, "ug/m3"),
        ("pm2_5", 12.5, "ug/m3"),
        ("pm2_5_corrected", 9.1, "ug/m3"),
    ]

    # jsonl gives back each reading as the node sent it
    out = edge_node("export", "--db", city_dsn, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    exported = [json.loads(line) for line in out.stdout.splitlines()]
    by_seq = {r["seq"]: r for r in exported}
    for r in sent + pm:
        got = by_seq[r["seq"]]
        for key in ("seq", "ts", "values", "quality"):
            assert got[key] == r[key]
        assert got.get("clock") == r.get("clock")
        assert got.get("meta") == r.get("meta")
        assert got["node"] == "trs-0001"
    assert by_seq[4]["backfill"] is True and by_seq[1]["backfill"] is False
    assert scalar(city_dsn, "SELECT COUNT(*) FROM quarantine") == 0


def test_gaps_open_as_seqs_jump_and_close_as_backfill_arrives(broker, city_dsn, ingest):
    node = ScriptedNode(broker.port, "trs-0002")
    node.status()
    ingest()
    node.readings([reading(s) for s in (1, 2, 3)])
    node.readings([reading(s) for s in (10, 11)])  # 4..9 missing
    node.readings([reading(20)])  # 12..19 missing
    open_gaps = "SELECT first_missing, last_missing FROM gaps WHERE closed_at IS NULL ORDER BY first_missing"
    wait_count(city_dsn, "SELECT COUNT(*) FROM readings", 6)
    assert rows(city_dsn, open_gaps) == [(4, 9), (12, 19)]
    node.heartbeat(backlog=3)
    node.readings([reading(s) for s in (5, 6)], backfill=True)  # splits 4..9
    node.readings([reading(s) for s in range(12, 20)], backfill=True)  # closes 12..19
    wait_count(city_dsn, "SELECT COUNT(*) FROM readings", 16)
    assert rows(city_dsn, open_gaps) == [(4, 4), (7, 9)]
    assert scalar(city_dsn, "SELECT COUNT(*) FROM gaps WHERE closed_at IS NOT NULL") == 1

    out = edge_node("ingest", "gaps", "--db", city_dsn, "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [(g["node"], g["first_missing"], g["last_missing"]) for g in listed["gaps"]] == [
        ("trs-0002", 4, 4),
        ("trs-0002", 7, 9),
    ]
    assert listed["nodes"] == [
        {"node": "trs-0002", "first_seq": 1, "last_seq": 20, "open_gaps": 2, "missing": 4, "backlog": 3,
         "seq_gaps": 1}
    ]  # fmt: skip
    text = edge_node("ingest", "gaps", "--db", city_dsn)
    assert "trs-0002             7-9" in text.stdout


def test_bad_input_is_quarantined_with_its_reason_and_ingest_goes_on(broker, city_dsn, ingest):
    proc = ingest()
    node = ScriptedNode(broker.port, "trs-0003")
    root = node.root
    node.readings([reading(1)])  # before any status
    node.status()
    node.readings([reading(2)])
    node.publish(f"{root}/reading/bme280", b"{not json")
    node.publish(f"{root}/reading/bme280", {"node": "trs-0003", "sensor": "bme280", "readings": []})
    node.publish(f"{root}/heartbeat", {"ts": "yesterday"})
    node.publish(f"{root}/reading/sds011", node_batch := {"node": "trs-9999", "sensor": "sds011", "units": {},
                 "backfill": False, "readings": [reading(3)]})  # fmt: skip
    node.readings([reading(4, ts="1970-01-01T00:00:10.000Z"), reading(5)])  # one absurd, one fine
    node.readings([reading(6, ts=iso(time.time() + 40 * 86400))])
    node.readings([reading(2, ts="2026-01-01T00:00:00.000Z")])  # seq 2 again, another reading: a reset
    node.readings([reading(7)])
    wait_count(city_dsn, "SELECT COUNT(*) FROM readings", 4)  # 1 (released), 2, 5, 7
    assert node_batch
    assert proc.poll() is None
    wait_count(city_dsn, "SELECT COUNT(*) FROM quarantine", 7)
    reasons = rows(city_dsn, "SELECT reason, detail FROM quarantine ORDER BY id")
    assert [r for r, _ in reasons] == [
        "malformed", "schema", "schema", "schema", "absurd_ts", "absurd_ts", "seq_conflict"
    ]  # fmt: skip
    assert "not JSON" in reasons[0][1]
    assert "topic names trs-0003/sds011, payload trs-9999/sds011" == reasons[3][1]
    assert "before 2020-01-01" in reasons[4][1]
    assert "days after its arrival" in reasons[5][1]
    assert "seq 2 is" in reasons[6][1] and "buffer reset?" in reasons[6][1]
    # the reading that came before its node's status was quarantined, then taken back with it
    assert rows(city_dsn, "SELECT seq FROM readings ORDER BY seq") == [(1,), (2,), (5,), (7,)]
    out = edge_node("ingest", "quarantine", "--db", city_dsn, "--json")
    assert json.loads(out.stdout)["counts"] == {
        "absurd_ts": 2,
        "malformed": 1,
        "schema": 3,
        "seq_conflict": 1,
    }


def test_a_reading_from_a_node_that_never_sent_a_status_stays_quarantined(broker, city_dsn, ingest):
    ingest()
    node = ScriptedNode(broker.port, "trs-0004")
    node.readings([reading(1), reading(2)])
    wait_count(city_dsn, "SELECT COUNT(*) FROM quarantine WHERE reason = 'no_status'", 2)
    assert scalar(city_dsn, "SELECT COUNT(*) FROM readings") == 0


def test_a_seq_below_everything_stored_but_read_later_is_a_buffer_reset(broker, city_dsn, ingest):
    ingest()
    node = ScriptedNode(broker.port, "trs-0005")
    node.status()
    now = time.time()
    node.readings([reading(s, ts=iso(now - 3600 + s)) for s in (500, 501)])
    node.readings([reading(400, ts=iso(now - 7200))], backfill=True)  # older backlog: fine
    node.readings([reading(1, ts=iso(now))])  # the buffer started over
    wait_count(city_dsn, "SELECT COUNT(*) FROM quarantine WHERE reason = 'seq_backwards'", 1)
    assert rows(city_dsn, "SELECT seq FROM readings ORDER BY seq") == [(400,), (500,), (501,)]


def test_bad_usage_is_one_line_and_exit_2(city_dsn):
    out = edge_node("ingest", "--broker", "http://x", "--db", city_dsn)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == 'edge-node ingest: --broker: must start with mqtt:// or mqtts:// (got "http://x")'
    )


def test_a_broker_that_refuses_the_protocol_ends_ingest_with_one_line(tmp_path):
    from tests.aedes_broker import LocalAedes

    with LocalAedes(tmp_path / "aedes.log") as aedes:  # MQTT 3.1.1 only: a v5 CONNECT is refused
        out = edge_node("ingest", "--broker", aedes.url, "--db", f"sqlite:///{tmp_path}/city.db")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"edge-node ingest: broker {aedes.url} refused the connection: Unsupported protocol version"
    )
