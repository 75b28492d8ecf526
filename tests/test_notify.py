"""systemd's notify protocol, spoken to a real unix datagram socket as systemd would hold it."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
import uuid

import pytest

from edge_node.config import load_config
from edge_node.daemon import Daemon
from edge_node.notify import Notifier

from .conftest import start_daemon, write_config


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: a bound AF_UNIX datagram socket, read by a thread."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append((time.monotonic(), fields))

    @property
    def messages(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.received]

    def collect(self, until, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not until(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {self.messages}")
            time.sleep(0.02)

    def since(self, t: float) -> list[dict[str, str]]:
        return [fields for at, fields in self.received if at >= t]

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


def test_ready_watchdog_status_and_stopping_over_notify_socket(tmp_path, broker, systemd, daemons):
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    proc = start_daemon(write_config(tmp_path, broker.url), env=env)
    daemons.append(proc)
    systemd.collect(lambda m: any(x.get("READY") == "1" for x in m))
    ready = next(m for m in systemd.messages if m.get("READY") == "1")
    assert ready["MAINPID"] == str(proc.pid) and ready["STATUS"]
    assert "EXTEND_TIMEOUT_USEC" in systemd.messages[0], "more time asked while the buffer is checked"
    systemd.collect(lambda m: sum("WATCHDOG" in x for x in m) >= 5, timeout=5)  # every 0.2 s
    systemd.collect(lambda m: any("broker connected" in x.get("STATUS", "") for x in m), timeout=5)
    proc.send_signal(signal.SIGTERM)
    systemd.collect(lambda m: any(x.get("STOPPING") == "1" for x in m))
    assert proc.wait(15) == 0


def test_abstract_notify_socket_is_supported(tmp_path, broker, daemons):
    name = f"edge-node-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode())
    try:
        proc = start_daemon(write_config(tmp_path, broker.url), env={"NOTIFY_SOCKET": f"@{name}"})
        daemons.append(proc)
        fake.collect(lambda m: any(x.get("READY") == "1" for x in m))
    finally:
        fake.close()


def test_without_notify_socket_every_call_is_a_no_op():
    notifier = Notifier(environ={})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()


def test_watchdog_for_another_pid_is_ignored():
    assert Notifier(environ={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier(environ={"WATCHDOG_USEC": "1000000"}).watchdog_interval_s == 0.5


async def test_watchdog_is_withheld_while_a_loop_makes_no_progress(tmp_path, broker, systemd):
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
    daemon = Daemon(load_config(write_config(tmp_path, broker.url)), notifier=Notifier(environ=env))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    await daemon.ready.wait()
    await asyncio.to_thread(systemd.collect, lambda m: sum("WATCHDOG" in x for x in m) >= 3, 5)

    daemon.liveness.register("sampler:hung", 0.3)  # what a sampler stuck in a bus read looks like
    await asyncio.sleep(0.6)
    hung_since = time.monotonic()
    await asyncio.sleep(1.0)
    withheld = systemd.since(hung_since)
    assert sum("STATUS" in m for m in withheld) >= 3  # still alive and talking
    assert not any("WATCHDOG" in m for m in withheld)

    daemon.liveness.unregister("sampler:hung")
    await asyncio.to_thread(systemd.collect, lambda m: sum("WATCHDOG" in x for x in m) >= 2, 5)
    stop.set()
    await task
