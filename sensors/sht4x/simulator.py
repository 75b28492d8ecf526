"""A Sensirion SHT4x (temperature and humidity) on the simulated I2C bus, at the command level.

Modelled (SHT4x datasheet, section 4): one-byte commands; measurements at high, medium and low
repeatability (0xFD, 0xF6, 0xE0) ready after 8.3, 4.5 and 1.6 ms, a read before that NACKed as
the chip does; the serial number (0x89); soft reset (0x94); the six heater commands (200, 110 or
20 mW for 1 s or 0.1 s, each ending with a high-repeatability measurement); every word followed
by its CRC-8.

The heater warms the die: at the end of a pulse by `P * HEATER_K_PER_MW * (1 - exp(-t / 0.6 s))`,
decaying with `COOL_TAU_S` after it, and the humidity the die sees falls with its temperature
(same water vapour, Magnus formula). Condensation: after air at `CONDENSING_RH` or more the
sensing film is wet and reads 100 %RH whatever the air, until a pulse of 110 mW or more for 1 s
dries it (what Sensirion's heater is for).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.sensirion import encode_words
from simulators.i2c import nack

MEASURE_HIGH = 0xFD
MEASURE_MEDIUM = 0xF6
MEASURE_LOW = 0xE0
READ_SERIAL = 0x89
SOFT_RESET = 0x94
# command: (heater power in mW, pulse in s)
HEATER = {
    0x39: (200, 1.0),
    0x32: (200, 0.1),
    0x2F: (110, 1.0),
    0x24: (110, 0.1),
    0x1E: (20, 1.0),
    0x15: (20, 0.1),
}
MEASURE_S = {MEASURE_HIGH: 0.0083, MEASURE_MEDIUM: 0.0045, MEASURE_LOW: 0.0016}
# Repeatability (datasheet table 1), as one standard deviation of the noise, in Cel and %RH.
NOISE = {MEASURE_HIGH: (0.04, 0.08), MEASURE_MEDIUM: (0.07, 0.15), MEASURE_LOW: (0.1, 0.25)}

HEATER_K_PER_MW = 0.15
HEAT_TAU_S = 0.6
COOL_TAU_S = 1.5
CONDENSING_RH = 99.0
DRYING_PULSE = (110, 1.0)  # at least this power for at least this long dries the film


def magnus_saturation(temperature_c: float) -> float:
    """Saturation vapour pressure over water in hPa (Magnus, Sonntag 1990 constants)."""
    return 6.112 * math.exp(17.62 * temperature_c / (243.12 + temperature_c))


def raw_temperature(celsius: float) -> int:
    return min(0xFFFF, max(0, round((celsius + 45.0) * 65535.0 / 175.0)))


def raw_humidity(rh: float) -> int:
    return min(0xFFFF, max(0, round((rh + 6.0) * 65535.0 / 125.0)))


@dataclass
class SHT4xFaults:
    """Faults injectable at run time."""

    nack: bool = False  # every transfer raises OSError(EREMOTEIO)
    bad_crc: float = 0.0  # probability that a reply has one CRC byte damaged
    stuck: bool = False  # the measurement freezes at its last raw value
    condensed: bool = False  # dew keeps forming on the film, whatever the air's humidity


class SimSHT4x:
    """`conditions()` returns (temperature_c, humidity_rh) of the air at the time of a measurement."""

    def __init__(
        self,
        conditions: Callable[[], tuple[float, float]],
        *,
        serial_number: int = 0x1F2E3D4C,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conditions = conditions
        self._clock = clock
        self._rng = random.Random(seed)
        self.serial_number = serial_number
        self.faults = SHT4xFaults()
        self.wet = False
        self.heater_pulses: list[tuple[float, int, float]] = []  # (start, mW, s)
        self._reply: bytes | None = None
        self._ready_at = 0.0
        self._heat_end = -math.inf
        self._heat_excess = 0.0  # K above the air at the end of the last pulse
        self._last_raw: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        if self.faults.nack:
            raise nack()
        if not data:
            return  # an address-only probe
        command, now = data[0], self._clock()
        self._reply = None
        if command in MEASURE_S:
            self._reply = self._measure(command, now)
            self._ready_at = now + MEASURE_S[command]
        elif command in HEATER:
            power, pulse = HEATER[command]
            self.heater_pulses.append((now, power, pulse))
            self._heat_excess = self._excess(now, self._heat_end) + power * HEATER_K_PER_MW * (
                1.0 - math.exp(-pulse / HEAT_TAU_S)
            )
            self._heat_end = now + pulse
            if power >= DRYING_PULSE[0] and pulse >= DRYING_PULSE[1]:
                self.wet = False
            self._reply = self._measure(MEASURE_HIGH, now + pulse)
            self._ready_at = now + pulse + MEASURE_S[MEASURE_HIGH]
        elif command == READ_SERIAL:
            self._reply = encode_words([self.serial_number >> 16, self.serial_number & 0xFFFF])
            self._ready_at = now + 0.001
        elif command == SOFT_RESET:
            self._ready_at = now + 0.001
        else:
            raise nack()  # the chip does not acknowledge an unknown command

    def read(self, n: int) -> bytes:
        if self.faults.nack or self._reply is None or self._clock() < self._ready_at:
            raise nack()  # nothing to read, or not ready yet: the chip NACKs its address
        reply, self._reply = self._reply, None
        if self._rng.random() < self.faults.bad_crc:
            out = bytearray(reply)
            out[2 + 3 * self._rng.randrange(len(reply) // 3)] ^= self._rng.randint(1, 0xFF)
            reply = bytes(out)
        return reply[:n].ljust(n, b"\xff")

    def die_temperature(self, at: float | None = None) -> float:
        """Kelvin above the air the heater has left on the die at `at` (now by default)."""
        return self._excess(self._clock() if at is None else at, self._heat_end)

    def _excess(self, t: float, heat_end: float) -> float:
        if t <= heat_end or heat_end == -math.inf:
            return self._heat_excess if heat_end != -math.inf else 0.0
        return self._heat_excess * math.exp(-(t - heat_end) / COOL_TAU_S)

    def _measure(self, command: int, at: float) -> bytes:
        if self.faults.stuck and self._last_raw is not None:
            return encode_words(self._last_raw)
        air_t, air_rh = self._conditions()
        if air_rh >= CONDENSING_RH or self.faults.condensed:
            self.wet = True
        die_t = air_t + self._excess(at, self._heat_end)
        die_rh = air_rh * magnus_saturation(air_t) / magnus_saturation(die_t)
        if self.wet:
            die_rh = 100.0
        sd_t, sd_rh = NOISE[command]
        raw = (
            raw_temperature(die_t + self._rng.gauss(0.0, sd_t)),
            raw_humidity(die_rh + self._rng.gauss(0.0, sd_rh)),
        )
        self._last_raw = raw
        return encode_words(raw)
