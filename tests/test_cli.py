"""The command line: bad configs give one line and exit 2; the demo shows what reaches the broker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EDGE_NODE = [sys.executable, "-m", "edge_node"]

GOOD = """
[node]
id = "trs-0042"
[broker]
url = "mqtt://127.0.0.1:1883"
[buffer]
path = "state/buffer.db"
[sensors.bme280]
driver = "bme280"
bus = "sim"
"""

BAD_CASES = {
    "interval_zero": (GOOD + "interval_s = 0\n", "sensors.bme280.interval_s: must be >= 1 (got 0)"),
    "unknown_key": (GOOD.replace('url = "', 'usrname = "x"\nurl = "'), "broker.usrname: unknown key"),
    "missing_node_id": (GOOD.replace('id = "trs-0042"', ""), "node.id: required"),
    "bad_node_id": (GOOD.replace("trs-0042", "TRS 42"), "node.id:"),
    "bad_scheme": (GOOD.replace("mqtt://", "http://"), "broker.url:"),
    "unknown_driver": (
        GOOD.replace('driver = "bme280"', 'driver = "bme690"'),
        "sensors.bme280.driver: unknown driver",
    ),
    "bad_address": (GOOD + "address = 0x50\n", "sensors.bme280.address:"),
    "bad_toml": (GOOD + "[[[\n", "invalid TOML"),
    "missing_password_file": (
        GOOD.replace(
            'url = "mqtt', 'username = "u"\npassword_file = "nope"\nallow_insecure = true\nurl = "mqtt'
        ),
        "broker.password_file: cannot read",
    ),
    "bad_size": (GOOD.replace("[buffer]", '[buffer]\nmax_bytes = "lots"'), "buffer.max_bytes:"),
    "inflight_string": (
        GOOD + '[forward]\nmax_inflight = "20"\n',
        "forward.max_inflight: must be an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_config_gives_one_line_naming_file_and_key_and_exit_2(tmp_path, case):
    text, expected = BAD_CASES[case]
    path = tmp_path / "config.toml"
    path.write_text(text)
    result = subprocess.run([*EDGE_NODE, "run", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}: ") and expected in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nope.toml"
    result = subprocess.run(
        [*EDGE_NODE, "run", "-c", str(missing)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"{missing}: cannot read: No such file or directory"


def test_usage_errors_exit_2():
    result = subprocess.run([*EDGE_NODE, "frobnicate"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2


@pytest.mark.parametrize("command", [[], ["run"], ["demo"]])
def test_help_is_there_for_every_command(command):
    result = subprocess.run([*EDGE_NODE, *command, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "usage: edge-node" in result.stdout


def test_demo_prints_readings_as_they_arrive_at_the_broker():
    result = subprocess.run(
        [*EDGE_NODE, "demo", "--seconds", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(" bme280 " in line and "temperature=" in line and "Cel" in line for line in lines), (
        result.stdout
    )
    assert any(" host " in line and "cpu_temp_c=" in line for line in lines), result.stdout
    assert any("status: online" in line for line in lines)
    assert any("status: offline shutdown" in line for line in lines), result.stdout


def test_a_buffer_path_that_cannot_exist_is_a_config_error(tmp_path):
    """A setup error (the buffer's directory is a file) is said at once, naming the key, exit 2; a
    failing card is not (the daemon samples into memory and retries: tests/test_disk_errors.py)."""
    (tmp_path / "state").write_text("")
    path = tmp_path / "config.toml"
    path.write_text(GOOD)
    result = subprocess.run(
        [*EDGE_NODE, "run", "-c", str(path)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}: buffer.path: {tmp_path / 'state'}: cannot hold the buffer")
