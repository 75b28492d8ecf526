"""One contract suite, two buses: "sim" always; "hw" on a real node when EDGE_NODE_HW=1.

On a Pi, a technician runs `EDGE_NODE_HW=1 pytest tests/contract` (with, where they differ from the
defaults, EDGE_NODE_I2C_BUS=1, EDGE_NODE_BME280_ADDRESS=0x76). The same assertions hold for both.
"""

from __future__ import annotations

import os

import pytest

from sensors import components
from sensors.buses import open_bus
from sensors.component import Place
from sensors.schema import validate_table
from sensors.simulation import SimulatedNode

HW = os.environ.get("EDGE_NODE_HW") == "1"


@pytest.fixture(params=["sim", pytest.param("hw", marks=pytest.mark.hw)])
def bus_kind(request):
    if request.param == "hw" and not HW:
        pytest.skip("real hardware: set EDGE_NODE_HW=1 on a node")
    return request.param


def _build(driver: str, bus_kind: str, tmp_path, node: SimulatedNode, **options):
    """The driver as the daemon builds it from a config table: its component opens the bus,
    real or (bus_kind "sim") the simulated node's, and builds the driver on it."""
    component = components()[driver]
    if bus_kind == "sim":
        options[component.bus] = "sim"
    options = validate_table(options, component.options)
    bus = open_bus(component, driver, options, node)
    return component.build(bus, options, Place(state_path=tmp_path / f"{driver}.json", buffer_dir=tmp_path))


@pytest.fixture
def node():
    node = SimulatedNode(seed=1)
    yield node
    node.close()


@pytest.fixture
def bme280(bus_kind, tmp_path, node):
    address = int(os.environ.get("EDGE_NODE_BME280_ADDRESS", "0x76"), 0)
    bus = f"i2c:{os.environ.get('EDGE_NODE_I2C_BUS', '1')}"
    driver = _build("bme280", bus_kind, tmp_path, node, bus=bus, address=address)
    yield driver
    driver.close()


@pytest.fixture
def pi_health(bus_kind, tmp_path, node):
    driver = _build("pi_health", bus_kind, tmp_path, node)
    node.step()
    yield driver


@pytest.fixture
def sds011(bus_kind, tmp_path, node):
    driver = _build(
        "sds011", bus_kind, tmp_path, node, port=os.environ.get("EDGE_NODE_SDS011_PORT", "/dev/serial0")
    )
    yield driver
    driver.close()


@pytest.fixture(params=["rain_gauge", "anemometer"])
def pulse_sensor(request, bus_kind, tmp_path):
    """A pulse sensor with pulses arriving: on the simulated node's detect bench (a steady 5 Hz),
    or (hw) tipped/turned by the technician."""
    component = components()[request.param]
    pin = int(os.environ.get(f"EDGE_NODE_{component.name.upper()}_PIN", component.pin))
    node = SimulatedNode(seed=1, pins={component.name: pin}, rain_hz=5.0, wind_hz=5.0)
    if bus_kind == "sim":
        node.start()
        factory = node.pin_factory()
    else:
        factory = open_bus(component, component.name, {"pin_factory": "lgpio"}, node)
    options = validate_table(
        {"pin": pin, "pin_factory": "sim" if bus_kind == "sim" else "lgpio"}, component.options
    )
    driver = component.build(factory, options, Place(state_path=tmp_path / "state.json", buffer_dir=tmp_path))
    yield driver
    driver.close()
    node.close()
