"""Whatever arrives, ingest neither crashes nor stalls: random messages through the storage path
never raise, and a message the database itself refuses is quarantined while the rest is stored."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from city.db import Database
from city.ingest import Message, Storage
from tests.city_support import PREFIX, ScriptedNode, reading, rows, start_ingest, stop, wait_count

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
SEQ = st.one_of(
    st.integers(1, 50), st.integers(2**63 - 2, 2**70), st.floats(allow_infinity=False, allow_nan=False)
)


TIMES = ["2026-12-04T10:00:00.000Z", "2026-13-45T10:00:00.000Z", "1999-01-01T00:00:00.000Z"]
VALUES = st.integers(-(10**30), 10**30) | st.floats(allow_nan=False)


@st.composite
def near_valid_batch(draw):
    readings = [
        {
            "seq": draw(SEQ),
            "ts": draw(st.sampled_from(TIMES)),
            "values": draw(st.dictionaries(st.sampled_from(["t", "pm2_5"]), VALUES, max_size=2)),
            "quality": draw(st.sampled_from([[], ["stuck"], ["nope"]])),
        }
        for _ in range(draw(st.integers(1, 3)))
    ]  # fmt: skip
    units = {"t": draw(st.text(max_size=3))}
    return {"node": "trs-0001", "sensor": "bme280", "units": units, "backfill": False, "readings": readings}


PAYLOADS = st.one_of(
    st.binary(max_size=40),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    near_valid_batch().map(lambda v: json.dumps(v).encode()),
    st.just(b'{"node":"trs-0001","sensor":"bme280","units":{},"backfill":false,"readings":'
            b'[{"seq":1,"ts":"2026-12-04T10:00:00.000Z","values":{"t":1e400},"quality":[]}]}'),
)  # fmt: skip
TOPICS = st.sampled_from(
    [f"{PREFIX}/trs-0001/reading/bme280", f"{PREFIX}/trs-0001/status", f"{PREFIX}/trs-0001/heartbeat",
     f"{PREFIX}/TRS/reading/x", f"{PREFIX}/trs-0001", "elsewhere/x"]
)  # fmt: skip


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'city.db'}")
    conn = db.open()
    status = {
        "state": "online",
        "since": "2026-12-04T09:00:00.000Z",
        "version": "1",
        "boot_id": "b",
        "config_hash": "c",
    }
    with db.transaction(conn):
        Storage(db, PREFIX).store(
            conn, [Message(f"{PREFIX}/trs-0001/status", json.dumps(status).encode(), 0, 0, True, 0)]
        )
    return db, conn


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(TOPICS, PAYLOADS), min_size=1, max_size=6))
def test_random_messages_never_raise_out_of_the_storage_path(storage, messages):
    db, conn = storage
    batch = [Message(topic, payload, 0, 0, False, 0) for topic, payload in messages]
    with db.transaction(conn):
        Storage(db, PREFIX).store(conn, batch)


def test_a_message_the_database_refuses_is_quarantined_and_the_rest_stored(broker, postgres_server, tmp_path):
    dsn = postgres_server.create_database("t_refused")
    node = ScriptedNode(broker.port, "trs-0060")
    node.status()
    proc = start_ingest(broker.url, dsn, log_path=tmp_path / "ingest.log")
    try:
        node.readings([reading(1)])
        # PostgreSQL text cannot hold U+0000: a unit with one is valid JSON and schema-valid
        node.readings(
            [reading(2)], units={"temperature": "C\u0000", "humidity": "%RH", "pressure": "hPa"}, wait=False
        )
        node.readings([reading(3)], wait=False)
        wait_count(dsn, "SELECT COUNT(*) FROM quarantine WHERE reason = 'rejected'", 1)
        wait_count(dsn, "SELECT COUNT(*) FROM readings", 2)
        assert rows(dsn, "SELECT seq FROM readings ORDER BY seq") == [(1,), (3,)]
        assert "the database refused it" in rows(dsn, "SELECT detail FROM quarantine")[0][0]
        assert proc.poll() is None
    finally:
        stop(proc)
        node.close()
