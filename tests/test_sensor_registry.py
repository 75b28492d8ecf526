"""The sensor registry (sensors/): one folder per sensor, one line to add it, and nothing else
naming a driver."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_node.config import parse_config
from sensors import COMPONENTS, components, sample
from sensors.buses import REAL

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = '[node]\nid = "trs-0001"\n[broker]\nurl = "mqtt://broker.example"\n'


def test_every_folder_is_registered_and_every_line_has_its_folder():
    folders = sorted(
        p.parent.name
        for p in (ROOT / "sensors").glob("*/__init__.py")
        if "COMPONENT = Component(" in p.read_text()
    )
    assert folders == sorted(COMPONENTS)
    assert [c.driver for c in components().values()] == list(COMPONENTS)


@pytest.mark.parametrize("driver", COMPONENTS)
def test_a_component_declares_what_the_house_reads(driver):
    component = components()[driver]
    assert component.bus in REAL, "its bus is one of the backends of sensors/buses.py"
    assert component.bus in component.options, "its bus option is one of its options"
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", component.name)
    assert component.summary and component.detect is not None
    config = parse_config(MINIMAL + component.sample, source="sample.toml")
    (sensor,) = config.sensors.values()
    assert (sensor.name, sensor.driver) == (component.name, driver)


def test_the_shipped_sample_config_is_written_from_the_registry():
    """After adding a sensor: `python -m sensors.sample`."""
    text = sample.SAMPLE_CONFIG.read_text(encoding="utf-8")
    assert sample.render(text) == text


def test_only_the_components_name_a_driver():
    """The daemon, the technician's tools, the history of a simulated node and the city ask the
    registry; none names a driver in its code (the city names quantities: pm2_5, laeq)."""
    quoted = re.compile("[\"']({})[\"']".format("|".join(COMPONENTS)))
    paths = [
        path for package in ("edge_node", "provisioning", "city") for path in (ROOT / package).rglob("*.py")
    ]
    named = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in sorted([*paths, ROOT / "operations" / "history.py"])
        for match in quoted.finditer(path.read_text())
    ]
    assert named == []
