"""What every driver promises, on the simulated bus and (EDGE_NODE_HW=1) on the real one."""

from __future__ import annotations

import json
import math

from drivers import Driver, Reading


def _assert_reading(driver, reading: Reading) -> None:
    assert isinstance(reading, Reading)
    assert reading.values, "a reading has values"
    for name, value in reading.values.items():
        assert name in driver.units, f"{name} has a unit"
        assert isinstance(value, float | int) and math.isfinite(value)
    json.dumps({"values": dict(reading.values), "quality": list(reading.quality)}, allow_nan=False)


def test_bme280_is_a_driver_that_reads_plausible_air(bme280):
    assert isinstance(bme280, Driver)
    bme280.open()
    reading = bme280.read()
    _assert_reading(bme280, reading)
    assert -40 <= reading.values["temperature"] <= 85
    assert 0 <= reading.values["humidity"] <= 100
    assert 300 <= reading.values["pressure"] <= 1100
    assert "out_of_range" not in reading.quality


def test_bme280_probe_finds_it_without_raising(bme280):
    result = bme280.probe()
    assert result.found, result.detail
    assert result.info["chip_id"] == 0x60


def test_pi_health_is_a_driver_that_reads_the_host(pi_health):
    assert isinstance(pi_health, Driver)
    pi_health.open()
    reading = pi_health.read()
    _assert_reading(pi_health, reading)
    assert reading.values["mem_available_mb"] > 0
    assert reading.values["disk_free_mb"] > 0
    assert pi_health.probe().found
