"""`edge-node provision` end to end under `--root`, on simulated sensors, against a city broker in
miniature (TLS, passwords, a `%u` ACL): PASS with every check, secrets 0600 and never shown, a
config the daemon loads, a rerun that keeps the buffer and says "unchanged", bad arguments in
one line with exit 2, and a failing check named with exit 1.

The first run goes through the real command line as a technician types it (detect listens 5 s
for each pulse sensor, selftest reads each sensor five times); the other runs are in-process and
shorten both (`detect_options`, `selftest_options`) to keep this file fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_node.cli import build_parser, main
from edge_node.signing import node_public_key
from edge_node.store import NewReading, Store
from operations.mosquitto import free_port
from provisioning.detect import SimulatedNode
from provisioning.provision import config_view, provision

from .pki import SecureBroker

NODE = "trs-0042"
FAST = {"detect_options": {"listen_s": 1.0}, "selftest_options": {"reads": 1, "spacing_s": 0}}
NO_PULSES = {"pins": {}}  # no listening for a hand-turned anemometer: for runs that test something else
ALL_STEPS = ("detect.", "config.written", "selftest.", "broker.connect", "broker.roundtrip", "broker.acl")
INSTALL = ("install.unit", "install.user", "install.service")


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """The city broker in miniature (tests/pki.py): TLS, passwords, a %u ACL."""
    with SecureBroker(tmp_path_factory.mktemp("city")) as broker:
        yield broker


def _argv(
    city: SecureBroker, tmp_path: Path, *, url: str | None = None, extra: tuple[str, ...] = ()
) -> list[str]:
    secret = city.password_file(NODE, tmp_path)
    return [
        "provision",
        "--node-id",
        NODE,
        "--site",
        "Rambla d'Ègara 12",
        "--lat",
        "41.563",
        "--lon",
        "2.0089",
        "--broker",
        url or city.url,
        "--username",
        NODE,
        "--password-file",
        str(secret),
        "--ca",
        str(city.ca),
        "--root",
        str(tmp_path / "root"),
        "--simulate",
        "--report",
        str(tmp_path / "report.json"),
        *extra,
    ]


def _provision(argv: list[str], capsys, **options) -> tuple[int, str, dict]:
    lines: list[str] = []
    status = provision(build_parser().parse_args(argv), show=lines.append, **{**FAST, **options})
    captured = capsys.readouterr()
    output = "\n".join(lines) + captured.out + captured.err
    report = json.loads((Path(argv[argv.index("--report") + 1])).read_text())
    return status, output, report


def _checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def _fill_buffer(path: Path, rows: int) -> None:
    store = Store(path, max_rows=1000, max_bytes=10**7, sync_interval_s=1)
    store.open()
    store.append(
        [
            NewReading("bme280", {"temperature": 20.0 + i}, (), time.time(), time.monotonic(), "boot", True)
            for i in range(rows)
        ]
    )
    store.close()


def _fingerprint(directory: Path) -> dict[str, tuple[str, float]]:
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in sorted(directory.iterdir())
    }


def test_provision_passes_end_to_end_and_a_rerun_keeps_the_buffer(city, tmp_path, capsys):
    argv = _argv(city, tmp_path)
    root = tmp_path / "root"
    password = city.users[NODE]

    # The first run as the technician types it: the real command, its defaults, its exit status.
    result = subprocess.run(
        [sys.executable, "-m", "edge_node", *argv], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())

    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    assert lines[0] == f"provisioning node {NODE} under {root} (simulated sensors)"
    assert lines[1].startswith("[PASS] detect.")  # progress: one line per check as it completes
    assert f"PASS: node {NODE}" in result.stdout
    assert report["result"] == "PASS" and report["node"] == NODE and report["version"]
    assert all({"name", "result", "detail", "seconds"} <= set(c) for c in report["checks"])
    checks = _checks(report)
    for prefix in (*ALL_STEPS, *INSTALL):
        assert any(name.startswith(prefix) for name in checks), f"{prefix} missing from {list(checks)}"
    assert {"detect.bme280", "detect.sds011", "selftest.bme280", "selftest.host"} <= set(checks)
    assert all(c["result"] == "PASS" for c in report["checks"])
    assert checks["config.written"]["measured"]["config_hash"] == report["config_hash"]
    assert "staged under" in checks["install.service"]["detail"]

    # Secrets: 0600, copied under the root, never shown anywhere.
    etc = root / "etc/edge-node"
    assert stat.S_IMODE((etc / "secret").stat().st_mode) == 0o600
    assert (etc / "secret").read_text().strip() == password
    assert stat.S_IMODE((etc / "config.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE((etc / "ca.pem").stat().st_mode) == 0o644
    # The node's key pair for secrets sent to it (rotate-password), its public key in the report.
    assert stat.S_IMODE((etc / "node.key").stat().st_mode) == 0o600
    node_key = (etc / "node.key").read_bytes()
    assert report["node_key"] == node_public_key(node_key) and report["node_key"].startswith("x25519:")
    text = (etc / "config.toml").read_text()
    for place in (
        output,
        json.dumps(report),
        text,
        (root / "etc/systemd/system/edge-node.service").read_text(),
    ):
        assert password not in place

    # The config names the node's real paths, and loads (through the root mapping) as the daemon's.
    assert 'password_file = "/etc/edge-node/secret"' in text and 'ca_file = "/etc/edge-node/ca.pem"' in text
    config = config_view(Path("/etc/edge-node/config.toml"), root)
    assert config.node.id == NODE and config.node.lat == 41.563 and config.broker.tls
    assert config.broker.password_file == etc / "secret" and config.broker.password() == password
    assert config.buffer.path == root / "var/lib/edge-node/buffer.db"
    assert config.config_hash == report["config_hash"]
    assert 'node_key = "/etc/edge-node/node.key"' in text and config.remote.node_key == etc / "node.key"
    assert all("sim" in s.options.values() for s in config.sensors.values())  # --simulate: the sim buses
    assert not (root / "var/lib/edge-node").exists()  # provision never touches the buffer's directory

    # The daemon runs for a while: a buffer with rows and its seq reservation beside it.
    _fill_buffer(config.buffer.path, 5)
    before = _fingerprint(config.buffer.path.parent)
    unit_before = (root / "etc/systemd/system/edge-node.service").stat().st_mtime

    status, output, report = _provision(argv, capsys)

    assert status == 0, output
    checks = _checks(report)
    assert "unchanged" in checks["config.written"]["detail"]
    assert set(checks["config.written"]["measured"]["files"].values()) == {"unchanged"}
    assert "unchanged" in checks["install.unit"]["detail"]
    assert (etc / "node.key").read_bytes() == node_key and report["node_key"] == node_public_key(node_key)
    assert (root / "etc/systemd/system/edge-node.service").stat().st_mtime == unit_before
    assert _fingerprint(config.buffer.path.parent) == before
    reopened = Store(config.buffer.path, max_rows=1000, max_bytes=10**7, sync_interval_s=1)
    reopened.open()
    assert reopened.backlog == 5 and reopened.next_seq == 6
    reopened.close()


def test_a_wrong_broker_port_fails_broker_connect_with_exit_1(city, tmp_path, capsys):
    url = f"mqtts://localhost:{free_port()}"
    status, output, report = _provision(_argv(city, tmp_path, url=url), capsys, detect_options=NO_PULSES)
    assert status == 1
    failed = [c["name"] for c in report["checks"] if c["result"] == "FAIL"]
    assert "broker.connect" in failed
    assert not [name for name in failed if not name.startswith("broker.")]
    (summary,) = [line for line in output.splitlines() if line.startswith(f"FAIL: node {NODE}")]
    assert "broker.connect" in summary


def test_a_missing_sensor_fails_its_detect_check(city, tmp_path, capsys):
    node = SimulatedNode(bme280_chip_id=None)
    status, output, report = _provision(
        _argv(city, tmp_path),
        capsys,
        detect_options={**NO_PULSES, "simulate": node},
    )
    assert status == 1
    failed = [c["name"] for c in report["checks"] if c["result"] == "FAIL"]
    assert failed == ["detect.bme280"], output
    assert "bme280" not in config_view(Path("/etc/edge-node/config.toml"), tmp_path / "root").sensors


BAD_ARGUMENTS = {
    "node_id": (["--node-id", "TRS 42"], "--node-id: must match"),
    "scheme": (["--broker", "http://localhost:1883"], "--broker: must start with mqtt:// or mqtts://"),
    "credentials_in_url": (
        ["--broker", "mqtts://u:hunter2@localhost"],
        "--broker: must not contain credentials",
    ),
    "password_file": (["--password-file", "/nonexistent/secret"], "--password-file: cannot read"),
    "both_credentials": (["--client-cert", "x.pem", "--client-key", "x.key"], "either --username"),
    "lat_alone": (["--lon", None], "--lat and --lon go together"),
    "ca_is_not_a_cert": (["--ca", "PASSWORD"], "--ca:"),
    "prefix": (["--topic-prefix", "city/#"], "--topic-prefix:"),
    "missing_broker": (["--broker", None], "required: --broker"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_give_one_line_and_exit_2(city, tmp_path, capsys, case):
    changes, expected = BAD_ARGUMENTS[case]
    argv = _argv(city, tmp_path)
    option, value = changes[0], changes[1]
    if value == "PASSWORD":
        value = str(city.password_file(NODE, tmp_path))
    if option in argv:
        i = argv.index(option)
        del argv[i : i + 2]
    if value is not None:
        argv += [option, value]
    argv += changes[2:]
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err and "hunter2" not in captured.err
    assert not (tmp_path / "root").exists()  # nothing touched


def test_bad_arguments_through_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edge_node", "provision", "--node-id", "Bad_Node", "--site", "x"]
        + ["--broker", "mqtt://localhost", "--username", "u", "--password-file", os.devnull]
        + ["--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "edge-node provision: --node-id: must match ^[a-z0-9][a-z0-9-]{0,31}$ (got 'Bad_Node')"
    )


HARDWARE_CONFIG = """
[node]
id = "trs-0042"
[broker]
url = "mqtt://127.0.0.1:1883"
[sensors.bme280]
driver = "bme280"
bus = "i2c:3"
[sensors.sds011]
driver = "sds011"
port = "spy:///dev/ttyUSB0"
[sensors.rain]
driver = "rain_gauge"
pin = 6
[sensors.wind]
driver = "anemometer"
pin = 5
[sensors.host]
driver = "pi_health"
"""


def test_install_allows_exactly_the_configured_devices(tmp_path, capsys):
    """`edge-node install --root`: the unit verifies, runs this edge-node on this config, and
    opens only the configured devices; a second install changes nothing."""
    etc = tmp_path / "root/etc/edge-node"
    etc.mkdir(parents=True)
    (etc / "config.toml").write_text(HARDWARE_CONFIG)
    argv = ["install", "-c", "/etc/edge-node/config.toml", "--root", str(tmp_path / "root"), "--json"]

    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in report["checks"]] == list(INSTALL)
    unit = (tmp_path / "root/etc/systemd/system/edge-node.service").read_text()
    allowed = [line for line in unit.splitlines() if line.startswith("DeviceAllow=")]
    assert allowed == [
        "DeviceAllow=/dev/i2c-3 rw",
        "DeviceAllow=/dev/ttyUSB0 rw",
        "DeviceAllow=/dev/gpiochip0 rw",
    ]
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert (
        exec_start
        == f"ExecStart={Path(sys.executable).parent / 'edge-node'} run -c /etc/edge-node/config.toml"
    )
    assert "DevicePolicy=closed" in unit and "Type=notify" in unit

    assert main(argv) == 0
    assert "unchanged" in _checks(json.loads(capsys.readouterr().out))["install.unit"]["detail"]


def test_install_fails_on_a_unit_that_systemd_analyze_rejects(tmp_path, capsys, monkeypatch):
    import provisioning.install

    monkeypatch.setattr(provisioning.install, "edge_node_command", lambda: "/nonexistent/edge-node")
    etc = tmp_path / "root/etc/edge-node"
    etc.mkdir(parents=True)
    (etc / "config.toml").write_text(HARDWARE_CONFIG)
    assert main(["install", "--root", str(tmp_path / "root")]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] install.unit: systemd-analyze verify:" in out and "/nonexistent/edge-node" in out
    assert not (tmp_path / "root/etc/systemd/system/edge-node.service").exists()


def test_reprovisioning_another_nodes_config_needs_yes(city, tmp_path, capsys):
    etc = tmp_path / "root/etc/edge-node"
    etc.mkdir(parents=True)
    (etc / "config.toml").write_text('[node]\nid = "trs-0043"\n[broker]\nurl = "mqtt://localhost"\n')
    assert main(_argv(city, tmp_path)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "belongs to node trs-0043; rerun with --yes" in line
    assert (etc / "config.toml").read_text().count("trs-0043") == 1  # untouched
    assert not (etc / "secret").exists()


def _failed(report: dict) -> list[str]:
    return [c["name"] for c in report["checks"] if c["result"] == "FAIL"]


def test_a_wrong_password_fails_broker_connect_only(city, tmp_path, capsys):
    argv = _argv(city, tmp_path)
    Path(argv[argv.index("--password-file") + 1]).write_text("not-the-password\n")
    status, output, report = _provision(argv, capsys, detect_options=NO_PULSES)
    assert status == 1
    assert [n for n in _failed(report) if not n.startswith("broker.")] == []
    assert "not authorised" in _checks(report)["broker.connect"]["detail"]
    assert "not-the-password" not in output + json.dumps(report)


def test_an_untrusted_ca_fails_broker_connect_naming_the_certificate(city, tmp_path, capsys):
    argv = _argv(city, tmp_path)
    argv[argv.index("--ca") + 1] = str(city.rogue_ca)
    status, output, report = _provision(argv, capsys, detect_options=NO_PULSES)
    assert status == 1
    assert [n for n in _failed(report) if not n.startswith("broker.")] == []
    assert "certificate" in _checks(report)["broker.connect"]["detail"]


def test_a_stuck_sensor_fails_its_selftest_only(city, tmp_path, capsys):
    """A node whose config (kept across reruns) makes the simulated BME280 freeze."""
    status, _, _ = _provision(_argv(city, tmp_path), capsys, detect_options=NO_PULSES)
    assert status == 0
    config = tmp_path / "root" / "etc" / "edge-node" / "config.toml"
    config.write_text(config.read_text() + '\n[[simulation.faults]]\nsensor = "bme280"\nfault = "stuck"\n')
    status, output, report = _provision(
        _argv(city, tmp_path),
        capsys,
        detect_options=NO_PULSES,
        selftest_options={"reads": 3, "spacing_s": 0.2},
    )
    assert status == 1
    assert _failed(report) == ["selftest.bme280"], output
    assert "stuck" in _checks(report)["selftest.bme280"]["detail"]
