"""A reconnect storm: N simulated nodes, each with a backlog, come back after a broker outage.
They reconnect with jitter, send live readings first, drain behind them at the capped rate, and
the broker drops nothing (its $SYS counters say so); every node's seqs arrive (issue 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import paho.mqtt.client as mqtt
import pytest

from .conftest import gaps

NODES = 60 if os.environ.get("EDGE_NODE_SOAK") else 20


def sys_dropped(port: int) -> int:
    """$SYS/broker/publish/messages/dropped: what Mosquitto threw away (queues full, etc.)."""
    got: dict[str, int] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *a: c.subscribe("$SYS/broker/publish/messages/dropped")
    client.on_message = lambda c, u, m: got.setdefault("dropped", int(m.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while "dropped" not in got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return got.get("dropped", -1)


@pytest.mark.soak
def test_a_fleet_with_backlogs_reconnects_live_first_and_loses_nothing(
    tmp_path, persistent_broker, recorder_factory
):
    broker = persistent_broker
    rec = recorder_factory(broker.port)
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_node",
            "simulate",
            "--nodes",
            str(NODES),
            "--broker",
            broker.url,
            "--interval",
            "1",
            "--heartbeat",
            "5",
            "--report-every",
            "0",
            "--workdir",
            str(tmp_path / "fleet"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rec.wait_for(lambda: len({r["node"] for r in _readings(rec)}) == NODES, timeout=30, what="every node")
        broker.stop()
        time.sleep(8)  # every node piles up a backlog of ~16 readings
        outage_end = max(r["seq"] for r in _readings(rec))
        broker.start()
        back = time.monotonic()

        def drained() -> bool:
            per_node = _per_node(rec)
            return len(per_node) == NODES and all(
                gaps(set(seqs)) == [] and max(seqs) > 20 for seqs in per_node.values()
            )

        rec.wait_for(drained, timeout=60, what="every node's backlog")
        drain_s = time.monotonic() - back
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(60)
    for node, seqs in _per_node(rec).items():
        assert min(seqs) == 1 and gaps(set(seqs)) == [], node
    assert rec.invalid == []
    assert sys_dropped(broker.port) == 0
    print(f"{NODES} nodes with ~16-reading backlogs drained {drain_s:.1f} s after the broker came back")
    assert drain_s < 30
    assert outage_end > 0


def _readings(rec) -> list[dict]:
    out = []
    for topic, payload, _ in list(rec.messages):
        if "/reading/" in topic:
            batch = json.loads(payload)
            out += [{**r, "node": batch["node"], "backfill": batch["backfill"]} for r in batch["readings"]]
    return out


def _per_node(rec) -> dict[str, list[int]]:
    per_node: dict[str, list[int]] = defaultdict(list)
    for r in _readings(rec):
        per_node[r["node"]].append(r["seq"])
    return per_node
