"""A byte-level Plantower PMS5003 on a pseudo-terminal (data manual V2.3, appendices I and II).

Modelled: active mode (a data frame every `frame_interval_s`; 0.2-2.3 s on a real sensor) and
passive mode (a frame per read command); mode changes and sleep answered with the 8-byte reply;
asleep, the sensor sends nothing and hears only the wake-up command, which it does not answer:
its fan restarts and it reports again after `startup_s`. For the first `WARM_UP_S` after waking
the fan is not yet at speed and the sensor reads low (ramping from half the true value), which is
why readings then are flagged `warming_up`. The mode survives sleep and unplugging (the sensor
stays powered).

Values: `conditions()` gives (pm1, pm2_5, pm10) as an atmospheric reference would measure them;
the frame's "atmospheric environment" words are those with a few percent of seeded noise, whole
ug/m3 as the sensor sends them. The "CF=1" words equal them up to 30 ug/m3 and run 50 % higher
above, the relation field comparisons of PMS5003s show. Particle counts follow from the masses
in each size bin for spheres of density 1.65 g/cm3 at the bin's geometric mean diameter
(0.3-0.5 um: 40 % of PM1, 0.5-1: 60 %; 1-2.5: PM2.5 - PM1; 2.5-5: 60 % of PM10 - PM2.5, 5-10:
40 %), cumulated from each size up, as the sensor reports them; then scaled down by
`COUNTING_EFFICIENCY`, as the PMS5003 undercounts (its counts are not a reference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sensors.pms5003.protocol import (
    CHANGE_MODE,
    MODE_ACTIVE,
    MODE_PASSIVE,
    READ_PASSIVE,
    SLEEP_WAKE,
    STATE_SLEEP,
    STATE_WAKE,
    Command,
    CommandParser,
    DataFrame,
    Reply,
    encode_data_frame,
    encode_reply,
)
from simulators.serial_pty import IDLE_S, LineFaults, PtyDevice

WARM_UP_S = 30.0
RELATIVE_NOISE = 0.03
FIRMWARE_VERSION = 0x91
DENSITY_UG_PER_UM3 = 1.65e-6  # 1.65 g/cm3
LITRE_TENTH_M3 = 1e-4
COUNTING_EFFICIENCY = 0.3
# (low, high) diameter in um, and which mass it takes: fraction of (pm1, pm2_5 - pm1, pm10 - pm2_5)
BINS = (
    ((0.3, 0.5), (0.4, 0.0, 0.0)),
    ((0.5, 1.0), (0.6, 0.0, 0.0)),
    ((1.0, 2.5), (0.0, 1.0, 0.0)),
    ((2.5, 5.0), (0.0, 0.0, 0.6)),
    ((5.0, 10.0), (0.0, 0.0, 0.4)),
)


def particle_counts(pm1: float, pm2_5: float, pm10: float) -> tuple[int, ...]:
    """Particles beyond 0.3, 0.5, 1.0, 2.5, 5.0 and 10 um in 0.1 L, for the given masses (ug/m3)."""
    masses = (pm1, max(0.0, pm2_5 - pm1), max(0.0, pm10 - pm2_5))
    per_bin = []
    for (low, high), shares in BINS:
        d = math.sqrt(low * high)
        particle_ug = DENSITY_UG_PER_UM3 * math.pi / 6.0 * d**3
        mass_ug = sum(s * m for s, m in zip(shares, masses, strict=True)) * LITRE_TENTH_M3
        per_bin.append(COUNTING_EFFICIENCY * mass_ug / particle_ug)
    cumulative = [round(sum(per_bin[i:])) for i in range(len(per_bin))]
    return (*cumulative, 0)  # beyond 10 um: nothing that PM10 counts


def cf1_of(atmospheric: float) -> float:
    return atmospheric if atmospheric <= 30.0 else 30.0 + 1.5 * (atmospheric - 30.0)


@dataclass
class PMS5003Faults(LineFaults):
    """Faults injectable at run time. Line faults apply to each frame sent (data or reply)."""

    ignore_sleep: bool = False  # sleep commands go unheard: no reply, reports go on
    stuck: bool = False  # the measurement freezes at its last value
    pm_multiplier: float = 1.0  # fog: droplets counted as particles
    error_code: int = 0  # what the reserved word's low byte reports (e.g. a fan fault)


class SimPMS5003(PtyDevice):
    """`conditions()` returns (pm1, pm2_5, pm10) in ug/m3 at the time of a measurement."""

    name = "pms5003"

    def __init__(
        self,
        conditions: Callable[[], tuple[float, float, float]],
        *,
        frame_interval_s: float = 1.0,
        startup_s: float = 2.5,
        warm_up_s: float = WARM_UP_S,
        seed: int = 0,
    ) -> None:
        self._conditions = conditions
        self.frame_interval_s = frame_interval_s
        self.startup_s = startup_s
        self.warm_up_s = warm_up_s
        self.faults = PMS5003Faults(_device=self)
        self.mode = MODE_ACTIVE
        self.awake = True
        self.commands: list[Command] = []  # every command heard, for tests
        self._parser = CommandParser()
        self._frame: DataFrame | None = None
        super().__init__(seed=seed)
        self._woke_at = time.monotonic() - warm_up_s - startup_s  # powered long ago: warm
        self._next_frame = time.monotonic() + frame_interval_s

    def _line_faults(self) -> LineFaults:
        return self.faults

    def _plugged(self) -> None:
        self._parser.clear()

    def _reporting_from(self) -> float:
        return self._woke_at + self.startup_s

    def _next_event(self, now: float) -> float:
        if not self.awake or self.mode != MODE_ACTIVE or not self.plugged:
            return now + IDLE_S
        return max(self._next_frame, self._reporting_from())

    def _tick(self, now: float) -> None:
        if not self.awake or self.mode != MODE_ACTIVE or not self.plugged or now < self._reporting_from():
            return
        if now >= self._next_frame:
            self._send(encode_data_frame(self._measure(now)))
            self._next_frame += self.frame_interval_s
            if self._next_frame < now:  # fell behind (a stalled thread): no burst
                self._next_frame = now + self.frame_interval_s

    def _receive(self, data: bytes, now: float) -> None:
        for command in self._parser.feed(data):
            self.commands.append(command)
            self._handle(command, now)

    def _handle(self, cmd: Command, now: float) -> None:
        if not self.awake:
            if cmd.command == SLEEP_WAKE and cmd.value == STATE_WAKE:
                self.awake = True
                self._woke_at = now
                self._next_frame = now + self.startup_s
            return
        if cmd.command == CHANGE_MODE and cmd.value in (MODE_PASSIVE, MODE_ACTIVE):
            self.mode = cmd.value
            self._send(encode_reply(Reply(CHANGE_MODE, cmd.value)))
            self._next_frame = now + self.frame_interval_s
        elif cmd.command == SLEEP_WAKE and cmd.value == STATE_SLEEP:
            if self.faults.ignore_sleep:
                return
            self.awake = False
            self._send(encode_reply(Reply(SLEEP_WAKE, STATE_SLEEP)))
        elif cmd.command == READ_PASSIVE and self.mode == MODE_PASSIVE and now >= self._reporting_from():
            self._send(encode_data_frame(self._measure(now)))

    def _measure(self, now: float) -> DataFrame:
        if self.faults.stuck and self._frame is not None:
            return self._frame
        pm1, pm2_5, pm10 = self._conditions()
        ramp = min(1.0, 0.5 + 0.5 * (now - self._woke_at) / self.warm_up_s) if self.warm_up_s > 0 else 1.0
        scale = ramp * self.faults.pm_multiplier

        def noisy(value: float) -> float:
            return max(0.0, value * scale * (1.0 + self._rng.gauss(0.0, RELATIVE_NOISE)))

        fine = noisy(pm1)
        medium = max(fine, noisy(pm2_5))
        coarse = max(medium, noisy(pm10))
        counts = particle_counts(fine, medium, coarse)
        self._frame = DataFrame(
            *(round(cf1_of(v)) for v in (fine, medium, coarse)),
            round(fine),
            round(medium),
            round(coarse),
            *counts,
            version=FIRMWARE_VERSION,
            error=self.faults.error_code,
        )
        return self._frame
