"""Tipping-bucket rain gauge: a magnet on the bucket closes a reed switch once per tip.

Each tip is `mm_per_tip` of rain (0.2794 mm, i.e. 0.011 in, on the common Misol and SparkFun
(Argent Data) gauges). `read()` reports the rain since the previous read and the running total,
whose tip count is kept in `state_path` so that it survives restarts.
"""

from __future__ import annotations

import os
import time

from gpiozero import Factory

from drivers import DriverError, ProbeResult, Reading
from drivers.pulse_counter import Clock, PulseCounter, SavedCount

# The contact must have been open this long before a closure counts as a tip. The magnet sweeps
# past the reed in tens of ms and the bucket tips at most a few times a second, so between real
# tips the contact is open for hundreds of ms, while reed bounce lasts about a millisecond.
DEFAULT_DEBOUNCE_S = 0.05
# No real rain is this heavy for a whole interval; a chattering contact or a fault is.
MAX_PLAUSIBLE_MM_H = 300.0
# A tip closes the contact for a fraction of a second; closed for longer, it is stuck.
STUCK_CLOSED_S = 10.0
# The saved total is rewritten at most this often (only while it rains), and at close().
SAVE_EVERY_S = 5.0


class RainGaugeDriver:
    units = {"rain": "mm", "rain_total": "mm"}

    def __init__(
        self,
        pin: int,
        *,
        pin_factory: str | Factory,
        mm_per_tip: float = 0.2794,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        state_path: str | os.PathLike | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.pin = pin
        self.mm_per_tip = mm_per_tip
        self._counter = PulseCounter(
            pin, pin_factory=pin_factory, debounce_s=debounce_s, clock=clock, name="rain gauge"
        )
        self._tips_total = SavedCount(state_path, "tips_total", clock=clock, min_interval_s=SAVE_EVERY_S)

    def open(self) -> None:
        """Claim the pin. Raises SensorNotFound, BusError or DriverError."""
        self._counter.open()

    def read(self) -> Reading:
        """The rain since the previous read (or open) and the total; (re)opens first if needed."""
        if not self._counter.is_open:
            self.open()
        pulses = self._counter.take()
        self._tips_total.add(pulses.count)
        quality = []
        # One tip of slack: a single tip in a short interval is quantisation, not a rate.
        if (pulses.count - 1) * self.mm_per_tip * 3600.0 > MAX_PLAUSIBLE_MM_H * pulses.seconds:
            quality.append("out_of_range")
        if self._counter.closed_for() > STUCK_CLOSED_S:
            quality.append("stuck")
        values = {
            "rain": round(pulses.count * self.mm_per_tip, 2),
            "rain_total": round(self._tips_total.value * self.mm_per_tip, 2),
        }
        return Reading(values=values, quality=tuple(quality))

    def close(self) -> None:
        """Release the pin and save the total, tips not yet read included: they did fall."""
        if self._counter.is_open:
            self._tips_total.add(self._counter.take().count)
        self._counter.close()
        self._tips_total.flush()

    def status(self) -> dict[str, int]:
        return {"tips_total": self._tips_total.value, "debounced": self._counter.totals()[1]}

    def probe(self, listen_s: float = 5.0) -> ProbeResult:
        """Listen for tips for `listen_s` (a technician tips the bucket). Never raises."""
        info: dict[str, object] = {"pin": self.pin, "listen_s": listen_s}
        try:
            tips, rejected = self._counter.listen(listen_s)
        except DriverError as err:
            return ProbeResult(False, str(err), info)
        except Exception as err:  # provisioning needs an answer, not a traceback
            return ProbeResult(False, f"{self._counter.name}: unexpected {err!r}", info)
        info.update(tips=tips, debounced=rejected, rain=round(tips * self.mm_per_tip, 2))
        if tips == 0:
            return ProbeResult(
                False,
                f"{self._counter.name}: no tip in {listen_s:g} s (tip the bucket; check the wiring)",
                info,
            )
        return ProbeResult(True, f"{self._counter.name}: {tips} tips in {listen_s:g} s", info)
