"""A DNMS sound level meter on the simulated I2C bus, answering as its Teensy firmware does.

Modelled (github.com/hbitter/DNMS, Firmware/Teensy): the commands RESET, READ_VERSION,
CALCULATE_LEQ, READ_DATA_READY, READ_LEQ; a reply only to a read that follows its command (any
other read gets the bus's idle 0xFF bytes, which fail the CRC); the result of CALCULATE_LEQ ready
at the end of the firmware's current 125 ms block; levels of 0 dB until the first interval closes.

The sound: `level()` gives the street's level in dB(A) at the time of a CALCULATE_LEQ. The
interval since the previous one is cut into 125 ms blocks (at most `MAX_BLOCKS`, evenly spread
over a longer interval), each the street's level with a few dB of seeded noise, and now and then
a vehicle passing close by (+8..15 dB for a block). LAeq is their energy mean; LAmin and LAmax
the quietest and loudest block, as the firmware computes them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from sensors.dnms.protocol import (
    CALCULATE_LEQ,
    READ_DATA_READY,
    READ_LEQ,
    READ_VERSION,
    RESET,
    Levels,
    decode_command,
    encode_data_ready,
    encode_levels,
    encode_version,
)
from simulators.i2c import nack

BLOCK_S = 0.125
MAX_BLOCKS = 2048
BLOCK_SPREAD_DB = 2.5
PASS_BY_CHANCE = 0.02
VERSION = "DNMS Version 5.2.6"


@dataclass
class DNMSFaults:
    """Faults injectable at run time; probabilities apply to each reply read."""

    nack: bool = False  # every transfer raises OSError(EREMOTEIO)
    bad_crc: float = 0.0  # one CRC byte of the reply damaged
    garbage: float = 0.0  # the reply replaced by random bytes
    stuck: bool = False  # the levels freeze at their last value
    never_ready: bool = False  # READ_DATA_READY stays 0 (a hung firmware)
    version: str | None = None  # another firmware answers READ_VERSION with this


class SimDNMS:
    def __init__(
        self,
        level: Callable[[], float],
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._level = level
        self._clock = clock
        self._rng = random.Random(seed)
        self.faults = DNMSFaults()
        self.calculations = 0
        self._state: int | None = None  # the command whose reply the next read gets
        self._interval_start = clock()
        self._levels = Levels(0.0, 0.0, 0.0)
        self._ready_at: float | None = None

    def write(self, data: bytes) -> None:
        if self.faults.nack:
            raise nack()
        command = decode_command(data)
        self._state = None
        if command is None:
            return  # an address-only probe
        if command == RESET:
            return
        if command == CALCULATE_LEQ:
            now = self._clock()
            self._ready_at = now + self._rng.uniform(0.0, BLOCK_S)
            if not self.faults.stuck:
                self._levels = self._measure(now - self._interval_start)
            self._interval_start = now
            self.calculations += 1
        elif command in (READ_VERSION, READ_DATA_READY, READ_LEQ):
            self._state = command

    def read(self, n: int) -> bytes:
        if self.faults.nack:
            raise nack()
        state, self._state = self._state, None
        if state == READ_VERSION:
            reply = encode_version(self.faults.version or VERSION, n // 3)
        elif state == READ_DATA_READY:
            reply = encode_data_ready(self._ready())
        elif state == READ_LEQ:
            reply = encode_levels(self._levels)
            self._ready_at = None
        else:
            return b"\xff" * n
        return self._damaged(reply)[:n].ljust(n, b"\xff")

    def _ready(self) -> bool:
        return not self.faults.never_ready and self._ready_at is not None and self._clock() >= self._ready_at

    def _measure(self, interval_s: float) -> Levels:
        street = self._level()
        blocks = min(MAX_BLOCKS, max(1, round(interval_s / BLOCK_S)))
        rng = self._rng
        levels = []
        for _ in range(blocks):
            block = street + rng.gauss(0.0, BLOCK_SPREAD_DB)
            if rng.random() < PASS_BY_CHANCE:
                block += rng.uniform(8.0, 15.0)
            levels.append(block)
        laeq = 10.0 * math.log10(sum(10.0 ** (level / 10.0) for level in levels) / len(levels))
        return Levels(laeq, min(levels), max(levels))

    def _damaged(self, reply: bytes) -> bytes:
        rng, faults = self._rng, self.faults
        if rng.random() < faults.garbage:
            return rng.randbytes(len(reply))
        if rng.random() < faults.bad_crc:
            out = bytearray(reply)
            out[2 + 3 * rng.randrange(len(reply) // 3)] ^= rng.randint(1, 0xFF)
            return bytes(out)
        return reply
