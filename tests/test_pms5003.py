"""PMS5003: the protocol on bytes (the manual's command bytes, Hypothesis, Adafruit's decoder as an
independent oracle), the pty simulator answering as the manual says, and the real driver through
real pyserial on the simulator's pty, faults included."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import BusError, Driver, SensorFault, SensorNotFound
from sensors.pms5003.driver import COUNT_UNIT, PMS5003Driver
from sensors.pms5003.protocol import (
    CHANGE_MODE,
    MODE_ACTIVE,
    MODE_PASSIVE,
    READ_PASSIVE,
    SLEEP_WAKE,
    Command,
    CommandParser,
    DataFrame,
    FrameParser,
    Reply,
    encode_data_frame,
    encode_reply,
    read_passive,
    set_mode,
    set_sleep,
)
from sensors.pms5003.simulator import SimPMS5003, particle_counts

FRAME_S = 0.05


def test_commands_are_the_manuals_bytes():
    assert read_passive() == bytes.fromhex("42 4d e2 00 00 01 71")
    assert set_mode(MODE_PASSIVE) == bytes.fromhex("42 4d e1 00 00 01 70")
    assert set_mode(MODE_ACTIVE) == bytes.fromhex("42 4d e1 00 01 01 71")
    assert set_sleep(True) == bytes.fromhex("42 4d e4 00 00 01 73")
    assert set_sleep(False) == bytes.fromhex("42 4d e4 00 01 01 74")


def test_replies_are_the_sensors_bytes():
    assert encode_reply(Reply(CHANGE_MODE, MODE_PASSIVE)) == bytes.fromhex("42 4d 00 04 e1 00 01 74")
    assert encode_reply(Reply(SLEEP_WAKE, 0)) == bytes.fromhex("42 4d 00 04 e4 00 01 77")
    assert FrameParser().feed(bytes.fromhex("42 4d 00 04 e1 00 01 74")) == [Reply(CHANGE_MODE, MODE_PASSIVE)]


def test_a_data_frame_is_32_bytes_with_its_sum_at_the_end():
    raw = encode_data_frame(DataFrame(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, version=0x91, error=0))
    assert len(raw) == 32 and raw[:4] == bytes.fromhex("42 4d 00 1c")
    assert int.from_bytes(raw[30:], "big") == sum(raw[:30])


words = st.integers(0, 0xFFFF)
data_frames = st.builds(DataFrame, *[words] * 12, version=st.integers(0, 255), error=st.integers(0, 255))
replies = st.builds(Reply, st.sampled_from([CHANGE_MODE, SLEEP_WAKE]), st.integers(0, 1))
noise = st.binary(max_size=40).map(lambda b: bytes(x for x in b if x != 0x42))  # no frame can start in it


def _feed_in_pieces(parser, data: bytes, cuts: list[int]) -> list:
    out, start = [], 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += parser.feed(data[start:cut])
        start = cut
    return out


@settings(deadline=None)  # a loaded CI box must not turn slowness into a failure
@given(st.lists(st.tuples(noise, st.one_of(data_frames, replies)), max_size=10), st.lists(words, max_size=6))
def test_valid_frames_hidden_in_noise_come_out_exactly(pieces, cuts):
    stream = b"".join(
        junk + (encode_data_frame(f) if isinstance(f, DataFrame) else encode_reply(f)) for junk, f in pieces
    )
    assert _feed_in_pieces(FrameParser(), stream, cuts) == [f for _, f in pieces]


@settings(deadline=None)  # a loaded CI box must not turn slowness into a failure
@given(
    st.lists(
        st.tuples(data_frames, st.sampled_from(["good", "checksum", "byte", "length", "cut"]), st.data()),
        max_size=8,
    )
)
def test_damaged_frames_never_yield_and_do_not_hide_the_good_ones(items):
    stream, expected = b"", []
    for frame, damage, data in items:
        raw = bytearray(encode_data_frame(frame))
        if damage == "checksum":
            raw[31] ^= data.draw(st.integers(1, 0xFF))
        elif damage == "byte":
            raw[data.draw(st.integers(4, 29))] ^= data.draw(st.integers(1, 0xFF))
        elif damage == "length":
            raw[3] = data.draw(st.sampled_from([0, 20, 27, 29, 0xFF]))
        elif damage == "cut":
            raw = raw[: data.draw(st.integers(1, 31))]
        else:
            expected.append(frame)
        stream += bytes(raw)
    got = FrameParser().feed(stream)
    # A damaged frame's bytes can never pass for a frame whose checksum holds except by chance of
    # the 16-bit sum; what must hold is that every good frame still comes out, in order.
    it = iter(got)
    assert all(any(g == e for g in it) for e in expected)


@settings(deadline=None)  # a loaded CI box must not turn slowness into a failure
@given(data_frames)
def test_adafruits_decoder_reads_our_frames_as_we_do(frame):
    from adafruit_pm25 import PM25

    class OneFrame(PM25):
        def _read_into_buffer(self) -> None:
            self._buffer[:] = encode_data_frame(frame)

    got = OneFrame().read()
    assert [got[k] for k in ("pm10 standard", "pm25 standard", "pm100 standard")] == [
        frame.pm1_cf1,
        frame.pm2_5_cf1,
        frame.pm10_cf1,
    ]
    assert [got[k] for k in ("pm10 env", "pm25 env", "pm100 env")] == [frame.pm1, frame.pm2_5, frame.pm10]
    assert [got[f"particles {k}um"] for k in ("03", "05", "10", "25", "50", "100")] == [
        frame.n0_3,
        frame.n0_5,
        frame.n1_0,
        frame.n2_5,
        frame.n5_0,
        frame.n10,
    ]


@settings(deadline=None)  # a loaded CI box must not turn slowness into a failure
@given(st.sampled_from([READ_PASSIVE, CHANGE_MODE, SLEEP_WAKE]), st.integers(0, 1), noise)
def test_commands_round_trip_through_the_command_parser(command, value, junk):
    from sensors.pms5003.protocol import encode_command

    assert CommandParser().feed(junk + encode_command(command, value) + junk) == [Command(command, value)]


def test_particle_counts_follow_the_masses_and_are_cumulative():
    counts = particle_counts(8.0, 12.0, 20.0)
    assert list(counts) == sorted(counts, reverse=True) and counts[0] > 1000
    assert particle_counts(16.0, 24.0, 40.0)[0] == pytest.approx(2 * counts[0], rel=0.01)


# -- the driver on the simulator --------------------------------------------------------------------


class Air:
    def __init__(self) -> None:
        self.pm = (8.0, 12.0, 20.0)

    def __call__(self):
        return self.pm


@pytest.fixture
def air():
    return Air()


@pytest.fixture
def sim(air):
    device = SimPMS5003(air, frame_interval_s=FRAME_S, startup_s=0.05, warm_up_s=0.0).start()
    yield device
    device.stop()


def _eventually(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_the_driver_reads_pm_and_counts_in_either_mode(sim, mode):
    driver = PMS5003Driver(sim.port, mode=mode, warm_up_s=0.0)
    assert isinstance(driver, Driver)
    driver.open()
    assert sim.mode == (MODE_PASSIVE if mode == "passive" else MODE_ACTIVE)
    time.sleep(3 * FRAME_S)
    reading = driver.read()
    v = reading.values
    assert set(v) == set(driver.units)
    assert v["pm1"] == pytest.approx(8, abs=1.5) and v["pm2_5"] == pytest.approx(12, abs=1.5)
    assert v["pm10"] == pytest.approx(20, abs=2)
    assert v["pm2_5_cf1"] == pytest.approx(v["pm2_5"], abs=1)  # CF=1 equals atmospheric below 30 ug/m3
    assert v["n0_3"] > v["n0_5"] > v["n1_0"] > 0
    assert driver.units["n0_3"] == COUNT_UNIT and driver.units["pm2_5"] == "ug/m3"
    assert reading.quality == ()
    assert driver.status()["firmware"] == "0x91"
    driver.close()
    assert _eventually(lambda: not sim.awake), "close puts the fan and laser to sleep"


def test_readings_within_30_s_of_waking_are_flagged_warming_up(sim):
    clock = Clock()
    driver = PMS5003Driver(sim.port, clock=clock)
    driver.open()
    assert driver.read().quality == ("warming_up",)
    clock.t += 29.0
    assert "warming_up" in driver.read().quality
    clock.t += 1.5
    assert driver.read().quality == ()
    driver.close()


def test_a_duty_cycle_sleeps_wakes_and_flags_the_warm_up(sim):
    clock = Clock()
    driver = PMS5003Driver(sim.port, duty={"on_s": 40, "off_s": 100}, clock=clock)
    driver.open()
    assert driver.read().quality == ("warming_up",)
    assert driver.next_read_in() == 40
    clock.t += 40
    assert driver.read().quality == ()  # the clean reading, then the sleep command
    assert not sim.awake
    assert driver.read() is None and driver.next_read_in() == 100
    clock.t += 100
    assert driver.read() is None  # woken: frames come after the fan restarts
    assert _eventually(lambda: sim.awake)
    assert driver.read().quality == ("warming_up",)
    driver.close()


def test_line_noise_costs_frames_not_readings(sim):
    sim.faults.garbage = sim.faults.bad_checksum = sim.faults.partial_frames = 0.4
    driver = PMS5003Driver(sim.port, mode="active", warm_up_s=0.0)
    driver.open()
    for _ in range(3):
        time.sleep(4 * FRAME_S)
        assert driver.read().values["pm2_5"] == pytest.approx(12, abs=2)
    assert driver.status()["bad_frames"] > 0
    driver.close()


def test_frozen_frames_are_flagged_stuck_and_an_error_code_is_reported(sim):
    driver = PMS5003Driver(sim.port, warm_up_s=0.0)
    driver.open()
    sim.faults.stuck = True
    sim.faults.error_code = 0x02
    qualities = [driver.read().quality for _ in range(12)]
    assert "stuck" in qualities[-1] and "stuck" not in qualities[0]
    assert driver.status()["error_code"] == 0x02
    driver.close()


def test_an_unplugged_sensor_fails_reads_and_recovers_when_plugged_back(sim):
    driver = PMS5003Driver(sim.port, warm_up_s=0.0)
    driver.open()
    driver.read()
    sim.faults.vanish()
    with pytest.raises((BusError, SensorNotFound, SensorFault)):
        driver.read()
    with pytest.raises(SensorNotFound, match="no serial port"):
        driver.read()
    sim.faults.reappear()
    assert driver.read().values["pm2_5"] > 0
    driver.close()


# Give up on a silent or deaf sensor sooner than in the field (1 s per command, 3 s for frames).
SHORT_WAITS = {"reply_timeout_s": 0.2, "frame_timeout_s": 0.5}


def test_a_port_where_nothing_answers_is_not_found():
    master, slave = os.openpty()
    try:
        driver = PMS5003Driver(os.ttyname(slave), **SHORT_WAITS)
        with pytest.raises(SensorNotFound, match="nothing answers"):
            driver.open()
        assert not driver.probe().found
    finally:
        os.close(master)
        os.close(slave)


def test_a_sensor_that_does_not_hear_commands_is_used_in_active_mode(sim):
    sim.faults.ignore_sleep = True
    sim._handle = lambda cmd, now: None  # deaf: a broken wire from the host's TX
    driver = PMS5003Driver(sim.port, warm_up_s=0.0, **SHORT_WAITS)
    driver.open()
    result = driver.probe()
    assert result.found and "active mode" in result.detail, result.detail
    driver.close()


def test_probe_names_the_firmware_and_the_values(sim):
    result = PMS5003Driver(sim.port).probe()
    assert result.found, result.detail
    assert "firmware 0x91" in result.detail and result.info["values"]["pm2_5"] > 0


def test_its_pm_gets_the_sds011s_humidity_correction_and_flag(sim):
    from edge_node.quality import NodeAir, growth_factor, refine, units_with_corrections

    air = NodeAir()
    refine({"temperature": 12.0, "humidity": 88.0}, (), {}, air)  # what the node's SHT4x or BME280 said
    driver = PMS5003Driver(sim.port, warm_up_s=0.0)
    reading = driver.read()
    result = refine(reading.values, reading.quality, {}, air)
    assert "high_humidity" in result.quality
    for name in ("pm1", "pm2_5", "pm10"):
        assert result.values[f"{name}_corrected"] == round(reading.values[name] / growth_factor(88.0), 1)
    assert "n0_3_corrected" not in result.values and "pm2_5_cf1_corrected" not in result.values
    units = units_with_corrections(driver.units)
    assert units["pm1_corrected"] == units["pm2_5_corrected"] == "ug/m3"
    driver.close()


def test_detect_finds_it_on_a_simulated_node_and_passes_it_as_not_fitted_when_absent():
    from provisioning.detect import detect
    from provisioning.report import Report
    from sensors.simulation import SimulatedNode

    report = Report("trs-0001", "h")
    found = detect(report, simulate=SimulatedNode(pms5003=True), listen_s=0.1)
    check = next(c for c in report.checks if c.name == "detect.pms5003")
    assert check.passed and "firmware 0x91" in check.detail
    assert found["pms5003"] == {"driver": "pms5003", "port": "sim"}
    assert found["sds011"] == {"driver": "sds011", "port": "sim"}, "each on its own port"
    report = Report("trs-0001", "h")
    assert "pms5003" not in detect(report, simulate=True, listen_s=0.1)
    check = next(c for c in report.checks if c.name == "detect.pms5003")
    assert check.passed and check.detail.startswith("no PMS5003 fitted")


def test_fog_on_a_simulated_node_scales_pm1_with_pm2_5_and_pm10():
    from sensors.simulation import SimulatedNode

    node = SimulatedNode(seed=3)
    clear = node.conditions()
    node.fog = True
    fog = node.conditions()
    assert fog.pm1 / fog.pm2_5 == pytest.approx(clear.pm1 / clear.pm2_5, rel=0.05)
    assert fog.pm1 > 3 * clear.pm1
