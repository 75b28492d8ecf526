"""The systemd unit: `systemd-analyze verify` passes and `security` rates it at or under 2.0."""

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


def test_unit_is_rated_at_or_under_2(unit):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = float(re.search(r"Overall exposure level for edge-node.service: ([\d.]+)", result.stdout)[1])
    assert exposure <= 2.0


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
