"""`edge-node fleet`: the operator's view of every node under a topic prefix (DESIGN §4, §6).

Subscribes to `{prefix}/+/status`, `{prefix}/+/heartbeat` (both retained, so they arrive at
once) and `{prefix}/+/reading/+`, and shows one row per node: state, last seen, backlog and
oldest unsent age, dropped, sequence gaps, sensor faults and stale sensors, host vitals, clock,
and the reasons the node **needs a visit**.

Without `--watch` it listens `--listen` seconds (default 3), prints one table (worst first) or
`--json` (a list of per-node objects) and exits 1 when any node needs a visit, else 0 (for cron
and monitoring); 2 on bad usage; 1 with one line on stderr when the broker cannot be reached.

`--watch` runs until Ctrl-C (same exit codes, from the rows at exit). On a terminal it keeps a
live table (rich), refreshed every second: the same rows and columns, the state coloured (red:
needs a visit; yellow: offline or unknown, not yet a visit; green: fine), the time and counts
around it and, when the fleet is taller than the terminal, only the worst rows that fit and how
many more are not shown. When stdout is not a terminal (a pipe, a file, a unit serving
`--prometheus`) it writes nothing while running and the plain table once, on exit: a log gets
one table, not one a second and no escape codes; `--watch --json` streams one JSON line a
second instead. rich is imported only on this path: `import operations.fleet` (and so `edge-node
run`) never loads it.

`--prometheus PORT` serves the same figures on `http://127.0.0.1:PORT/metrics` (text exposition
0.0.4) for as long as the command runs (use it with `--watch`):

| metric | labels | meaning |
|---|---|---|
| `edge_node_up` | node | 1 online, 0 offline/silent/unknown |
| `edge_node_last_seen_age_seconds` | node | seconds since the node was last heard (absent if never) |
| `edge_node_backlog` | node | readings buffered, not yet acknowledged (last heartbeat) |
| `edge_node_oldest_unsent_age_seconds` | node | age of the oldest buffered reading |
| `edge_node_dropped_total` | node | readings dropped for the life of the buffer |
| `edge_node_seq_gaps` | node | missing seqs seen in the readings (see below) |
| `edge_node_sensor_fault` | node, sensor | 1 when the sensor reports `fault` |
| `edge_node_sensor_stale` | node, sensor | 1 when its `last_ok` is too old |
| `edge_node_cpu_temp_celsius` | node | CPU temperature |
| `edge_node_disk_free_megabytes` | node | free space on the buffer's filesystem |
| `edge_node_under_voltage` | node | 1 under-voltage now or since boot |
| `edge_node_clock_synced` | node | 1 when the node's clock is synchronised |
| `edge_node_malformed_total` | node | messages refused plus fields dropped from it |
| `edge_node_sensors_over_cap` | node | sensors in its last heartbeat beyond the cap of 64, not tracked |
| `edge_node_needs_visit` | node | 1 when any rule below fires |
| `edge_node_fleet_ignored_messages_total` | reason | `over_node_cap` or `unattributed` (below) |

Needs-a-visit rules (thresholds are `Rules` fields; the CLI exposes the time ones for tests):

| rule | fires when | default |
|---|---|---|
| offline | offline (see State) and not heard for `offline_after_s` (never heard: at once) | 900 s |
| sensor fault | a heartbeat sensor has `state: "fault"` (named, with its error) | |
| sensor stale | a sensor's `last_ok` is older than `stale_after_s` by the heartbeat's own `ts` | 900 s |
| backlog growing | backlog rose > `backlog_growth` across the window's heartbeats | 100 |
| backlog old | `oldest_unsent_age_s` > `oldest_unsent_max_s` | 3600 s |
| disk | `host.disk_free_mb` < `disk_min_mb` | 100 MB |
| under-voltage | `host.throttled` under-voltage now or since boot (flags or raw bits 0/16) | |
| hot | `host.cpu_temp_c` > `cpu_temp_max_c` | 80 °C |
| laser | a sensor's `laser_life_used` (SDS011) > `laser_life_max` | 0.9 |
| buffer | heartbeat `buffer.state` is `fault` (the buffer cannot be written) | |
| refused | heartbeat `refused`: the broker refuses its readings (a PUBACK >= 0x80, MQTT 5) | |
| clock | `host.clock_synced` false while `uptime_s` > `clock_grace_s` | 3600 s |

A node whose readings are refused sends a heartbeat at once that names the refusal, and the
rule stays with that heartbeat when the node then falls silent. Where the broker refuses the
heartbeat too (the node's whole ACL revoked) the view sees only the silence; the node's
`edge-node status` and log still say why.

State: `offline (lost|shutdown)` from the retained status (Last Will or clean shutdown);
`offline (silent)` when the last heartbeat is older than 3 observed heartbeat intervals (two live
heartbeats seen), else than `silent_after_s` (900 s); `online` when the status says so; else
`unknown` (heard only through readings or malformed messages). Last seen is the newest of the
last heartbeat's `ts` (the node's clock) and the arrival time of any live (not retained) message.

Sequence gaps: a node's `seq` is contiguous across all its sensors, so over the listening window
(watch: since start) the gaps are the seqs missing between the lowest and highest seen, minus the
node's current backlog (those may still be in its buffer, to arrive as backfill); duplicates and
backfill are fine. A node already draining when the view started can show a few transient gaps.
The seqs are kept as runs (`SeqRuns`): past 256 holes per node the oldest run is forgotten and
its hole counted for good. Backlog growth is judged over the listening window (watch: the last
15 minutes, at most 64 samples).

Everything a node sends is untrusted data, read through `edge_node.untrusted`: each field is
checked (type, finite, range, length, characters) and a bad one dropped and counted in the
node's `malformed`, the rest of its row kept; every string is reduced to printable text of
bounded length before it reaches the terminal, `--json` (strict JSON, never `NaN`) or a
Prometheus label. A message that cannot be read at all is counted against its node, or, when
its node has no row yet (rows are made only by a readable message from a valid id), as
`unattributed`. At most `--max-nodes` (2,000) nodes are tracked; messages from more are
counted (`over_node_cap`), shown in the summary line, on stderr with `--json`, and in
`/metrics`. No exception from a message reaches the loop serving the table, `--json` or
`/metrics`.
"""

from __future__ import annotations

import argparse
import bisect
import json
import signal
import ssl
import sys
import threading
import time
import uuid
from array import array
from collections import deque
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edge_node.broker_connection import BrokerConnection
from edge_node.untrusted import (
    Heartbeat,
    Malformed,
    Status,
    is_node_id,
    parse_heartbeat,
    parse_reading,
    parse_status,
)

DEFAULT_PREFIX = "city/terrassa/nodes"
HEARTBEATS_FOR_SILENT = 3
WATCH_WINDOW_S = 900.0  # --watch: backlog growth is judged over the last 15 minutes
DEFAULT_MAX_NODES = 2000  # a 1,000-node city with room to grow; --max-nodes
MAX_SEQ_RANGES = 256  # per node: runs of seqs seen; more fragments than that forget the oldest
MAX_BACKLOG_SAMPLES = 64  # per node, within the window


class Rules:
    """Thresholds of the needs-a-visit rules (module docstring)."""

    def __init__(
        self,
        *,
        offline_after_s: float = 900.0,
        silent_after_s: float = 900.0,
        stale_after_s: float = 900.0,
        backlog_growth: int = 100,
        oldest_unsent_max_s: float = 3600.0,
        disk_min_mb: float = 100.0,
        cpu_temp_max_c: float = 80.0,
        laser_life_max: float = 0.9,
        clock_grace_s: float = 3600.0,
    ):
        self.offline_after_s = offline_after_s
        self.silent_after_s = silent_after_s
        self.stale_after_s = stale_after_s
        self.backlog_growth = backlog_growth
        self.oldest_unsent_max_s = oldest_unsent_max_s
        self.disk_min_mb = disk_min_mb
        self.cpu_temp_max_c = cpu_temp_max_c
        self.laser_life_max = laser_life_max
        self.clock_grace_s = clock_grace_s


def _under_voltage(throttled: dict | None) -> bool:
    if not throttled:
        return False
    if throttled.get("under_voltage_now") is True or throttled.get("under_voltage_since_boot") is True:
        return True
    return bool(throttled.get("raw", 0) & 0x10001)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


# -- the model ----------------------------------------------------------------------------------


class SeqRuns:
    """The seqs seen from one node as sorted, disjoint runs `[first, last]`, so memory follows
    the number of holes, not of readings (a healthy node is one run). Beyond `max_runs` the
    oldest run is forgotten and the hole above it counted for good in `forgotten_gaps`; seqs
    below `floor` are ignored from then on."""

    __slots__ = ("firsts", "lasts", "floor", "forgotten_gaps", "max_runs")

    def __init__(self, max_runs: int = MAX_SEQ_RANGES):
        self.firsts = array("q")  # 8 bytes a seq, not a Python int's 36
        self.lasts = array("q")
        self.floor = 0
        self.forgotten_gaps = 0
        self.max_runs = max_runs

    def __bool__(self) -> bool:
        return bool(self.firsts)

    def add(self, seq: int) -> None:
        if seq < self.floor:
            return
        firsts, lasts = self.firsts, self.lasts
        i = bisect.bisect_right(firsts, seq)  # runs[:i] start at or below seq
        if i and lasts[i - 1] >= seq:
            return  # a duplicate
        joins_left = i and lasts[i - 1] == seq - 1
        joins_right = i < len(firsts) and firsts[i] == seq + 1
        if joins_left and joins_right:
            lasts[i - 1] = lasts[i]
            del firsts[i], lasts[i]
        elif joins_left:
            lasts[i - 1] = seq
        elif joins_right:
            firsts[i] = seq
        else:
            firsts.insert(i, seq)
            lasts.insert(i, seq)
            if len(firsts) > self.max_runs:
                self.forgotten_gaps += firsts[1] - lasts[0] - 1
                self.floor = firsts[1]
                del firsts[0], lasts[0]

    def seen(self) -> int:
        return sum(last - first + 1 for first, last in zip(self.firsts, self.lasts, strict=True))

    def missing(self) -> int:
        """Seqs missing between the lowest and highest seen, forgotten holes included."""
        if not self.firsts:
            return 0
        return self.forgotten_gaps + (self.lasts[-1] - self.firsts[0] + 1) - self.seen()


class Node:
    __slots__ = (
        "id",
        "status",
        "heartbeat",
        "hb_arrivals",
        "backlog_samples",
        "seqs",
        "last_live",
        "malformed",
    )

    def __init__(self, node_id: str):
        self.id = node_id
        self.status: Status | None = None
        self.heartbeat: Heartbeat | None = None
        self.hb_arrivals: deque[float] = deque(maxlen=5)  # arrivals of live heartbeats (the interval)
        self.backlog_samples: deque[tuple[float, int]] = deque(maxlen=MAX_BACKLOG_SAMPLES)
        self.seqs = SeqRuns()
        self.last_live: float | None = None  # arrival of the newest non-retained message
        self.malformed = 0  # messages refused plus fields dropped


class Fleet:
    """Everything heard under the prefix; thread-safe (`ingest` from the MQTT thread).

    Bounded: at most `max_nodes` nodes are tracked (messages from more are counted in
    `over_node_cap`), each in bounded state (`SeqRuns`, a window of backlog samples, the
    caps of `edge_node.untrusted`). Messages that name no valid node, or that are refused before
    their node was ever heard properly, are counted in `unattributed` rather than making a row.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        rules: Rules | None = None,
        window_s: float = 60.0,
        max_nodes: int = DEFAULT_MAX_NODES,
        inventory: dict | None = None,
    ):
        self.prefix = prefix.rstrip("/")
        self.inventory = dict(inventory or {})  # node -> operations.inventory.InventoryNode
        self.rules = rules or Rules()
        self.window_s = window_s
        self.max_nodes = max_nodes
        self.nodes: dict[str, Node] = {}
        self.unattributed = 0  # messages refused whose node has no row
        self.over_node_cap = 0  # valid messages from nodes beyond max_nodes, ignored
        self._lock = threading.Lock()

    def topics(self) -> list[str]:
        p = self.prefix
        return [f"{p}/+/status", f"{p}/+/heartbeat", f"{p}/+/reading/+"]

    def ingest(self, topic: str, payload: bytes, retained: bool = False, now: float | None = None) -> None:
        """One message; never raises for anything a node can send."""
        now = time.time() if now is None else now
        rest = topic[len(self.prefix) + 1 :] if topic.startswith(self.prefix + "/") else ""
        parts = rest.split("/")
        node_id = parts[0]
        with self._lock:
            node = self.nodes.get(node_id)
            if node is None and (len(parts) < 2 or not is_node_id(node_id)):
                self.unattributed += 1
                return
            if not payload:  # a cleared retained message: forget it
                if node is not None and parts[1:] == ["status"]:
                    node.status = None
                elif node is not None and parts[1:] == ["heartbeat"]:
                    node.heartbeat = None
                return
            try:
                record = _parse(parts[1:], payload, now)
            except Malformed:
                if node is None:
                    self.unattributed += 1
                else:
                    node.malformed += 1
                return
            if node is None:
                if len(self.nodes) >= self.max_nodes:
                    self.over_node_cap += 1
                    return
                node = self.nodes[node_id] = Node(node_id)
            self._apply(node, record, retained, now)

    def _apply(self, node: Node, record, retained: bool, now: float) -> None:
        node.malformed += record.bad_fields
        if isinstance(record, Status):
            node.status = record
        elif isinstance(record, Heartbeat):
            node.heartbeat = record
            if record.backlog is not None:
                samples = node.backlog_samples
                while samples and samples[0][0] < now - self.window_s:
                    samples.popleft()
                samples.append((now, record.backlog))
            if not retained:
                node.hb_arrivals.append(now)
        else:
            for seq in record.seqs:
                node.seqs.add(seq)
        if not retained:
            node.last_live = now

    # -- evaluation ------------------------------------------------------------------------------

    def rows(self, now: float | None = None) -> list[dict]:
        """One dict per node, worst first (the `--json` objects)."""
        now = time.time() if now is None else now
        with self._lock:
            rows = [self._safe_row(n, now) for n in self.nodes.values()]
            heard = set(self.nodes)
        if self.inventory:
            from .inventory import place_rows

            place_rows(rows, self.inventory, heard, self.rules.offline_after_s)
        rows.sort(key=_badness)
        return rows

    def _safe_row(self, node: Node, now: float) -> dict:
        try:
            return self._row(node, now)
        except Exception:  # a bug here must not blind the operator to every other node
            node.heartbeat = node.status = None
            node.malformed += 1
            return self._row(node, now)

    def _row(self, node: Node, now: float) -> dict:
        r = self.rules
        hb = node.heartbeat
        hb_ts = hb.ts if hb else None
        heard = [t for t in (hb_ts, node.last_live) if t is not None]
        last_seen = min(max(heard), now) if heard else None
        seen_age = None if last_seen is None else now - last_seen
        reasons: list[str] = []

        # state
        status = node.status
        hb_age = None if hb_ts is None else now - hb_ts
        interval = None
        if len(node.hb_arrivals) >= 2:
            interval = (node.hb_arrivals[-1] - node.hb_arrivals[0]) / (len(node.hb_arrivals) - 1)
        silent_after = r.silent_after_s
        if interval:
            silent_after = min(silent_after, HEARTBEATS_FOR_SILENT * interval)
        if status and status.state == "offline":
            state, reason = "offline", status.reason
        elif hb_age is not None and hb_age > silent_after:
            state, reason = "offline", "silent"
        elif status and status.state == "online":
            state, reason = "online", None
        else:
            state, reason = "unknown", None
        if state == "offline" and (seen_age is None or seen_age > r.offline_after_s):
            reasons.append(f"offline ({reason or 'no reason given'}) for {_age(seen_age)}")

        # sensors
        faults, stale = {}, []
        sensors = dict(sorted(hb.sensors.items())) if hb else {}
        for name, s in sensors.items():
            if s.state == "fault":
                faults[name] = s.error or "fault"
                reasons.append(f"sensor {name} fault: {faults[name]}")
            if s.last_ok is not None and hb_ts is not None and hb_ts - s.last_ok > r.stale_after_s:
                stale.append(name)
                if name not in faults:
                    reasons.append(f"sensor {name} stale for {_age(hb_ts - s.last_ok)}")
            if s.laser_life_used is not None and s.laser_life_used > r.laser_life_max:
                reasons.append(f"sensor {name} laser life used {s.laser_life_used:.0%}")

        # backlog
        backlog = hb.backlog if hb else None
        oldest = hb.oldest_unsent_age_s if hb else None
        window = [b for t, b in node.backlog_samples if t >= now - self.window_s]
        growth = window[-1] - window[0] if len(window) >= 2 else 0
        if growth > r.backlog_growth:
            reasons.append(f"backlog growing (+{growth} to {window[-1]})")
        elif oldest is not None and oldest > r.oldest_unsent_max_s:
            reasons.append(f"oldest unsent reading {_age(oldest)} old")
        if hb and hb.buffer_fault is not None:
            reasons.append(f"buffer fault: {hb.buffer_fault}")
        if hb and hb.refused is not None:  # a silent node's last heartbeat may say why (issue 10)
            reasons.append(f"broker refuses its readings: {hb.refused}")

        # host
        cpu = hb.cpu_temp_c if hb else None
        disk = hb.disk_free_mb if hb else None
        throttled = hb.throttled if hb else None
        uv = _under_voltage(throttled)
        synced = hb.clock_synced if hb else None
        uptime = hb.uptime_s if hb else None
        if disk is not None and disk < r.disk_min_mb:
            reasons.append(f"disk nearly full ({disk:.0f} MB free)")
        if uv:
            now_flag = throttled.get("under_voltage_now") is True or throttled.get("raw", 0) & 1
            reasons.append("under-voltage " + ("now" if now_flag else "since boot"))
        if cpu is not None and cpu > r.cpu_temp_max_c:
            reasons.append(f"CPU hot ({cpu:.0f} °C)")
        if synced is False and uptime is not None and uptime > r.clock_grace_s:
            reasons.append(f"clock not synced after {_age(uptime)} up")

        # sequence gaps
        gaps = max(0, node.seqs.missing() - (backlog or 0))

        return {
            "node": node.id,
            "state": state,
            "reason": reason,
            "last_seen": None
            if last_seen is None
            else datetime.fromtimestamp(last_seen).astimezone().isoformat(),
            "last_seen_age_s": None if seen_age is None else round(seen_age, 1),
            "backlog": backlog,
            "oldest_unsent_age_s": oldest,
            "dropped": hb.dropped if hb else None,
            "seq_gaps": gaps,
            "seqs_seen": node.seqs.seen(),
            "sensor_faults": faults,
            "stale_sensors": stale,
            "sensors": {n: s.state for n, s in sensors.items()},
            "sensors_over_cap": hb.sensors_over_cap if hb else 0,
            "cpu_temp_c": cpu,
            "throttled": throttled,
            "under_voltage": uv,
            "disk_free_mb": disk,
            "clock_synced": synced,
            "uptime_s": uptime,
            "version": status.version if status else None,
            "update": hb.update if hb else None,  # issue 16: under way, on trial, or the last verdict
            "malformed": node.malformed,
            "needs_visit": reasons,
        }

    def ignored(self) -> str:
        """What the view did not track, for the summary line and stderr ('' when nothing)."""
        parts = []
        if self.over_node_cap:
            parts.append(f"{self.over_node_cap} messages from nodes over the cap of {self.max_nodes} ignored")
        if self.unattributed:
            parts.append(f"{self.unattributed} malformed messages from no known node")
        return "; ".join(parts)


def _parse(kind: list[str], payload: bytes, now: float):
    if kind == ["status"]:
        return parse_status(payload)
    if kind == ["heartbeat"]:
        return parse_heartbeat(payload, now)
    if len(kind) == 2 and kind[0] == "reading":
        return parse_reading(kind[1], payload)
    raise Malformed("unexpected topic")


def _badness(row: dict):
    return (
        not row["needs_visit"],
        row["state"] == "online",
        -len(row["needs_visit"]),
        -row["seq_gaps"],
        -(row["backlog"] or 0),
        row["node"],
    )


# -- output -------------------------------------------------------------------------------------

COLUMNS = (
    "NODE", "STATE", "SEEN", "BACKLOG", "OLDEST", "DROP", "GAPS", "CPU", "DISK", "CLOCK", "VERSION", "VISIT"
)  # fmt: skip


def _short_update(update: str) -> str:
    """The table's word for a node's update ("on_trial 0.2.0"; a rollback's reason is in --json)."""
    return update.split(":", 1)[0].replace("_", " ")


def _cells(r: dict) -> tuple[str, ...]:
    """One row's COLUMNS as text, for the plain table and the live one alike."""
    return (
        r["node"],
        r["state"] + (f" ({r['reason']})" if r["reason"] else ""),
        _age(r["last_seen_age_s"]),
        "-" if r["backlog"] is None else str(r["backlog"]),
        "-" if r["oldest_unsent_age_s"] is None else _age(r["oldest_unsent_age_s"]),
        "-" if r["dropped"] is None else str(r["dropped"]),
        str(r["seq_gaps"]),
        "-" if r["cpu_temp_c"] is None else f"{r['cpu_temp_c']:.0f}C" + ("!UV" if r["under_voltage"] else ""),
        "-" if r["disk_free_mb"] is None else f"{r['disk_free_mb']:.0f}MB",
        {True: "ok", False: "unsync", None: "-"}[r["clock_synced"]],
        (r["version"] or "-") + (f" ({_short_update(r['update'])})" if r["update"] else ""),
        "; ".join(r["needs_visit"]) or "-",
    )


def summary(rows: list[dict], ignored: str = "") -> str:
    online = sum(1 for r in rows if r["state"] == "online")
    offline = sum(1 for r in rows if r["state"] == "offline")
    visit = sum(1 for r in rows if r["needs_visit"])
    line = f"{len(rows)} nodes, {online} online, {offline} offline"
    for state in ("missing", "never seen"):  # only with an inventory (operations.inventory)
        if count := sum(1 for r in rows if r["state"] == state):
            line += f", {count} {state}"
    line += f", {visit} need a visit"
    return f"{line}; {ignored}" if ignored else line


def table(rows: list[dict], ignored: str = "") -> str:
    """Plain text, aligned columns; the VISIT column lists the reasons (or `-`)."""
    body = [_cells(r) for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)).rstrip() for b in body]
    lines.append(summary(rows, ignored))
    return "\n".join(lines)


def _colour(row: dict) -> str:
    if row["needs_visit"]:
        return "red"
    return "green" if row["state"] == "online" else "yellow"


# A narrow terminal leaves out these figures first, in this order, so that NODE, STATE and the
# reasons stay readable (rich would squeeze every column into "…" instead).
FIGURES_LEFT_OUT_FIRST = ("VERSION", "DROP", "CLOCK", "DISK", "CPU", "OLDEST", "GAPS", "BACKLOG", "SEEN")
VISIT_MIN_WIDTH = 24
COLUMN_GAP = 3  # rich's padding either side of a column plus the rule between columns


def live_table(rows: list[dict], console, title: str, ignored: str = ""):
    """The `--watch` table (a rich renderable): the rows, worst first, coloured by state, in as
    many of the COLUMNS as fit the console's width and as many rows as fit its height (rows
    wrap, so that is measured, not counted); the caption says what is not shown."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    body = [_cells(r) for r in rows]
    widths = {c: max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(COLUMNS)}
    columns = list(COLUMNS)
    for figure in FIGURES_LEFT_OUT_FIRST:
        if sum(widths[c] + COLUMN_GAP for c in columns if c != "VISIT") + VISIT_MIN_WIDTH <= console.width:
            break
        columns.remove(figure)
    left_out = [c for c in COLUMNS if c not in columns]

    def build(shown: int) -> Table:
        caption = summary(rows, ignored)
        if shown < len(rows):
            caption += f"; {len(rows) - shown} more not shown"
        if left_out:
            caption += f"; {len(left_out)} more column{'s' * (len(left_out) > 1)} on a wider terminal"
        t = Table(
            title=title,
            caption=caption,
            title_justify="left",
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
        )
        for c in columns:
            t.add_column(c, no_wrap=c not in ("STATE", "VISIT"))
        for r, cells in zip(rows[:shown], body[:shown], strict=True):
            text = {c: Text(v) for c, v in zip(COLUMNS, cells, strict=True)}  # not markup: "[Errno 5]"
            text["STATE"].stylize(_colour(r))
            if r["needs_visit"]:
                text["VISIT"].stylize("red")
            t.add_row(*(text[c] for c in columns))
        return t

    height = console.height - 1  # the cursor waits on the line below the table

    def fits(shown: int) -> bool:
        return len(console.render_lines(build(shown), pad=False)) <= height

    if fits(len(rows)):
        return build(len(rows))
    lo, hi = 0, min(len(rows), height)  # every row takes a line at least
    while lo < hi:  # the most rows that fit (fewer rows never take more lines)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return build(lo)


def _watch_table(fleet: Fleet, broker: str, stop: threading.Event, out) -> None:
    """Until `stop` (or Ctrl-C): the live table on a terminal, else the plain table on exit."""
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    if not console.is_terminal:
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        out.write(table(fleet.rows(), fleet.ignored()) + "\n")
        return

    def render():
        title = f"{broker}  {time.strftime('%H:%M:%S')}"
        return live_table(fleet.rows(), console, title=title, ignored=fleet.ignored())

    # nothing else writes to stdout here, so no need to redirect it (a global) above the table
    with Live(
        render(), console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
    ) as live:
        while not stop.wait(1.0):
            live.update(render(), refresh=True)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


PROM_HELP = {
    "edge_node_up": "1 when the node is online",
    "edge_node_last_seen_age_seconds": "seconds since the node was last heard",
    "edge_node_backlog": "readings buffered on the node, not yet acknowledged",
    "edge_node_oldest_unsent_age_seconds": "age of the oldest buffered reading",
    "edge_node_dropped_total": "readings dropped for the life of the node's buffer",
    "edge_node_seq_gaps": "missing reading seqs seen by this fleet view",
    "edge_node_sensor_fault": "1 when the sensor reports a fault",
    "edge_node_sensor_stale": "1 when the sensor's last good reading is too old",
    "edge_node_cpu_temp_celsius": "CPU temperature",
    "edge_node_disk_free_megabytes": "free space on the buffer's filesystem",
    "edge_node_under_voltage": "1 when under-voltage now or since boot",
    "edge_node_clock_synced": "1 when the node's clock is synchronised",
    "edge_node_malformed_total": "malformed messages received from the node",
    "edge_node_sensors_over_cap": "sensors in the node's last heartbeat beyond the view's cap, not tracked",
    "edge_node_needs_visit": "1 when a needs-a-visit rule fires",
    "edge_node_fleet_ignored_messages_total": "messages this fleet view did not attribute to a tracked node",
}


def prometheus(rows: list[dict], fleet: Fleet | None = None) -> str:
    """The Prometheus text exposition (0.0.4) of the rows (and of what `fleet` ignored)."""
    samples: dict[str, list[str]] = {name: [] for name in PROM_HELP}

    def add(name: str, value, **labels) -> None:
        if value is None:
            return
        lab = ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())
        samples[name].append(f"{name}{{{lab}}} {float(value):g}")

    for r in rows:
        n = r["node"]
        add("edge_node_up", r["state"] == "online", node=n)
        add("edge_node_last_seen_age_seconds", r["last_seen_age_s"], node=n)
        add("edge_node_backlog", r["backlog"], node=n)
        add("edge_node_oldest_unsent_age_seconds", r["oldest_unsent_age_s"], node=n)
        add("edge_node_dropped_total", r["dropped"], node=n)
        add("edge_node_seq_gaps", r["seq_gaps"], node=n)
        for sensor in r["sensors"]:
            add("edge_node_sensor_fault", sensor in r["sensor_faults"], node=n, sensor=sensor)
            add("edge_node_sensor_stale", sensor in r["stale_sensors"], node=n, sensor=sensor)
        add("edge_node_cpu_temp_celsius", r["cpu_temp_c"], node=n)
        add("edge_node_disk_free_megabytes", r["disk_free_mb"], node=n)
        add("edge_node_under_voltage", r["under_voltage"], node=n)
        add("edge_node_clock_synced", r["clock_synced"], node=n)
        add("edge_node_malformed_total", r["malformed"], node=n)
        add("edge_node_sensors_over_cap", r["sensors_over_cap"], node=n)
        add("edge_node_needs_visit", bool(r["needs_visit"]), node=n)
    if fleet is not None:
        add("edge_node_fleet_ignored_messages_total", fleet.over_node_cap, reason="over_node_cap")
        add("edge_node_fleet_ignored_messages_total", fleet.unattributed, reason="unattributed")
    out = []
    for name, lines in samples.items():
        kind = "counter" if name.endswith("_total") else "gauge"
        out += [f"# HELP {name} {PROM_HELP[name]}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"


def serve_prometheus(fleet: Fleet, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve `/metrics` from a daemon thread; the caller shuts the server down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            try:
                body = prometheus(fleet.rows(), fleet).encode()
            except Exception as err:  # a bug: one failed scrape, no traceback on the service's stderr
                self.send_error(500, explain=type(err).__name__)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="fleet-prometheus", daemon=True).start()
    return server


# -- MQTT ---------------------------------------------------------------------------------------


class BrokerError(Exception):
    pass


def connect(
    fleet: Fleet, url: str, *, username=None, password=None, ca=None, insecure=False, timeout: float = 5.0
):
    """A paho client subscribed to the fleet's topics, feeding `fleet` from its own thread.
    ValueError for a URL the one parser refuses, or a password that would travel in clear."""
    try:
        connection = BrokerConnection.of_tool(
            url, username=username or None, password=password, ca_file=ca, insecure=insecure, protocol="3.1.1"
        )
    except ValueError as err:
        raise ValueError(f"--broker: {err}") from None
    client = connection.paho_client(f"edge-node-fleet-{uuid.uuid4().hex[:8]}")
    result: dict = {}
    ready = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        if not reason_code.is_failure:
            for topic in fleet.topics():
                c.subscribe(topic, qos=1)
        ready.set()

    def on_message(c, userdata, msg):
        try:
            fleet.ingest(msg.topic, msg.payload, bool(msg.retain))
        except Exception:  # never let one message stop the view
            pass

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        connection.connect(client)
    except (OSError, ssl.SSLError) as err:
        raise BrokerError(f"cannot reach broker {url}: {err}") from None
    client.loop_start()
    if not ready.wait(timeout):
        client.loop_stop()
        raise BrokerError(f"cannot reach broker {url}: no answer in {timeout:g}s")
    if result["rc"].is_failure:
        client.loop_stop()
        raise BrokerError(f"broker {url} refused the connection: {result['rc']}")
    return client


# -- CLI ----------------------------------------------------------------------------------------


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    """The broker options every operator tool takes (fleet, remote)."""
    p.add_argument("--broker", metavar="URL", required=True, help="mqtt://HOST[:PORT] or mqtts://...")
    p.add_argument("--username", metavar="U")
    p.add_argument(
        "--password-file", metavar="F", help="file holding the password (trailing newline ignored)"
    )
    p.add_argument("--ca", metavar="FILE", help="CA bundle to verify the broker (implies TLS)")
    p.add_argument("--insecure", action="store_true", help="accept a password over plain mqtt:// (in clear)")
    p.add_argument("--topic-prefix", metavar="P", default=DEFAULT_PREFIX, help=f"default {DEFAULT_PREFIX}")


def read_password(args: argparse.Namespace) -> str | None:
    """--password-file's password without its trailing newline; OSError if it cannot be read."""
    if not args.password_file:
        return None
    with open(args.password_file, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")


def register(sub) -> argparse.ArgumentParser:
    """Add the `fleet` subcommand to `edge-node`'s subparsers."""
    p = sub.add_parser(
        "fleet",
        help="the operator's view of all nodes: state, backlog, gaps, faults, vitals, needs a visit",
        description="Exit 1 when any node needs a visit (rules: pydoc operations.fleet), 0 otherwise.",
    )
    add_broker_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of per-node objects")
    p.add_argument("--watch", action="store_true", help="a live table, refreshed every second")
    p.add_argument("--listen", metavar="S", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument(
        "--prometheus", metavar="PORT", type=int, help="serve /metrics on 127.0.0.1:PORT while running"
    )
    p.add_argument(
        "--max-nodes",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_NODES,
        help=f"nodes tracked at most; messages from more are counted (default {DEFAULT_MAX_NODES})",
    )
    p.add_argument(
        "--offline-after", metavar="S", type=float, default=900.0, help="offline-too-long threshold (900)"
    )
    p.add_argument(
        "--stale-after", metavar="S", type=float, default=900.0, help="stale sensor threshold (900)"
    )
    p.add_argument(
        "--inventory",
        action="append",
        metavar="FILE",
        help="the nodes that should exist (CSV node,site,lat,lon or provisioning reports): "
        "those never heard are listed as 'never seen', those gone too long as 'missing'",
    )
    p.set_defaults(func=cmd_fleet)
    return p


def cmd_fleet(args: argparse.Namespace, *, stop: threading.Event | None = None, out=None) -> int:
    out = out or sys.stdout
    if args.listen < 0 or args.offline_after < 0 or args.stale_after < 0:
        print("edge-node fleet: --listen, --offline-after and --stale-after must be >= 0", file=sys.stderr)
        return 2
    if args.max_nodes < 1:
        print(f"edge-node fleet: --max-nodes must be >= 1 (got {args.max_nodes})", file=sys.stderr)
        return 2
    try:
        password = read_password(args)
    except OSError as err:
        print(f"edge-node fleet: cannot read --password-file: {err}", file=sys.stderr)
        return 2
    from .inventory import InventoryError, load_inventory

    try:
        inventory = load_inventory(args.inventory or [])
    except InventoryError as err:
        print(f"edge-node fleet: --inventory {err}", file=sys.stderr)
        return 2
    rules = Rules(offline_after_s=args.offline_after, stale_after_s=args.stale_after)
    window_s = WATCH_WINDOW_S if args.watch else max(args.listen, 1.0)
    fleet = Fleet(args.topic_prefix, rules, window_s=window_s, max_nodes=args.max_nodes, inventory=inventory)
    try:
        client = connect(
            fleet, args.broker, username=args.username, password=password, ca=args.ca, insecure=args.insecure
        )
    except ValueError as err:
        print(f"edge-node fleet: {err}", file=sys.stderr)
        return 2
    except BrokerError as err:
        print(f"edge-node fleet: {err}", file=sys.stderr)
        return 1
    server = None
    stop = stop or threading.Event()
    restore: dict[int, object] = {}
    if args.watch and threading.current_thread() is threading.main_thread():
        # Ctrl-C and a service's stop both end the watch through `stop`, wherever it is (a
        # KeyboardInterrupt while rich is still being imported would skip the closing table)
        for signum in (signal.SIGINT, signal.SIGTERM):
            restore[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        if args.prometheus is not None:
            try:
                server = serve_prometheus(fleet, args.prometheus)
            except OSError as err:
                print(f"edge-node fleet: cannot serve --prometheus {args.prometheus}: {err}", file=sys.stderr)
                return 1
        if args.watch:
            try:
                if args.json:
                    while not stop.is_set():
                        out.write(json.dumps(fleet.rows(), allow_nan=False) + "\n")
                        out.flush()
                        stop.wait(1.0)
                else:
                    _watch_table(fleet, args.broker, stop, out)
            except KeyboardInterrupt:
                pass
        else:
            stop.wait(args.listen)
        rows = fleet.rows()
        if not args.watch:
            out.write(
                (json.dumps(rows, indent=2, allow_nan=False) if args.json else table(rows, fleet.ignored()))
                + "\n"
            )
            out.flush()
        if args.json and fleet.ignored():
            print(f"edge-node fleet: {fleet.ignored()}", file=sys.stderr)
        return 1 if any(r["needs_visit"] for r in rows) else 0
    finally:
        for signum, handler in restore.items():
            signal.signal(signum, handler)
        if server is not None:
            server.shutdown()
            server.server_close()
        client.disconnect()  # first: the network thread then ends at once, not at its next poll
        client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m operations.fleet ...`: `edge-node fleet ...` without the entry point."""
    parser = argparse.ArgumentParser(prog="edge-node")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["fleet", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
