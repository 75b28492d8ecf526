"""The PMS5003, SHT4x and DNMS keep the driver contract, on their simulators and (EDGE_NODE_HW=1)
on real parts: EDGE_NODE_PMS5003_PORT (default /dev/serial0), EDGE_NODE_I2C_BUS (1),
EDGE_NODE_SHT4X_ADDRESS (0x44); the DNMS answers at 0x55."""

from __future__ import annotations

import os

import pytest

from drivers import Driver

from .test_contract_sensors import _assert_reading


def _i2c_bus(kind: str, address: int, simulated):
    if kind == "sim":
        from simulators.i2c import SimI2CBus

        return SimI2CBus({address: simulated()})
    from drivers.buses.linux_i2c import LinuxI2C

    return LinuxI2C(int(os.environ.get("EDGE_NODE_I2C_BUS", "1")))


@pytest.fixture
def environment():
    from simulators.environment import Environment

    return Environment(seed=1)


@pytest.fixture
def pms5003(bus_kind, environment):
    from sensors.pms5003.driver import PMS5003Driver

    device = None
    if bus_kind == "sim":
        from sensors.pms5003.simulator import SimPMS5003

        def air():
            c = environment.now()
            return c.pm1, c.pm2_5, c.pm10

        device = SimPMS5003(air, frame_interval_s=0.1, startup_s=0.1).start()
        port = device.port
    else:
        port = os.environ.get("EDGE_NODE_PMS5003_PORT", "/dev/serial0")
    driver = PMS5003Driver(port)
    yield driver
    driver.close()
    if device is not None:
        device.stop()


@pytest.fixture
def sht4x(bus_kind, environment):
    from sensors.sht4x.driver import SHT4xDriver
    from sensors.sht4x.simulator import SimSHT4x

    address = int(os.environ.get("EDGE_NODE_SHT4X_ADDRESS", "0x44"), 0)

    def simulated():
        return SimSHT4x(lambda: (environment.now().temperature_c, environment.now().humidity_rh))

    driver = SHT4xDriver(_i2c_bus(bus_kind, address, simulated), address)
    yield driver
    driver.close()


@pytest.fixture
def dnms(bus_kind, environment):
    from sensors.dnms.driver import DNMSDriver
    from sensors.dnms.simulator import SimDNMS

    driver = DNMSDriver(_i2c_bus(bus_kind, 0x55, lambda: SimDNMS(lambda: environment.now().noise_dba)))
    yield driver
    driver.close()


def test_pms5003_is_a_driver_that_reads_pm_and_particle_counts(pms5003):
    assert isinstance(pms5003, Driver)
    pms5003.open()
    reading = pms5003.read()
    _assert_reading(pms5003, reading)
    v = reading.values
    assert 0 <= v["pm1"] <= v["pm2_5"] <= v["pm10"] < 1000
    assert v["n0_3"] >= v["n0_5"] >= v["n1_0"] >= v["n2_5"] >= v["n5_0"] >= v["n10"] >= 0
    assert pms5003.units["pm2_5"] == "ug/m3" and pms5003.units["n0_3"] == "count/0.1L"
    result = pms5003.probe()
    assert result.found, result.detail
    assert result.info["firmware"]


def test_sht4x_is_a_driver_that_reads_plausible_air(sht4x):
    assert isinstance(sht4x, Driver)
    sht4x.open()
    reading = sht4x.read()
    _assert_reading(sht4x, reading)
    assert -40 <= reading.values["temperature"] <= 125
    assert 0 <= reading.values["humidity"] <= 100
    assert sht4x.units == {"temperature": "Cel", "humidity": "%RH"}
    result = sht4x.probe()
    assert result.found, result.detail
    assert result.info["serial_number"]


def test_dnms_is_a_driver_that_reads_the_street_level(dnms):
    assert isinstance(dnms, Driver)
    dnms.open()
    reading = dnms.read()
    _assert_reading(dnms, reading)
    v = reading.values
    assert 20 <= v["lamin"] <= v["laeq"] <= v["lamax"] <= 130
    assert set(dnms.units.values()) == {"dB(A)"}
    result = dnms.probe()
    assert result.found, result.detail
    assert result.info["version"].startswith("DNMS")
