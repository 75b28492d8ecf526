"""Aedes (npm, on Node.js from Debian) on a free loopback port: the second, independent MQTT
broker of the end-to-end suite, started and restarted like operations.mosquitto.LocalBroker.
`make test` installs it (`npm ci` in tests/aedes/)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from operations.mosquitto import free_port

HERE = Path(__file__).resolve().parent / "aedes"


class AedesUnavailable(RuntimeError):
    pass


def aedes_installed() -> str | None:
    """Why Aedes cannot run here, or None."""
    if not shutil.which("node"):
        return "node is not installed (apt-get install nodejs npm)"
    if not (HERE / "node_modules" / "aedes").is_dir():
        return "aedes is not installed (npm ci --prefix tests/aedes)"
    return None


class LocalAedes:
    protocol = "3.1.1"  # Aedes speaks MQTT 3.1.1 only

    def __init__(self, log_path: Path):
        problem = aedes_installed()
        if problem:
            raise AedesUnavailable(problem)
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> LocalAedes:
        first_start = not self.port
        for _ in range(5):
            if first_start:
                self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    ["node", str(HERE / "broker.js"), str(self.port)],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.02)
            self.stop()
            time.sleep(0.2)
        raise AedesUnavailable(f"aedes did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
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

    def __enter__(self) -> LocalAedes:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
