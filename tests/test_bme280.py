"""BME280: the datasheet's compensation, the register-level simulator, Adafruit's driver
running unchanged through `BME280Driver`, injected faults, and the environment model."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import statistics

import pytest

from drivers import BusError, Driver, SensorNotFound, WrongDevice
from drivers.buses import I2CBus
from drivers.buses.linux_i2c import LinuxI2C
from sensors.bme280.driver import BME280Driver
from sensors.bme280.simulator import (
    DATASHEET_CALIBRATION,
    REG_CHIP_ID,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_PRESS_MSB,
    REG_RESET,
    Calibration,
    SimBME280,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    raw_values,
)
from simulators.environment import Environment
from simulators.i2c import SimI2CBus

ADDRESS = 0x76
JUNE_1_2024 = 1_717_200_000.0  # 00:00 UTC, a Saturday
JAN_8_2024 = 1_704_672_000.0  # 00:00 UTC, a Monday
HOUR = 3600.0
DAY = 86_400.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Node:
    """A simulated node's I2C side: environment -> SimBME280 -> SimI2CBus -> BME280Driver."""

    def __init__(self, seed: int = 42, t: float = JUNE_1_2024 + 10 * HOUR) -> None:
        self.clock = Clock(t)
        self.env = Environment(seed, clock=self.clock)
        self.sim = SimBME280(self.conditions)
        self.bus = SimI2CBus({ADDRESS: self.sim})
        self.driver = BME280Driver(self.bus, ADDRESS)

    def conditions(self) -> tuple[float, float, float]:
        c = self.env.now()
        return c.temperature_c, c.humidity_rh, c.pressure_hpa

    def expected(self) -> dict[str, float]:
        return dict(zip(("temperature", "humidity", "pressure"), self.conditions(), strict=True))

    def register(self, register: int, n: int = 1) -> bytes:
        out = bytearray(n)
        assert self.bus.try_lock()
        try:
            self.bus.writeto_then_readfrom(ADDRESS, bytes([register]), out)
        finally:
            self.bus.unlock()
        return bytes(out)

    def write(self, register: int, value: int) -> None:
        assert self.bus.try_lock()
        try:
            self.bus.writeto(ADDRESS, bytes([register, value]))
        finally:
            self.bus.unlock()


def assert_reads_back(reading, expected: dict[str, float]) -> None:
    # Half an ADC step at x1 oversampling (0.0025 Cel, up to 0.016 hPa), plus rounding to
    # 0.01 Cel, 0.1 %RH and 0.01 hPa.
    assert reading.values["temperature"] == pytest.approx(expected["temperature"], abs=0.01)
    assert reading.values["humidity"] == pytest.approx(expected["humidity"], abs=0.06)
    assert reading.values["pressure"] == pytest.approx(expected["pressure"], abs=0.03)


# --- Bosch's compensation and its inversion --------------------------------------------


def test_compensation_reproduces_the_datasheet_worked_example():
    temperature, t_fine = compensate_temperature(519888, DATASHEET_CALIBRATION)
    assert round(temperature, 2) == 25.08
    assert t_fine == pytest.approx(128422.2869948, abs=1e-3)
    assert round(compensate_pressure(415148, t_fine, DATASHEET_CALIBRATION), 2) == 100653.27


def test_inversion_recovers_the_datasheet_worked_example_raw_values():
    temperature, t_fine = compensate_temperature(519888, DATASHEET_CALIBRATION)
    pressure_pa = compensate_pressure(415148, t_fine, DATASHEET_CALIBRATION)
    adc_t, adc_p, _ = raw_values(temperature, 50.0, pressure_pa / 100.0, DATASHEET_CALIBRATION)
    assert (adc_t, adc_p) == (519888, 415148)


@pytest.mark.parametrize("temperature", [-40.0, 0.0, 25.08, 85.0])
@pytest.mark.parametrize(("humidity", "pressure"), [(1.0, 300.0), (50.0, 1013.25), (99.0, 1100.0)])
def test_inversion_is_exact_to_one_adc_step_over_the_operating_range(temperature, humidity, pressure):
    cal = DATASHEET_CALIBRATION
    adc_t, adc_p, adc_h = raw_values(temperature, humidity, pressure, cal)
    got_t, t_fine = compensate_temperature(adc_t, cal)
    assert got_t == pytest.approx(temperature, abs=0.0004)  # one step of adc_T
    assert compensate_pressure(adc_p, t_fine, cal) / 100 == pytest.approx(pressure, abs=0.002)
    assert compensate_humidity(adc_h, t_fine, cal) == pytest.approx(humidity, abs=0.005)


def test_calibration_registers_round_trip_including_the_shared_h4_h5_register():
    cal = dataclasses.replace(DATASHEET_CALIBRATION, dig_H4=-300, dig_H5=-7, dig_H6=-2)  # negative fields
    assert Calibration.from_registers(cal.to_registers()) == cal
    assert len(cal.to_registers()) == 33


# --- Adafruit's driver through BME280Driver on the simulator ------------------------------


def test_driver_and_buses_implement_the_protocols():
    assert isinstance(SimI2CBus(), I2CBus)
    assert isinstance(LinuxI2C(1), I2CBus)
    assert isinstance(BME280Driver(SimI2CBus()), Driver)


@pytest.mark.parametrize("seed", [1, 42, 2024])
def test_adafruit_driver_reads_back_the_modelled_environment(seed):
    node = Node(seed, JAN_8_2024)
    for step in range(5):
        node.clock.t = JAN_8_2024 + step * 37 * DAY + step * 5 * HOUR  # seasons and times of day
        reading = node.driver.read()
        assert_reads_back(reading, node.expected())
        assert reading.quality == ()


def test_driver_configures_forced_mode_with_x1_oversampling():
    node = Node()
    node.driver.read()
    ctrl_meas = node.register(REG_CTRL_MEAS)[0]
    assert ctrl_meas >> 5 == 0b001  # osrs_t x1
    assert (ctrl_meas >> 2) & 0b111 == 0b001  # osrs_p x1
    assert ctrl_meas & 0b11 == 0b00  # asleep again after the forced conversion
    assert node.register(REG_CTRL_HUM)[0] == 0b001  # osrs_h x1


@pytest.mark.parametrize(
    ("conditions", "name", "value"),
    [((90.0, 50.0, 1013.0), "temperature", 90.0), ((20.0, 50.0, 250.0), "pressure", 250.0)],
)
def test_readings_outside_the_operating_range_are_flagged(conditions, name, value):
    driver = BME280Driver(SimI2CBus({ADDRESS: SimBME280(lambda: conditions)}))
    reading = driver.read()
    assert reading.values[name] == pytest.approx(value, abs=0.03)
    assert reading.quality == ("out_of_range",)


# --- Faults ------------------------------------------------------------------------------


def test_nack_during_a_read_is_a_bus_error_with_errno_121_and_recovers():
    node = Node()
    node.driver.read()
    node.sim.faults.nack = True
    with pytest.raises(BusError) as caught:
        node.driver.read()
    assert caught.value.errno == errno.EREMOTEIO
    assert isinstance(caught.value.__cause__, OSError)
    node.sim.faults.nack = False
    assert_reads_back(node.driver.read(), node.expected())


def test_a_chip_that_nacks_from_the_start_looks_absent():
    node = Node()
    node.sim.faults.nack = True
    with pytest.raises(SensorNotFound):
        node.driver.open()


def test_nothing_at_the_address_is_sensor_not_found_until_a_sensor_is_plugged_in():
    node = Node()
    node.bus.detach(ADDRESS)
    with pytest.raises(SensorNotFound, match="0x76"):
        node.driver.read()
    node.bus.attach(ADDRESS, node.sim)
    assert_reads_back(node.driver.read(), node.expected())


def test_a_bmp280_is_a_wrong_device_named_as_such_and_a_bme280_then_works():
    node = Node()
    node.sim.faults.chip_id = 0x58
    with pytest.raises(WrongDevice, match="BMP280") as caught:
        node.driver.read()
    assert "0x58" in str(caught.value)
    node.sim.faults.chip_id = None
    assert_reads_back(node.driver.read(), node.expected())


def test_frozen_data_registers_are_flagged_stuck_until_they_move_again():
    node = Node()
    before = node.driver.read()
    node.sim.faults.stuck = True
    flags = []
    for _ in range(5):
        node.clock.t += 60
        reading = node.driver.read()
        assert reading.values == before.values
        flags.append(reading.quality)
    assert flags == [(), (), (), ("stuck",), ("stuck",)]  # from the fifth identical reading in a row
    node.sim.faults.stuck = False
    node.clock.t += 60
    reading = node.driver.read()
    assert reading.quality == ()
    assert_reads_back(reading, node.expected())


# --- probe() -----------------------------------------------------------------------------


def test_probe_reports_a_working_bme280_with_its_chip_id_and_a_reading():
    node = Node()
    result = node.driver.probe()
    assert result.found
    assert "BME280" in result.detail
    assert result.info["chip_id"] == 0x60
    assert result.info["address"] == ADDRESS
    assert result.info["values"]["pressure"] == pytest.approx(node.expected()["pressure"], abs=0.03)


def test_probe_reports_a_bmp280_and_an_empty_address_without_raising():
    node = Node()
    node.sim.faults.chip_id = 0x58
    bmp = node.driver.probe()
    assert (bmp.found, bmp.info["chip_id"]) == (False, 0x58)
    assert "BMP280" in bmp.detail
    node.bus.detach(ADDRESS)
    empty = node.driver.probe()
    assert (empty.found, empty.info["chip_id"], empty.info["address"]) == (False, None, ADDRESS)


def test_probe_on_a_missing_linux_i2c_bus_names_the_device_file():
    bus_number = next(n for n in range(250, 256) if not os.path.exists(f"/dev/i2c-{n}"))
    bus = LinuxI2C(bus_number)  # opens nothing yet
    with pytest.raises(FileNotFoundError):
        bus.writeto(ADDRESS, b"")
    with pytest.raises(FileNotFoundError):  # no bus is not an empty bus
        bus.scan()
    result = BME280Driver(bus).probe()
    assert not result.found
    assert f"/dev/i2c-{bus_number}" in result.detail


# --- The simulated bus and chip ------------------------------------------------------------


def test_sim_bus_nacks_a_missing_address_like_linux():
    bus = SimI2CBus()
    assert bus.try_lock()
    with pytest.raises(OSError) as caught:
        bus.writeto(0x77, b"\xd0")
    assert caught.value.errno == errno.EREMOTEIO == 121


def test_sim_bus_requires_the_lock_and_the_lock_excludes():
    bus = SimI2CBus({ADDRESS: SimBME280(lambda: (20.0, 50.0, 1013.0))})
    with pytest.raises(RuntimeError, match="lock"):
        bus.scan()
    assert bus.try_lock()
    assert not bus.try_lock()
    assert bus.scan() == [ADDRESS]
    bus.unlock()
    assert bus.try_lock()


def test_sim_bus_honours_start_and_end():
    node = Node()
    buffer = bytearray(b"\xaa\xaa\xaa\xaa")
    assert node.bus.try_lock()
    node.bus.writeto(ADDRESS, bytes([0xFF, REG_CHIP_ID, 0xFF]), start=1, end=2)
    node.bus.readfrom_into(ADDRESS, buffer, start=1, end=2)
    assert buffer == bytearray(b"\xaa\x60\xaa\xaa")
    node.bus.writeto_then_readfrom(ADDRESS, bytes([0, REG_CHIP_ID]), buffer, out_start=1, in_start=3)
    assert buffer == bytearray(b"\xaa\x60\xaa\x60")


def test_scan_skips_a_nacking_device():
    node = Node()
    node.sim.faults.nack = True
    assert node.bus.try_lock()
    assert node.bus.scan() == []


def test_sim_normal_mode_measures_continuously_and_soft_reset_restores_power_on_state():
    node = Node()
    node.write(REG_CTRL_HUM, 0b001)
    node.write(REG_CTRL_MEAS, 0b001_001_11)  # x1, x1, normal
    first = node.register(REG_PRESS_MSB, 8)
    node.clock.t += 3 * HOUR
    assert node.register(REG_PRESS_MSB, 8) != first
    node.write(REG_RESET, 0xB6)
    assert node.register(REG_CTRL_MEAS)[0] == 0
    assert node.register(REG_PRESS_MSB, 8) == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])


# --- The environment model ---------------------------------------------------------------


def test_environment_is_reproducible_per_seed():
    t = JUNE_1_2024 + 12.3 * HOUR
    assert Environment(7).at(t) == Environment(7).at(t)
    assert Environment(7).at(t) != Environment(8).at(t)
    assert Environment(7, clock=lambda: t).now() == Environment(7).at(t)


def hourly_profile(env: Environment, start: float, days: int, field: str) -> list[float]:
    """Mean of `field` for each hour of the (UTC) day over `days` days."""
    return [
        statistics.fmean(getattr(env.at(start + d * DAY + h * HOUR), field) for d in range(days))
        for h in range(24)
    ]


@pytest.mark.parametrize(("start", "dawn"), [(JUNE_1_2024, (3, 6)), (JAN_8_2024, (6, 9))])
def test_days_are_coldest_near_dawn_and_warmest_mid_afternoon(start, dawn):
    profile = hourly_profile(Environment(42), start, 28, "temperature_c")
    coldest, warmest = profile.index(min(profile)), profile.index(max(profile))
    assert dawn[0] <= coldest <= dawn[1]
    assert 13 <= warmest <= 16


def test_summer_is_warmer_than_winter():
    env = Environment(42)
    july = statistics.fmean(env.at(JUNE_1_2024 + 45 * DAY + h * 5 * HOUR).temperature_c for h in range(150))
    january = statistics.fmean(env.at(JAN_8_2024 + h * 5 * HOUR).temperature_c for h in range(150))
    assert 20 < july < 27
    assert 5 < january < 11


def test_humidity_moves_against_temperature():
    env = Environment(42)
    samples = [env.at(JUNE_1_2024 + k * HOUR) for k in range(14 * 24)]
    r = statistics.correlation([c.temperature_c for c in samples], [c.humidity_rh for c in samples])
    assert r < -0.6
    assert all(0 <= c.humidity_rh <= 100 for c in samples)


def test_a_year_of_weather_is_plausible():
    env = Environment(42)
    year = [env.at(JAN_8_2024 + k * 3 * HOUR) for k in range(365 * 8)]
    pressures = [c.pressure_hpa for c in year]
    assert 980 <= min(pressures) and max(pressures) <= 1040
    assert max(pressures) - min(pressures) > 10  # fronts pass
    wet = [c for c in year if c.rain_mm_h > 0]
    dry = [c for c in year if c.rain_mm_h == 0]
    assert 0.02 < len(wet) / len(year) < 0.12
    assert statistics.fmean(c.humidity_rh for c in wet) > statistics.fmean(c.humidity_rh for c in dry) + 10
    assert statistics.fmean(c.pm2_5 for c in wet) < statistics.fmean(c.pm2_5 for c in dry)  # washed out
    assert all(c.pm10 >= c.pm2_5 > 0 and c.wind_ms >= 0 and 0 <= c.wind_dir_deg < 360 for c in year)


def test_pm_peaks_in_the_weekday_morning_rush_hour():
    env = Environment(42)
    weekdays = [JAN_8_2024 + d * DAY for d in range(5 * 7) if d % 7 < 5]
    rush = statistics.fmean(env.at(day + 7.5 * HOUR).pm2_5 for day in weekdays)  # 08:30 CET
    night = statistics.fmean(env.at(day + 2 * HOUR).pm2_5 for day in weekdays)  # 03:00 CET
    assert rush > 1.5 * night


def test_wind_gusts_within_a_minute():
    env = Environment(42)
    minute = [env.at(JUNE_1_2024 + 15 * HOUR + s).wind_ms for s in range(60)]
    assert max(minute) > 1.2 * statistics.fmean(minute)
    assert not any(math.isnan(w) for w in minute)
