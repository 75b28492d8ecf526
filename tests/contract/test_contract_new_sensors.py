"""The PMS5003, SHT4x and DNMS keep the driver contract, on their simulators and (EDGE_NODE_HW=1)
on real parts: EDGE_NODE_PMS5003_PORT (default /dev/serial0), EDGE_NODE_I2C_BUS (1),
EDGE_NODE_SHT4X_ADDRESS (0x44); the DNMS answers at 0x55."""

from __future__ import annotations

import os

import pytest

from drivers import Driver

from .conftest import _build
from .test_contract_sensors import _assert_reading

I2C_BUS = f"i2c:{os.environ.get('EDGE_NODE_I2C_BUS', '1')}"


@pytest.fixture
def pms5003(bus_kind, tmp_path, node):
    port = os.environ.get("EDGE_NODE_PMS5003_PORT", "/dev/serial0")
    driver = _build("pms5003", bus_kind, tmp_path, node, port=port)
    yield driver
    driver.close()


@pytest.fixture
def sht4x(bus_kind, tmp_path, node):
    address = int(os.environ.get("EDGE_NODE_SHT4X_ADDRESS", "0x44"), 0)
    driver = _build("sht4x", bus_kind, tmp_path, node, bus=I2C_BUS, address=address)
    yield driver
    driver.close()


@pytest.fixture
def dnms(bus_kind, tmp_path, node):
    driver = _build("dnms", bus_kind, tmp_path, node, bus=I2C_BUS)
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
