"""Reed-switch pulse trains on gpiozero `MockFactory` pins: bucket tips and cup rotations, with
contact bounce, for `sensors.rain_gauge.driver` and `sensors.anemometer.driver`.

A simulated node shares one `MockFactory` between its drivers and its sources:

    factory = MockFactory()
    rain = rain_source(factory, 6, lambda: env.at(time.time()).rain_mm_h, mm_per_tip=0.2794)
    wind = wind_source(factory, 5, lambda: env.at(time.time()).wind_ms, ms_per_hz=0.667)
    gauge = RainGaugeDriver(6, pin_factory=factory)
    anemometer = AnemometerDriver(5, pin_factory=factory)
    rain.start(); wind.start()  # ... rain.stop(); wind.stop()

The pin idles high (the driver's pull-up, the contact open) and a closure drives it low.
`start()` plays the train in real time from a thread: realistic, but only as punctual as the
OS's sleeps. For exact tests, `closures(times)` makes the edges of closures at given times (with
the same bounce and faults as the thread) and `emit(edges, clock)` drives them from the calling
thread, setting a `SimClock` (the driver's clock) to each edge's time first. MockPin runs
gpiozero's callbacks in the thread that drives it, so every edge is counted when `emit` returns.
For one seed, the edges (not the thread's real timing) are the same on every run.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gpiozero.pins.mock import MockFactory

HIGH = True  # contact open: the pull-up holds the pin high
LOW = False  # contact closed to ground

Edge = tuple[float, bool]  # (time, level)

STORM_REOPENINGS = 24  # a chattering contact reopens this often at each closure
STORM_GAP_S = 0.001  # mean time between its toggles (exponential): some outlast a short debounce
JITTER = 0.05  # each period varies by up to +-5 %, as a rotor's speed or a bucket's fill does
CLOSED_SHARE_MAX = 0.4  # a closure takes at most this share of the period
POLL_S = 0.05  # how often the thread looks at the rate and the faults between pulses
# The thread drives edges closer together than this back to back: the OS overshoots shorter sleeps
# by more than their length (by milliseconds on a busy machine), which would turn bounce into pulses.
SHORTEST_SLEEP_S = 0.002
RAIN_CLOSED_S = 0.05  # the magnet sweeps past the reed in tens of ms as the bucket tips


class SimClock:
    """A clock that a test sets: give it to the driver (`clock=`) and to `emit()`."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class PulseFaults:
    """Faults that tests and the fleet simulator switch on and off at run time."""

    bounce_storm: bool = False  # dozens of toggles at each closure (worn contact, loose wire)
    stuck_closed: bool = False  # the contact stays closed: pin low, no more edges
    disconnected: bool = False  # cable cut: the pull-up holds the pin high, no edges


class SimPulseSource:
    """Closes a simulated reed switch on `pin` `rate_hz()` times a second."""

    def __init__(
        self,
        factory: MockFactory,
        pin: int,
        rate_hz: Callable[[], float],
        *,
        bounce: int = 3,
        bounce_s: float = 0.0005,
        closed_s: float = 0.01,
        seed: int = 42,
    ) -> None:
        self.rate_hz = rate_hz
        self.bounce = bounce  # reopenings as the contact makes, and recloses as it breaks
        self.bounce_s = bounce_s  # mean time between bounce toggles
        self.closed_s = closed_s
        self.faults = PulseFaults()
        self.closure_count = 0  # closures made, faults aside
        self._pin = factory.pin(pin)  # the very MockPin that the driver's device will use
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drive(HIGH)

    def closure_edges(self, t: float, period_s: float = math.inf) -> list[Edge]:
        """The level changes of one closure at `t`: make, bounce, break, bounce; faults applied."""
        if self.faults.disconnected:
            return []
        if self.faults.stuck_closed:
            return [(t, LOW)]
        self.closure_count += 1
        storm = self.faults.bounce_storm
        edges = [(t, LOW)]
        now = t
        for _ in range(STORM_REOPENINGS if storm else self.bounce):
            for level in (HIGH, LOW):
                now += self._rng.expovariate(1 / STORM_GAP_S) if storm else self._bounce_gap()
                edges.append((now, level))
        now = max(now + self._bounce_gap(), t + min(self.closed_s, CLOSED_SHARE_MAX * period_s))
        edges.append((now, HIGH))
        for _ in range(self.bounce):
            for level in (LOW, HIGH):
                now += self._bounce_gap()
                edges.append((now, level))
        return edges

    def closures(self, times: Sequence[float]) -> list[Edge]:
        """The edges of a closure at each of `times` (ascending), in time order: closures closer
        together than their own bounce (a storm's) interleave."""
        edges: list[Edge] = []
        for i, t in enumerate(times):
            edges += self.closure_edges(t, times[i + 1] - t if i + 1 < len(times) else math.inf)
        return sorted(edges, key=lambda edge: edge[0])

    def emit(self, edges: Iterable[Edge], clock: SimClock | None = None) -> None:
        """Drive the pin through `edges`, in time order, from the calling thread. With `clock`,
        set it to each edge's time first: exact and instant. Without, play them in real time
        from now, as the thread does."""
        if clock is None:
            self._play(edges, threading.Event())
            return
        for t, level in edges:
            clock.t = t
            self._drive(level)

    def start(self) -> SimPulseSource:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"sim-pulses-{self._pin.info.name}")
            self._thread.daemon = True
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> SimPulseSource:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        phase = self._rng.random()  # how far into its first period the train starts
        threshold = 1.0
        last = time.monotonic()
        while not self._stop.is_set():
            if self.faults.disconnected or self.faults.stuck_closed:
                self._drive(HIGH if self.faults.disconnected else LOW)
                self._stop.wait(POLL_S)
                last = time.monotonic()
                continue
            self._drive(HIGH)  # in case a fault has just cleared
            rate = max(0.0, self.rate_hz())
            if phase >= threshold:
                phase = min(phase - threshold, 1.0)  # running late: catch up by one pulse, no more
                threshold = 1.0 + self._rng.uniform(-JITTER, JITTER)
                self._play(self.closure_edges(0.0, 1.0 / rate if rate > 0 else math.inf), self._stop)
            else:
                self._stop.wait(POLL_S if rate == 0 else min(POLL_S, (threshold - phase) / rate))
            now = time.monotonic()
            phase += rate * (now - last)
            last = now
        if not self.faults.stuck_closed:
            self._drive(HIGH)

    def _play(self, edges: Iterable[Edge], stop: threading.Event) -> None:
        """Drive `edges` (times from now) in real time; returns early when `stop` is set."""
        previous = 0.0
        for t, level in edges:
            gap, previous = t - previous, t
            if gap >= SHORTEST_SLEEP_S and stop.wait(gap):
                return
            self._drive(level)

    def _bounce_gap(self) -> float:
        return self.bounce_s * self._rng.uniform(0.5, 1.5)

    def _drive(self, level: bool) -> None:
        if level:
            self._pin.drive_high()
        else:
            self._pin.drive_low()


def rain_source(
    factory: MockFactory, pin: int, conditions: Callable[[], float], mm_per_tip: float = 0.2794, **options
) -> SimPulseSource:
    """Bucket tips for the rain rate that `conditions()` gives, in mm/h."""
    options.setdefault("closed_s", RAIN_CLOSED_S)
    return SimPulseSource(factory, pin, lambda: max(0.0, conditions()) / 3600.0 / mm_per_tip, **options)


def wind_source(
    factory: MockFactory, pin: int, conditions: Callable[[], float], ms_per_hz: float = 0.667, **options
) -> SimPulseSource:
    """Cup rotations for the wind speed that `conditions()` gives, in m/s."""
    return SimPulseSource(factory, pin, lambda: max(0.0, conditions()) / ms_per_hz, **options)
