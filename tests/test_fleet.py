"""`edge-node fleet`: the operator's view against a real Mosquitto and real daemons."""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
from rich.console import Console

from operations import fleet
from operations.mosquitto import free_port

from .conftest import PREFIX, start_daemon, write_config

FAULTY = '\n[[simulation.faults]]\nsensor = "bme280"\nfault = "nack"\nat_s = 0\n'


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edge-node")
    fleet.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["fleet", *argv])


def run_fleet(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = fleet.cmd_fleet(_parse(*argv), out=out)
    return rc, out.getvalue()


def run_json(url: str, *argv: str, listen: float = 1.5) -> tuple[int, dict[str, dict]]:
    rc, text = run_fleet("--broker", url, "--json", "--listen", str(listen), *argv)
    rows = json.loads(text)
    return rc, {r["node"]: r for r in rows}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def heartbeat(**overrides) -> dict:
    hb = {
        "ts": _now(),
        "uptime_s": 120,
        "seq_sent": 10,
        "backlog": 0,
        "oldest_unsent_age_s": 0,
        "dropped": 0,
        "sensors": {"bme280": {"state": "ok", "last_ok": _now()}},
        "host": {
            "cpu_temp_c": 50.0,
            "load1": 0.1,
            "mem_available_mb": 300,
            "disk_free_mb": 5000,
            "clock_synced": True,
        },
    }
    for key, value in overrides.items():
        if key in hb["host"] or key == "throttled":
            hb["host"][key] = value
        else:
            hb[key] = value
    return hb


def publish(port: int, messages: list[tuple[str, bytes | str, bool]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload, retain in messages:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def wait_heartbeats(url: str, nodes: set[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, rows = run_json(url, listen=0.3)
        if all(rows.get(n, {}).get("state") == "online" and rows[n]["sensors"] for n in nodes):
            return
    raise AssertionError(f"nodes {nodes} not online with heartbeats in {timeout}s")


def test_healthy_node_online_no_gaps_no_visit_and_garbage_does_not_crash(broker, tmp_path, daemons):
    daemons.append(start_daemon(write_config(tmp_path, broker.url, node_id="trs-ok")))
    wait_heartbeats(broker.url, {"trs-ok"})
    junk = [b"", b"\xff\xfe", b"not json", b"[1,2]", b'{"state": 3}', b'{"readings": [{"seq": "x"}]}', b"{"]
    garbage = [(f"{PREFIX}/trs-junk/heartbeat", j, True) for j in junk[1:3]]
    garbage += [(f"{PREFIX}/trs-junk/status", b'{"state": "sleeping"}', True)]
    garbage += [(f"{PREFIX}/trs-ok/heartbeat", j, False) for j in junk[1:]]
    garbage += [(f"{PREFIX}/trs-ok/heartbeat", json.dumps({**heartbeat(), "sensors": [1]}), False)]
    garbage += [(f"{PREFIX}/trs-ok/status", j, False) for j in junk[1:]]
    garbage += [(f"{PREFIX}/trs-ok/reading/bme280", j, False) for j in junk[1:]]
    garbage += [(f"{PREFIX}/Bad_Node!/heartbeat", b"{}", False)]

    def spray():
        time.sleep(0.3)
        publish(broker.port, garbage)

    t = threading.Thread(target=spray)
    t.start()
    rc, rows = run_json(broker.url, listen=2.5)
    t.join()
    ok = rows["trs-ok"]
    assert rc == 0, rows
    assert ok["state"] == "online" and ok["needs_visit"] == []
    assert ok["seq_gaps"] == 0 and ok["seqs_seen"] >= 2
    assert ok["backlog"] is not None and ok["clock_synced"] is not None
    assert ok["last_seen_age_s"] < 5
    assert ok["malformed"] >= 15
    assert "trs-junk" not in rows  # garbage alone makes no row: counted, not shown
    rc, text = run_fleet("--broker", broker.url, "--listen", "0.5")
    assert rc == 0 and text.splitlines()[0].split()[:3] == ["NODE", "STATE", "SEEN"]
    assert "trs-ok" in text and "0 need a visit" in text


def test_killed_faulty_and_bad_vitals_need_a_visit(broker, tmp_path, daemons):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    killed = start_daemon(write_config(tmp_path / "a", broker.url, node_id="trs-killed"))
    daemons.append(killed)
    faulty_cfg = write_config(tmp_path / "b", broker.url, node_id="trs-faulty")
    faulty_cfg.write_text(faulty_cfg.read_text() + FAULTY)
    daemons.append(start_daemon(faulty_cfg))
    wait_heartbeats(broker.url, {"trs-killed", "trs-faulty"})
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    publish(
        broker.port,
        [
            (f"{PREFIX}/trs-uv/heartbeat", json.dumps(heartbeat(throttled={"raw": 0x50000})), True),
            (f"{PREFIX}/trs-disk/heartbeat", json.dumps(heartbeat(disk_free_mb=42.0)), True),
        ],
    )
    deadline = time.monotonic() + 15  # the Last Will fires after 1.5 keepalives (5 s)
    while True:
        rc, rows = run_json(broker.url, "--offline-after", "0", listen=0.5)
        if rows["trs-killed"]["state"] == "offline" or time.monotonic() > deadline:
            break
    assert rc == 1
    k = rows["trs-killed"]
    assert (k["state"], k["reason"]) == ("offline", "lost")
    assert any(r.startswith("offline (lost)") for r in k["needs_visit"])
    f = rows["trs-faulty"]
    assert f["state"] == "online" and "bme280" in f["sensor_faults"]
    assert any("sensor bme280 fault" in r for r in f["needs_visit"])
    assert rows["trs-uv"]["under_voltage"] and rows["trs-uv"]["needs_visit"] == ["under-voltage since boot"]
    assert rows["trs-disk"]["needs_visit"] == ["disk nearly full (42 MB free)"]
    # with the default 15 min the node killed seconds ago is not yet a visit
    rc, rows = run_json(broker.url, listen=0.5)
    assert rows["trs-killed"]["state"] == "offline" and rows["trs-killed"]["needs_visit"] == []
    # the table: worst first, reasons named
    rc, text = run_fleet("--broker", broker.url, "--listen", "0.5", "--offline-after", "0")
    lines = text.splitlines()
    assert rc == 1 and "4 nodes" in lines[-1] and "4 need a visit" in lines[-1]
    assert "sensor bme280 fault" in text and "under-voltage since boot" in text


def test_rules_from_heartbeats():
    f = fleet.Fleet(PREFIX, fleet.Rules(stale_after_s=60), window_s=60)
    t = time.time()
    old = datetime.fromtimestamp(t - 600, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def hb(node, **kw):
        f.ingest(f"{PREFIX}/{node}/heartbeat", json.dumps(heartbeat(**kw)).encode(), False, t)

    hb("n-laser", sensors={"sds011": {"state": "ok", "laser_life_used": 0.95}})
    hb("n-stale", sensors={"rain": {"state": "ok", "last_ok": old}})
    hb("n-buffer", buffer={"state": "fault", "error": "disk I/O error"})
    hb("n-hot", cpu_temp_c=85.5)
    hb("n-clock", clock_synced=False, uptime_s=7200)
    hb("n-oldest", oldest_unsent_age_s=4000, backlog=5)
    hb("n-grow", backlog=10)
    f.ingest(f"{PREFIX}/n-grow/heartbeat", json.dumps(heartbeat(backlog=500)).encode(), False, t + 1)
    hb("n-fine")
    for seqs in ([1, 2], [5, 3], [3], [8]):  # missing 4, 6, 7; backlog 0
        f.ingest(
            f"{PREFIX}/n-fine/reading/bme280", json.dumps({"readings": [{"seq": s} for s in seqs]}).encode()
        )
    rows = {r["node"]: r for r in f.rows(t + 1)}
    assert rows["n-laser"]["needs_visit"] == ["sensor sds011 laser life used 95%"]
    assert (
        rows["n-stale"]["needs_visit"] == ["sensor rain stale for 10m"] and rows["n-stale"]["stale_sensors"]
    )
    assert rows["n-buffer"]["needs_visit"] == ["buffer fault: disk I/O error"]
    assert rows["n-hot"]["needs_visit"] == ["CPU hot (86 °C)"]
    assert rows["n-clock"]["needs_visit"] == ["clock not synced after 2h up"]
    assert rows["n-oldest"]["needs_visit"] == ["oldest unsent reading 67m old"]
    assert rows["n-grow"]["needs_visit"] == ["backlog growing (+490 to 500)"]
    assert rows["n-fine"]["needs_visit"] == [] and rows["n-fine"]["seq_gaps"] == 3
    assert list(rows)[-1] == "n-fine"  # worst first
    # silent: heard only through a heartbeat older than offline_after
    stale_hb = heartbeat()
    stale_hb["ts"] = old
    f.ingest(f"{PREFIX}/n-silent/heartbeat", json.dumps(stale_hb).encode(), True, t)
    row = {r["node"]: r for r in f.rows(t)}["n-silent"]
    assert (row["state"], row["reason"]) == ("unknown", None)  # 600 s < 900 s: not offline yet
    f.rules.offline_after_s = f.rules.silent_after_s = 300
    row = {r["node"]: r for r in f.rows(t)}["n-silent"]
    assert (row["state"], row["reason"]) == ("offline", "silent") and row["needs_visit"][0].startswith(
        "offline"
    )


def test_prometheus_while_watching(broker):
    publish(
        broker.port,
        [
            (f"{PREFIX}/trs-p/status", json.dumps({"state": "offline", "reason": "lost"}), True),
            (f"{PREFIX}/trs-p/heartbeat", json.dumps(heartbeat(cpu_temp_c=61.5, backlog=7, dropped=3)), True),
            (f"{PREFIX}/trs-q/heartbeat", b"garbage", True),
        ],
    )
    port = free_port()
    stop = threading.Event()
    out = io.StringIO()
    args = _parse("--broker", broker.url, "--watch", "--prometheus", str(port), "--offline-after", "0")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", fleet.cmd_fleet(args, stop=stop, out=out)))
    t.start()
    try:
        body = ""
        deadline = time.monotonic() + 5
        while 'edge_node_backlog{node="trs-p"}' not in body and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    body = resp.read().decode()
                    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            except OSError:
                pass
    finally:
        stop.set()
        t.join(5)
    assert result["rc"] == 1
    assert 'edge_node_up{node="trs-p"} 0' in body
    assert 'edge_node_backlog{node="trs-p"} 7' in body
    assert 'edge_node_dropped_total{node="trs-p"} 3' in body
    assert 'edge_node_cpu_temp_celsius{node="trs-p"} 61.5' in body
    assert 'edge_node_sensor_fault{node="trs-p",sensor="bme280"} 0' in body
    assert 'edge_node_seq_gaps{node="trs-p"} 0' in body
    assert 'edge_node_needs_visit{node="trs-p"} 1' in body
    assert "trs-q" not in body  # garbage makes no series, it is counted:
    assert 'edge_node_fleet_ignored_messages_total{reason="unattributed"} 1' in body
    assert "# TYPE edge_node_up gauge" in body
    # not a terminal: no live table, the plain one once on exit
    assert out.getvalue().count("NODE") == 1 and "trs-p" in out.getvalue() and "\x1b" not in out.getvalue()


def _render(rows: list[dict], *, width: int, height: int) -> tuple[str, str]:
    """The live table as a terminal of that size shows it: (text, text with colour codes)."""
    console = Console(
        file=io.StringIO(),
        width=width,
        height=height,
        force_terminal=True,
        color_system="standard",
        record=True,
    )
    console.print(fleet.live_table(rows, console, "mqtt://broker  12:00:00"))
    styled = console.export_text(styles=True, clear=False)
    return console.export_text(), styled


def _injected_fleet(healthy: int = 0) -> fleet.Fleet:
    f = fleet.Fleet(PREFIX, fleet.Rules(offline_after_s=0))

    def send(node: str, kind: str, payload: dict, retained: bool = False) -> None:
        f.ingest(f"{PREFIX}/{node}/{kind}", json.dumps(payload).encode(), retained)

    send("trs-gone", "status", {"state": "offline", "reason": "shutdown"}, retained=True)
    fault = {"bme280": {"state": "fault", "error": "[Errno 121] Remote I/O error"}}
    send("trs-fault", "heartbeat", heartbeat(sensors=fault))
    send("trs-fault", "status", {"state": "online"})
    send("trs-readings", "reading/bme280", {"readings": [{"seq": 1}]})  # unknown: no status yet
    for i in range(healthy):
        send(f"trs-{i:03d}", "heartbeat", heartbeat())
        send(f"trs-{i:03d}", "status", {"state": "online"})
    return f


def test_live_table_lists_every_node_worst_first_with_its_reasons_and_state_colour():
    rows = _injected_fleet(healthy=2).rows()
    text, styled = _render(rows, width=200, height=50)
    lines = [line for line in text.splitlines() if line.lstrip().startswith("trs-")]
    assert [line.split()[0] for line in lines] == [r["node"] for r in rows]
    assert [r["node"] for r in rows][:2] == ["trs-gone", "trs-fault"]
    for row, line in zip(rows, lines, strict=True):
        assert line.rstrip().endswith("; ".join(row["needs_visit"]) or "-")
    assert "sensor bme280 fault: [Errno 121] Remote I/O error" in text  # not taken for markup
    assert text.splitlines()[0].startswith("mqtt://broker  12:00:00")
    assert "5 nodes, 3 online, 1 offline, 2 need a visit" in text and "not shown" not in text
    assert "\x1b[31moffline (shutdown)" in styled and "\x1b[31monline" in styled  # needs a visit
    assert "\x1b[33munknown" in styled and "\x1b[32monline" in styled


def test_live_table_on_a_small_terminal_keeps_the_worst_rows_and_the_reasons():
    rows = _injected_fleet(healthy=20).rows()
    text, _ = _render(rows, width=80, height=12)
    assert len(text.splitlines()) <= 11  # a line stays for the cursor
    shown = [line.split()[0] for line in text.splitlines() if line.lstrip().startswith("trs-")]
    assert shown == [r["node"] for r in rows][: len(shown)] and shown[:2] == ["trs-gone", "trs-fault"]
    assert f"{len(rows) - len(shown)} more not shown" in text
    header = text.splitlines()[1].split()
    assert header[:2] == ["NODE", "STATE"] and header[-1] == "VISIT" and "DROP" not in header
    assert "columns on a wider terminal" in text
    assert "sensor bme280 fault:" in text  # the reason, wrapped rather than cut


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_on_a_terminal_redraws_until_stopped_and_exits_1_on_a_visit(broker, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("LINES", "30")
    publish(
        broker.port,
        [
            (f"{PREFIX}/trs-w1/heartbeat", json.dumps(heartbeat(disk_free_mb=1.0)), True),
            (f"{PREFIX}/trs-w2/heartbeat", json.dumps(heartbeat()), True),
        ],
    )
    stop, out, result = threading.Event(), Terminal(), {}
    args = _parse("--broker", broker.url, "--watch")
    t = threading.Thread(target=lambda: result.setdefault("rc", fleet.cmd_fleet(args, stop=stop, out=out)))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while out.getvalue().count(broker.url) < 3 and time.monotonic() < deadline:  # 2 refreshes
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive() and result["rc"] == 1
    last = out.getvalue().split(broker.url)[-1]
    assert last.index("trs-w1") < last.index("trs-w2") and "disk nearly full (1 MB free)" in last
    assert "2 nodes, 0 online, 0 offline, 1 need a visit" in last


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, or systemd's stop
def test_watch_piped_prints_the_plain_table_once_when_stopped(broker, stop_signal):
    publish(broker.port, [(f"{PREFIX}/trs-pipe/heartbeat", json.dumps(heartbeat(cpu_temp_c=90.0)), True)])
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "edge_node",
        "fleet",
        "--broker",
        broker.url,
        "--watch",
        "--prometheus",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # watching, once its /metrics has heard the node
    while True:
        assert time.monotonic() < deadline, "the watching fleet view never served the node"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                if "trs-pipe" in resp.read().decode():
                    break
        except OSError:
            pass
        time.sleep(0.1)
    proc.send_signal(stop_signal)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1, err
    assert out.count("NODE") == 1 and "\x1b" not in out and err == ""
    assert "CPU hot (90 °C)" in out and out.splitlines()[-1].startswith("1 nodes")


def test_unreachable_broker_and_bad_usage(capsys):
    rc, _ = run_fleet("--broker", f"mqtt://127.0.0.1:{free_port()}", "--listen", "0")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "cannot reach broker" in err
    assert run_fleet("--broker", "http://x", "--listen", "0")[0] == 2
    assert run_fleet("--broker", "mqtt://x", "--listen", "-1")[0] == 2


def test_cli_subprocess(broker):
    publish(broker.port, [(f"{PREFIX}/trs-s/heartbeat", json.dumps(heartbeat(disk_free_mb=1.0)), True)])
    cmd = [sys.executable, "-m", "edge_node", "fleet", "--broker", broker.url, "--listen", "0.5", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)[0]["needs_visit"] == ["disk nearly full (1 MB free)"]
    bad = subprocess.run(cmd[:4] + ["--listen", "x"], capture_output=True, text=True, timeout=20)
    assert bad.returncode == 2
