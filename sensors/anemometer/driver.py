"""Cup anemometer: a magnet on the rotor closes a reed switch once per revolution.

Wind speed is proportional to the pulse rate: `ms_per_hz` is 0.667 m/s per Hz (2.4 km/h per
closure a second) on the common Misol and SparkFun (Argent Data) cups. `read()` reports the mean
speed since the previous read and the gust: as WMO practice defines it (WMO-No. 8, the chapter on
surface wind), the highest 3-second running mean, here of 0.25-second steps, within the interval.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Sequence

from gpiozero import Factory

from drivers import DriverError, ProbeResult, Reading
from drivers.pulse_counter import Clock, PulseCounter, SavedCount

# The contact must have been open this long before a closure counts. At the 75 m/s plausibility
# limit the rotor turns at 112 Hz, 8.9 ms a revolution, about half of it with the contact open;
# reed bounce lasts well under a millisecond. 2 ms passes up to ~250 Hz, so a wind beyond the
# limit is seen and flagged rather than clipped.
DEFAULT_DEBOUNCE_S = 0.002
GUST_STEP_S = 0.25  # WMO's 4 Hz sampling for the running mean
MAX_PLAUSIBLE_MS = 75.0  # above any wind a street node will meet; a fault's
# Pulses arrive all the time, so the saved total (only a figure for the heartbeat) is rewritten
# at most this often to spare the flash card.
SAVE_EVERY_S = 600.0


def max_running_rate(
    times: Sequence[float], start: float, end: float, *, window_s: float, step_s: float, since: float
) -> float:
    """The highest pulse rate (Hz) over the `window_s` windows that end in (start, end].

    Windows end on a `step_s` grid from `start` and at `end`; each counts the pulses in
    [its end - window_s, its end). `times` is sorted and reaches back `window_s` before `start`.
    Windows reaching back before `since` (nothing was listening) are left out; if that leaves
    none, the whole span from `since` to `end` is the one window.
    """
    ends = []
    k = 1
    while start + k * step_s < end:
        ends.append(start + k * step_s)
        k += 1
    ends.append(end)
    full = [e for e in ends if e - window_s >= since - 1e-9]
    if not full:
        span = end - since
        return (bisect_left(times, end) - bisect_left(times, since)) / span if span > 0 else 0.0
    return max(bisect_left(times, e) - bisect_left(times, e - window_s) for e in full) / window_s


class AnemometerDriver:
    units = {"wind_speed": "m/s", "wind_gust": "m/s"}

    def __init__(
        self,
        pin: int,
        *,
        pin_factory: str | Factory,
        ms_per_hz: float = 0.667,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        gust_window_s: float = 3.0,
        state_path: str | os.PathLike | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.pin = pin
        self.ms_per_hz = ms_per_hz
        self.gust_window_s = gust_window_s
        self._counter = PulseCounter(
            pin, pin_factory=pin_factory, debounce_s=debounce_s, clock=clock, name="anemometer"
        )
        self._pulses_total = SavedCount(state_path, "pulses_total", clock=clock, min_interval_s=SAVE_EVERY_S)
        self._recent: tuple[float, ...] = ()  # the last gust window of the previous interval

    def open(self) -> None:
        """Claim the pin. Raises SensorNotFound, BusError or DriverError."""
        self._counter.open()
        self._recent = ()

    def read(self) -> Reading:
        """Mean speed and gust since the previous read (or open); (re)opens first if needed."""
        if not self._counter.is_open:
            self.open()
        pulses = self._counter.take()
        self._pulses_total.add(pulses.count)
        times = self._recent + pulses.times
        self._recent = times[bisect_left(times, pulses.end - self.gust_window_s) :]
        mean_hz = pulses.count / pulses.seconds if pulses.seconds > 0 else 0.0
        gust_hz = max_running_rate(
            times,
            pulses.start,
            pulses.end,
            window_s=self.gust_window_s,
            step_s=GUST_STEP_S,
            since=self._counter.opened_at,
        )
        values = {
            "wind_speed": round(mean_hz * self.ms_per_hz, 2),
            "wind_gust": round(gust_hz * self.ms_per_hz, 2),
        }
        quality = ("out_of_range",) if max(values.values()) > MAX_PLAUSIBLE_MS else ()
        return Reading(values=values, quality=quality)

    def close(self) -> None:
        if self._counter.is_open:
            self._pulses_total.add(self._counter.take().count)
        self._counter.close()
        self._pulses_total.flush()

    def status(self) -> dict[str, int]:
        return {"pulses_total": self._pulses_total.value, "debounced": self._counter.totals()[1]}

    def probe(self, listen_s: float = 5.0) -> ProbeResult:
        """Listen for rotations for `listen_s` (a technician turns the cups). Never raises."""
        info: dict[str, object] = {"pin": self.pin, "listen_s": listen_s}
        try:
            pulses, rejected = self._counter.listen(listen_s)
        except DriverError as err:
            return ProbeResult(False, str(err), info)
        except Exception as err:  # provisioning needs an answer, not a traceback
            return ProbeResult(False, f"{self._counter.name}: unexpected {err!r}", info)
        speed = round(pulses / listen_s * self.ms_per_hz, 2) if listen_s > 0 else 0.0
        info.update(pulses=pulses, debounced=rejected, wind_speed=speed)
        if pulses == 0:
            return ProbeResult(
                False,
                f"{self._counter.name}: no pulse in {listen_s:g} s (turn the cups; check the wiring)",
                info,
            )
        return ProbeResult(
            True, f"{self._counter.name}: {pulses} pulses in {listen_s:g} s, {speed} m/s", info
        )
