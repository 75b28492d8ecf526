"""`edge-node simulate`: a fleet of real Daemons in one process against a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from edge_node.config import ConfigError
from operations.simulate import Fleet, FleetOptions, build_configs, plan_fleet, run_fleet

from .conftest import PREFIX, gaps


def _by_node(recorder) -> dict[str, dict[str, list]]:
    """node -> {"status": [...], "heartbeat": [...], "reading": [(sensor, reading), ...]}"""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    with recorder.cond:
        messages = list(recorder.messages)
    for topic, payload, _ in messages:
        if not payload:
            continue
        node, _, rest = topic.removeprefix(PREFIX + "/").partition("/")
        msg = json.loads(payload)
        if rest.startswith("reading/"):
            out[node]["reading"] += [(msg["sensor"], r) for r in msg["readings"]]
        else:
            out[node][rest].append(msg)
    return out


def _run(opts: FleetOptions, tmp_path, seconds: float) -> tuple[Fleet, dict]:
    fleet = Fleet(build_configs(opts, tmp_path / "fleet"), stagger_s=opts.stagger_s)
    totals = asyncio.run(run_fleet(fleet, seconds=seconds, report_s=0))
    return fleet, totals


def test_fleet_delivers_every_reading_per_node_with_a_fault_on_one(broker, recorder_factory, tmp_path):
    recorder = recorder_factory(broker.port)
    opts = FleetOptions(
        nodes=10,
        broker_url=broker.url,
        interval_s=1,
        heartbeat_s=1,
        stagger_s=1,
        faults=("sim-003:bme280=nack",),
    )
    fleet, totals = _run(opts, tmp_path, 8)
    assert fleet.failed == {}
    recorder.wait_for(
        lambda: sum(p.get("reason") == "shutdown" for p in recorder.payloads("/status")) >= 10,
        timeout=5,
        what="every node's shutdown status",
    )
    assert recorder.invalid == []
    nodes = _by_node(recorder)
    ids = [f"sim-{i:03d}" for i in range(1, 11)]
    assert sorted(nodes) == ids  # distinct ids, all heard from
    first_temps = {}
    for node in ids:
        got = nodes[node]
        seqs = {r["seq"] for _, r in got["reading"]}
        assert len(seqs) >= 8, f"{node}: only {len(seqs)} readings"
        assert gaps(seqs) == [], f"{node}: gaps {gaps(seqs)}"
        assert min(seqs) == 1
        states = [(s["state"], s.get("reason")) for s in got["status"]]
        assert states[0][0] == "online" and states[-1] == ("offline", "shutdown"), f"{node}: {states}"
        bme = [hb["sensors"]["bme280"]["state"] for hb in got["heartbeat"] if "bme280" in hb["sensors"]]
        assert bme, f"{node}: no heartbeat with bme280"
        if node == "sim-003":
            assert bme[-1] == "fault" and "error" in got["heartbeat"][-1]["sensors"]["bme280"]
            assert not [r for s, r in got["reading"] if s == "bme280"]
            assert any(s == "host" for s, _ in got["reading"])  # its other sensor carries on
        else:
            assert bme[-1] == "ok", f"{node}: bme280 {bme[-1]}"
            values = [r["values"] for s, r in got["reading"] if s == "bme280"]
            first_temps[node] = json.dumps(values[:3], sort_keys=True)
    # seeds differ per node: so do their worlds
    assert len(set(first_temps.values())) == len(first_temps), first_temps
    assert totals["backlog"] <= 10 * 2  # what was mid-flight at the last look, at most
    assert totals["stored"] >= 9 * 8


def test_offline_share_buffers_and_never_publishes(broker, recorder_factory, tmp_path):
    recorder = recorder_factory(broker.port)
    opts = FleetOptions(
        nodes=4, broker_url=broker.url, interval_s=1, heartbeat_s=1, stagger_s=0.2, offline_pct=50
    )
    fleet, totals = _run(opts, tmp_path, 4)
    dead = {s.node_id for s in fleet.specs if s.offline}
    assert len(dead) == 2
    heard = set(_by_node(recorder))
    assert heard == {s.node_id for s in fleet.specs} - dead
    assert totals["backlog"] >= 2 * 3  # the dead-zone nodes kept their readings
    # the buffers stay for the next run under the same work dir
    assert all((tmp_path / "fleet" / n / "buffer.db").exists() for n in dead)


def test_plan_scenario_fault_and_offline(tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        '[[fault]]\nnode = "sim-002"\nsensor = "host"\nfault = "overheat"\nat_s = 5\nfor_s = 10\n'
        '[[fault]]\nnode = 4\nsensor = "bme280"\nfault = "stuck"\n'
    )
    opts = FleetOptions(
        nodes=20,
        broker_url="mqtt://127.0.0.1:1883",
        seed=100,
        faults=("sim-001:bme280=nack",),
        scenario=scenario,
        offline_pct=10,
        backfill_rate=0,
    )
    specs = plan_fleet(opts)
    assert [s.node_id for s in specs][:2] == ["sim-001", "sim-002"] and len({s.node_id for s in specs}) == 20
    assert [s.seed for s in specs] == list(range(101, 121))
    assert specs[0].faults == [{"sensor": "bme280", "fault": "nack", "at_s": 0.0}]
    assert specs[1].faults == [{"sensor": "host", "fault": "overheat", "at_s": 5, "for_s": 10}]
    assert specs[3].faults == [{"sensor": "bme280", "fault": "stuck", "at_s": 0}]
    assert sum(s.offline for s in specs) == 2
    assert [s.offline for s in plan_fleet(opts)] == [s.offline for s in specs]  # same seed, same share
    configs = build_configs(opts, tmp_path / "w")
    cfg = dict((s.node_id, c) for s, c in configs)["sim-002"]
    assert cfg.simulation.seed == 102 and cfg.simulation.faults[0]["for_s"] == 10
    assert cfg.buffer.path == tmp_path / "w" / "sim-002" / "buffer.db"
    assert cfg.forward.backfill_rate == 0, "--backfill-rate reaches every node's config"


@pytest.mark.parametrize(
    "fault",
    ["sim-099:bme280=nack", "sim-001:bme280", "sim-001:nosuch=nack", "sim-001:bme280=melt"],
)
def test_bad_faults_are_config_errors(tmp_path, fault):
    opts = FleetOptions(nodes=3, broker_url="mqtt://127.0.0.1:1883", faults=(fault,))
    with pytest.raises(ConfigError):
        Fleet(build_configs(opts, tmp_path))


def _simulate_cmd(module_args: list[str], broker, tmp_path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            *module_args,
            "--nodes",
            "3",
            "--broker",
            broker.url,
            "--interval",
            "1",
            "--stagger",
            "0.3",
            "--heartbeat",
            "1",
            "--workdir",
            str(tmp_path / "w"),
            "--fault",
            "sim-002:bme280=nack",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _sigterm_stops_cleanly(module_args, broker, recorder_factory, tmp_path):
    recorder = recorder_factory(broker.port)
    proc = _simulate_cmd(module_args, broker, tmp_path)
    try:
        recorder.wait_for(lambda: len(recorder.payloads("/heartbeat")) >= 3, timeout=15, what="heartbeats")
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "readings stored" in err and "stopped:" in err
    recorder.wait_for(
        lambda: sum(p.get("reason") == "shutdown" for p in recorder.payloads("/status")) == 3,
        timeout=5,
        what="three shutdown statuses",
    )
    assert recorder.invalid == []
    nodes = _by_node(recorder)
    for node in ("sim-001", "sim-002", "sim-003"):
        assert gaps({r["seq"] for _, r in nodes[node]["reading"]}) == []


def test_module_entry_point_sigterm(broker, recorder_factory, tmp_path):
    _sigterm_stops_cleanly(["operations.simulate"], broker, recorder_factory, tmp_path)


def test_cli_simulate_sigterm(broker, recorder_factory, tmp_path):
    _sigterm_stops_cleanly(["edge_node", "simulate"], broker, recorder_factory, tmp_path)


def test_every_simulated_node_stands_on_a_street_of_terrassa_with_its_history(tmp_path):
    from city import terrassa
    from edge_node.store import Store

    opts = FleetOptions(nodes=16, broker_url="mqtt://127.0.0.1:1883", sensors=("bme280", "sds011"),
                        faults=("sim-002:bme280=fog",), history_h=1, interval_s=60)  # fmt: skip
    configs = build_configs(opts, tmp_path / "w")
    streets = {street.name for street in terrassa.STREETS}
    spots = set()
    for _spec, cfg in configs:
        assert cfg.node.lat is not None and cfg.node.lon is not None
        address, area = cfg.node.site.split(", ")  # "Rambla d'Ègara 2", "Centre"
        assert address.rsplit(" ", 1)[0] in streets and area in terrassa.AREAS, cfg.node.site
        spots.add((cfg.node.lat, cfg.node.lon))
    assert len(spots) == 16
    # An hour of each sensor's readings waits in every buffer, sent as backfill once it runs.
    fog = Store(tmp_path / "w" / "sim-002" / "buffer.db", max_rows=10**6, max_bytes=10**9, sync_interval_s=10)
    fog.open()
    try:
        rows = fog.fetch(0, limit=1000)
    finally:
        fog.close()
    assert len(rows) == 2 * 60
    pm = [json.loads(r.body) for r in rows if r.sensor == "sds011"]
    assert all(r["quality"] == ["high_humidity"] for r in pm)  # the fog node's past is foggy too
    assert all(r["values"]["pm2_5_corrected"] < r["values"]["pm2_5"] for r in pm)
    unplaced = build_configs(
        FleetOptions(nodes=1, broker_url="mqtt://127.0.0.1:1883", place=False), tmp_path / "u"
    )
    assert unplaced[0][1].node.lat is None
