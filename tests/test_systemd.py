"""The systemd unit: `systemd-analyze verify` passes and `security` rates it at or under 1.6."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "edge-node.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


@pytest.fixture
def unit(tmp_path) -> Path:
    """The shipped unit with ExecStart= pointing at this environment's edge-node, as install does."""
    command = Path(sys.executable).parent / "edge-node"
    assert command.exists()
    text = UNIT.read_text().replace("/usr/bin/edge-node", str(command))
    path = tmp_path / "edge-node.service"
    path.write_text(text)
    return path


def test_unit_verifies(unit):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "edge-node.service" not in result.stderr, result.stderr


def test_unit_is_rated_at_or_under_1_6(unit):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = float(re.search(r"Overall exposure level for edge-node.service: ([\d.]+)", result.stdout)[1])
    assert exposure <= 1.6  # DESIGN §8 asks 2.0; issue 11 keeps what was reached


def test_unit_has_the_designed_settings():
    text = UNIT.read_text()
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "StateDirectory=edge-node",
        "ConfigurationDirectory=edge-node",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "DevicePolicy=closed",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "SupplementaryGroups=i2c dialout gpio",
        "StartLimitBurst=",
    ]:
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)


def _directives(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_unit_bounds_what_a_bug_or_hostile_input_can_take():
    """Issue 11: memory, tasks and journal lines are bounded, and a blocked system call fails
    with EPERM rather than killing the daemon (SIGSYS) into its start limit."""
    settings = _directives(UNIT.read_text())
    assert settings["SystemCallErrorNumber"] == "EPERM"
    assert int(settings["TasksMax"]) <= 128
    memory_max = settings["MemoryMax"]
    assert memory_max.endswith("M") and 64 <= int(memory_max[:-1]) <= 256  # daemon ~30 MB
    assert settings["LogRateLimitIntervalSec"] and int(settings["LogRateLimitBurst"]) <= 1000
