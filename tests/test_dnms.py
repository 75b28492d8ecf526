"""DNMS: the protocol on bytes (the firmware's command and word format), the simulator answering
as the Teensy firmware does, and the driver on the simulated bus, faults included."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import BusError, Driver, SensorFault, SensorNotFound, WrongDevice
from drivers.sensirion import CRCError, crc8
from sensors.dnms.driver import DNMSDriver
from sensors.dnms.protocol import (
    CALCULATE_LEQ,
    READ_LEQ,
    Levels,
    decode_levels,
    decode_version,
    encode_command,
    encode_levels,
    encode_version,
)
from sensors.dnms.simulator import SimDNMS
from simulators.i2c import SimI2CBus


def test_commands_are_two_big_endian_bytes_without_crc():
    assert encode_command(CALCULATE_LEQ) == b"\x00\x03"
    assert encode_command(READ_LEQ) == b"\x00\x05"


def test_levels_are_three_big_endian_floats_as_six_crc_words():
    raw = encode_levels(Levels(55.5, 40.25, 70.0))
    assert len(raw) == 18
    first = struct.pack(">f", 55.5)
    assert raw[:3] == first[:2] + bytes([crc8(first[:2])]) and raw[3:5] == first[2:]
    assert decode_levels(raw) == Levels(55.5, 40.25, 70.0)


def test_the_version_string_travels_two_characters_a_word():
    raw = encode_version("DNMS Version 2.4.5")
    assert raw[:3] == b"DN" + bytes([crc8(b"DN")])
    assert decode_version(raw) == "DNMS Version 2.4.5"
    assert decode_version(encode_version("DNMS V5", 9)) == "DNMS V5"


def test_an_idle_bus_fails_the_crc():
    with pytest.raises(CRCError):
        decode_levels(b"\xff" * 18)


finite = st.floats(-200, 200, allow_nan=False, width=32)


@settings(deadline=None)  # a loaded CI box must not turn slowness into a failure
@given(finite, finite, finite, st.integers(0, 17), st.integers(1, 255))
def test_levels_round_trip_and_any_damaged_byte_is_caught(laeq, lamin, lamax, position, flip):
    raw = encode_levels(Levels(laeq, lamin, lamax))
    assert decode_levels(raw) == Levels(laeq, lamin, lamax)
    damaged = bytearray(raw)
    damaged[position] ^= flip
    with pytest.raises(CRCError):  # CRC-8 catches every error of up to 8 bits in a word
        decode_levels(bytes(damaged))


class Street:
    def __init__(self, level: float = 62.0) -> None:
        self.level = level

    def __call__(self) -> float:
        return self.level


@pytest.fixture
def street():
    return Street()


@pytest.fixture
def sim(street):
    return SimDNMS(street, seed=5, clock=Clock())


class Clock:
    """Each look at it is 60 s later: every interval the simulator measures, and every one the
    driver closes, is a minute of street (480 blocks), whatever the test's real pace."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 60.0
        return self.t


@pytest.fixture
def driver(sim):
    return DNMSDriver(SimI2CBus({0x55: sim}), clock=Clock())


def test_it_reads_the_levels_of_the_interval_since_the_previous_read(driver, sim, street):
    assert isinstance(driver, Driver)
    driver.open()
    assert driver.version.startswith("DNMS")
    assert sim.calculations == 1  # open closed the module's own interval and threw it away
    reading = driver.read()
    v = reading.values
    assert v["lamin"] <= v["laeq"] <= v["lamax"]
    assert v["laeq"] == pytest.approx(62.0, abs=4.0)
    assert reading.quality == ()
    assert driver.units == {"laeq": "dB(A)", "lamin": "dB(A)", "lamax": "dB(A)"}
    street.level = 45.0
    assert driver.read().values["laeq"] == pytest.approx(45.0, abs=4.0)


def test_the_sims_laeq_is_the_energy_mean_of_its_blocks(sim):
    levels = sim._measure(60.0)  # 480 blocks of 125 ms
    assert levels.lamin < levels.laeq < levels.lamax
    assert levels.laeq > 62.0  # an energy mean weighs the loud blocks: above the arithmetic mean
    assert math.isclose(levels.laeq, 62.0, abs_tol=5.0)


def test_a_reading_right_after_open_is_a_glimpse_flagged_warming_up(sim):
    driver = DNMSDriver(SimI2CBus({0x55: sim}))
    driver.open()
    assert driver.read().quality == ("warming_up",)


def test_levels_outside_the_microphones_range_are_flagged(driver, street):
    street.level = 20.0  # below the ICS-43434's self-noise
    assert "out_of_range" in driver.read().quality


def test_nothing_at_the_address_is_not_found_and_a_nack_later_is_a_bus_error(driver, sim):
    with pytest.raises(SensorNotFound, match="0x55"):
        DNMSDriver(SimI2CBus({})).open()
    driver.open()
    sim.faults.nack = True
    with pytest.raises(BusError) as err:
        driver.read()
    assert err.value.errno == 121
    sim.faults.nack = False
    assert driver.read().values  # reopened


@pytest.mark.parametrize("fault", ["bad_crc", "garbage"])
def test_damaged_replies_are_sensor_faults_and_the_next_read_recovers(driver, sim, fault):
    driver.open()
    setattr(sim.faults, fault, 1.0)
    with pytest.raises(SensorFault):
        driver.read()
    setattr(sim.faults, fault, 0.0)
    assert driver.read().values


def test_another_device_at_0x55_is_a_wrong_device(driver, sim):
    sim.faults.version = "XYZ 1.0"
    with pytest.raises(WrongDevice, match="XYZ"):
        driver.open()
    assert not driver.probe().found


def test_a_hung_module_times_out_as_a_sensor_fault(driver, sim, monkeypatch):
    from sensors.dnms import driver as dnms

    monkeypatch.setattr(dnms, "READY_TIMEOUT_S", 0.1)
    driver.open()
    sim.faults.never_ready = True
    with pytest.raises(SensorFault, match="no levels"):
        driver.read()


def test_frozen_levels_are_flagged_stuck(driver, sim):
    driver.open()
    sim.faults.stuck = True
    qualities = [driver.read().quality for _ in range(6)]
    assert "stuck" not in qualities[0] and "stuck" in qualities[-1]


def test_probe_names_the_firmware_and_the_levels(driver):
    result = driver.probe()
    assert result.found, result.detail
    assert "DNMS Version" in result.detail and "dB(A)" in result.detail


def test_detect_finds_it_and_fails_on_another_device_at_its_address():
    from provisioning.detect import detect
    from provisioning.report import Report
    from sensors.simulation import SimulatedNode

    report = Report("trs-0001", "h")
    found = detect(report, simulate=SimulatedNode(dnms=True), listen_s=0.1)
    check = next(c for c in report.checks if c.name == "detect.noise")
    assert check.passed and "DNMS Version" in check.detail
    assert found["noise"] == {"driver": "dnms", "bus": "sim"}
    node = SimulatedNode(dnms=True).start()
    node.devices["noise"].faults.version = "SPS30 2.2"
    report = Report("trs-0001", "h")
    assert "noise" not in detect(report, simulate=node, listen_s=0.1)
    node.stop()
    check = next(c for c in report.checks if c.name == "detect.noise")
    assert not check.passed and "SPS30" in check.detail
