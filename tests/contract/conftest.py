"""One contract suite, two buses: "sim" always; "hw" on a real node when EDGE_NODE_HW=1.

On a Pi, a technician runs `EDGE_NODE_HW=1 pytest tests/contract` (with, where they differ from the
defaults, EDGE_NODE_I2C_BUS=1, EDGE_NODE_BME280_ADDRESS=0x76). The same assertions hold for both.
"""

from __future__ import annotations

import os

import pytest

HW = os.environ.get("EDGE_NODE_HW") == "1"


@pytest.fixture(params=["sim", pytest.param("hw", marks=pytest.mark.hw)])
def bus_kind(request):
    if request.param == "hw" and not HW:
        pytest.skip("real hardware: set EDGE_NODE_HW=1 on a node")
    return request.param


@pytest.fixture
def bme280(bus_kind):
    from drivers.bme280 import BME280Driver

    address = int(os.environ.get("EDGE_NODE_BME280_ADDRESS", "0x76"), 0)
    if bus_kind == "sim":
        from simulators.bme280 import SimBME280
        from simulators.environment import Environment
        from simulators.i2c import SimI2CBus

        env = Environment(seed=1)

        def conditions():
            c = env.now()
            return c.temperature_c, c.humidity_rh, c.pressure_hpa

        bus = SimI2CBus({address: SimBME280(conditions)})
    else:
        from drivers.buses.linux_i2c import LinuxI2C

        bus = LinuxI2C(int(os.environ.get("EDGE_NODE_I2C_BUS", "1")))
    driver = BME280Driver(bus, address)
    yield driver
    driver.close()


@pytest.fixture
def pi_health(bus_kind, tmp_path):
    from drivers.pi_health import PiHealthDriver

    if bus_kind == "sim":
        from simulators.host import SimHost

        host = SimHost(tmp_path / "host", seed=1)
        host.update()
        yield PiHealthDriver(host.root, disk_path=tmp_path)
    else:
        yield PiHealthDriver("/", disk_path="/var/lib")
