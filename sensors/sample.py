"""The sensors' part of the shipped sample config (`edge_node/config.sample.toml`), written from
the registry: each component's commented table, and the faults each offers under simulation.

`python -m sensors.sample` rewrites that part of the file in place (after adding a sensor);
tests/test_sensor_registry.py checks that it is current.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from . import components

SAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "edge_node" / "config.sample.toml"
TABLES = (
    "# -- the sensor tables, from sensors/*/ (python -m sensors.sample) --\n",
    "# -- end of the sensor tables --\n",
)
FAULTS = ("# -- the faults, from sensors/*/ (python -m sensors.sample) --\n", "# -- end of the faults --\n")


def _between(text: str, markers: tuple[str, str], body: str) -> str:
    begin, end = markers
    head, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise ValueError(f"the sample config has no {begin.strip()!r} ... {end.strip()!r}")
    return head + begin + body + end + rest.partition(end)[2]


def render(text: str) -> str:
    """`text` (the sample config) with its sensor tables and fault list from the registry."""
    tables = "\n".join(c.sample for c in components().values())
    faults = "; ".join(f"{c.driver} {'/'.join(c.faults)}" for c in components().values() if c.faults)
    listed = textwrap.fill(
        f"Faults per driver: {faults}.",
        width=98,
        initial_indent="# ",
        subsequent_indent="# ",
        break_on_hyphens=False,
    )
    return _between(_between(text, TABLES, "\n" + tables + "\n"), FAULTS, listed + "\n")


def main() -> int:
    text = SAMPLE_CONFIG.read_text(encoding="utf-8")
    SAMPLE_CONFIG.write_text(render(text), encoding="utf-8")
    print(f"wrote {SAMPLE_CONFIG}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
