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


def test_sds011_is_a_driver_that_reads_pm(sds011):
    assert isinstance(sds011, Driver)
    sds011.open()
    reading = sds011.read()
    _assert_reading(sds011, reading)
    assert 0 <= reading.values["pm2_5"] <= reading.values["pm10"] + 0.1 < 1000
    result = sds011.probe()
    assert result.found, result.detail
    assert result.info["firmware"]


def test_pulse_sensors_count_what_arrives(pulse_sensor):
    import time

    assert isinstance(pulse_sensor, Driver)
    pulse_sensor.open()
    pulse_sensor.read()
    time.sleep(1.5)  # on hardware: tip the bucket / spin the cups now
    reading = pulse_sensor.read()
    _assert_reading(pulse_sensor, reading)
    assert max(reading.values.values()) > 0, "pulses were counted"
