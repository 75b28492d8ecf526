"""The inventory (issue 13 point 8): nodes that were provisioned but never reached the broker, or
stopped reporting, are listed by `fleet` and `remote` as "never seen"/"missing" with where they
are, not left out. A simulated fleet with a share in a dead zone, against a real Mosquitto."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from operations.fleet import summary, table
from operations.inventory import InventoryError, load_inventory

from .conftest import PREFIX


def edge_node(*argv, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "edge_node.cli", *argv], capture_output=True, text=True, timeout=timeout
    )


def test_a_bad_inventory_line_is_named(tmp_path):
    bad = tmp_path / "inventory.csv"
    bad.write_text("node,site,lat,lon\ntrs-0001,Rambla 1,41.56,2.01\nTRS 2,x,,\n")
    with pytest.raises(InventoryError, match=r"inventory.csv: line 3: node must match"):
        load_inventory([bad])
    bad.write_text("node,site,lat,lon\ntrs-0001,Rambla 1,941.56,2.01\n")
    with pytest.raises(InventoryError, match=r"line 2: lat: must be a number within ±90"):
        load_inventory([bad])
    failed = tmp_path / "report.json"
    failed.write_text(json.dumps({"node": "trs-0003", "result": "FAIL", "checks": []}))
    passed = tmp_path / "report-ok.json"
    passed.write_text(json.dumps({"node": "trs-0004", "result": "PASS", "checks": []}))
    assert list(load_inventory([failed, passed])) == ["trs-0004"]  # provisioned means it passed
    out = edge_node("fleet", "--broker", "mqtt://127.0.0.1:1", "--inventory", str(bad))
    assert out.returncode == 2 and "line 2: lat" in out.stderr


def test_fleet_and_remote_name_the_nodes_that_never_reported(tmp_path, broker, recorder_factory):
    inventory = tmp_path / "inventory.csv"
    rec = recorder_factory(broker.port, topic=f"{PREFIX}/+/status")
    fleet = subprocess.Popen(
        [
            sys.executable, "-m", "edge_node.cli", "simulate", "--nodes", "10", "--broker", broker.url,
            "--interval", "2", "--heartbeat", "2", "--stagger", "0.5", "--report-every", "0",
            "--offline", "20%", "--workdir", str(tmp_path / "fleet"), "--inventory-out", str(inventory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        rec.wait_for(lambda: len(rec.messages) >= 8, timeout=30, what="8 nodes online")
        rows = list(csv.DictReader(inventory.read_text().splitlines()))
        assert len(rows) == 10 and all(r["site"] and r["lat"] for r in rows)
        heard = {t.split("/")[-2] for t, _, _ in rec.messages}
        dead = sorted({r["node"] for r in rows} - heard)
        assert len(dead) == 2

        blind = edge_node("fleet", "--broker", broker.url, "--listen", "1.5", "--json")
        assert len(json.loads(blind.stdout)) == 8  # without the inventory the two are nowhere

        seen = edge_node(
            "fleet", "--broker", broker.url, "--listen", "1.5", "--json", "--inventory", str(inventory)
        )
        assert seen.returncode == 1, seen.stderr  # two nodes need a visit
        out = json.loads(seen.stdout)
        assert len(out) == 10
        never = [r for r in out if r["state"] == "never seen"]
        assert sorted(r["node"] for r in never) == dead
        site = {r["node"]: r["site"] for r in rows}
        for r in never:
            assert site[r["node"]] in r["site"] and site[r["node"]] in r["needs_visit"][0]
        assert summary(out).startswith("10 nodes, 8 online, 0 offline, 2 never seen")
        assert "never seen" in table(out)

        key = tmp_path / "ops.key"
        edge_node("keygen", "--out", str(key))
        report = edge_node(
            "remote", "--broker", broker.url, "--key", str(key), "--nodes", "sim-*", "--listen", "1",
            "--timeout", "3", "--inventory", str(inventory), "--json", "show",
        )  # fmt: skip
        assert report.returncode == 1
        got = json.loads(report.stdout)
        assert got["never_seen"] == dead
        assert len(got["nodes"]) == 10
    finally:
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(30)


def test_a_node_gone_past_offline_after_is_missing_with_where_it_is(tmp_path):
    from operations.fleet import Fleet, Rules, prometheus

    from .test_fleet import heartbeat

    inventory = tmp_path / "inventory.csv"
    inventory.write_text("node,site,lat,lon\ntrs-gone,Plaça Vella 3,41.5636,2.0110\ntrs-here,Rambla 1,,\n")
    view = Fleet(PREFIX, Rules(offline_after_s=60), inventory=load_inventory([inventory]))
    now = time.time()
    for node, at in (("trs-gone", now - 3600), ("trs-here", now)):
        view.ingest(f"{PREFIX}/{node}/heartbeat", json.dumps(heartbeat()).encode(), False, at)
    view.ingest(f"{PREFIX}/trs-gone/status", b'{"state":"offline","reason":"lost"}', True, now - 3500)
    rows = {r["node"]: r for r in view.rows(now)}
    assert rows["trs-gone"]["state"] == "missing"
    assert rows["trs-gone"]["needs_visit"][0] == "missing at Plaça Vella 3 (41.56360, 2.01100)"
    assert rows["trs-here"]["state"] != "missing" and rows["trs-here"]["site"] == "Rambla 1"
    assert 'edge_node_up{node="trs-gone"} 0' in prometheus(list(rows.values()))
