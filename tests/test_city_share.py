"""Scale out on the broker: two `edge-node ingest --share GROUP` workers split the readings
through an MQTT 5 shared subscription; one is SIGKILLed and comes back, and the database is
exact. And the gaps ingest lists agree with the fleet view's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from tests.city_support import Background, ScriptedNode, reading, rows, start_ingest, stop, wait_count
from tests.test_city_exactly_once import assert_exact


def test_two_shared_workers_split_the_load_and_either_can_die(broker, city_dsn, tmp_path):
    total = 3000
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    node = ScriptedNode(broker.port, "trs-0050")
    node.status()
    workers = [
        start_ingest(broker.url, city_dsn, "--share", "city", "--client-id", f"ingest-{n}", log_path=log)
        for n, log in zip("ab", logs, strict=True)
    ]

    def publish():
        for seq in range(1, total + 1, 10):
            node.readings([reading(s) for s in range(seq, seq + 10)], wait=False)
            time.sleep(0.004)

    publisher = Background(publish)
    try:
        time.sleep(0.6)
        stop(workers[0], kill=True)
        time.sleep(0.5)
        workers[0] = start_ingest(
            broker.url, city_dsn, "--share", "city", "--client-id", "ingest-a", log_path=logs[0]
        )
        publisher.join(60)
        wait_count(city_dsn, "SELECT COUNT(*) FROM readings", total, timeout=90)
        assert_exact(city_dsn, total)
    finally:
        for w in workers:
            stop(w)
        node.close()
    stored = [sum(int(n) for n in re.findall(r"stored (\d+) readings", log.read_text())) for log in logs]
    assert all(s > 0 for s in stored), stored  # each worker took its share


def test_open_gaps_agree_with_the_fleet_view(broker, city_dsn, tmp_path):
    node = ScriptedNode(broker.port, "trs-0051")
    node.status()
    proc = start_ingest(broker.url, city_dsn, log_path=tmp_path / "ingest.log")
    fleet = subprocess.Popen(
        [sys.executable, "-m", "edge_node.cli", "fleet", "--broker", broker.url, "--json", "--listen", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2.5)  # the fleet view is listening
        node.heartbeat(backlog=2)
        node.readings([reading(s) for s in range(1, 11)])
        node.readings([reading(s) for s in range(15, 21)])  # 11..14 missing
        node.readings([reading(30)])  # 21..29 missing
        node.heartbeat(backlog=2)  # two of them still on the node
        wait_count(city_dsn, "SELECT COUNT(*) FROM readings", 17)
        out, err = fleet.communicate(timeout=30)
    finally:
        stop(proc)
        node.close()
        if fleet.poll() is None:
            fleet.kill()
    fleet_rows = {r["node"]: r for r in json.loads(out)}
    listed = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "ingest", "gaps", "--db", city_dsn, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    ours = {n["node"]: n for n in json.loads(listed.stdout)["nodes"]}
    assert ours["trs-0051"]["missing"] == 13
    assert ours["trs-0051"]["seq_gaps"] == fleet_rows["trs-0051"]["seq_gaps"] == 11
    assert rows(
        city_dsn, "SELECT first_missing, last_missing FROM gaps WHERE closed_at IS NULL ORDER BY 1"
    ) == [
        (11, 14),
        (21, 29),
    ]
