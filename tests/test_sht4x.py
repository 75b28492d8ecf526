"""SHT4x: Adafruit's driver on our bus against the command-level simulator: conversions and CRC
as the datasheet gives them, the heater policy against condensation, and the faults."""

from __future__ import annotations

import time

import pytest

from drivers import BusError, Driver, SensorFault, SensorNotFound
from drivers.sensirion import CRCError, crc8, decode_words, encode_words
from sensors.sht4x.driver import HEATER_ABOVE_RH, SHT4xDriver
from sensors.sht4x.simulator import SimSHT4x, raw_humidity, raw_temperature
from simulators.i2c import SimI2CBus


def test_crc8_is_sensirions():
    assert crc8(bytes([0xBE, 0xEF])) == 0x92  # the datasheet's example
    assert encode_words([0xBEEF]) == bytes([0xBE, 0xEF, 0x92])
    assert decode_words(bytes([0xBE, 0xEF, 0x92, 0x00, 0x00, crc8(b"\0\0")])) == [0xBEEF, 0]
    with pytest.raises(CRCError, match="word 0"):
        decode_words(bytes([0xBE, 0xEF, 0x93]))


def test_raw_values_are_the_datasheets_conversion():
    assert raw_temperature(-45.0) == 0 and raw_temperature(130.0) == 0xFFFF
    assert raw_humidity(-6.0) == 0 and raw_humidity(119.0) == 0xFFFF
    assert -45 + 175 * raw_temperature(21.3) / 65535 == pytest.approx(21.3, abs=0.002)


class Air:
    def __init__(self) -> None:
        self.temperature, self.humidity = 21.0, 55.0

    def __call__(self):
        return self.temperature, self.humidity


class Time:
    """Monotonic time that sleeps can jump ahead: the cool-down's 10 s pass in no time, while the
    simulator still sees Adafruit's real 10 ms conversion waits."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def air():
    return Air()


@pytest.fixture
def clock():
    return Time()


@pytest.fixture
def sim(air, clock):
    return SimSHT4x(air, seed=3, clock=clock)


@pytest.fixture
def driver(sim, clock):
    return SHT4xDriver(SimI2CBus({0x44: sim}), clock=clock, sleep=clock.sleep)


def test_it_reads_the_air_through_adafruits_driver(driver, air):
    assert isinstance(driver, Driver)
    driver.open()
    assert driver.serial_number == 0x1F2E3D4C
    reading = driver.read()
    assert reading.values["temperature"] == pytest.approx(21.0, abs=0.2)
    assert reading.values["humidity"] == pytest.approx(55.0, abs=0.5)
    assert reading.quality == ()
    assert driver.units == {"temperature": "Cel", "humidity": "%RH"}


def test_condensation_is_dried_by_one_heater_pulse_and_the_die_cools_before_the_next_read(
    driver, sim, air, clock
):
    driver.open()
    air.humidity = 99.5  # fog: the film condenses
    assert driver.read().values["humidity"] >= HEATER_ABOVE_RH
    assert len(sim.heater_pulses) == 1 and sim.heater_pulses[0][1:] == (200, 1.0)
    air.humidity = 80.0  # the fog lifts, but the film is wet again from the pulse in fog
    assert driver.read().values["humidity"] >= 99.5
    assert len(sim.heater_pulses) == 1, "at most one pulse per heater_every_s"
    clock.offset += 300.0
    driver.read()  # reads 100 %RH, so a pulse: it dries the film
    assert len(sim.heater_pulses) == 2 and not sim.wet
    reading = driver.read()  # waited the cool-down: the die is back at the air's temperature
    assert reading.values["humidity"] == pytest.approx(80.0, abs=0.5)
    assert reading.values["temperature"] == pytest.approx(21.0, abs=0.2)
    assert driver.status()["heater_pulses"] == 2


def test_without_the_cool_down_the_next_reading_would_be_of_a_hot_die(sim, air, clock):
    hasty = SHT4xDriver(SimI2CBus({0x44: sim}), clock=clock, sleep=clock.sleep, cool_down_s=0.0)
    hasty.open()
    air.humidity = 97.0
    hasty.read()
    assert hasty.read().values["temperature"] > 30.0  # what the cool-down spares the data


def test_the_heater_can_be_switched_off(sim, air, clock):
    driver = SHT4xDriver(SimI2CBus({0x44: sim}), heater=False, clock=clock, sleep=clock.sleep)
    air.humidity = 99.5
    driver.read()
    driver.read()
    assert sim.heater_pulses == []


def test_no_chip_is_not_found_and_a_nack_later_is_a_bus_error(sim, driver):
    empty = SHT4xDriver(SimI2CBus({}))
    with pytest.raises(SensorNotFound, match="0x44"):
        empty.open()
    assert not empty.probe().found
    driver.open()
    sim.faults.nack = True
    with pytest.raises(BusError) as err:
        driver.read()
    assert err.value.errno == 121
    sim.faults.nack = False
    assert driver.read().values  # reopened


def test_a_damaged_crc_is_a_sensor_fault_and_the_next_read_recovers(sim, driver):
    driver.open()
    sim.faults.bad_crc = 1.0
    with pytest.raises(SensorFault, match="CRC"):
        driver.read()
    sim.faults.bad_crc = 0.0
    assert driver.read().values


def test_frozen_values_are_flagged_stuck(sim, driver):
    driver.open()
    sim.faults.stuck = True
    qualities = [driver.read().quality for _ in range(6)]
    assert "stuck" not in qualities[0] and "stuck" in qualities[-1]


def test_probe_reports_the_serial_number(driver):
    result = driver.probe()
    assert result.found, result.detail
    assert result.info["serial_number"] == "1f2e3d4c" and "Cel" in result.detail


def test_detect_finds_it_and_passes_it_as_not_fitted_when_absent():
    from provisioning.detect import detect
    from provisioning.report import Report
    from sensors.simulation import SimulatedNode

    report = Report("trs-0001", "h")
    found = detect(report, simulate=SimulatedNode(sht4x=True), listen_s=0.1)
    check = next(c for c in report.checks if c.name == "detect.sht4x")
    assert check.passed and "serial 1f2e3d4c" in check.detail
    assert found["sht4x"] == {"driver": "sht4x", "bus": "sim", "address": 0x44}
    report = Report("trs-0001", "h")
    detect(report, simulate=True, listen_s=0.1)
    check = next(c for c in report.checks if c.name == "detect.sht4x")
    assert check.passed and check.detail.startswith("no SHT4x fitted")
