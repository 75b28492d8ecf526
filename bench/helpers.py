"""Small helpers for the benchmark: node configs, the real daemon as a subprocess, a subscriber, /proc."""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from array import array
from calendar import timegm
from pathlib import Path

from edge_node.broker_connection import BrokerConnection
from edge_node.clock import boot_id, boottime
from edge_node.payloads import ClockView, batch_payload, reading_json
from edge_node.store import NewReading, Store

PREFIX = "city/terrassa/nodes"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BME_UNITS = {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"}
HOST_UNITS = {"cpu_temp_c": "Cel", "load1": "1", "mem_available_mb": "MB", "disk_free_mb": "MB"}


def fs_of(path: str | os.PathLike) -> str:
    """'fstype on mountpoint (source)' for the mount that holds `path`."""
    path, best = os.path.realpath(path), ("?", "", "?")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        mount = left.split()[4]
        fstype, source = right.split()[:2]
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[1]):
            best = (fstype, mount, source)
    return f"{best[0]} on {best[1]} ({best[2]})"


# -- node configs -------------------------------------------------------------------------------


def bme280(name: str, interval_s: float) -> str:
    return f'[sensors.{name}]\ndriver = "bme280"\nbus = "sim"\ninterval_s = {interval_s}\n'


def pi_health(name: str, interval_s: float) -> str:
    return f'[sensors.{name}]\ndriver = "pi_health"\nroot = "sim"\ninterval_s = {interval_s}\n'


def write_config(
    workdir: Path,
    url: str,
    sensors: list[str],
    *,
    node_id: str = "trs-bench",
    sync_interval_s: float = 10,
    backfill_rate: float = 500,
    reconnect_max_s: float = 30,
    heartbeat_s: float = 60,
) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.toml"
    path.write_text(
        f'[node]\nid = "{node_id}"\nsite = "bench"\n\n'
        f'[broker]\nurl = "{url}"\n\n'
        f'[buffer]\npath = "{workdir / "buffer.db"}"\nsync_interval_s = {sync_interval_s}\n\n'
        f"[forward]\nbackfill_rate = {backfill_rate}\nreconnect_max_s = {reconnect_max_s}\n\n"
        f"[health]\nheartbeat_s = {heartbeat_s}\n\n[simulation]\nseed = 7\n\n" + "\n".join(sensors)
    )
    return path


# -- the daemon -----------------------------------------------------------------------------------


class Daemon:
    """`python -m edge_node run -c CONFIG` with $NOTIFY_SOCKET bound here.

    Its log, its simulators' scratch files and its RUNTIME_DIRECTORY (status.json) go to
    `scratch` (tmpfs), so that the daemon's `write_bytes` counts the buffer alone, as on a Pi
    under the shipped unit (log to journald, RuntimeDirectory= in /run).
    """

    def __init__(self, config: Path, scratch: Path):
        scratch.mkdir(parents=True, exist_ok=True)
        self.notify_path = scratch / "notify.sock"
        self.notify_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.ready_at: float | None = None
        self._ready = threading.Event()
        self.log_path = scratch / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "TMPDIR": str(scratch)}
        env["RUNTIME_DIRECTORY"] = str(scratch)
        with open(self.log_path, "wb") as log:
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_node", "run", "-c", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
            )
        self.pid = self.proc.pid
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if b"READY=1" in data.split(b"\n") and self.ready_at is None:
                self.ready_at = time.monotonic()
                self._ready.set()

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from spawn to READY=1."""
        if not self._ready.wait(timeout):
            raise RuntimeError(f"daemon sent no READY=1 within {timeout}s; log:\n{self.log_tail()}")
        return self.ready_at - self.spawned_at

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}; log:\n{self.log_tail()}")

    def status_kb(self, key: str) -> int:
        return proc_status_kb(self.pid, key)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def write_bytes(self) -> int:
        return proc_io(self.pid)["write_bytes"]

    def stop(self, timeout: float = 15) -> None:
        terminate(self.proc, timeout)
        self.sock.close()
        self.notify_path.unlink(missing_ok=True)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, as systemd stops a service; SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_io(pid: int) -> dict[str, int]:
    return {
        k: int(v) for k, v in (line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    }


# -- the subscriber -------------------------------------------------------------------------------

SEQ_RE = re.compile(rb'"seq":(\d+)')
TS_RE = re.compile(rb'"seq":(\d+),"ts":"([0-9T:.Z-]+)"')


_ids = itertools.count()


class Subscriber:
    """Records every reading message of `node` at the broker, with its wall-clock arrival time.

    QoS 0, so that the bench's own acknowledgements cost nothing (the broker never drops QoS 0
    to an online client here: max_queued_messages/max_inflight_messages are unlimited); whether
    anything was missed is checked from the seqs. `connect()` retries every 2 ms, so it can
    be started before the broker and catch it the moment it listens.
    """

    def __init__(self, port: int, node: str = "trs-bench"):
        self.port = port
        self.topic = f"{PREFIX}/{node}/reading/#"
        self.messages: list[tuple[float, bytes]] = []  # (arrival wall time, payload)
        self.subscribed = threading.Event()
        broker = BrokerConnection.of_tool(f"mqtt://127.0.0.1:{port}", protocol="3.1.1")
        self.client = broker.paho_client(f"bench-sub-{os.getpid()}-{next(_ids)}")
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=0)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((time.time(), m.payload))
        self._stop = threading.Event()

    def connect(self, timeout: float = 30) -> Subscriber:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            try:
                # A long keepalive: this client never sends, so paho pings every `keepalive` s, and
                # each ping stalled the readings arriving with it by ~40 ms (seen as a p99 outlier).
                self.client.connect("127.0.0.1", self.port, keepalive=900)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        self.client.loop_start()
        return self

    def connect_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.connect, daemon=True)
        thread.start()
        return thread

    def wait_subscribed(self, timeout: float = 10) -> None:
        if not self.subscribed.wait(timeout):
            raise RuntimeError("bench subscriber did not get its SUBACK")

    def close(self) -> None:
        self._stop.set()
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SeqTracker:
    """Follows a drain at the subscriber, from the seqs and `ts` of what arrives.

    The backlog is 1..`prefilled` when `t0` is None; else every reading sampled before `t0` (the
    broker's start), i.e. seqs 1..M where M + 1 is the lowest seq sampled at or after `t0` (the
    store numbers readings in sampling order). This needs no look into the daemon's buffer.
    """

    def __init__(self, sub: Subscriber, prefilled: int, t0: float | None = None):
        self.sub, self.prefilled, self.t0 = sub, prefilled, t0
        self.cap = prefilled + 10_000  # room for readings sampled while the broker was down
        self.arrived = array("d", bytes(8 * (self.cap + 1)))  # arrival time per seq; 0: not yet
        self.first_live = None if t0 is not None else prefilled + 1
        self.first_at: float | None = None  # arrival of the first reading, backlog or live
        self.done_at: float | None = None  # arrival of the backlog's last reading to arrive
        self.max_seen = 0
        self._prefix = 0  # every seq up to here has arrived
        self._i = 0

    @property
    def backlog(self) -> int | None:
        return None if self.first_live is None else self.first_live - 1

    def poll(self) -> bool:
        """Take in what arrived since the last call; True once the whole backlog has."""
        msgs = self.sub.messages
        n = len(msgs)
        for t, payload in msgs[self._i : n]:
            if self.first_at is None:
                self.first_at = t
            for raw_seq, raw_ts in TS_RE.findall(payload):
                seq = int(raw_seq)
                self.max_seen = max(self.max_seen, seq)
                if self.t0 is not None and seq > self.prefilled and seq < (self.first_live or seq + 1):
                    if ts_epoch(raw_ts) >= self.t0:
                        self.first_live = seq
                if seq <= self.cap and not self.arrived[seq]:
                    self.arrived[seq] = t
        self._i = n
        if self.done_at is None and self.backlog is not None:
            while self._prefix < self.backlog and self.arrived[self._prefix + 1]:
                self._prefix += 1
            if self._prefix >= self.backlog:
                self.done_at = max(self.arrived[1 : self.backlog + 1], default=self.first_at)
        return self.done_at is not None

    @property
    def delivered(self) -> int:
        top = self.backlog if self.backlog is not None else self.prefilled
        return sum(1 for t in self.arrived[1 : top + 1] if t)

    @property
    def live_missed(self) -> int:
        """Live readings that never arrived (e.g. sent before the subscription took)."""
        if self.backlog is None or self.t0 is None:
            return 0
        top = min(self.max_seen, self.cap)
        return sum(1 for t in self.arrived[self.first_live : top + 1] if not t)


def ts_epoch(ts: bytes) -> float:
    """'2024-05-01T10:00:00.123Z' -> seconds since the epoch."""
    return timegm(time.strptime(ts[:19].decode(), "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000


def latencies_ms(messages: list[tuple[float, bytes]], after: float) -> list[float]:
    """Arrival minus `ts` of each live reading that arrived after wall time `after`."""
    out = []
    for t, payload in messages:
        if t >= after and b'"backfill":false' in payload:
            out.extend((t - ts_epoch(ts)) * 1000 for _, ts in TS_RE.findall(payload))
    return out


# -- a backlog ----------------------------------------------------------------------------------------


def fake_readings(
    start: int, stop: int, n: int, seed: int, *, interleaved: bool = True, period_s: float = 5.0
) -> list[NewReading]:
    """Readings `start`..`stop` of `n`, oldest first: two sensors interleaved (bme280, host, bme280, ...)
    as a node with both sampling stores them, or (`interleaved=False`) the bme280 alone."""
    rng = random.Random(seed * 1_000_003 + start)
    now, mono = time.time(), boottime()
    boot = boot_id()
    out = []
    for i in range(start, stop):
        age = (n - i) * period_s / 2
        if i % 2 == 0 or not interleaved:
            name = "bme280"
            values = {
                "temperature": round(rng.uniform(5, 35), 2),
                "humidity": round(rng.uniform(20, 95), 1),
                "pressure": round(rng.uniform(990, 1030), 2),
            }
        else:
            name = "host"
            values = {
                "cpu_temp_c": round(rng.uniform(40, 70), 1),
                "load1": round(rng.uniform(0, 2), 2),
                "mem_available_mb": float(rng.randint(2000, 3500)),
                "disk_free_mb": float(rng.randint(20000, 21000)),
            }
        out.append(NewReading(name, values, (), now - age, mono - age, boot, True))
    return out


def prefill(db_path: Path, n: int, *, seed: int = 1, interleaved: bool = True, chunk: int = 10_000) -> None:
    """Fill a buffer with `n` readings through the project's own Store, as a node offline for a while."""
    store = Store(db_path, max_rows=10_000_000, max_bytes=10**10, sync_interval_s=10)
    store.open()
    try:
        store.set_units("bme280", BME_UNITS)
        store.set_units("host", HOST_UNITS)
        for start in range(0, n, chunk):
            store.append(fake_readings(start, min(start + chunk, n), n, seed, interleaved=interleaved))
    finally:
        store.close()


def baseline_messages(db_path: Path, node: str, batch: int) -> list[tuple[str, bytes]]:
    """The buffer's rows as the forwarder would publish them in batches of up to `batch` readings of one
    sensor (the project's own payload code, so the bytes are the same), oldest batch first."""
    store = Store(db_path, max_rows=10_000_000, max_bytes=10**10, sync_interval_s=10)
    store.open()
    try:
        rows = store.fetch(0, limit=10**9)
        clock = ClockView(boot_id(), True, time.time(), boottime())
        runs: dict[str, list] = {}
        batches = []
        for row in rows:
            run = runs.setdefault(row.sensor, [])
            run.append(row)
            if len(run) == batch:
                batches.append(run)
                runs[row.sensor] = []
        batches.extend(run for run in runs.values() if run)
        batches.sort(key=lambda run: run[0].seq)
        root = f"{PREFIX}/{node}"
        return [
            (
                f"{root}/reading/{run[0].sensor}",
                batch_payload(
                    node,
                    run[0].sensor,
                    store.units_json(run[0].sensor),
                    True,
                    [reading_json(r, clock) for r in run],
                ),
            )
            for run in batches
        ]
    finally:
        store.close()


def sensor_read_ms(config_path: Path, reads: int = 300) -> float:
    """CPU ms of one `read()` of the config's first sensor (driver + simulator), in this thread."""
    from edge_node.config import load_config
    from edge_node.sensors import build_drivers
    from sensors.simulation import SimulatedNode

    config = load_config(config_path)
    sim = SimulatedNode(seed=config.simulation.seed)
    try:
        driver = next(iter(build_drivers(config, sim).values()))
        driver.open()
        for _ in range(20):
            driver.read()
        t = time.thread_time()
        for _ in range(reads):
            driver.read()
        return 1000 * (time.thread_time() - t) / reads
    finally:
        sim.close()


# -- where a daemon's writes and fsyncs go ----------------------------------------------------------

STRACE_LINE = re.compile(r"^\d+\s+(\w+)\((\d+)<([^>]*)>(.*)$")
STRACE_SIZE = re.compile(r", (\d+)(?:, (\d+))?\) = (\d+)$")


class CardTrace:
    """strace attached to a running daemon: every write and fsync it makes to files under `under`,
    per file, with the 4 KiB pages each write dirties (a page counts again after an fsync of its
    file cleaned it: what a kernel with 4 KiB page-cache pages accounts in write_bytes and then
    writes to the card). `None` figures when strace is not installed."""

    def __init__(self, pid: int, under: Path, out: Path):
        self.under, self.out = str(under), out
        self.proc = None
        if shutil.which("strace"):
            self.proc = subprocess.Popen(
                ["strace", "-f", "-qq", "-y", "-o", str(out), "-p", str(pid),
                 "-e", "trace=write,pwrite64,pwritev,pwritev2,writev,fsync,fdatasync,sync_file_range,syncfs"],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # attached to every thread before the window starts

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        files: dict[str, dict] = {}
        dirty: dict[str, set] = {}
        for line in self.out.read_text(errors="replace").splitlines():
            m = STRACE_LINE.match(line)
            if not m or not m.group(3).startswith(self.under):
                continue
            call, path, rest = m.group(1), m.group(3), m.group(4)
            name = re.sub(r"\.tmp$|\.[a-z0-9]{8}$", "", Path(path).name)
            f = files.setdefault(name, {"writes": 0, "bytes": 0, "pages_4k": 0, "fsyncs": 0})
            pages = dirty.setdefault(path, set())
            if call in ("fsync", "fdatasync", "sync_file_range", "syncfs"):
                f["fsyncs"] += 1
                pages.clear()
                continue
            size = STRACE_SIZE.search(rest)
            if not size:
                continue
            n = int(size.group(3))
            offset = int(size.group(2)) if call == "pwrite64" and size.group(2) else 0
            f["writes"] += 1
            f["bytes"] += n
            for page in range(offset // 4096, (offset + max(n, 1) - 1) // 4096 + 1):
                if page not in pages:
                    pages.add(page)
                    f["pages_4k"] += 1
        return files
