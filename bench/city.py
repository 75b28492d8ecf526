"""The city's figures (issue 14): readings/s that `edge-node ingest` stores, by one worker and by
two on a shared subscription, into SQLite and into PostgreSQL (from Debian's binaries, fsync on,
in a temp dir), and how many nodes one worker keeps up with at the nominal rate; and the peak RSS
of `edge-node export` for a small and a large window (streaming: the same).

Load: a city whose nodes were cut off for an hour returns at once. Each node's hour of backlog
(1,080 readings at 0.3/s) arrives as the forwarder sends it, batches of up to 100 readings of one
sensor with backfill true; the live readings, one per message. The messages are queued at the
broker for the workers' persistent sessions while the workers are away, then the workers start:
what is measured is the consumer, from its first stored reading to its last, not the publisher.

    .venv/bin/python -m bench.run --only fig_city [--quick]
"""

from __future__ import annotations

import calendar
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from city.db import Database
from city.localpg import LocalPostgres
from operations.mosquitto import LocalBroker

from .helpers import proc_cpu_s, terminate

PREFIX = "city/terrassa/nodes"
NOMINAL_RATE = 0.3  # readings/s of a node
HOUR = 3600
UNITS = {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"}


def node_name(i: int) -> str:
    return f"city-{i:05d}"


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def status(i: int) -> tuple[str, bytes, bool]:
    body = {"state": "online", "since": iso(time.time()), "version": "0.1.0", "boot_id": "b"}
    body |= {"config_hash": "c", "site": f"street {i}", "location": {"lat": 41.56 + i * 1e-4, "lon": 2.01}}
    return f"{PREFIX}/{node_name(i)}/status", json.dumps(body).encode(), True


def readings_payload(i: int, seqs: range, start: float, backfill: bool) -> tuple[str, bytes, bool]:
    readings = [
        {"seq": s, "ts": iso(start + s / NOMINAL_RATE), "quality": [],
         "values": {"temperature": 15 + s % 10 / 10, "humidity": 60.5, "pressure": 1013.2}}
        for s in seqs
    ]  # fmt: skip
    body = {
        "node": node_name(i),
        "sensor": "bme280",
        "units": UNITS,
        "backfill": backfill,
        "readings": readings,
    }
    return f"{PREFIX}/{node_name(i)}/reading/bme280", json.dumps(body).encode(), False


def backlog_messages(nodes: int) -> tuple[list, int]:
    per_node = int(HOUR * NOMINAL_RATE)
    start = time.time() - HOUR - 60
    out = [status(i) for i in range(nodes)]
    for i in range(nodes):
        for first in range(1, per_node + 1, 100):
            out.append(readings_payload(i, range(first, min(first + 100, per_node + 1)), start, True))
    return out, nodes * per_node


def live_messages(nodes: int, per_node: int) -> tuple[list, int]:
    start = time.time() - per_node / NOMINAL_RATE
    out = [status(i) for i in range(nodes)]
    for s in range(1, per_node + 1):
        out.extend(readings_payload(i, range(s, s + 1), start, False) for i in range(nodes))
    return out, nodes * per_node


def publish_all(port: int, messages: list) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-city-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload, retain in messages]
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()


def ingest_cmd(broker: LocalBroker, dsn: str, worker: int, workers: int) -> list[str]:
    cmd = [sys.executable, "-m", "edge_node.cli", "ingest", "--broker", broker.url, "--db", dsn]
    cmd += ["--client-id", f"bench-ingest-{worker}"]
    if workers > 1:
        cmd += ["--share", "bench"]
    return cmd


def register_sessions(broker: LocalBroker, dsn: str, workers: int, log: Path) -> None:
    """Start and stop each worker once: its persistent session and subscriptions stay at the broker."""
    for w in range(workers):
        with open(log, "ab") as out:
            proc = subprocess.Popen(ingest_cmd(broker, dsn, w, workers), stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while "subscribed" not in log.read_text() or log.read_text().count("subscribed") <= w:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"ingest did not subscribe: {log.read_text()[-500:]}")
            time.sleep(0.05)
        terminate(proc, 10)


def count(dsn: str) -> int:
    """Readings stored, from the nodes' seq ranges (every node's seqs are contiguous here): a
    COUNT(*) of the readings every few hundred ms would take the database's time from ingest."""
    db = Database(dsn)
    conn = db.connect()
    try:
        row = db.execute(conn, "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM nodes").fetchone()
        return int(row[0])
    except db.errors:
        return 0
    finally:
        conn.close()


def storing_span_s(dsn: str) -> float:
    """From the first commit to the last, by the readings' received_at (ingest's clock)."""
    db = Database(dsn)
    conn = db.connect()
    try:
        first, last = db.execute(conn, "SELECT MIN(received_at), MAX(received_at) FROM readings").fetchone()
    finally:
        conn.close()

    def epoch(ts: str) -> float:
        return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000

    return epoch(last) - epoch(first)


def run_case(dsn: str, messages: list, expected: int, workers: int, work: Path, timeout: float) -> dict:
    broker = LocalBroker(workdir=str(work / "broker"))
    log = work / "ingest.log"
    with broker:
        Database(dsn).open().close()
        register_sessions(broker, dsn, workers, log)
        publish_all(broker.port, messages)
        procs = []
        for w in range(workers):
            with open(log, "ab") as out:
                procs.append(subprocess.Popen(ingest_cmd(broker, dsn, w, workers), stdout=out, stderr=out))
        first = last = None
        stored = 0
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                stored = count(dsn)
                now = time.monotonic()
                if stored and first is None:
                    first = (now, stored)
                if stored >= expected:
                    last = (now, stored)
                    break
                time.sleep(0.2)
            cpu = sum(proc_cpu_s(p.pid) for p in procs)
        finally:
            for p in procs:
                terminate(p, 20)
    if last is None or first is None:
        return {"stored": stored, "expected": expected, "complete": False}
    span = max(storing_span_s(dsn), 1e-3)
    return {
        "stored": stored,
        "expected": expected,
        "complete": stored == expected,
        "readings_s": round(expected / span),
        "seconds": round(span, 2),
        "ingest_cpu_ms_per_reading": round(cpu * 1000 / expected, 3),
    }


def export_rss_mb(dsn: str, *args: str) -> float:
    """Peak RSS of `edge-node export` (VmHWM: a fork's pages before exec are not counted, as
    ru_maxrss would count the benchmark's own)."""
    code = (
        "import sys; from edge_node.cli import main; sys.stdout = open('/dev/null', 'w');"
        " rc = main(sys.argv[1:]);"
        " hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        " print(hwm, file=sys.stderr); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "export", "--db", dsn, *args], capture_output=True, text=True, check=True
    )
    return round(int(out.stderr.strip().splitlines()[-1]) / 1024, 1)


def city_storm(pg: LocalPostgres, nodes: int, work: Path) -> dict:
    """Real simulated nodes (`edge-node simulate`, one process), each with an hour of history in
    its buffer (`--history 1`), all starting at once against a broker that ingest (PostgreSQL,
    one worker) already listens on: from the simulator's start to the last history reading
    stored, once every node's seqs are stored from 1 with no gap and no backfill arrives any more."""
    dsn = pg.create_database("bench_storm")
    db = Database(dsn)
    db.open().close()
    log = work / "ingest.log"
    broker = LocalBroker(workdir=str(work / "broker"))

    def query(statement: str):
        conn = db.connect()
        try:
            return db.execute(conn, statement).fetchone()
        finally:
            conn.close()

    with broker:
        with open(log, "ab") as out:
            ingest = subprocess.Popen(ingest_cmd(broker, dsn, 0, 1), stdout=out, stderr=out)
        simulate = None
        try:
            deadline = time.monotonic() + 30
            while "subscribed" not in log.read_text():
                if time.monotonic() > deadline:
                    raise RuntimeError("ingest did not subscribe")
                time.sleep(0.05)
            started = time.time()
            simulate = subprocess.Popen(
                [sys.executable, "-m", "edge_node.cli", "simulate", "--nodes", str(nodes),
                 "--broker", broker.url, "--history", "1", "--interval", "10", "--stagger", "0",
                 "--backfill-rate", "0", "--workdir", str(work / "sim"), "--seconds", "900"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            backfill, settled_since, complete = -1, None, False
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and simulate.poll() is None:
                time.sleep(0.5)
                from_one = query("SELECT COUNT(*) FROM nodes WHERE first_seq = 1")[0]
                gaps = query("SELECT COUNT(*) FROM gaps WHERE closed_at IS NULL")[0]
                count = query("SELECT COUNT(*) FROM readings WHERE backfill")[0]
                if count != backfill or from_one < nodes or gaps:
                    backfill, settled_since = count, time.monotonic()
                elif time.monotonic() - settled_since > 3:
                    complete = True
                    break
            cpu = proc_cpu_s(ingest.pid)
            last = query("SELECT MAX(received_at) FROM readings WHERE backfill")[0]
        finally:
            if simulate is not None:
                terminate(simulate, 30)
            terminate(ingest, 20)
    if not complete or last is None:
        return {"nodes": nodes, "complete": False, "history_readings_stored": backfill}
    last_epoch = calendar.timegm(time.strptime(last[:19], "%Y-%m-%dT%H:%M:%S"))
    elapsed = last_epoch + int(last[20:23]) / 1000 - started
    return {
        "nodes": nodes,
        "complete": True,
        "history_readings": backfill,
        "seconds_to_all_stored": round(elapsed, 1),
        "readings_s": round(backfill / elapsed),
        "ingest_cpu_s": round(cpu, 1),
    }


def fig_city(b) -> None:
    nodes = 60 if b.quick else 300
    live_nodes, live_per_node = (200, 25) if b.quick else (1000, 30)
    work = Path(tempfile.mkdtemp(prefix="edge-node-bench-city-", dir="/var/tmp"))
    results: dict = {}
    backlog, backlog_n = backlog_messages(nodes)
    live, live_n = live_messages(live_nodes, live_per_node)
    pg = LocalPostgres(fsync=True)
    try:
        pg.start()
        for engine in ("sqlite", "postgresql"):
            for workers in (1, 2):
                for load, (messages, expected) in (
                    ("backlog", (backlog, backlog_n)),
                    ("live", (live, live_n)),
                ):
                    name = f"{engine}_{workers}w_{load}"
                    case_dir = work / name
                    case_dir.mkdir()
                    if engine == "sqlite":
                        dsn = f"sqlite:///{case_dir / 'city.db'}"
                    else:
                        dsn = pg.create_database(f"bench_{name}")
                    results[name] = run_case(dsn, messages, expected, workers, case_dir, timeout=300)
                    print(f"{name}: {results[name]}", flush=True)
                    if engine == "postgresql" and workers == 1 and load == "backlog":
                        window = (
                            "--from",
                            iso(time.time() - HOUR - 60),
                            "--to",
                            iso(time.time() - HOUR + 240),
                        )
                        small = export_rss_mb(dsn, "--format", "jsonl", *window)
                        big = export_rss_mb(dsn, "--format", "jsonl")
                        results["export_rss_mb"] = {
                            "small_window": small,
                            "whole": big,
                            "readings": backlog_n,
                        }
                    if engine == "sqlite" and workers == 1 and load == "backlog":
                        small = export_rss_mb(dsn, "--format", "csv", "--to", iso(time.time() - HOUR + 240))
                        big = export_rss_mb(dsn, "--format", "csv")
                        results["export_csv_rss_mb_sqlite"] = {"small_window": small, "whole": big}
        storm_dir = work / "storm"
        storm_dir.mkdir()
        results["storm"] = city_storm(pg, 60 if b.quick else 300, storm_dir)
        print(f"storm: {results['storm']}", flush=True)
    finally:
        pg.close()
        shutil.rmtree(work, ignore_errors=True)

    def rate(name):
        return results.get(name, {}).get("readings_s")

    live_pg = rate("postgresql_1w_live")
    kept_up = None if live_pg is None else int(live_pg / NOMINAL_RATE)
    b.add(
        "city_ingest_live_pg_1w", "ingest, live readings (1 a message), PostgreSQL, one worker", live_pg,
        "readings/s", (">=", 3000), nodes_kept_up_with=kept_up,
    )  # fmt: skip
    for name, title in (
        ("postgresql_2w_live", "ingest, live, PostgreSQL, two workers (--share)"),
        ("sqlite_1w_live", "ingest, live, SQLite, one worker"),
        ("sqlite_2w_live", "ingest, live, SQLite, two workers (--share)"),
        ("postgresql_1w_backlog", f"ingest, {nodes} nodes' hour of backlog at once, PostgreSQL, one worker"),
        ("postgresql_2w_backlog", "ingest, same backlog, PostgreSQL, two workers"),
        ("sqlite_1w_backlog", "ingest, same backlog, SQLite, one worker"),
        ("sqlite_2w_backlog", "ingest, same backlog, SQLite, two workers"),
    ):
        b.add(f"city_ingest_{name}", title, rate(name), "readings/s", **results.get(name, {}))
    storm = results.get("storm", {})
    b.add(
        "city_storm",
        f"{storm.get('nodes')} simulated nodes, an hour of history each, at once -> ingest (PostgreSQL)",
        storm.get("seconds_to_all_stored"), "s to all stored", **storm,
    )  # fmt: skip
    b.add("city_cases", "ingest cases (details)", len(results), "cases", cases=results)


def main() -> int:
    """`python -m bench.city [--quick]`: these figures alone, printed."""
    from dataclasses import dataclass, field

    @dataclass
    class Figures:
        quick: bool
        figures: dict = field(default_factory=dict)

        def add(self, key, title, value, unit, target=None, **extra):
            self.figures[key] = {"title": title, "value": value, "unit": unit, "target": target, **extra}

    b = Figures("--quick" in sys.argv)
    fig_city(b)
    print(json.dumps(b.figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
