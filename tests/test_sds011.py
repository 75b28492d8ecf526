"""SDS011: the protocol on bytes (datasheet vectors, Hypothesis), the pty simulator answering as the
datasheet says, and the real driver through real pyserial on the simulator's pty, faults included."""

from __future__ import annotations

import json
import os
import time

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st

from drivers import BusError, Driver, SensorFault, SensorNotFound
from sensors.sds011 import driver as sds011_driver
from sensors.sds011.driver import NotAsleep, SDS011Driver
from sensors.sds011.protocol import (
    HEAD,
    MODE_ACTIVE,
    MODE_QUERY,
    CommandParser,
    DataFrame,
    DeviceIdReply,
    FirmwareReply,
    FrameParser,
    ReportingModeReply,
    SleepWorkReply,
    WorkingPeriodReply,
    encode_command,
    encode_data_frame,
    encode_reply,
    query_data,
    query_firmware,
    query_sleep_work,
    set_device_id,
    set_reporting_mode,
    set_sleep_work,
    set_working_period,
)
from sensors.sds011.simulator import SimSDS011

FRAME_S = 0.05  # the simulator's frame interval here (1 s on a real sensor)


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Air:
    def __init__(self, pm2_5: float = 12.0, pm10: float = 20.0) -> None:
        self.pm2_5, self.pm10 = pm2_5, pm10

    def __call__(self) -> tuple[float, float]:
        return self.pm2_5, self.pm10


def near(value: float, truth: float) -> bool:
    """Within the simulator's noise (3 % + 0.3 ug/m3 per frame) for a mean of a few frames."""
    return abs(value - truth) <= 0.12 * truth + 1.0


@pytest.fixture
def air():
    return Air()


@pytest.fixture
def sim(air):
    with SimSDS011(air, frame_interval_s=FRAME_S, seed=1) as s:
        yield s


@pytest.fixture
def drivers():
    made: list[SDS011Driver] = []

    def make(port: str, **kw) -> SDS011Driver:
        d = SDS011Driver(port, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


# -- the protocol, on bytes ------------------------------------------------------------------------

# Examples of the "Laser Dust Sensor Control Protocol V1.3", for a sensor with device id A160.
DATASHEET_DATA = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")  # PM2.5 123.6, PM10 261.8
DATASHEET_SLEEP = bytes.fromhex("AA B4 06 01 00 00 00 00 00 00 00 00 00 00 00 FF FF 05 AB")
DATASHEET_WORK = bytes.fromhex("AA B4 06 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 06 AB")
DATASHEET_SLEEP_REPLY = bytes.fromhex("AA C5 06 01 00 00 A1 60 08 AB")
DATASHEET_QUERY_DATA = bytes.fromhex("AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB")
DATASHEET_QUERY_MODE_A160 = bytes.fromhex("AA B4 02 01 01 00 00 00 00 00 00 00 00 00 00 A1 60 05 AB")
DATASHEET_SET_ID = bytes.fromhex("AA B4 05 00 00 00 00 00 00 00 00 00 00 A0 01 A1 60 A7 AB")  # A160 -> A001
DATASHEET_SET_ID_REPLY = bytes.fromhex("AA C5 05 00 00 00 A0 01 A6 AB")
DATASHEET_FIRMWARE = bytes.fromhex("AA B4 07 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 05 AB")
DATASHEET_FIRMWARE_REPLY = bytes.fromhex("AA C5 07 0F 07 0A A1 60 28 AB")  # 15-07-10


def test_commands_match_the_datasheet_examples():
    assert set_sleep_work(False) == DATASHEET_SLEEP
    assert set_sleep_work(True) == DATASHEET_WORK
    assert query_data() == DATASHEET_QUERY_DATA
    assert set_reporting_mode(MODE_QUERY, device_id=0xA160) == DATASHEET_QUERY_MODE_A160
    assert set_device_id(0xA001, device_id=0xA160) == DATASHEET_SET_ID
    assert query_firmware() == DATASHEET_FIRMWARE


def test_sensor_frames_match_the_datasheet_examples():
    parser = FrameParser()
    frames = parser.feed(
        DATASHEET_DATA + DATASHEET_SLEEP_REPLY + DATASHEET_SET_ID_REPLY + DATASHEET_FIRMWARE_REPLY
    )
    assert frames == [
        DataFrame(123.6, 261.8, 0xA160),
        SleepWorkReply(is_set=True, working=False, device_id=0xA160),
        DeviceIdReply(0xA001),
        FirmwareReply(15, 7, 10, 0xA160),
    ]
    assert frames[3].version == "15-07-10"
    assert encode_data_frame(123.6, 261.8, 0xA160) == DATASHEET_DATA
    assert [encode_reply(f) for f in frames[1:]] == [
        DATASHEET_SLEEP_REPLY,
        DATASHEET_SET_ID_REPLY,
        DATASHEET_FIRMWARE_REPLY,
    ]
    assert parser.bad_frames == 0


def test_command_parser_reads_what_the_host_sends():
    [cmd] = CommandParser().feed(b"\x00\xab" + DATASHEET_SET_ID)
    assert (cmd.command, cmd.device_id, cmd.new_device_id) == (0x05, 0xA160, 0xA001)


def test_out_of_range_commands_are_refused():
    with pytest.raises(ValueError):
        set_working_period(31)
    with pytest.raises(ValueError):
        encode_command(0x04, bytes(13))
    with pytest.raises(ValueError):
        set_device_id(0x10000)


def test_a_frame_split_across_feeds_comes_out_once_complete():
    parser = FrameParser()
    out = [parser.feed(bytes([b])) for b in DATASHEET_DATA]
    assert out[:-1] == [[]] * 9
    assert out[-1] == [DataFrame(123.6, 261.8, 0xA160)]


def test_a_bad_checksum_is_counted_and_yields_nothing():
    parser = FrameParser()
    corrupt = bytearray(DATASHEET_DATA)
    corrupt[8] ^= 0x01
    assert parser.feed(bytes(corrupt)) == []
    assert parser.bad_frames == 1


def test_a_good_frame_starting_inside_a_bad_one_is_found():
    parser = FrameParser()
    truncated = DATASHEET_DATA[:4]  # AA C0 D4 04, then the next frame starts
    assert parser.feed(b"\x13\x37" + truncated + DATASHEET_DATA + b"\xaa") == [
        DataFrame(123.6, 261.8, 0xA160)
    ]
    assert parser.bad_frames == 1
    assert parser.noise_bytes == 2 + 4


data_frames = st.builds(
    DataFrame,
    st.integers(0, 0xFFFF).map(lambda v: v / 10),
    st.integers(0, 0xFFFF).map(lambda v: v / 10),
    st.integers(0, 0xFFFF),
)
replies = st.one_of(
    st.builds(
        ReportingModeReply, st.booleans(), st.sampled_from([MODE_ACTIVE, MODE_QUERY]), st.integers(0, 0xFFFF)
    ),
    st.builds(DeviceIdReply, st.integers(0, 0xFFFF)),
    st.builds(SleepWorkReply, st.booleans(), st.booleans(), st.integers(0, 0xFFFF)),
    st.builds(WorkingPeriodReply, st.booleans(), st.integers(0, 30), st.integers(0, 0xFFFF)),
    st.builds(
        FirmwareReply, st.integers(0, 99), st.integers(1, 12), st.integers(1, 31), st.integers(0, 0xFFFF)
    ),
)
frames = st.one_of(data_frames, replies)
noise = st.binary(max_size=40).map(lambda b: bytes(x for x in b if x != HEAD))  # no frame can start in it


def encode(frame) -> bytes:
    if isinstance(frame, DataFrame):
        return encode_data_frame(frame.pm2_5, frame.pm10, frame.device_id)
    return encode_reply(frame)


def feed_in_pieces(parser: FrameParser, stream: bytes, cuts: list[int]) -> list:
    out = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        out += parser.feed(stream[a:b])
    return out


@given(st.lists(st.tuples(noise, frames), max_size=12), noise, st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_frames_hidden_in_noise_come_out_exactly(pieces, tail, cuts):
    stream = b"".join(junk + encode(frame) for junk, frame in pieces) + tail
    assert feed_in_pieces(FrameParser(), stream, cuts) == [frame for _, frame in pieces]


@given(
    st.lists(
        st.tuples(frames, st.sampled_from(["good", "checksum", "tail", "byte", "truncated"]), st.data())
    ),
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_corrupted_frames_never_yield_and_do_not_hide_the_good_ones(items, cuts):
    stream = b""
    good = []
    damaged = 0  # truncations aside: a lone head byte, or one at the end of the stream, is no candidate
    for frame, damage, data in items:
        raw = bytearray(encode(frame))
        if damage == "good":
            good.append(frame)
        elif damage == "checksum":
            raw[8] ^= data.draw(st.integers(1, 0xFF))
        elif damage == "tail":
            raw[9] ^= data.draw(st.integers(1, 0xFF))
        elif damage == "byte":  # any one byte between the command id and the checksum
            raw[data.draw(st.integers(2, 7))] ^= data.draw(st.integers(1, 0xFF))
        else:
            raw = raw[: data.draw(st.integers(1, 9))]
        damaged += damage in ("checksum", "tail", "byte")
        stream += bytes(raw)
    parser = FrameParser()
    assert feed_in_pieces(parser, stream, cuts) == good
    assert parser.frames == len(good)
    assert parser.bad_frames >= damaged


@given(
    st.integers(0, 0xFF),
    st.binary(min_size=12, max_size=12),
    st.integers(0, 0xFFFF),
    st.binary(max_size=30).map(lambda b: bytes(x for x in b if x != HEAD)),
)
def test_commands_round_trip_through_the_command_parser(command, data, device_id, junk):
    [cmd] = CommandParser().feed(junk + encode_command(command, data, device_id) + junk)
    assert (cmd.command, cmd.data, cmd.device_id) == (command, data, device_id)


# -- the simulator, byte for byte ------------------------------------------------------------------


class Host:
    """Raw pyserial on the simulator's port, as a technician's script would talk to a sensor."""

    def __init__(self, port: str) -> None:
        self.port = serial.serial_for_url(port, baudrate=9600, timeout=0.02)
        self.parser = FrameParser()
        self.port.reset_input_buffer()

    def frames(self, seconds: float) -> list:
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            out += self.parser.feed(self.port.read(256))
        return out

    def ask(self, command: bytes, wait: float = 0.2) -> list:
        """The replies (not data frames) to `command`: the first to come, or none within `wait` seconds."""
        self.port.write(command)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            replies = [f for f in self.parser.feed(self.port.read(256)) if not isinstance(f, DataFrame)]
            if replies:
                return replies
        return []

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def host(sim):
    h = Host(sim.port)
    yield h
    h.close()


def test_sim_reports_actively_at_its_frame_rate_with_its_device_id(sim, host, air):
    got = host.frames(0.5)
    assert 5 <= len(got) <= 12
    assert all(isinstance(f, DataFrame) and f.device_id == 0xA1B2 for f in got)
    assert near(sum(f.pm2_5 for f in got) / len(got), air.pm2_5)
    assert all(f.pm10 >= f.pm2_5 for f in got)


def test_sim_answers_commands_for_it_and_ignores_other_ids(sim, host):
    assert host.ask(query_firmware()) == [FirmwareReply(18, 11, 16, 0xA1B2)]
    assert host.ask(query_firmware(device_id=0xA1B2)) == [FirmwareReply(18, 11, 16, 0xA1B2)]
    assert host.ask(query_firmware(device_id=0x1234)) == []
    assert host.ask(set_device_id(0x0C0D, device_id=0xA1B2)) == [DeviceIdReply(0x0C0D)]
    assert host.ask(query_sleep_work(device_id=0x0C0D)) == [SleepWorkReply(False, True, 0x0C0D)]
    assert sim.device_id == 0x0C0D


def test_sim_in_query_mode_reports_only_when_asked(sim, host):
    assert host.ask(set_reporting_mode(MODE_QUERY)) == [ReportingModeReply(True, MODE_QUERY, 0xA1B2)]
    host.frames(0.1)
    assert host.frames(0.2) == []
    host.port.write(query_data())
    assert [type(f) for f in host.frames(0.2)] == [DataFrame]


def test_sleeping_sim_is_silent_and_hears_only_a_wake_up(sim, host):
    assert host.ask(set_sleep_work(False)) == [SleepWorkReply(True, False, 0xA1B2)]
    host.frames(0.1)
    assert host.frames(0.2) == []
    assert host.ask(query_firmware()) == []
    assert host.ask(query_sleep_work()) == []
    assert host.ask(set_sleep_work(True)) == [SleepWorkReply(True, True, 0xA1B2)]
    assert any(isinstance(f, DataFrame) for f in host.frames(0.3))


def test_sim_working_period_works_half_a_minute_then_reports_once_a_period(air):
    with SimSDS011(air, frame_interval_s=FRAME_S, minute_s=0.4) as sim:
        host = Host(sim.port)
        try:
            assert host.ask(set_working_period(1), wait=0.1) == [WorkingPeriodReply(True, 1, 0xA1B2)]
            got = [f for f in host.frames(1.1) if isinstance(f, DataFrame)]  # reports at 0.2, 0.6, 1.0 s
            assert 2 <= len(got) <= 3
            assert host.ask(set_working_period(0)) == [WorkingPeriodReply(True, 0, 0xA1B2)]
        finally:
            host.close()


# -- the driver through pyserial on the simulator's pty ------------------------------------------


def test_driver_reads_the_modelled_air_and_tracks_it(sim, air, drivers):
    driver = drivers(sim.port)
    assert isinstance(driver, Driver)
    driver.open()
    time.sleep(0.3)
    first = driver.read()
    assert near(first.values["pm2_5"], 12.0) and near(first.values["pm10"], 20.0)
    assert first.quality == ("warming_up",)  # the first 30 s after waking
    air.pm2_5, air.pm10 = 80.0, 150.0
    deadline = time.monotonic() + 5  # frames come every few tenths of a second; slower on a loaded box
    while True:
        time.sleep(0.3)
        second = driver.read()
        if near(second.values["pm2_5"], 80.0) or time.monotonic() > deadline:
            break
    assert near(second.values["pm2_5"], 80.0) and near(second.values["pm10"], 150.0)
    assert driver.units == {"pm2_5": "ug/m3", "pm10": "ug/m3"}
    status = driver.status()
    assert (status["firmware"], status["device_id"], status["bad_frames"]) == ("18-11-16", "A1B2", 0)


def test_continuous_readings_after_warm_up_are_clean(sim, drivers):
    clock = Clock()
    driver = drivers(sim.port, clock=clock)
    driver.open()
    clock.t = 31.0
    reading = driver.read()
    assert reading.quality == ()


def test_duty_cycle_warms_up_reads_clean_then_sleeps(sim, drivers):
    clock = Clock()
    driver = drivers(sim.port, duty={"on_s": 10, "off_s": 20}, clock=clock)
    driver.open()
    clock.t = 2.0
    assert driver.read().quality == ("warming_up",)
    clock.t = 7.0  # inside the averaging window (the last 5 s of on_s)
    assert driver.read().quality == ("warming_up",)
    clock.t = 10.5
    clean = driver.read()
    assert clean.quality == () and near(clean.values["pm2_5"], 12.0)
    assert not sim.working
    clock.t = 20.0
    assert driver.read() is None
    clock.t = 31.0  # off_s after the sleep: wakes, nothing to report yet
    assert driver.read() is None
    assert sim.working
    clock.t = 33.0
    assert driver.read().quality == ("warming_up",)
    assert driver.status()["sleep_failures"] == 0


def test_a_sensor_that_ignores_sleep_is_caught_once(sim, drivers):
    clock = Clock()
    driver = drivers(sim.port, duty={"on_s": 10, "off_s": 20}, clock=clock)
    driver.open()
    sim.faults.ignore_sleep = True
    clock.t = 10.0
    with pytest.raises(NotAsleep, match="did not go to sleep") as caught:
        driver.read()
    assert isinstance(caught.value, SensorFault)
    assert driver.status()["sleep_failures"] == 1
    clock.t = 15.0
    assert driver.read() is None  # once: the cycle goes on
    assert sim.working
    sim.faults.ignore_sleep = False
    clock.t = 31.0
    assert driver.read() is None
    clock.t = 41.0
    assert driver.read().quality == ()
    assert not sim.working
    # The laser ran from 0 to 41 s: the failed sleep did not stop the count.
    assert driver.status()["laser_hours"] == round(41 / 3600, 3)


def test_laser_hours_persist_across_driver_instances(sim, drivers, tmp_path):
    state = tmp_path / "state" / "sds011.json"
    clock = Clock()
    first = drivers(sim.port, state_path=state, clock=clock)
    first.open()
    clock.t = 720.0
    first.read()
    first.close()
    assert json.loads(state.read_text()) == {"device_id": "A1B2", "laser_s": 720.0}
    assert not sim.working  # close() put it to sleep

    second = drivers(sim.port, state_path=state, clock=clock)
    assert second.status()["laser_hours"] == 0.2
    second.open()  # wakes it
    clock.t = 720.0 + 360.0
    second.read()
    assert second.status()["laser_hours"] == 0.3
    assert second.status()["laser_life_used"] == round(0.3 / 8000, 6)


def test_laser_hours_are_saved_every_minute_without_a_close(sim, drivers, tmp_path):
    state = tmp_path / "sds011.json"
    clock = Clock()
    driver = drivers(sim.port, state_path=state, clock=clock)
    driver.open()
    clock.t = 30.0
    driver.read()
    assert not state.exists()
    clock.t = 61.0
    driver.read()
    assert json.loads(state.read_text())["laser_s"] == 61.0  # what a power cut now would keep


def test_a_new_sensor_starts_its_laser_hours_from_zero(air, drivers, tmp_path):
    state = tmp_path / "sds011.json"
    state.write_text(json.dumps({"device_id": "A1B2", "laser_s": 7200.0}))
    with SimSDS011(air, device_id=0xBEEF, frame_interval_s=FRAME_S) as other:
        driver = drivers(other.port, state_path=state, clock=Clock())
        assert driver.status()["laser_hours"] == 2.0
        driver.open()
        assert driver.status()["laser_hours"] == 0.0
        assert driver.status()["device_id"] == "BEEF"


@pytest.mark.parametrize("fault", ["garbage", "bad_checksum", "partial_frames"])
def test_line_faults_never_produce_a_bad_value(sim, air, drivers, fault):
    air.pm2_5, air.pm10 = 50.0, 90.0
    driver = drivers(sim.port)
    driver.open()
    setattr(sim.faults, fault, 0.5)
    for _ in range(5):
        time.sleep(0.15)
        reading = driver.read()
        assert near(reading.values["pm2_5"], 50.0) and near(reading.values["pm10"], 90.0)
    if fault != "garbage":
        assert driver.status()["bad_frames"] > 0


def test_only_garbage_is_a_sensor_fault_and_the_driver_recovers(sim, drivers, monkeypatch):
    monkeypatch.setattr(sds011_driver, "REPLY_TIMEOUT_S", 0.2)
    sim.faults.bad_checksum = True
    driver = drivers(sim.port)
    with pytest.raises(SensorFault, match="no answer"):
        driver.open()
    sim.faults.bad_checksum = 0.0
    assert driver.read().values  # the next read reopens


def test_a_vanished_port_is_a_bus_error_and_the_same_driver_recovers(sim, air, drivers):
    driver = drivers(sim.port)
    driver.open()
    assert driver.read()
    sim.faults.vanish()
    with pytest.raises(BusError):
        driver.read()
    with pytest.raises(SensorNotFound, match=sim.port):
        driver.read()
    sim.faults.reappear()
    air.pm2_5 = 33.0
    assert near(driver.read().values["pm2_5"], 33.0)


def test_a_missing_port_is_not_found_and_probe_says_so(tmp_path, drivers):
    port = str(tmp_path / "ttyUSB9")
    driver = drivers(port)
    with pytest.raises(SensorNotFound, match=port):
        driver.open()
    result = driver.probe()
    assert not result.found and port in result.detail
    assert result.info == {"firmware": None, "device_id": None}


def test_a_silent_port_is_not_found(drivers, monkeypatch):
    monkeypatch.setattr(sds011_driver, "REPLY_TIMEOUT_S", 0.1)
    master, slave = os.openpty()
    try:
        driver = drivers(os.ttyname(slave))
        with pytest.raises(SensorNotFound, match="nothing answers"):
            driver.open()
    finally:
        os.close(master)
        os.close(slave)


def test_probe_identifies_the_sensor(sim, drivers):
    result = drivers(sim.port).probe()
    assert result.found, result.detail
    assert result.info["firmware"] == "18-11-16" and result.info["device_id"] == "A1B2"
    assert "A1B2" in result.detail


def test_any_pyserial_url_works(sim, drivers, tmp_path):
    log = tmp_path / "spy.txt"
    driver = drivers(f"spy://{sim.port}?file={log}")
    driver.open()
    assert driver.read().values
    assert "AA B4 06 01 01" in log.read_text().upper()  # the wake-up command, as spy:// logs it


def test_stuck_and_fogged_values_are_flagged(sim, air, drivers, monkeypatch):
    monkeypatch.setattr(sds011_driver, "STUCK_FRAMES", 5)
    driver = drivers(sim.port, clock=Clock(100.0))
    driver.open()
    sim.faults.stuck = True
    time.sleep(10 * FRAME_S)
    assert "stuck" in driver.read().quality
    sim.faults.stuck = False
    sim.faults.pm_multiplier = 60.0  # fog
    time.sleep(4 * FRAME_S)
    driver.read()  # the frames from before the fog
    time.sleep(4 * FRAME_S)
    reading = driver.read()
    assert "out_of_range" in reading.quality and "stuck" not in reading.quality
    assert reading.values["pm10"] > 999.9
