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
    from sensors.bme280.driver import BME280Driver

    address = int(os.environ.get("EDGE_NODE_BME280_ADDRESS", "0x76"), 0)
    if bus_kind == "sim":
        from sensors.bme280.simulator import SimBME280
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
    from drivers.host import PiHealthDriver

    if bus_kind == "sim":
        from simulators.host import SimHost

        host = SimHost(tmp_path / "host", seed=1)
        host.update()
        yield PiHealthDriver(host.root, disk_path=tmp_path)
    else:
        yield PiHealthDriver("/", disk_path="/var/lib")


@pytest.fixture
def sds011(bus_kind, tmp_path):
    from sensors.sds011.driver import SDS011Driver

    if bus_kind == "sim":
        from sensors.sds011.simulator import SimSDS011
        from simulators.environment import Environment

        env = Environment(seed=1)
        device = SimSDS011(lambda: (env.now().pm2_5, env.now().pm10), frame_interval_s=0.1).start()
        driver = SDS011Driver(device.port, state_path=tmp_path / "sds011.json")
        yield driver
        driver.close()
        device.stop()
    else:
        driver = SDS011Driver(
            os.environ.get("EDGE_NODE_SDS011_PORT", "/dev/serial0"), state_path=tmp_path / "s.json"
        )
        yield driver
        driver.close()


@pytest.fixture(params=["rain_gauge", "anemometer"])
def pulse_sensor(request, bus_kind, tmp_path):
    """A pulse sensor with pulses arriving: simulated, or (hw) turned/tipped by the technician."""
    from drivers.pulse_counter import make_pin_factory
    from sensors.anemometer.driver import AnemometerDriver
    from sensors.rain_gauge.driver import RainGaugeDriver

    cls, pin_env, default_pin = {
        "rain_gauge": (RainGaugeDriver, "EDGE_NODE_RAIN_PIN", 6),
        "anemometer": (AnemometerDriver, "EDGE_NODE_WIND_PIN", 5),
    }[request.param]
    pin = int(os.environ.get(pin_env, default_pin))
    factory = make_pin_factory("sim" if bus_kind == "sim" else "lgpio")
    source = None
    if bus_kind == "sim":
        from simulators.gpio import SimPulseSource

        source = SimPulseSource(factory, pin, lambda: 5.0).start()
    driver = cls(pin, pin_factory=factory, state_path=tmp_path / "state.json")
    yield driver
    driver.close()
    if source is not None:
        source.stop()
