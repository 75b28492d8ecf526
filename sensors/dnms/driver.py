"""DNMS sound level meter (Sensor.Community's traffic-noise sensor) on I2C, our own driver.

No maintained Python driver exists; `sensors.dnms.protocol` holds the bytes, this module moves
them over a `drivers.buses.I2CBus` and translates errors, once, into the `DriverError` tree.

open(): reads the version string (it must start "DNMS"; anything else answering at the address
is a WrongDevice), then closes the module's running interval and discards it, so the first
reading covers the time since open rather than since the module powered up.
read(): closes the interval (CALCULATE_LEQ), polls READ_DATA_READY every `POLL_S` for up to
`READY_TIMEOUT_S` (the firmware sets it at the end of its current 125 ms block; a poll whose CRC
fails is asked again), and reads the levels: `laeq` (energy mean over the interval since the
previous read), `lamin`, `lamax` (the lowest and highest 125 ms LAeq in it), in dB(A), rounded to
0.1 dB (the module's class 2-ish accuracy is about +-1 dB). The levels, like the version at open,
are read twice at most when a CRC fails (the module keeps them until the next interval closes).
So one reading describes exactly the interval between two reads; one shorter than
`MIN_INTERVAL_S` (a read right after open) is flagged `warming_up`.

Quality: `out_of_range` when LAeq is below the microphone's self-noise (`NOISE_FLOOR_DBA`: the
ICS-43434's 65 dB SNR at 94 dB SPL) or above its acoustic overload point (120 dB SPL): the value
measures the microphone, not the street. `stuck` after `STUCK_AFTER` bit-identical readings.
Levels that contradict each other (LAmin > LAeq or LAeq > LAmax) or a 0 dB LAeq (the firmware
has not measured yet) raise SensorFault. After any failure the next read() reopens, after
sending RESET as Sensor.Community's firmware does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator

from drivers import BusError, DriverError, ProbeResult, Reading, SensorFault, SensorNotFound, WrongDevice
from drivers.buses import I2CBus
from drivers.sensirion import CRCError
from sensors.dnms.protocol import (
    ADDRESS,
    CALCULATE_LEQ,
    DATA_READY_WORDS,
    LEQ_WORDS,
    READ_DATA_READY,
    READ_LEQ,
    READ_VERSION,
    RESET,
    VERSION_PREFIX,
    VERSION_WORDS,
    Levels,
    decode_data_ready,
    decode_levels,
    decode_version,
    encode_command,
    reply_length,
)

log = logging.getLogger(__name__)

NOISE_FLOOR_DBA = 29.0
OVERLOAD_DBA = 120.0
POLL_S = 0.01
READY_TIMEOUT_S = 1.0  # eight of the firmware's 125 ms blocks
COMMAND_GAP_S = 0.002  # the Teensy handles a command in its receive interrupt; give it a moment
STUCK_AFTER = 5  # a live microphone's float levels never repeat bit for bit five times running
REPLY_ATTEMPTS = 2  # for the version and the levels, when a CRC fails
MIN_INTERVAL_S = 0.5  # four 125 ms blocks: less is a glimpse, not a level of the street
PROBE_INTERVAL_S = 1.0  # what probe() listens to before it reads
LOCK_TIMEOUT_S = 1.0

_NO_ACK = {errno.ENXIO, errno.EREMOTEIO}


class DNMSDriver:
    units = {"laeq": "dB(A)", "lamin": "dB(A)", "lamax": "dB(A)"}

    def __init__(
        self, bus: I2CBus, address: int = ADDRESS, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bus = bus
        self.address = address
        self._clock = clock
        self._interval_start = 0.0
        self.version: str | None = None
        self._open = False
        self._needs_reset = False
        self._recent: deque[Levels] = deque(maxlen=STUCK_AFTER)

    def open(self) -> None:
        """Find the module and start a fresh interval. Raises SensorNotFound, WrongDevice,
        SensorFault or BusError."""
        self._open = False
        self._recent.clear()
        try:
            if self._needs_reset:
                self._command(RESET)
                self._needs_reset = False
            self.version = self._version()
            self._levels()  # the interval since power-up or the last reader: not ours
            self._interval_start = self._clock()
        except DriverError:
            self._needs_reset = True
            raise
        self._open = True
        log.info("DNMS at %#04x: %s", self.address, self.version)

    def read(self) -> Reading:
        if not self._open:
            self.open()
        try:
            levels = self._levels()
        except DriverError:
            self._open = False
            self._needs_reset = True
            raise
        now = self._clock()
        short = now - self._interval_start < MIN_INTERVAL_S
        self._interval_start = now
        return self._reading(levels, short=short)

    def close(self) -> None:
        self._open = False
        self._recent.clear()

    def probe(self) -> ProbeResult:
        """Detect from scratch (reopen) and read one short interval as the self-test. Never raises."""
        info: dict[str, object] = {"address": self.address, "version": None}
        try:
            self.open()
            time.sleep(PROBE_INTERVAL_S)
            reading = self.read()
        except DriverError as err:
            info["version"] = self.version
            return ProbeResult(False, str(err), info)
        except Exception as err:  # provisioning needs an answer, not a traceback
            return ProbeResult(False, f"DNMS at {self.address:#04x}: unexpected {err!r}", info)
        info.update(version=self.version, values=dict(reading.values), quality=list(reading.quality))
        v = reading.values
        detail = (
            f"DNMS at {self.address:#04x} ({self.version}): LAeq {v['laeq']} dB(A), "
            f"LAmin {v['lamin']}, LAmax {v['lamax']}"
        )
        if reading.quality:
            detail += f" ({', '.join(reading.quality)})"
        return ProbeResult(True, detail, info)

    # -- the protocol's steps -------------------------------------------------------------------

    def _version(self) -> str:
        for attempt in range(REPLY_ATTEMPTS):
            self._command(READ_VERSION)
            try:
                version = decode_version(self._read_reply(VERSION_WORDS))
                break
            except CRCError:  # a flipped bit, or not a DNMS talking: asked again, then a fault
                if attempt == REPLY_ATTEMPTS - 1:
                    raise
        if not version.startswith(VERSION_PREFIX):
            raise WrongDevice(
                f"something answers at {self.address:#04x}, but its version is {version!r}, not a DNMS's"
            )
        return version

    def _levels(self) -> Levels:
        self._command(CALCULATE_LEQ)
        deadline = time.monotonic() + READY_TIMEOUT_S
        damaged: CRCError | None = None
        while True:
            time.sleep(POLL_S)
            self._command(READ_DATA_READY)
            try:
                if decode_data_ready(self._read_reply(DATA_READY_WORDS)):
                    break
            except CRCError as err:  # a flipped bit on the bus: ask again
                damaged = err
            if time.monotonic() > deadline:
                why = f" (last reply: {damaged})" if damaged else ""
                raise SensorFault(f"DNMS at {self.address:#04x}: no levels within {READY_TIMEOUT_S:g} s{why}")
        for attempt in range(REPLY_ATTEMPTS):  # the module keeps the levels until the next interval closes
            self._command(READ_LEQ)
            try:
                levels = decode_levels(self._read_reply(LEQ_WORDS))
                break
            except CRCError:
                if attempt == REPLY_ATTEMPTS - 1:
                    raise
        if not all(map(math.isfinite, (levels.laeq, levels.lamin, levels.lamax))):
            raise SensorFault(f"DNMS at {self.address:#04x}: levels not finite ({levels})")
        if levels.laeq == 0.0:
            raise SensorFault(f"DNMS at {self.address:#04x}: 0 dB, the module has not measured yet")
        if not levels.lamin - 0.05 <= levels.laeq <= levels.lamax + 0.05:
            raise SensorFault(
                f"DNMS at {self.address:#04x}: inconsistent levels (LAmin {levels.lamin:.1f}, "
                f"LAeq {levels.laeq:.1f}, LAmax {levels.lamax:.1f})"
            )
        return levels

    def _reading(self, levels: Levels, *, short: bool) -> Reading:
        values = {
            "laeq": round(levels.laeq, 1),
            "lamin": round(levels.lamin, 1),
            "lamax": round(levels.lamax, 1),
        }
        quality = ["warming_up"] if short else []
        if not NOISE_FLOOR_DBA <= levels.laeq <= OVERLOAD_DBA:
            quality.append("out_of_range")
        self._recent.append(levels)
        if len(self._recent) == STUCK_AFTER and len(set(self._recent)) == 1:
            quality.append("stuck")
        return Reading(values=values, quality=tuple(quality))

    # -- bus ------------------------------------------------------------------------------------

    def _command(self, command: int) -> None:
        with self._locked():
            try:
                self.bus.writeto(self.address, encode_command(command))
            except OSError as err:
                raise self._bus_error(err) from err
        time.sleep(COMMAND_GAP_S)

    def _read_reply(self, words: int) -> bytes:
        buffer = bytearray(reply_length(words))
        with self._locked():
            try:
                self.bus.readfrom_into(self.address, buffer)
            except OSError as err:
                raise self._bus_error(err) from err
        return bytes(buffer)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while not self.bus.try_lock():
            if time.monotonic() > deadline:
                raise BusError(errno.EBUSY, f"I2C bus busy: no lock for the DNMS within {LOCK_TIMEOUT_S:g} s")
            time.sleep(0.001)
        try:
            yield
        finally:
            self.bus.unlock()

    def _bus_error(self, err: OSError) -> DriverError:
        if err.errno in _NO_ACK and not self._open:
            return SensorNotFound(f"no device answers at I2C address {self.address:#04x}")
        reason = err.strerror or str(err)
        return BusError(err.errno, f"I2C transfer with the DNMS at {self.address:#04x} failed: {reason}")
