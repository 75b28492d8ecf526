"""Shared fixtures: a real Mosquitto per test, a recording subscriber, node configs on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from edge_node import schemas
from operations.mosquitto import BrokerUnavailable, LocalBroker

PREFIX = "city/terrassa/nodes"
SCHEMAS = {name: schemas.load(name) for name in ("reading", "status", "heartbeat", "reply")}


def local_broker(**options) -> LocalBroker:
    """A Mosquitto for one test; only the tests that need one fail, in one line, where it is missing."""
    try:
        return LocalBroker(**options)
    except BrokerUnavailable as err:
        pytest.fail(f"{err}: `make test` installs it", pytrace=False)


@pytest.fixture
def broker(tmp_path):
    with local_broker(workdir=str(tmp_path / "broker")) as b:
        yield b


@pytest.fixture
def persistent_broker(tmp_path):
    """Keeps sessions and retained messages across stop/start, like a city broker."""
    with local_broker(persistence=True, workdir=str(tmp_path / "broker")) as b:
        yield b


class Recorder:
    """A subscriber that records every message under the prefix, validating each against its schema.

    Its session is persistent (clean_session False, QoS 1), so with a persistent broker it misses
    nothing published while it was reconnecting after a broker restart.
    """

    def __init__(self, port: int, topic: str = f"{PREFIX}/#"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.invalid: list[str] = []
        self.cond = threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.2)
        self.connected = threading.Event()
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.connected.wait(5), "recorder could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        kind = _kind(msg.topic)
        if kind in SCHEMAS and msg.payload:
            try:
                jsonschema.validate(json.loads(msg.payload), SCHEMAS[kind])
            except (ValueError, jsonschema.ValidationError) as err:
                self.invalid.append(f"{msg.topic}: {str(err).splitlines()[0]}")
        with self.cond:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self.cond.notify_all()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    # -- views ----------------------------------------------------------------------------------

    def payloads(self, suffix: str) -> list[dict]:
        with self.cond:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix) and p]

    def readings(self) -> list[dict]:
        """Every reading of every batch, each with its batch's sensor and backfill flag."""
        out = []
        with self.cond:
            batches = [json.loads(p) for t, p, _ in self.messages if "/reading/" in t]
        for batch in batches:
            for r in batch["readings"]:
                out.append({**r, "sensor": batch["sensor"], "backfill": batch["backfill"]})
        return out

    def seqs(self) -> set[int]:
        return {r["seq"] for r in self.readings()}

    def wait_for(self, predicate, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self.cond.wait(min(left, 0.1))

    def wait_seq(self, seq: int, timeout: float = 15.0) -> None:
        self.wait_for(lambda: max(self.seqs(), default=0) >= seq, timeout, f"seq {seq}")


def _kind(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) >= 2 and parts[-2] == "reading":
        return "reading"
    return parts[-1]


def gaps(seqs: set[int]) -> list[int]:
    if not seqs:
        return []
    return sorted(set(range(min(seqs), max(seqs) + 1)) - seqs)


@pytest.fixture
def recorder_factory():
    made = []

    def make(port: int, **kw) -> Recorder:
        r = Recorder(port, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


NODE_CONFIG = """
[node]
id = "{node_id}"
site = "test bench"

[broker]
url = "{url}"
keepalive_s = 5

[buffer]
path = "{buffer}"
sync_interval_s = 1
{buffer_extra}

[forward]
reconnect_max_s = 2
{forward}

[health]
heartbeat_s = {heartbeat_s}

[simulation]
seed = 7

[sensors.bme280]
driver = "bme280"
bus = "sim"
interval_s = {interval_s}

[sensors.host]
driver = "pi_health"
root = "sim"
interval_s = {interval_s}
"""


def write_config(
    tmp_path: Path,
    url: str,
    *,
    node_id: str = "trs-test",
    interval_s: float = 1,
    heartbeat_s: float = 1,
    forward: str = "",
    buffer_extra: str = "",
) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        NODE_CONFIG.format(
            node_id=node_id,
            url=url,
            buffer=tmp_path / "state" / "buffer.db",
            interval_s=interval_s,
            heartbeat_s=heartbeat_s,
            forward=forward,
            buffer_extra=buffer_extra,
        )
    )
    return path


def start_daemon(config: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    """`edge-node run -c CONFIG` as its own process, as systemd would start it."""
    return subprocess.Popen(
        [sys.executable, "-m", "edge_node.cli", "run", "-c", str(config)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


@pytest.fixture
def daemons():
    """Daemon processes started by a test; killed at its end whatever happened."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def by_sensor(readings: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in readings:
        out[r["sensor"]].append(r)
    return out


# -- the city's side: databases ------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL for the whole session, started in a temporary directory on a free port
    (as `nobody` when root: initdb refuses root). Each test takes its own database from it."""
    from city.localpg import LocalPostgres, PostgresUnavailable

    try:
        server = LocalPostgres().start()
    except PostgresUnavailable as err:
        pytest.exit(f"{err}: `make test` installs it (apt-get install postgresql)", 2)
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def city_dsn(request, tmp_path):
    """A fresh, empty city database: SQLite in the test's directory, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'city.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


# -- a failing SD card (tests/faults/eio_preload.c, LD_PRELOAD) ------------------------------------

SHIM_SOURCE = Path(__file__).parent / "faults" / "eio_preload.c"


class Card:
    """The buffer's directory on a card that fails on demand."""

    def __init__(self, shim: Path, tmp_path: Path, calls: str):
        self.state = tmp_path / "state"
        self.state.mkdir(exist_ok=True)
        self.switch = tmp_path / "card-fails"
        self.env = {
            "LD_PRELOAD": str(shim),
            "EIO_PREFIX": os.path.realpath(self.state) + "/",
            "EIO_SWITCH": str(self.switch),
            "EIO_CALLS": calls,
        }

    def fail(self) -> None:
        self.switch.touch()

    def heal(self) -> None:
        self.switch.unlink()

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess:
        """A Python script in a process on this card (the shim preloaded); its output as text."""
        return subprocess.run(
            [sys.executable, "-c", script, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def eio_shim(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler (cc) to build the EIO fault shim")
    out = tmp_path_factory.mktemp("eio") / "eio.so"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(SHIM_SOURCE), "-ldl"],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def card(eio_shim, tmp_path):
    return lambda calls="write,sync": Card(eio_shim, tmp_path, calls)
