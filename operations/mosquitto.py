"""A Mosquitto of our own on a free loopback port: for `edge-node demo`, the tests and the benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """`mosquitto -c CONF` in the foreground; stop() and start() keep the port and the store.

    `persistence` keeps retained messages and sessions across restarts in the work dir, as a
    city broker would. `extra_conf` lines are appended (listeners, TLS, ACLs, ...).
    """

    def __init__(self, *, persistence: bool = False, extra_conf: str = "", workdir: str | None = None):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(self.binary, os.X_OK):
            raise BrokerUnavailable("mosquitto is not installed (apt-get install mosquitto)")
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="edge-node-broker-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "sys_interval 1",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, who cannot read our temp dir
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self, timeout: float = 5.0) -> LocalBroker:
        first_start = not self.port
        for _ in range(5):
            if first_start:  # a free port can be taken between our probe and mosquitto's bind
                self.port = free_port()
            conf = self._write_conf()
            with open(self.log_path, "ab") as log:
                # its own session: a Ctrl-C for the demo must not kill the broker before the nodes say goodbye
                self.proc = subprocess.Popen(
                    [self.binary, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
                )
            if self._wait_listening(timeout):
                return self
            self.stop()
            time.sleep(0.2)
        raise BrokerUnavailable(f"mosquitto did not start; see {self.log_path}")

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.01)
        return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
