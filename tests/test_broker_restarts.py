"""The broker restarted many times under a sampling node, with and without broker persistence:
every seq arrives, every payload is valid, timestamps are sane, the daemon never dies and its
buffer ends empty (issue 6; 5 cycles per test in CI, 50 with EDGE_NODE_SOAK=1)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from contextlib import closing
from datetime import datetime

import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
import pytest

from .conftest import PREFIX, Recorder, by_sensor, gaps, start_daemon, write_config
from .tcp_proxy import BlackholeProxy
from .test_reconnect_storm import sys_dropped

CYCLES = 50 if os.environ.get("EDGE_NODE_SOAK") else 4
NODE_ID = "trs-restarts"
ROOT = f"{PREFIX}/{NODE_ID}"
INTERVAL_S = 1  # the fastest a sensor may be configured; two sensors: 2 readings a second
MAX_DOWN_S = 3.0
WAIT_S = 60  # generous: other test runs share the two cores
TS_SLACK_S = 2.0


def seed_from_env() -> int:
    return int(os.environ.get("EDGE_NODE_SEED") or random.randrange(2**32))


class SubackRecorder(Recorder):
    """A Recorder that counts SUBACKs: one per (re)connection, once its subscription is in place."""

    def __init__(self, port: int):
        self.subacks = 0
        super().__init__(port)

    def _on_connect(self, client, *args):
        client.on_subscribe = self._on_suback  # before the SUBSCRIBE goes out
        super()._on_connect(client, *args)

    def _on_suback(self, *args):
        with self.cond:
            self.subacks += 1
            self.cond.notify_all()


class Daemon:
    """The node's process, its output drained (a full pipe would stall it) and kept for the report."""

    def __init__(self, config):
        self.proc = start_daemon(config)
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])

    def assert_alive(self, why: str) -> None:
        assert self.proc.poll() is None, f"daemon died ({why}), exit {self.proc.returncode}:\n{self.tail()}"

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def make_daemon():
    made: list[Daemon] = []

    def make(config) -> Daemon:
        made.append(Daemon(config))
        return made[-1]

    yield make
    for d in made:
        d.kill()


def buffer_state(db_path) -> tuple[int, int]:
    """The node's last seq (high-water mark) and the rows still in its buffer."""
    with closing(sqlite3.connect(db_path)) as db:
        hwm = db.execute("SELECT value FROM meta WHERE key='seq_hwm'").fetchone()[0]
        top = db.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0]
        left = db.execute("SELECT count(*) FROM readings").fetchone()[0]
    return max(hwm, top), left


def retained_status(port: int) -> dict | None:
    """The broker's retained `status` of the node, as a new subscriber gets it; None if none."""
    got: list[dict] = []
    arrived = threading.Event()

    def on_message(client, userdata, msg):
        if msg.retain:
            got.append(json.loads(msg.payload))
        arrived.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"status-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *a: c.subscribe(f"{ROOT}/status", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        arrived.wait(5)  # a retained message comes with the SUBACK; none at all means none
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0] if got else None


def parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def wait_link_lost(status_file, since: float, why: str) -> None:
    """Until a status snapshot the daemon wrote after `since` says it is not connected."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            status = json.loads(status_file.read_text())
            if not status["broker"]["connected"] and parse_ts(status["ts"]) >= since - 0.001:
                return
        except (OSError, ValueError, KeyError):
            pass  # not written yet, or being replaced
        assert time.monotonic() < deadline, f"the daemon never saw its connection end ({why})"
        time.sleep(0.1)


def wait_new_seqs(rec: Recorder, daemon: Daemon, why: str, n: int = 4) -> None:
    target = max(rec.seqs(), default=0) + n

    def arrived() -> bool:
        daemon.assert_alive(why)
        return max(rec.seqs(), default=0) >= target

    rec.wait_for(arrived, timeout=WAIT_S, what=f"seq {target} ({why})")


def assert_dropped_nothing(port: int, why: str) -> None:
    # $SYS counters restart from 0 with the broker and are published each sys_interval (1 s):
    # read just before each stop, this misses at most the last second of each broker's life.
    assert sys_dropped(port) == 0, f"the broker dropped messages ({why})"


def audit(rec: Recorder, daemon: Daemon, buffer, started: float, why: str) -> dict:
    """Stop the node cleanly and check everything it ever read arrived, intact and in time order."""
    daemon.assert_alive(why)
    assert daemon.terminate() == 0, f"{why}: unclean exit:\n{daemon.tail()}"
    last, left = buffer_state(buffer)
    rec.wait_for(
        lambda: rec.seqs() >= set(range(1, last + 1)), timeout=WAIT_S, what=f"seqs 1..{last} ({why})"
    )
    readings = rec.readings()
    unique: dict[int, dict] = {}
    for r in readings:
        first = unique.setdefault(r["seq"], r)
        same = (first["sensor"], first["ts"], first["values"]) == (r["sensor"], r["ts"], r["values"])
        assert same, f"seq {r['seq']} arrived twice, differently: {first} vs {r} ({why})"
    seqs = set(unique)
    assert min(seqs) == 1 and max(seqs) == last, f"seqs {min(seqs)}..{max(seqs)}, node's last {last} ({why})"
    assert gaps(seqs) == [], f"lost readings: {gaps(seqs)} ({why})"
    assert rec.invalid == [], why
    assert left == 0, f"{left} rows left in the buffer after a clean stop ({why})"

    earliest, latest = started - TS_SLACK_S, time.time() + TS_SLACK_S
    for sensor, rows in by_sensor(unique.values()).items():
        rows.sort(key=lambda r: r["seq"])
        stamps = [parse_ts(r["ts"]) for r in rows]
        outside = [r["ts"] for r, t in zip(rows, stamps, strict=True) if not earliest <= t <= latest]
        assert outside == [], f"{sensor}: timestamps outside the test's run: {outside[:3]} ({why})"
        assert stamps == sorted(stamps), f"{sensor}: ts goes backwards as seq rises ({why})"
    return {"seqs": last, "received": len(readings), "duplicates": len(readings) - len(seqs)}


@pytest.mark.soak
@pytest.mark.timeout(120 + CYCLES * 20)
def test_a_persistent_broker_restarted_many_times_loses_nothing(
    tmp_path, persistent_broker, recorder_factory, make_daemon
):
    """The recorder's persistent session keeps what was queued for it while it was away, so
    every seq reaches it however the broker's restarts fall between the node's publishes."""
    seed = seed_from_env()
    rng = random.Random(seed)
    why = f"seed {seed}, EDGE_NODE_SEED={seed} to repeat"
    print(f"\n{why}")
    broker = persistent_broker
    rec = recorder_factory(broker.port)
    started, clock = time.time(), time.monotonic()
    daemon = make_daemon(write_config(tmp_path, broker.url, node_id=NODE_ID, interval_s=INTERVAL_S))
    for cycle in range(1, CYCLES + 1):
        at = f"cycle {cycle}, {why}"
        wait_new_seqs(rec, daemon, at)
        assert_dropped_nothing(broker.port, at)
        if cycle % 2:
            broker.restart()
        else:
            broker.stop()
            time.sleep(rng.uniform(0, MAX_DOWN_S))
            broker.start()
    wait_new_seqs(rec, daemon, f"the end, {why}")
    assert_dropped_nothing(broker.port, f"the end, {why}")
    figures = audit(rec, daemon, tmp_path / "state" / "buffer.db", started, why)
    print(f"{CYCLES} restarts in {time.monotonic() - clock:.1f} s: {figures}")


@pytest.mark.soak
@pytest.mark.timeout(120 + CYCLES * 25)
def test_a_broker_without_persistence_restarted_many_times_gets_every_seq_and_the_status_again(
    tmp_path, broker, make_daemon
):
    """A broker without persistence forgets, at each restart, the recorder's session, the
    messages queued for it and the node's retained status.

    The node's contract ends at the PUBACK: a message the broker acknowledged and then lost with
    its queue, or one published before the recorder had subscribed again, would be missing from
    the audit through no fault of the node. So the node reaches the broker through a proxy that
    the test uses as a gate. Before each stop, the node's link is blackholed (what is in flight
    is not acknowledged, so the node sends it again) and a probe through the broker proves that
    the recorder has everything the broker took; the link is healed only once the node has seen
    it end; after each start, the node is let in only once the recorder's SUBACK is in. Then its
    retained `status` must be `online` again: the node republishes it on every connect, as the
    broker kept nothing.
    """
    seed = seed_from_env()
    rng = random.Random(seed)
    why = f"seed {seed}, EDGE_NODE_SEED={seed} to repeat"
    print(f"\n{why}")
    rec = SubackRecorder(broker.port)
    proxy = BlackholeProxy(broker.port)
    status_file = tmp_path / "state" / "status.json"
    started, clock = time.time(), time.monotonic()
    try:
        rec.wait_for(lambda: rec.subacks >= 1, timeout=WAIT_S, what="the recorder's first SUBACK")
        daemon = make_daemon(write_config(tmp_path, proxy.url, node_id=NODE_ID, interval_s=INTERVAL_S))
        for cycle in range(1, CYCLES + 1):
            at = f"cycle {cycle}, {why}"
            wait_new_seqs(rec, daemon, at)
            proxy.refuse()
            proxy.partition()
            probe = f"{PREFIX}/_probe/{cycle}"  # `_` cannot start a node id
            mqtt_publish.single(probe, b"", qos=1, hostname="127.0.0.1", port=broker.port)
            rec.wait_for(
                lambda probe=probe: any(t == probe for t, _, _ in rec.messages),
                timeout=WAIT_S,
                what=f"the probe ({at})",
            )
            assert_dropped_nothing(broker.port, at)
            subacks = rec.subacks
            since = time.time()
            broker.stop()
            # Healed too early, the old link could still hand the node a PUBACK the broker sent
            # after the probe, for a message it then lost.
            wait_link_lost(status_file, since, at)
            time.sleep(rng.uniform(0, MAX_DOWN_S))
            broker.start()
            proxy.heal()
            rec.wait_for(lambda subacks=subacks: rec.subacks > subacks, timeout=WAIT_S, what=f"SUBACK ({at})")
            seen = len(rec.messages)
            proxy.admit()
            rec.wait_for(
                lambda seen=seen: any("/reading/" in t for t, _, _ in rec.messages[seen:]),
                timeout=WAIT_S,
                what=f"a reading from the node's new session ({at})",
            )
            # The status goes out, acknowledged, before any reading of the session.
            status = retained_status(broker.port)
            assert status is not None and status["state"] == "online", f"retained status {status} ({at})"
        wait_new_seqs(rec, daemon, f"the end, {why}")
        assert_dropped_nothing(broker.port, f"the end, {why}")
        figures = audit(rec, daemon, tmp_path / "state" / "buffer.db", started, why)
    finally:
        proxy.close()
        rec.close()
    print(f"{CYCLES} restarts in {time.monotonic() - clock:.1f} s: {figures}")
