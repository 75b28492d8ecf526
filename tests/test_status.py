"""`edge-node status`: what a technician on site sees, from a running daemon and from a stopped one.

A real daemon (`python -m edge_node run`) on simulated sensors against a real Mosquitto; status
reads its status.json and, read-only, its buffer, so that it still shows the backlog when the
daemon is down.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .conftest import write_config

EDGE_NODE = [sys.executable, "-m", "edge_node"]


def _status(config: Path, *, json_out: bool = True) -> tuple[int, dict | str]:
    result = subprocess.run(
        [*EDGE_NODE, "status", "-c", str(config), *(["--json"] if json_out else [])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout) if json_out else result.stdout


def _wait_status(config: Path, predicate, timeout: float = 20.0) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        code, status = _status(config)
        if predicate(status):
            return code, status
        if time.monotonic() > deadline:
            raise AssertionError(f"status never got there: {json.dumps(status, indent=1)}")
        time.sleep(0.3)


def _buffer_rows(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM readings").fetchone()[0]


def test_status_of_a_running_then_a_stopped_daemon(broker, daemons, tmp_path):
    config = write_config(tmp_path, broker.url)
    daemon = subprocess.Popen(
        [*EDGE_NODE, "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    daemons.append(daemon)

    # Running and connected: healthy, every sensor read, the broker's last publish known.
    code, status = _wait_status(
        config,
        lambda s: (
            s["broker"]["connected"]
            and all(x.get("last_values") for x in s["sensors"].values())
            and s["broker"]["last_publish"]
        ),
    )
    assert code == 0, status
    assert status["healthy"] and status["problems"] == []
    assert status["node"] == "trs-test" and status["service"] == "unknown"  # no systemd here
    assert status["daemon"]["running"] and status["daemon"]["pid"] == daemon.pid
    assert set(status["sensors"]) == {"bme280", "host"}
    assert {s["state"] for s in status["sensors"].values()} <= {"ok", "warming"}
    assert "temperature" in status["sensors"]["bme280"]["last_values"]
    assert isinstance(status["backlog"], int) and status["dropped"] == 0

    code, table = _status(config, json_out=False)
    assert code == 0 and "connected to mqtt://127.0.0.1" in table and "HEALTHY" in table
    assert "bme280" in table and "temperature=" in table

    # The broker goes away: readings pile up in the buffer, status says so and exits 1.
    broker.stop()
    code, status = _wait_status(config, lambda s: not s["broker"]["connected"] and s["backlog"] >= 3)
    assert code == 1
    assert any("not connected" in p for p in status["problems"])

    # The daemon stops: status still shows the backlog, read from the buffer itself.
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    buffer = tmp_path / "state" / "buffer.db"
    rows = _buffer_rows(buffer)
    assert rows >= 3
    code, status = _status(config)
    assert code == 1
    assert not status["healthy"] and not status["daemon"]["running"]
    assert status["backlog"] == rows and status["oldest_unsent_age_s"] > 0
    assert status["broker"]["connected"] is False
    assert any("not running" in p for p in status["problems"])
    assert status["sensors"]["bme280"]["newest_unsent"]["values"]["temperature"]
    code, table = _status(config, json_out=False)
    assert code == 1 and f"backlog   {rows} readings unsent" in table and "NOT HEALTHY" in table
    assert _buffer_rows(buffer) == rows  # read-only: status changed nothing


def test_status_of_a_node_that_never_ran(tmp_path):
    config = write_config(tmp_path, "mqtt://127.0.0.1:1")
    code, status = _status(config)
    assert code == 1
    assert status["backlog"] is None and "no status.json" in status["problems"][0]
    assert not (tmp_path / "state" / "buffer.db").exists()  # status creates nothing


def test_status_with_a_bad_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[node]\nid = "Bad Id"\n[broker]\nurl = "mqtt://localhost"\n')
    result = subprocess.run(
        [*EDGE_NODE, "status", "-c", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"{path}: node.id:")
