"""The fleet view's memory over a simulated week of a 1,000-node city (issue 11 point 2).

Synthetic messages go straight into `operations.fleet.Fleet.ingest` (no broker: the figure is the
view's state, not the network), in a process of their own so that its RSS is the view's:
every node sends a heartbeat and a batch of readings every `STEP_S` of simulated time (a real node
sends them more often; the view's state per node does not depend on the rate, so a coarser step
simulates the same week faster), its seqs contiguous but for a hole now and then (one batch in
200 loses a reading: about a hole a node a day), and a few nodes send what a hostile node would:
a 2,000-seq batch with a hole after each seq, a heartbeat naming 500 sensors, and, once a day,
messages from 3,000 made-up node ids. Measured after each simulated day: the process's RSS and
the deep size of the fleet's state; steady means the last day's equals the first's.

    python -m bench.fleet_view --nodes 1000 --days 7     # prints one JSON object
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time

STEP_S = 600.0
SEQS_PER_BATCH = 5
HOSTILE_NODES = 5


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _deep_size(obj, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
        size += sum(_deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__slots__"):
        size += sum(_deep_size(getattr(obj, n), seen) for n in obj.__slots__ if hasattr(obj, n))
    elif hasattr(obj, "__dict__"):
        size += _deep_size(vars(obj), seen)
    return size


def _ts(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def simulate(nodes: int, days: float, seed: int = 11) -> dict:
    from operations.fleet import WATCH_WINDOW_S, Fleet

    rng = random.Random(seed)
    prefix = "city/terrassa/nodes"
    fleet = Fleet(prefix, window_s=WATCH_WINDOW_S)
    ids = [f"trs-{i:04d}" for i in range(nodes)]
    next_seq = dict.fromkeys(ids, 1)
    start = time.time() - days * 86400
    steps_per_day = int(86400 / STEP_S)
    per_day, messages, wall = [], 0, time.monotonic()
    for node in ids:
        fleet.ingest(f"{prefix}/{node}/status", b'{"state":"online","version":"1.0"}', True, start)
    for step in range(int(days * steps_per_day)):
        now = start + step * STEP_S
        ts = _ts(now)
        for i, node in enumerate(ids):
            hb = (
                f'{{"ts":"{ts}","uptime_s":{step * STEP_S},"seq_sent":{next_seq[node]},"backlog":0,'
                f'"oldest_unsent_age_s":0,"dropped":0,"sensors":{{"bme280":{{"state":"ok","last_ok":"{ts}"}},'
                f'"host":{{"state":"ok","last_ok":"{ts}"}}}},"host":{{"cpu_temp_c":{45 + i % 10},"load1":0.2,'
                f'"mem_available_mb":300,"disk_free_mb":5000,"clock_synced":true}}}}'
            )
            fleet.ingest(f"{prefix}/{node}/heartbeat", hb.encode(), False, now)
            first = next_seq[node] + (1 if rng.random() < 0.005 else 0)  # now and then a lost reading
            seqs = ",".join(f'{{"seq":{s}}}' for s in range(first, first + SEQS_PER_BATCH))
            fleet.ingest(f"{prefix}/{node}/reading/bme280", f'{{"readings":[{seqs}]}}'.encode(), False, now)
            next_seq[node] = first + SEQS_PER_BATCH
            messages += 2
        if step % 36 == 0:  # the hostile few, every 6 simulated hours
            for node in ids[:HOSTILE_NODES]:
                holes = ",".join(f'{{"seq":{next_seq[node] + 2 * k}}}' for k in range(2000))
                fleet.ingest(
                    f"{prefix}/{node}/reading/bme280", f'{{"readings":[{holes}]}}'.encode(), False, now
                )
                next_seq[node] += 4000
                many = ",".join(f'"s{k}":{{"state":"fault","error":"\\u001b[2J{k}"}}' for k in range(500))
                fleet.ingest(
                    f"{prefix}/{node}/heartbeat", f'{{"ts":"{ts}","sensors":{{{many}}}}}'.encode(), False, now
                )
                messages += 2
        if (step + 1) % steps_per_day == 0:
            for k in range(3000):  # made-up ids: garbage and valid-looking alike
                fleet.ingest(f"{prefix}/fake-{step}-{k}/heartbeat", b"{", False, now)
                fleet.ingest(f"{prefix}/fake-{step}-{k}/status", b'{"state":"online"}', False, now)
            messages += 6000
            fleet.rows(now)  # what the live table does every second
            gc.collect()
            per_day.append(
                {
                    "day": len(per_day) + 1,
                    "rss_mb": round(_rss_mb(), 1),
                    "state_mb": round(_deep_size(fleet) / 1e6, 2),
                }
            )
    return {
        "nodes": nodes,
        "days": days,
        "messages": messages,
        "tracked_nodes": len(fleet.nodes),
        "over_node_cap": fleet.over_node_cap,
        "unattributed": fleet.unattributed,
        "seconds": round(time.monotonic() - wall, 1),
        "per_day": per_day,
    }


def fig_fleet_view(b) -> None:
    """bench.run's figure: the simulation above in its own process."""
    import subprocess

    nodes, days = (300, 2) if b.quick else (1000, 7)
    out = subprocess.run(
        [sys.executable, "-m", "bench.fleet_view", "--nodes", str(nodes), "--days", str(days)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    r = json.loads(out.stdout)
    first, last = r["per_day"][0], r["per_day"][-1]
    b.add(
        "fleet_view_state_mb",
        f"fleet view state after {days} simulated days of {nodes} nodes (+ hostile messages)",
        last["state_mb"],
        "MB",
        first_day_mb=first["state_mb"],
        **r,
    )
    b.add(
        "fleet_view_state_growth",
        "fleet view state, last simulated day / first (steady: 1)",
        last["state_mb"] / first["state_mb"],
        "ratio",
        ("<=", 1.1),
    )
    b.add(
        "fleet_view_rss_mb",
        f"fleet view process RSS after {days} simulated days of {nodes} nodes",
        last["rss_mb"],
        "MB",
        first_day_mb=first["rss_mb"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--days", type=float, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(simulate(args.nodes, args.days)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
