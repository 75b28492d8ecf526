"""Exactly once, proven: `edge-node ingest` is SIGKILLed at random moments while a node publishes,
restarted each time under the same client id, and the database ends with every seq exactly once.
Then the database itself goes away (PostgreSQL restarted): consumption pauses with nothing
acknowledged, and resumes."""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.city_support import Background, ScriptedNode, reading, rows, scalar, start_ingest, stop, wait_count

SOAK = os.environ.get("EDGE_NODE_SOAK") == "1"


def assert_exact(dsn: str, last_seq: int, values_per_reading: int = 3) -> None:
    assert rows(dsn, "SELECT MIN(seq), MAX(seq), COUNT(*), COUNT(DISTINCT seq) FROM readings") == [
        (1, last_seq, last_seq, last_seq)
    ]
    assert scalar(dsn, "SELECT COUNT(*) FROM reading_values") == last_seq * values_per_reading
    assert scalar(dsn, "SELECT COUNT(*) FROM gaps WHERE closed_at IS NULL") == 0
    assert rows(dsn, "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason") == []
    assert rows(dsn, "SELECT first_seq, last_seq FROM nodes") == [(1, last_seq)]


@pytest.mark.soak
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(broker, city_dsn, tmp_path):
    total, kills = (20000, 60) if SOAK else (3000, 8)
    log = tmp_path / "ingest.log"
    node = ScriptedNode(broker.port, "trs-0042")
    node.status()
    proc = start_ingest(broker.url, city_dsn, "--client-id", "city-ingest-1", log_path=log)

    def publish():
        seq = 1
        while seq <= total:
            size = random.choice((1, 1, 1, 5, 20, 100))
            batch = [reading(s) for s in range(seq, min(seq + size, total + 1))]
            node.readings(batch, backfill=size > 1, wait=False)
            seq += len(batch)
            time.sleep(0.002)

    publisher = Background(publish)
    rng = random.Random(14)
    killed_with_rows = 0
    for _ in range(kills):
        time.sleep(rng.uniform(0.15, 0.9))
        stop(proc, kill=True)
        killed_with_rows += scalar(city_dsn, "SELECT COUNT(*) FROM readings") or 0
        proc = start_ingest(broker.url, city_dsn, "--client-id", "city-ingest-1", log_path=log, wait=False)
    publisher.join(120)
    try:
        wait_count(city_dsn, "SELECT COUNT(*) FROM readings", total, timeout=120)
        assert_exact(city_dsn, total)
    finally:
        stop(proc)
        node.close()
    assert killed_with_rows > 0  # the kills fell while the stream was being stored
    assert log.read_text().count("session resumed") >= 1


def test_the_database_going_away_pauses_consumption_and_it_resumes(broker, postgres_server, tmp_path):
    dsn = postgres_server.create_database("t_db_away")
    log = tmp_path / "ingest.log"
    node = ScriptedNode(broker.port, "trs-0043")
    node.status()
    proc = start_ingest(broker.url, dsn, "--client-id", "city-ingest-db", log_path=log)
    try:
        node.readings([reading(s) for s in range(1, 101)])
        wait_count(dsn, "SELECT COUNT(*) FROM readings", 100)
        postgres_server.stop()
        for seq in range(101, 301):
            node.readings([reading(seq)], wait=False)
        time.sleep(2)
        assert proc.poll() is None, "ingest died with its database"
        assert "unavailable" in log.read_text()
        postgres_server.start()
        wait_count(dsn, "SELECT COUNT(*) FROM readings", 300, timeout=60)
        assert "database back after" in log.read_text()
        assert_exact(dsn, 300)
        # nothing was acknowledged while the database was away: kill now, and nothing is lost either
        stop(proc, kill=True)
        proc = start_ingest(broker.url, dsn, "--client-id", "city-ingest-db", log_path=log)
        node.readings([reading(301)])
        wait_count(dsn, "SELECT COUNT(*) FROM readings", 301)
        assert_exact(dsn, 301)
    finally:
        if postgres_server.proc is None:
            postgres_server.start()
        stop(proc)
        node.close()
