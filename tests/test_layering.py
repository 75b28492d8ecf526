"""The layers of STYLE.md, held by a test, with no exceptions:

- drivers import nothing of ours but drivers; a sensor's driver (sensors/X/driver.py, and its
  sans-IO protocol.py) the same, and its own folder's driver code;
- simulators import drivers and simulators; a sensor's simulator also its own folder's driver code;
- the registry and the components' declarations (the rest of sensors/) import drivers and
  sensors, and simulators only inside a function, when a simulated node is built;
- edge_node (the daemon) reaches the sensors only through the registry (sensors, sensors.component,
  ...), never a component's own modules, and never imports simulators or the tools:
  provisioning and operations register their subcommands by name (edge_node.cli.SUBCOMMANDS)
  and are loaded only when asked for.
And the daemon never loads rich (the fleet view's live table): a node's memory is the daemon's."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"drivers", "simulators", "sensors", "edge_node", "provisioning", "operations", "city"}
REGISTRY = ["sensors", "sensors.component", "sensors.schema", "sensors.buses", "sensors.simulation"]
# the registry and what the components share (pulses.py, i2c_detect.py, ...): sensors/*.py
SENSORS_SHARED = [
    "sensors",
    *(f"sensors.{p.stem}" for p in sorted((ROOT / "sensors").glob("*.py")) if p.stem != "__init__"),
]
SENSOR_DRIVER = ["drivers", "drivers.*", "sensors.{own}.driver", "sensors.{own}.protocol"]
# layer -> (modules it may import at the top of a file, modules it may import inside a function)
ALLOWED = {
    "drivers": (["drivers", "drivers.*"], []),
    "sensor driver": (SENSOR_DRIVER, []),
    "simulators": (["drivers", "drivers.*", "simulators", "simulators.*"], []),
    "sensor simulator": ([*SENSOR_DRIVER, "simulators", "simulators.*"], []),
    # the registry, the components' declarations and detect probes: simulators only when a
    # simulated node is built, so loading the config never loads a simulator
    "sensors": (
        [
            *SENSORS_SHARED,
            "drivers",
            "drivers.*",
            "sensors.{own}.driver",
            "sensors.{own}.protocol",
        ],
        ["simulators", "simulators.*", "sensors.{own}.simulator", "sensors.{own}.detect"],
    ),
    "edge_node": (["edge_node", "edge_node.*", "drivers", "drivers.*", *REGISTRY], []),
    "provisioning": (
        ["provisioning", "provisioning.*", "edge_node", "edge_node.*", "drivers", "drivers.*", *REGISTRY],
        [],
    ),
    "operations": (
        [
            "operations",
            "operations.*",
            "provisioning",
            "provisioning.*",
            "edge_node",
            "edge_node.*",
            "drivers",
            "drivers.*",
            *REGISTRY,
            "city",  # the street table of the simulated city
            "city.*",
        ],
        [],
    ),
    "city": (
        ["city", "city.*", "edge_node", "edge_node.*"],
        [],
    ),  # the wire contract's schemas, never the reverse
}


def layer(rel: str) -> str:
    parts = rel.split("/")
    if parts[0] == "sensors" and len(parts) == 3:
        if parts[2] in ("driver.py", "protocol.py"):
            return "sensor driver"
        if parts[2] == "simulator.py":
            return "sensor simulator"
    return parts[0]


def imports(path: Path, rel: str) -> list[tuple[str, bool]]:
    """(module, imported inside a function) for each import of ours, relative ones resolved."""
    package = rel.removesuffix(".py").replace("/", ".").split(".")
    package = package[:-1]
    found = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                if child.module:
                    found.append((module, inner))
                else:  # from . import x: the module x of that package, or a name of the package
                    for alias in child.names:
                        sub = f"{module}.{alias.name}"
                        is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists()
                        found.append((sub if is_module else module, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return [(m, inner) for m, inner in found if m.split(".")[0] in OURS]


@pytest.mark.parametrize("package", sorted(OURS))
def test_each_layer_imports_only_what_it_may(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        on_top, inside = ALLOWED[layer(rel)]
        own = rel.split("/")[1] if rel.startswith("sensors/") else ""
        for module, nested in imports(path, rel):
            allowed = [p.format(own=own) for p in (on_top + inside if nested else on_top)]
            if not any(fnmatch.fnmatchcase(module, pattern) for pattern in allowed):
                wrong.append(f"{rel} imports {module}" + (" (in a function)" if nested else ""))
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


def test_edge_node_status_reads_status_json_without_loading_the_daemon():
    probe = (
        "import sys, provisioning.status;"
        "assert 'edge_node.daemon' not in sys.modules, 'status.json has one home: edge_node.status_file'"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, timeout=60)
