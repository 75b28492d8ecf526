"""The layers of STYLE.md, held by a test: drivers import nothing of ours; simulators only
drivers; edge_node (the daemon) reaches simulators only through the backend registry
(sensors.py) and never imports the tools: provisioning and operations register their subcommands
by name (edge_node.cli.SUBCOMMANDS) and are loaded only when asked for. And the daemon never loads
rich (the fleet view's live table): a node's memory is the daemon's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"drivers", "simulators", "edge_node", "provisioning", "operations", "city"}
ALLOWED = {
    "drivers": {"drivers"},
    "simulators": {"simulators", "drivers"},
    "edge_node": {"edge_node", "drivers"},
    "provisioning": {"provisioning", "edge_node", "drivers", "simulators"},
    "operations": {"operations", "edge_node", "drivers", "simulators", "provisioning", "city"},
    "city": {"city", "edge_node"},  # the city's side: the wire contract's schemas, never the reverse
}
EXCEPTIONS = {  # (file, package it may import besides its layer's)
    ("edge_node/sensors.py", "simulators"),  # the backend registry: "sim" picks a simulator
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for imported in imports(path) - ALLOWED[package]:
            if (rel, imported) not in EXCEPTIONS:
                wrong.append(f"{rel} imports {imported}")
    assert wrong == []


def test_the_daemon_and_the_cli_never_import_rich():
    probe = (
        "import sys, edge_node.cli, edge_node.daemon, edge_node.store, edge_node.forwarder, edge_node.remote;"
        "import drivers.host;"
        "edge_node.cli.build_parser();"  # what `edge-node run` does before it starts the daemon
        "assert 'rich' not in sys.modules, sorted(m for m in sys.modules if m.startswith('rich'))\n"
        # ~7 MB of RSS: loaded only when a signed command arrives (edge_node.signing)
        "assert 'cryptography' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, timeout=60)


def test_the_daemon_does_not_load_the_tools():
    """`edge-node run` parses its own subcommand only: the fleet view, the simulator and the
    provisioning tools stay out of the node's memory."""
    script = (
        "import sys\n"
        "from edge_node import cli\n"
        "assert cli.main(['run', '-c', '/nonexistent/config.toml']) == 2\n"
        "loaded = [m for m in ('operations', 'provisioning', 'http.server', 'city', 'psycopg', 'aiohttp',"
        " 'jsonschema')"
        " if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
