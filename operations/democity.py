"""A simulated Terrassa end to end: Mosquitto, `edge-node ingest`, simulated nodes on the town's
streets with hours of history, `edge-node serve` with the map; `make demo-city` opens it.

Every piece is the real program, each in its own process, as a city would run them: the nodes
are `edge-node simulate` (real daemons on simulated sensors), their readings reach the database
only through the broker and `ingest`, and the page is what `serve` gives any browser. One node
is in fog (its PM inflated by droplets, its humidity saturated) and a few are switched off once
their history is stored, so that the map has an offline node to show.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import webbrowser
from pathlib import Path

from .mosquitto import LocalBroker, free_port

DEMO_RULES = """\
# Terrassa's alert rules for the demo (edge-node alerts --rules; edge-node serve --alerts).
[settings]
topic_prefix = "city/terrassa/alerts"
step_s = 300
lookback_s = 21600

[[alert]]
id = "air-poor"
title = "Poor air"
kind = "eaqi"
raise_at = "poor"
clear_at = "moderate"
min_duration_s = 3600
clear_after_s = 3600

[[alert]]
id = "flash-flood"
title = "Flash flood risk"
kind = "rain"
window_s = 900
raise_at = 30.0
clear_at = 5.0
min_duration_s = 1200
clear_after_s = 1800

[[alert]]
id = "heat"
title = "Dangerous heat"
kind = "heat_index"
raise_at = 39.4
clear_at = 32.2
min_duration_s = 7200
clear_after_s = 3600

[[alert]]
id = "noise"
title = "Sustained noise"
kind = "noise"
window_s = 3600
raise_at = 70.0
clear_at = 65.0
min_duration_s = 5400
clear_after_s = 1800
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_node", *args]


class SimulatedCity:
    """Start with `start()`, stop with `stop()` (or use it as a context manager)."""

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 30,
        offline: int = 1,
        history_h: float = 24.0,
        interval_s: float = 60.0,
        fog: int = 2,
        sensors: str = "bme280,sds011,noise",
        port: int = 0,
        rules: str | None = DEMO_RULES,
        dsn: str | None = None,
        node_prefix: str = "trs",
    ):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes, self.offline, self.history_h = nodes, offline, history_h
        self.interval_s, self.fog, self.sensors = interval_s, fog, sensors
        self.port = port or free_port()
        self.dsn = dsn or f"sqlite:///{self.dir / 'city.db'}"
        self.node_prefix = node_prefix
        self.rules_path: Path | None = None
        if rules is not None:
            self.rules_path = self.dir / "alerts.toml"
            self.rules_path.write_text(rules)
        self.broker: LocalBroker | None = None
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def live_nodes(self) -> list[str]:
        return [f"{self.node_prefix}-{i:03d}" for i in range(1, self.nodes - self.offline + 1)]

    @property
    def offline_nodes(self) -> list[str]:
        return [f"gone-{i:03d}" for i in range(1, self.offline + 1)]

    @property
    def fog_node(self) -> str | None:
        return f"{self.node_prefix}-{self.fog:03d}" if self.fog else None

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 (the process keeps it)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _fleet(self, name: str, prefix: str, count: int, offset: int, extra: list[str]) -> subprocess.Popen:
        return self._spawn(
            name,
            _cli(
                "simulate",
                "--nodes", str(count),
                "--node-prefix", prefix,
                "--street-offset", str(offset),
                "--broker", self.broker.url,
                "--history", str(self.history_h),
                "--interval", str(self.interval_s),
                "--sensors", self.sensors,
                "--workdir", str(self.dir / f"{name}-buffers"),
                "--stagger", "0.5",
                "--report-every", "0",
                "--backfill-rate", "0",
                *extra,
            ),
        )  # fmt: skip

    def start(self, timeout: float = 120.0) -> SimulatedCity:
        self.broker = LocalBroker(persistence=False, workdir=str(self.dir / "broker")).start()
        self._spawn("ingest", _cli("ingest", "--broker", self.broker.url, "--db", self.dsn))
        self._wait_db(timeout)
        live = self.nodes - self.offline
        faults = ["--fault", f"{self.fog_node}:bme280=fog"] if self.fog else []
        self._fleet("simulate", self.node_prefix, live, 0, faults)
        if self.offline:
            gone = self._fleet("simulate-gone", "gone", self.offline, live, [])
            per_node = int(self.history_h * 3600 / self.interval_s) * len(self.sensors.split(","))
            self.wait_for(
                lambda db, conn: all(
                    db.execute(conn, "SELECT COUNT(*) FROM readings WHERE node = %s", [n]).fetchone()[0]
                    >= per_node
                    for n in self.offline_nodes
                ),
                timeout,
                "the offline nodes' history stored",
            )
            gone.send_signal(signal.SIGTERM)
            gone.wait(30)
            self.wait_for(
                lambda db, conn: (
                    db.execute(
                        conn, "SELECT COUNT(*) FROM nodes WHERE node LIKE 'gone-%%' AND state = 'offline'"
                    ).fetchone()[0]
                    == self.offline
                ),
                timeout,
                "the offline nodes' status stored",
            )
        serve_args = ["serve", "--db", self.dsn, "--port", str(self.port)]
        if self.rules_path is not None:
            serve_args += ["--alerts", str(self.rules_path)]
        self._spawn("serve", _cli(*serve_args))
        self._wait_http(timeout)
        return self

    def wait_history(self, timeout: float = 120.0) -> None:
        """Until every live node's history (and its location) is stored."""
        per_node = int(self.history_h * 3600 / self.interval_s) * len(self.sensors.split(","))

        def done(db, conn) -> bool:
            rows = db.execute(
                conn,
                "SELECT n.node, n.lat, (SELECT COUNT(*) FROM readings r WHERE r.node = n.node) FROM nodes n",
            ).fetchall()
            stored = {node: (lat, count) for node, lat, count in rows}
            return all(
                node in stored and stored[node][0] is not None and stored[node][1] >= per_node
                for node in self.live_nodes
            )

        self.wait_for(done, timeout, "every node's history stored")

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        from city.db import Database

        db = Database(self.dsn)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            with contextlib.suppress(Exception):
                conn = db.open(read_only=True)
                try:
                    if predicate(db, conn):
                        return
                finally:
                    conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated city: not within {timeout:g} s: {what} (logs in {self.dir})")
            time.sleep(0.3)

    def _wait_db(self, timeout: float) -> None:
        self.wait_for(lambda db, conn: db.execute(conn, "SELECT COUNT(*) FROM nodes").fetchone() is not None,
                      timeout, "ingest's database")  # fmt: skip

    def _wait_http(self, timeout: float) -> None:
        # Not /api/map: serve keeps the first map it computes for a while, and that should be
        # the city with its history, not the city of this instant.
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "api/config", timeout=5) as response:
                    json.load(response)
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"serve did not answer on {self.url} (logs in {self.dir})")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if name != "simulate-gone" and proc.poll() is not None:
                log = (self.dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.broker is not None:
            self.broker.close()

    def __enter__(self) -> SimulatedCity:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo-city", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=40)
    parser.add_argument("--history", type=float, default=24.0, metavar="HOURS")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="store in a PostgreSQL of its own (temp dir, free port), not SQLite",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="edge-node-demo-city-"))
    postgres = None
    if args.postgres:
        from city.localpg import LocalPostgres

        postgres = LocalPostgres().start()
    dsn = postgres.create_database("city") if postgres else None
    city = SimulatedCity(workdir, nodes=args.nodes, history_h=args.history, port=args.port, dsn=dsn)
    print(f"starting a simulated Terrassa: {args.nodes} nodes, {args.history:g} h of history, in {workdir}")
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        city.start(timeout=600)
        print(f"the map: {city.url}  (JSON: {city.url}api/map; alerts: edge-node alerts --db {city.dsn} "
              f"--rules {city.rules_path})")  # fmt: skip
        print("loading the nodes' history ...", flush=True)
        city.wait_history(timeout=600)
        print(f"ready: {city.url}  (Ctrl-C stops)", flush=True)
        if not args.no_browser and os.environ.get("CI") is None:
            webbrowser.open(city.url)
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        city.stop()
        if postgres is not None:
            postgres.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
