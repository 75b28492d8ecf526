"""`pip install .` gives a working `edge-node`: the wheel carries the code, its data and the script."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_a_working_edge_node(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("edge_node-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in [
        "edge_node/config.sample.toml",
        "edge_node/schemas/reading.json",
        "sensors/bme280/driver.py",
        "sensors/bme280/simulator.py",
        "operations/__init__.py",
        "provisioning/__init__.py",
        "provisioning/edge-node.service",
    ]:
        assert expected in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edge-node = edge_node.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    probe = (
        "import edge_node, edge_node.schemas as s, importlib.resources as r;"
        f"assert edge_node.__file__.startswith({str(target)!r});"
        "s.load('heartbeat'); r.files('edge_node').joinpath('config.sample.toml').read_text()"
    )
    subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge_node", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        timeout=60,
    )
    assert result.stdout.startswith("edge-node ")
