"""A PostgreSQL of our own on a free loopback port, in a temporary directory: for the tests, the
benchmarks and a demo, as edge_node.broker is for Mosquitto.

Debian's server binaries (`postgresql`, /usr/lib/postgresql/NN/bin) are used directly: no cluster
of the system's is touched. initdb refuses to run as root, so as root the server runs as `nobody`
in a directory it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """initdb + postgres in the foreground; stop() and start() keep the data and the port."""

    def __init__(self, workdir: str | None = None, *, fsync: bool = False):
        self.bin = pg_bin()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="edge-node-pg-"))
        self.data = self.dir / "data"
        self.fsync = fsync
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "postgres.log"
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("nobody")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as(self):
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
            self.dir.chmod(0o700)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "-N"],
            check=True, capture_output=True, cwd=self.dir, **self._run_as(),
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        if not self.data.exists():
            self._initdb()
        first_start = not self.port
        for _ in range(5):
            if first_start:
                self.port = _free_port()
            options = [
                "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.dir),
                "-c", "max_connections=50", "-c", "shared_buffers=64MB",
            ]  # fmt: skip
            if not self.fsync:
                options += ["-F", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            log = open(self.log_path, "ab")  # noqa: SIM115 (the server's own log, closed in stop)
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), *options],
                stdout=log, stderr=log, cwd=self.dir, start_new_session=True, **self._run_as(),
            )  # fmt: skip
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop()
            time.sleep(0.2)
        raise PostgresUnavailable(f"postgres did not start; see {self.log_path}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                return False
            probe = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def create_database(self, name: str) -> str:
        """A fresh database on this server; its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """PostgreSQL's fast shutdown (SIGINT): clients are cut, open transactions rolled back."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
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

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
