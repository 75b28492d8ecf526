"""Fleet figures of issue 6: `edge-node simulate` (N real daemons in one process) against a LocalBroker.

The simulator runs as a subprocess (`python -m edge_node simulate ... --report-every 1`): its CPU and
RSS come from /proc/<pid>, its stored/sent/backlog totals from the lines it prints to stderr each
second. Mosquitto's CPU comes from /proc/<its pid>. Readings are counted at the broker by a paho
subscriber (QoS 1) on every node's reading topics, per node and by seq (readings inside a batch
each carry a "seq"), so that a reading delivered twice counts once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from operations.mosquitto import LocalBroker
from operations.simulate import node_id

from .helpers import PREFIX, SEQ_RE, Subscriber, prefill, proc_cpu_s, proc_status_kb, terminate

TOTALS_RE = re.compile(
    r"nodes (\d+)/(\d+) running, (\d+) connected.*stored (\d+), sent (\d+), backlog (\d+)(; FAILED (\d+))?"
)
SYS_RECEIVED = "$SYS/broker/messages/received"
SYS_DROPPED = "$SYS/broker/publish/messages/dropped"


class FleetSubscriber(Subscriber):
    """Every reading of every node, by (node, seq), plus the broker's $SYS counters with their time.

    connect() retries every 2 ms, so a subscriber started before the broker catches it the moment
    it listens, ahead of the nodes' reconnects (they back off with jitter).
    """

    def __init__(self, port: int, seen: dict[str, set[int]] | None = None):
        super().__init__(port)
        self.seen: dict[str, set[int]] = {} if seen is None else seen  # node -> seqs delivered
        self.inbox: list[tuple[float, str, bytes]] = []
        self.sys: dict[str, list[tuple[float, int]]] = {SYS_RECEIVED: [], SYS_DROPPED: []}
        self.arrivals: list[tuple[float, int]] = []  # (arrival, readings in the message)
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"{PREFIX}/+/reading/#", 1), (SYS_RECEIVED, 0), (SYS_DROPPED, 0)]
        )
        self.client.on_message = self._on_message
        self._i = 0

    def _on_message(self, client, userdata, msg):
        now = time.time()
        if msg.topic in self.sys:
            try:
                self.sys[msg.topic].append((now, int(msg.payload)))
            except ValueError:
                pass
            return
        self.inbox.append((now, msg.topic, msg.payload))

    def poll(self) -> int:
        """Take in what arrived since the last call; the number of distinct readings delivered."""
        inbox = self.inbox
        n = len(inbox)
        for t, topic, payload in inbox[self._i : n]:
            node = topic[len(PREFIX) + 1 :].split("/", 1)[0]
            seqs = self.seen.setdefault(node, set())
            found = SEQ_RE.findall(payload)
            seqs.update(int(s) for s in found)
            self.arrivals.append((t, len(found)))
        self._i = n
        return self.delivered

    @property
    def delivered(self) -> int:
        return sum(len(s) for s in self.seen.values())

    def prefix_total(self) -> int:
        """Sum over nodes of the length of the run of seqs 1..k all delivered."""
        total = 0
        for seqs in self.seen.values():
            k = 0
            while k + 1 in seqs:
                k += 1
            total += k
        return total

    def last_sys(self, topic: str) -> int | None:
        values = self.sys[topic]
        return values[-1][1] if values else None

    def peak_rate(self, topic: str = SYS_RECEIVED, after: float = 0.0) -> float | None:
        """Highest per-second increase of a $SYS counter sampled after wall time `after`."""
        values = [(t, v) for t, v in self.sys[topic] if t >= after]
        rates = [
            (v2 - v1) / (t2 - t1)
            for (t1, v1), (t2, v2) in zip(values, values[1:], strict=False)
            if t2 - t1 > 0.2
        ]
        return max(rates, default=None)

    def peak_readings_per_s(self, after: float = 0.0) -> int:
        by_s: dict[int, int] = {}
        for t, k in self.arrivals:
            if t >= after:
                by_s[int(t)] = by_s.get(int(t), 0) + k
        return max(by_s.values(), default=0)


class Simulator:
    """`python -m edge_node simulate` as a subprocess, its totals followed from its stderr."""

    def __init__(
        self,
        broker: LocalBroker,
        workdir: Path,
        nodes: int,
        interval: float,
        limit_s: float,
        backfill_rate: float = 500,
        backlog_per_node: int = 0,
    ):
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        for i in range(1, nodes + 1):  # a backlog already on each card, as after a long outage
            if backlog_per_node:
                prefill(workdir / node_id("sim", i) / "buffer.db", backlog_per_node, seed=i)
        self.nodes = nodes
        self.log: list[str] = []
        self.totals: list[tuple[float, dict]] = []  # (monotonic, totals line)
        self.stopped: dict | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_node", "simulate", "--nodes", str(nodes), "--broker", broker.url]
            + ["--interval", str(interval), "--heartbeat", "60", "--report-every", "1"]
            + ["--workdir", str(workdir), "--seconds", str(limit_s), "--backfill-rate", str(backfill_rate)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.log.append(line)
            m = TOTALS_RE.search(line)
            if not m:
                continue
            t = {
                "running": int(m[1]),
                "nodes": int(m[2]),
                "connected": int(m[3]),
                "stored": int(m[4]),
                "sent": int(m[5]),
                "backlog": int(m[6]),
                "failed": int(m[8] or 0),
            }
            if line.startswith("stopped:"):
                self.stopped = t
            else:
                self.totals.append((time.monotonic(), t))

    @property
    def last(self) -> dict:
        return self.totals[-1][1] if self.totals else {}

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log[-15:])
            raise RuntimeError(f"simulate exited with {self.proc.returncode}:\n{tail}")

    def wait_running(self, timeout: float) -> float:
        """Seconds until every node runs and is connected."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            last = self.last
            if last and last["running"] == self.nodes and last["connected"] == self.nodes:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"simulate: not all {self.nodes} nodes connected in {timeout} s: {self.last}")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def rss_mb(self, key: str = "VmRSS") -> float:
        return proc_status_kb(self.pid, key) / 1024

    def stop(self, timeout: float = 30) -> dict | None:
        terminate(self.proc, timeout)
        self._reader.join(5)
        return self.stopped


def _window(b, broker: LocalBroker, sim: Simulator, sub: FleetSubscriber, seconds: float) -> dict:
    """CPU of both processes, the simulator's RSS and its backlog over `seconds` of steady state."""
    c_sim, c_brk, t0 = sim.cpu_s(), proc_cpu_s(broker.proc.pid), time.monotonic()
    backlog = [sim.last["backlog"]]
    rss_peak = 0.0
    while (left := t0 + seconds - time.monotonic()) > 0:
        sim.check_alive()
        time.sleep(min(left, 1.0))
        backlog.append(sim.last["backlog"])
        rss_peak = max(rss_peak, sim.rss_mb())
        sub.poll()
    dt = time.monotonic() - t0
    return {
        "sim_cpu_pct": 100 * (sim.cpu_s() - c_sim) / dt,
        "broker_cpu_pct": 100 * (proc_cpu_s(broker.proc.pid) - c_brk) / dt,
        "sim_rss_mb": sim.rss_mb(),
        "sim_rss_peak_mb": max(rss_peak, sim.rss_mb("VmHWM")),
        "backlog_mid": backlog[len(backlog) // 2],
        "backlog_end": backlog[-1],
        "backlog_max": max(backlog),
        "window_s": round(dt, 1),
    }


def _run_fleet(b, broker: LocalBroker, nodes: int, seconds: float, name: str) -> dict:
    """N nodes at interval 10 s for `seconds` of steady state; readings delivered vs stored."""
    sub = FleetSubscriber(broker.port).connect()
    sim = None
    try:
        sub.wait_subscribed()
        dropped0 = sub.last_sys(SYS_DROPPED)
        sim = Simulator(broker, b.work / name, nodes, 10.0, seconds + 240)
        start_s = sim.wait_running(120)
        time.sleep(2)
        out = _window(b, broker, sim, sub, seconds)
        stopped = sim.stop()
        time.sleep(1.5)  # what was in flight at the stop
        delivered = sub.poll()
        stored = (stopped or sim.last)["stored"]
        elapsed = seconds + start_s + 2
        out.update(
            nodes=nodes,
            start_s=round(start_s, 1),
            stored=stored,
            delivered=delivered,
            delivered_pct=100 * delivered / stored if stored else None,
            nominal_readings=round(nodes * 2 * elapsed / 10),
            failed=(stopped or sim.last).get("failed"),
            dropped_before=dropped0,
            dropped_after=sub.last_sys(SYS_DROPPED),
        )
        return out
    finally:
        if sim is not None:
            sim.stop()
        sub.close()


def _rounded(d: dict) -> dict:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


HOUR_BACKLOG = 720  # one hour of a node at the nominal rate: bme280 + host, every 10 s


def _storm(b, broker: LocalBroker, nodes: int, backlog_per_node: int, backfill_rate: float) -> dict:
    """N nodes, each with `backlog_per_node` readings on its card, start while the broker is down
    (a city-wide outage); then the broker comes back: time until every backlog has arrived."""
    seen: dict[str, set[int]] = {}
    broker.stop()
    sim = sub = None
    try:
        t = time.monotonic()
        sim = Simulator(broker, b.work / "storm", nodes, 10.0, 600, backfill_rate, backlog_per_node)
        prefill_s = time.monotonic() - t
        t = time.monotonic()
        while not (sim.last and sim.last["running"] == nodes):
            sim.check_alive()
            if time.monotonic() - t > 120:
                raise RuntimeError(f"simulate: not all {nodes} nodes running: {sim.last}")
            time.sleep(0.2)
        time.sleep(12)  # past the fresh-boot spread: every node is in its reconnect backoff
        sub = FleetSubscriber(broker.port, seen)
        sub.connect_in_background()
        broker.start()
        restart_mono, restart_wall = time.monotonic(), time.time()
        time.sleep(0.3)
        at_restart = sim.last
        sub.wait_subscribed()
        c_brk = proc_cpu_s(broker.proc.pid)
        # Done when every reading stored before the restart has arrived: per node, the run of seqs
        # 1..k delivered covers what it stored then (the sum across nodes, since the per-node split of
        # the stored total is not printed; the store forwards oldest first) and the simulator's backlog
        # is back to what live sampling alone leaves.
        target = at_restart["stored"]
        done_at = None
        while time.monotonic() - restart_mono < 300:
            sim.check_alive()
            time.sleep(0.25)
            sub.poll()
            if sub.prefix_total() >= target and sim.last["backlog"] <= 2 * nodes:
                done_at = time.monotonic()
                break
        drain_s = None if done_at is None else done_at - restart_mono
        cpu_window = time.monotonic() - restart_mono
        broker_cpu = 100 * (proc_cpu_s(broker.proc.pid) - c_brk) / cpu_window
        time.sleep(1.5)  # one more $SYS sample
        sub.poll()
        stopped = sim.stop()
        time.sleep(1.0)
        sub.poll()
        final = stopped or sim.last
        return {
            "nodes": nodes,
            "backlog_per_node_prefilled": backlog_per_node,
            "prefill_s": prefill_s,
            "backlog_at_restart": at_restart["backlog"],
            "stored_at_restart": target,
            "drain_s": drain_s,
            "delivered_of_stored_at_restart": sub.prefix_total(),
            "peak_broker_msgs_received_per_s": sub.peak_rate(SYS_RECEIVED, restart_wall),
            "peak_readings_per_s_at_subscriber": sub.peak_readings_per_s(restart_wall),
            "broker_cpu_pct_draining": broker_cpu,
            "stored_final": final["stored"],
            "delivered_final": sub.delivered,
            "dropped_after": sub.last_sys(SYS_DROPPED),
            "backfill_rate": backfill_rate,
            "reconnect_max_s": 10,
        }
    finally:
        if sim is not None:
            sim.stop()
        if sub is not None:
            sub.close()
        if broker.proc is None:
            broker.start()


def fig_fleet(b) -> None:
    quick = b.quick
    broker = LocalBroker(workdir=str(b.scratch / "fleet-broker")).start()
    try:
        # 1. 300 nodes (quick: 50) at the nominal rate.
        n1, w1 = (50, 10) if quick else (300, 30)
        r = _run_fleet(b, broker, n1, w1, "fleet-nominal")
        b.add(
            "fleet_broker_cpu_pct",
            f"Fleet {n1} nodes (bme280+host, 10 s): broker CPU",
            r["broker_cpu_pct"],
            "% core",
        )
        b.add("fleet_sim_cpu_pct", f"Fleet {n1} nodes: simulator CPU", r["sim_cpu_pct"], "% core")
        b.add("fleet_sim_rss_mb", f"Fleet {n1} nodes: simulator RSS", r["sim_rss_mb"], "MB", **_rounded(r))
        b.add(
            "fleet_delivered_pct",
            f"Fleet {n1} nodes: readings delivered of stored ({r['delivered']}/{r['stored']})",
            r["delivered_pct"],
            "%",
            (">=", 100.0),
        )
        b.add(
            "fleet_broker_dropped",
            "Fleet: broker publish/messages/dropped (after - before)",
            None if r["dropped_after"] is None else r["dropped_after"] - (r["dropped_before"] or 0),
            "msgs",
            ("<=", 0),
        )

        # 2. The largest fleet sustained at interval 10 s.
        steps = (50, 100) if quick else (300, 600, 1000)
        w2 = 10 if quick else 20
        largest, runs = None, {}
        for n in steps:
            s = _run_fleet(b, broker, n, w2, f"fleet-{n}")
            grew = s["backlog_end"] > s["backlog_mid"] + max(5, n // 20)
            s["sustained"] = bool(s["delivered_pct"] and s["delivered_pct"] >= 95 and not grew)
            runs[str(n)] = _rounded(s)
            if not s["sustained"]:
                break
            largest = n
        b.add(
            "fleet_largest_sustained",
            f"Largest fleet sustained, 10 s interval (tried {', '.join(map(str, steps))})",
            largest,
            "nodes",
            runs=runs,
        )

        # 3. Reconnect storm after a one-hour city-wide outage, each node's drain capped at 500
        # readings/s (the default) and uncapped.
        n3 = 20 if quick else n1
        for rate, tag in ((500, ""), (0, "_uncapped")):
            st = _storm(b, broker, n3, HOUR_BACKLOG, rate)
            label = f"backfill_rate {rate}" if rate else "no backfill cap"
            b.add(
                f"fleet_storm_drain_s{tag}",
                f"Reconnect storm: {n3} nodes with 1 h of backlog each, {label}: broker start to delivered",
                st["drain_s"],
                "s",
                **_rounded(st),
            )
            b.add(
                f"fleet_storm_peak_msgs_s{tag}",
                f"Reconnect storm, {label}: peak broker messages received",
                st["peak_broker_msgs_received_per_s"],
                "msg/s",
            )
            b.add(
                f"fleet_storm_dropped{tag}",
                f"Reconnect storm, {label}: broker publish/messages/dropped after restart",
                st["dropped_after"],
                "msgs",
                ("<=", 0),
            )
    finally:
        broker.close()
