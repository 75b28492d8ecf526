"""Rain gauge and anemometer through real gpiozero devices on MockFactory pins.

Exact assertions drive the pins from the test thread with a SimClock as the drivers' clock
(MockPin runs gpiozero's callbacks in the thread that drives it); the threaded sources run in
real time and get tolerant assertions.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

from drivers import BusError, Driver, DriverError, SensorNotFound
from drivers.pulse_counter import make_pin_factory
from sensors.anemometer.driver import AnemometerDriver
from sensors.rain_gauge.driver import RainGaugeDriver
from simulators.gpio import HIGH, LOW, SimClock, SimPulseSource, wind_source

RAIN_PIN = 6
WIND_PIN = 5
MM_PER_TIP = 0.2794
MS_PER_HZ = 0.667


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.reset()


@pytest.fixture
def opened(factory):
    """Opens a driver for the test and closes it at the end, whatever happened."""
    drivers = []

    def open_driver(driver):
        driver.open()
        drivers.append(driver)
        return driver

    yield open_driver
    for driver in drivers:
        driver.close()


def idle_source(factory, pin):
    """A source whose thread never runs: the tests emit its edges themselves."""
    return SimPulseSource(factory, pin, lambda: 0.0)


def test_both_drivers_implement_the_driver_protocol(factory):
    assert isinstance(RainGaugeDriver(RAIN_PIN, pin_factory=factory), Driver)
    assert isinstance(AnemometerDriver(WIND_PIN, pin_factory=factory), Driver)


# -- debounce -----------------------------------------------------------------------------------


def test_contact_bounce_is_rejected_and_each_closure_counted_once(factory, opened):
    clock = SimClock()
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, clock=clock))
    source = idle_source(factory, RAIN_PIN)

    source.emit(source.closures([1.0, 2.0, 3.0]), clock)
    clock.t = 60.0

    assert gauge.read().values["rain"] == round(3 * MM_PER_TIP, 2)
    # Each closure bounces 3 times as it makes and 3 times as it breaks.
    assert gauge.status() == {"tips_total": 3, "debounced": 3 * 2 * 3}


def test_a_closure_counts_only_after_the_contact_was_open_for_debounce_s(factory, opened):
    clock = SimClock()
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, mm_per_tip=1.0, clock=clock))
    edges = [
        (1.000, LOW),  # a tip
        (1.010, HIGH),
        (1.059, LOW),  # open for 49 ms: bounce
        (1.070, HIGH),
        (1.121, LOW),  # open for 51 ms: a tip
        (1.130, HIGH),
    ]
    idle_source(factory, RAIN_PIN).emit(edges, clock)
    clock.t = 60.0

    assert gauge.read().values["rain"] == 2.0
    assert gauge.status()["debounced"] == 1


def test_chatter_as_a_long_closure_breaks_is_not_another_pulse(factory, opened):
    clock = SimClock()
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory, clock=clock))
    # Cups stopped with the magnet at the reed for 2 s, far longer than the debounce.
    edges = [(1.0, LOW), (3.0, HIGH), (3.0004, LOW), (3.0008, HIGH), (3.0011, LOW), (3.0015, HIGH)]
    idle_source(factory, WIND_PIN).emit(edges, clock)
    clock.t = 10.0

    assert anemometer.read().values["wind_speed"] == round(1 / 10 * MS_PER_HZ, 2)
    assert anemometer.status() == {"pulses_total": 1, "debounced": 2}


# -- rain ---------------------------------------------------------------------------------------


def test_rain_per_interval_and_a_total_that_survives_a_restart(factory, tmp_path):
    state = tmp_path / "state" / "rain.json"
    clock = SimClock()
    gauge = RainGaugeDriver(RAIN_PIN, pin_factory=factory, state_path=state, clock=clock)
    gauge.open()
    source = idle_source(factory, RAIN_PIN)

    source.emit(source.closures([10.0, 20.0, 30.0]), clock)
    clock.t = 60.0
    assert gauge.read().values == {"rain": 0.84, "rain_total": 0.84}  # 3 x 0.2794 mm
    assert json.loads(state.read_text()) == {"tips_total": 3}

    source.emit(source.closures([61.0, 63.0]), clock)
    clock.t = 64.0
    assert gauge.read().values == {"rain": 0.56, "rain_total": 1.4}
    assert json.loads(state.read_text()) == {"tips_total": 3}, "saved again within SAVE_EVERY_S"

    source.emit(source.closures([65.0]), clock)  # fell, but never read before the restart
    gauge.close()
    assert json.loads(state.read_text()) == {"tips_total": 6}
    assert not list(state.parent.glob(".*.tmp"))

    restarted = RainGaugeDriver(RAIN_PIN, pin_factory=factory, state_path=state, clock=clock)
    try:
        restarted.open()
        clock.t = 120.0
        assert restarted.read().values == {"rain": 0.0, "rain_total": round(6 * MM_PER_TIP, 2)}
        assert restarted.status()["tips_total"] == 6
    finally:
        restarted.close()


def test_an_unreadable_state_file_starts_the_total_from_zero(factory, opened, tmp_path, caplog):
    state = tmp_path / "rain.json"
    state.write_text("{not json")
    clock = SimClock()
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, state_path=state, clock=clock))
    clock.t = 60.0

    assert gauge.read().values == {"rain": 0.0, "rain_total": 0.0}
    assert "unreadable tips_total" in caplog.text


@pytest.mark.parametrize(
    ("tips", "seconds", "flagged"),
    [
        (1, 1.0, False),  # one tip in a short interval is quantisation, not a rate
        (10, 60.0, False),  # 168 mm/h: a cloudburst
        (40, 60.0, True),  # 670 mm/h: no rain
    ],
)
def test_rain_beyond_a_plausible_rate_is_flagged_out_of_range(factory, opened, tips, seconds, flagged):
    clock = SimClock()
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, clock=clock))
    source = idle_source(factory, RAIN_PIN)
    source.emit(source.closures([seconds * i / tips for i in range(tips)]), clock)
    clock.t = seconds

    reading = gauge.read()
    assert reading.values["rain"] == round(tips * MM_PER_TIP, 2)
    assert ("out_of_range" in reading.quality) == flagged


# -- wind ---------------------------------------------------------------------------------------


def test_mean_speed_and_3_second_gust_from_pulse_times(factory, opened):
    clock = SimClock()
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory, clock=clock))
    source = idle_source(factory, WIND_PIN)
    times = [i / 10 for i in range(20)] + [2 + i / 30 for i in range(90)]  # 2 s at 10 Hz, 3 s at 30 Hz

    source.emit(source.closures(times), clock)
    clock.t = 5.0

    reading = anemometer.read()
    assert reading.values == {
        "wind_speed": round(110 / 5 * MS_PER_HZ, 2),
        "wind_gust": round(30 * MS_PER_HZ, 2),
    }
    assert reading.quality == ()
    assert anemometer.status() == {"pulses_total": 110, "debounced": 110 * 2 * 3}


def test_gust_windows_reach_back_into_the_previous_interval(factory, opened):
    clock = SimClock()
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory, clock=clock))
    source = idle_source(factory, WIND_PIN)
    steady = round(10 * MS_PER_HZ, 2)

    for second in range(8):  # 10 Hz, read every second: shorter than the gust window
        source.emit(source.closures([second + i / 10 for i in range(10)]), clock)
        clock.t = second + 1.0
        assert anemometer.read().values == {"wind_speed": steady, "wind_gust": steady}, f"at {clock.t} s"


def test_calm_air_reads_zero(factory, opened):
    clock = SimClock()
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory, clock=clock))
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, clock=clock))
    clock.t = 60.0

    assert anemometer.read().values == {"wind_speed": 0.0, "wind_gust": 0.0}
    assert gauge.read().values == {"rain": 0.0, "rain_total": 0.0}


# -- faults -------------------------------------------------------------------------------------


def test_a_chattering_rain_contact_counts_at_most_once_per_debounce_and_is_flagged(factory, opened):
    clock = SimClock()
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, mm_per_tip=1.0, clock=clock))
    source = idle_source(factory, RAIN_PIN)
    # A loose wire for 3 s: closed 10 ms, open 60 ms (longer than the 50 ms debounce).
    chatter = []
    for i in range(43):
        chatter += [(1.0 + i * 0.07, LOW), (1.01 + i * 0.07, HIGH)]
    source.emit(chatter, clock)
    clock.t = 60.0
    loose_wire = gauge.read()

    source.faults.bounce_storm = True  # fast chatter at each of 3 tips: all of it within the debounce
    source.emit(source.closures([61.0, 62.0, 63.0]), clock)
    clock.t = 120.0
    storm = gauge.read()

    assert loose_wire.values["rain"] <= 3.0 / 0.05 + 1
    assert "out_of_range" in loose_wire.quality
    assert storm.values["rain"] == 3.0
    assert storm.quality == ()


def test_a_bounce_storm_inflates_wind_no_faster_than_the_debounce_allows(factory, opened):
    clock = SimClock()
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory, clock=clock))
    source = idle_source(factory, WIND_PIN)
    source.faults.bounce_storm = True
    times = [i / 10 for i in range(100)]  # 10 Hz for 10 s

    source.emit(source.closures(times), clock)
    clock.t = 10.0
    reading = anemometer.read()

    pulses = anemometer.status()["pulses_total"]
    assert len(times) < pulses <= 10.0 / 0.002 + 1
    assert reading.values["wind_speed"] == round(pulses / 10.0 * MS_PER_HZ, 2)
    assert ("out_of_range" in reading.quality) == (reading.values["wind_gust"] > 75.0)


def test_a_contact_stuck_closed_counts_nothing_more_and_rain_flags_it_stuck(factory, opened):
    clock = SimClock()
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, clock=clock))
    source = idle_source(factory, RAIN_PIN)
    source.faults.stuck_closed = True

    source.emit(source.closures([1.0, 2.0, 3.0]), clock)  # the first closure sticks
    clock.t = 5.0
    first = gauge.read()
    source.emit(source.closures([6.0, 7.0, 8.0]), clock)
    clock.t = 60.0
    later = gauge.read()

    assert first.values["rain"] == round(MM_PER_TIP, 2)
    assert first.quality == ()
    assert later.values["rain"] == 0.0
    assert later.quality == ("stuck",)


def test_a_disconnected_sensor_gives_no_pulses(factory, opened):
    clock = SimClock()
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory, clock=clock))
    source = idle_source(factory, WIND_PIN)
    source.faults.disconnected = True

    source.emit(source.closures([i / 10 for i in range(50)]), clock)
    clock.t = 10.0

    assert anemometer.read().values == {"wind_speed": 0.0, "wind_gust": 0.0}


# -- real time and threads ------------------------------------------------------------------------


def test_a_threaded_source_at_20_hz_reads_as_its_wind_speed(factory, opened):
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory))
    anemometer.read()  # start the interval now
    with wind_source(factory, WIND_PIN, lambda: 20 * MS_PER_HZ) as source:
        time.sleep(1.0)
        reading = anemometer.read()
    rest = anemometer.read()

    assert reading.values["wind_speed"] == pytest.approx(20 * MS_PER_HZ, rel=0.15)
    counted = anemometer.status()["pulses_total"]
    assert counted == pytest.approx(source.closure_count, abs=2), (reading, rest)


def test_probe_detects_turning_cups_without_taking_the_readings_pulses(factory, opened):
    anemometer = opened(AnemometerDriver(WIND_PIN, pin_factory=factory))
    anemometer.read()
    with wind_source(factory, WIND_PIN, lambda: 20 * MS_PER_HZ) as source:
        result = anemometer.probe(listen_s=0.3)
    reading = anemometer.read()

    assert result.found, result.detail
    assert result.info["pulses"] > 0
    assert anemometer.status()["pulses_total"] == pytest.approx(source.closure_count, abs=2)
    assert reading.values["wind_speed"] > 0


def test_probe_reports_still_cups_and_an_untipped_bucket_as_not_found(factory):
    for driver in (
        AnemometerDriver(WIND_PIN, pin_factory=factory),
        RainGaugeDriver(RAIN_PIN, pin_factory=factory),
    ):
        result = driver.probe(listen_s=0.05)
        assert not result.found
        assert f"GPIO{driver.pin}" in result.detail


def test_probe_detects_a_tipped_bucket(factory):
    gauge = RainGaugeDriver(RAIN_PIN, pin_factory=factory)
    source = idle_source(factory, RAIN_PIN)
    tipper = threading.Timer(0.05, source.emit, [source.closures([0.0, 0.2])])
    tipper.start()
    result = gauge.probe(listen_s=0.5)
    tipper.join()

    assert result.found, result.detail
    assert result.info["tips"] == 2


def test_probe_never_raises(factory):
    result = RainGaugeDriver(99, pin_factory=factory).probe(listen_s=0.0)
    assert not result.found
    assert "GPIO99" in result.detail


def test_reads_lose_no_pulse_while_another_thread_drives_the_pin(factory, opened):
    gauge = opened(RainGaugeDriver(RAIN_PIN, pin_factory=factory, mm_per_tip=1.0, debounce_s=0.0))
    pin = factory.pin(RAIN_PIN)
    closures = 20_000

    def hammer():
        for _ in range(closures):
            pin.drive_low()
            pin.drive_high()

    driver_thread = threading.Thread(target=hammer)
    driver_thread.start()
    reads = []
    while driver_thread.is_alive():
        reads.append(gauge.read().values["rain"])
    driver_thread.join()
    reads.append(gauge.read().values["rain"])

    assert sum(reads) == closures
    assert gauge.status()["tips_total"] == closures
    assert sum(1 for r in reads if r) > 1, "the reads did not overlap the pulses"


# -- pins and factories ---------------------------------------------------------------------------


def test_a_pin_that_the_board_lacks_is_not_found(factory):
    with pytest.raises(SensorNotFound, match="GPIO99"):
        RainGaugeDriver(99, pin_factory=factory).open()


def test_a_pin_already_in_use_is_a_bus_error(factory, opened):
    opened(AnemometerDriver(WIND_PIN, pin_factory=factory))
    with pytest.raises(BusError, match="GPIO5") as caught:
        RainGaugeDriver(WIND_PIN, pin_factory=factory).open()
    assert caught.value.errno == errno.EBUSY


def test_pin_factories_by_name_or_object():
    shared = MockFactory()
    assert make_pin_factory(shared) is shared
    assert isinstance(make_pin_factory("sim"), MockFactory)
    with pytest.raises(DriverError, match="unknown pin_factory"):
        make_pin_factory("rpigpio")


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="lgpio is installed")
def test_lgpio_without_the_lgpio_package_says_what_to_install():
    with pytest.raises(DriverError, match=r"edge-node\[pi\]"):
        make_pin_factory("lgpio")


def test_a_driver_with_its_own_sim_factory_opens_and_closes():
    gauge = RainGaugeDriver(RAIN_PIN, pin_factory="sim")
    gauge.open()
    assert gauge.read().values["rain"] == 0.0
    gauge.close()
    gauge.open()  # a new MockFactory, the pin free again
    gauge.close()
