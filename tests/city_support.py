"""Helpers for the city's tests: a scripted node that publishes what a node would (or worse),
`edge-node ingest` as its own process, and waiting on the database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from city.db import Database

PREFIX = "city/terrassa/nodes"
UNITS = {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"}


def iso(epoch: float | None = None) -> str:
    epoch = time.time() if epoch is None else epoch
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def reading(seq: int, ts: str | None = None, **extra) -> dict:
    values = extra.pop("values", {"temperature": 20.0 + seq / 100, "humidity": 55.5, "pressure": 1013.25})
    return {"seq": seq, "ts": ts or iso(), "values": values, "quality": extra.pop("quality", []), **extra}


def batch(node: str, readings: list[dict], *, sensor: str = "bme280", units=None, backfill=False) -> dict:
    return {
        "node": node,
        "sensor": sensor,
        "units": units or UNITS,
        "backfill": backfill,
        "readings": readings,
    }


class ScriptedNode:
    """Publishes a node's messages with QoS 1, waiting for each PUBACK (what the daemon does)."""

    def __init__(self, port: int, node: str = "trs-0001", prefix: str = PREFIX, protocol=mqtt.MQTTv311):
        self.node, self.root = node, f"{prefix}/{node}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"scripted-{node}", protocol=protocol
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, payload, *, retain: bool = False, wait: bool = True):
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if wait:
            info.wait_for_publish(10)
        return info

    def status(self, *, site="Rambla d'Ègara 12", lat=41.563, lon=2.0089, state="online"):
        if state == "online":
            body = {
                "state": "online",
                "since": iso(),
                "version": "0.1.0",
                "boot_id": "b-1",
                "config_hash": "c",
            }
            if site:
                body["site"] = site
            if lat is not None:
                body["location"] = {"lat": lat, "lon": lon}
        else:
            body = {"state": "offline", "reason": state}
        self.publish(f"{self.root}/status", body, retain=True)

    def heartbeat(self, *, backlog=0, dropped=0, seq_sent=0):
        body = {
            "ts": iso(), "uptime_s": 10.0, "seq_sent": seq_sent, "backlog": backlog, "oldest_unsent_age_s": 0,
            "dropped": dropped, "sensors": {"bme280": {"state": "ok"}},
            "host": {"cpu_temp_c": 40.0, "load1": 0.1, "mem_available_mb": 100, "disk_free_mb": 1000,
                     "clock_synced": True},
        }  # fmt: skip
        self.publish(f"{self.root}/heartbeat", body, retain=True)

    def readings(self, readings: list[dict], *, sensor="bme280", units=None, backfill=False, wait=True):
        body = batch(self.node, readings, sensor=sensor, units=units, backfill=backfill)
        return self.publish(f"{self.root}/reading/{sensor}", body, wait=wait)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def start_ingest(url: str, dsn: str, *extra: str, log_path, wait: bool = True) -> subprocess.Popen:
    """`edge-node ingest` logging to `log_path`; returns once it has subscribed (unless not `wait`)."""
    before = log_path.read_text().count("subscribed") if log_path.exists() else 0
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_node.cli", "ingest", "--broker", url, "--db", dsn, *extra],
            stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    if wait:
        try:
            wait_until(
                lambda: log_path.read_text().count("subscribed") > before or proc.poll() is not None, 30
            )
        except AssertionError:
            raise AssertionError(f"ingest did not subscribe: {log_path.read_text()[-2000:]}") from None
        assert proc.poll() is None, log_path.read_text()[-2000:]
    return proc


def stop(proc: subprocess.Popen, *, kill: bool = False) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    return proc.wait(20)


def scalar(dsn: str, statement: str, params=()):
    db = Database(dsn)
    conn = db.connect()
    try:
        row = db.execute(conn, statement, params).fetchone()
        return row[0] if row else None
    except db.errors:
        return None
    finally:
        conn.close()


def rows(dsn: str, statement: str, params=()) -> list[tuple]:
    db = Database(dsn)
    conn = db.connect()
    try:
        return [tuple(r) for r in db.execute(conn, statement, params).fetchall()]
    finally:
        conn.close()


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_count(dsn: str, statement: str, expected: int, timeout: float = 30.0, params=()):
    last = [None]

    def reached():
        last[0] = scalar(dsn, statement, params)
        return last[0] == expected

    try:
        wait_until(reached, timeout, f"{statement} == {expected}")
    except AssertionError:
        raise AssertionError(f"{statement}: {last[0]}, expected {expected}") from None


class Background(threading.Thread):
    def __init__(self, target):
        super().__init__(target=target, daemon=True)
        self.start()
