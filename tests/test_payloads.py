"""Reading payloads built from stored rows: clock handling, batching by sensor, size limits."""

from __future__ import annotations

import json

import jsonschema

from edge_node import schemas
from edge_node.payloads import MAX_PAYLOAD_BYTES, ClockView, batch_payload, group_batches, reading_json
from edge_node.store import StoredReading, encode_body

READING = schemas.load("reading")


def row(
    seq: int,
    *,
    sensor: str = "bme280",
    synced: bool = True,
    boot: str = "boot-a",
    wall: float = 1.7e9,
    mono: float = 100.0,
    values: dict | None = None,
) -> StoredReading:
    body = encode_body(seq, wall, values or {"temperature": 20.5}, ())
    return StoredReading(seq, sensor, wall, mono, boot, synced, body)


def clock(synced: bool = True, boot: str = "boot-a") -> ClockView:
    return ClockView(boot, synced, wall=1_800_000_000.0, mono=1100.0)


def test_a_synced_row_goes_as_stored():
    assert json.loads(reading_json(row(7), clock()))["ts"] == "2023-11-14T22:13:20.000Z"


def test_an_unsynced_row_of_this_boot_is_corrected_once_the_clock_syncs():
    reading = json.loads(reading_json(row(7, synced=False, wall=5.0, mono=100.0), clock()))
    assert reading["ts"] == "2027-01-15T07:43:20.000Z"  # 1000 s of boot clock before the synced now
    assert "clock_corrected" in reading["quality"] and "clock" not in reading


def test_an_unsynced_row_that_cannot_be_corrected_says_so():
    for view in (clock(synced=False), clock(boot="boot-b")):
        reading = json.loads(reading_json(row(7, synced=False), view))
        assert reading["clock"] == "unsynced"


def test_interleaved_sensors_make_full_batches_oldest_first():
    rows = [row(i, sensor="bme280" if i % 2 else "host") for i in range(1, 401)]
    batches = group_batches(rows, clock(), 100)
    assert [len(b[0]) for b in batches] == [100, 100, 100, 100]
    assert [b[0][0].seq for b in batches] == sorted(b[0][0].seq for b in batches)
    for rows_, texts in batches:
        assert len({r.sensor for r in rows_}) == 1
        payload = json.loads(batch_payload("trs-1", rows_[0].sensor, '{"temperature":"Cel"}', True, texts))
        jsonschema.validate(payload, READING)


def test_a_batch_stays_under_64_kib():
    big = {f"v{i}": float(i) for i in range(60)}
    rows = [row(i, values=big) for i in range(1, 201)]
    batches = group_batches(rows, clock(), 200)
    assert len(batches) > 1
    for _, texts in batches:
        assert len(batch_payload("trs-1", "bme280", "{}", True, texts)) <= MAX_PAYLOAD_BYTES
    assert sum(len(b[0]) for b in batches) == 200


def test_format_is_compact_utf8():
    payload = batch_payload(
        "trs-1", "bme280", '{"temperature":"Cel"}', False, [reading_json(row(1), clock())]
    )
    assert b" " not in payload and payload.decode("utf-8")
