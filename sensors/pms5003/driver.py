"""Plantower PMS5003 (PM1, PM2.5, PM10 and particle counts, laser scattering) on a serial port.

`port` is a device path (`/dev/serial0`, `/dev/ttyUSB0`), any pyserial URL or a simulator's pty.
The bytes are `sensors.pms5003.protocol`'s business; this module moves them, keeps time and
translates errors, once, into the `DriverError` tree.

Why not Adafruit's `adafruit-circuitpython-pm25`: it reads active-mode frames only (no passive
mode, no sleep or wake commands, so no duty cycle), looks for the next 0x42 and takes the 31 bytes
after it, so after line noise it can lose the frames that began inside a broken one, and it
raises one RuntimeError for every failure. What it does fit, decoding the 32-byte frame, is
ten lines here; the tests use it as an independent oracle that our decoding agrees with.

Which values: `pm1`, `pm2_5`, `pm10` are the manual's "under atmospheric environment" words
(4-6), the concentrations of the air as it is, which is what the SDS011 reports and what
Sensor.Community's firmware publishes for the PMS sensors. The "CF=1, standard particle" words
(1-3), meant for factory calibration, travel beside them as `pm1_cf1`, `pm2_5_cf1`, `pm10_cf1`
(US EPA's correction for PurpleAir-style sensors starts from those). Particle counts `n0_3`,
`n0_5`, `n1_0`, `n2_5`, `n5_0`, `n10` are particles beyond that diameter in um per 0.1 L of
air (unit "count/0.1L"), as the sensor counts them.

open(): opens the port, wakes the sensor (a sleeping sensor hears nothing else), sets the mode
(passive by default: a frame only when asked, so a reading is one fresh frame; "active": the
mean of the frames received since the previous read), each command tried `COMMAND_ATTEMPTS`
times. Nothing at all on the line raises SensorNotFound, as does a missing port; bytes but no
valid frame SensorFault; other port errors BusError. A sensor that reports but does not answer
commands (a broken TX wire, or a sensor without the command set) is used in active mode.

Warm-up: the fan needs `WARM_UP_S` (30 s, the manual's "stable data ... at least 30 seconds
after the sensor wakeup") to reach speed; readings from frames received before that are
flagged `warming_up`.

Duty cycle (`duty = {on_s, off_s}`), as for the SDS011: awake less than on_s after waking, a
reading flagged `warming_up`; on_s or more after waking, a clean reading, then the sleep command;
asleep less than off_s, None; off_s or more, the wake command and None. `next_read_in()` tells
the daemon when the next step is due.

Quality: `out_of_range` outside 0..1000 ug/m3 (the manual's range, "maximum 1000"), `stuck` after
`STUCK_FRAMES` bit-identical frames (counts included: they change from frame to frame even in
clean air), `warming_up` as above. A non-zero error code in the reserved word is logged and shown
in status(). After a failure the port is closed and the next read() reopens it, so an unplugged
and replugged sensor recovers without a restart.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

import serial

from drivers import DriverError, ProbeResult, Reading, SensorFault, SensorNotFound, WrongDevice
from drivers.serial_port import duty_cycle, open_port, port_error
from sensors.pms5003.protocol import (
    CHANGE_MODE,
    DATA_WORDS,
    MODE_ACTIVE,
    MODE_PASSIVE,
    SLEEP_WAKE,
    STATE_SLEEP,
    DataFrame,
    FrameParser,
    Reply,
    read_passive,
    set_mode,
    set_sleep,
)

log = logging.getLogger(__name__)

BAUDRATE = 9600
READ_TIMEOUT_S = 0.05
REPLY_TIMEOUT_S = 1.0
COMMAND_ATTEMPTS = 3
FRAME_TIMEOUT_S = 3.0  # an active sensor sends a frame at least every 2.3 s
WARM_UP_S = 30.0
RANGE_UG_M3 = (0.0, 1000.0)
STUCK_FRAMES = 10
MAX_FRAMES = 4096
FOREIGN_BYTES = 32  # this much on the line and not one frame of ours: something else talks there
MODES = {"passive": MODE_PASSIVE, "active": MODE_ACTIVE}
COUNT_UNIT = "count/0.1L"


class PMS5003Driver:
    units = {
        "pm1": "ug/m3",
        "pm2_5": "ug/m3",
        "pm10": "ug/m3",
        "pm1_cf1": "ug/m3",
        "pm2_5_cf1": "ug/m3",
        "pm10_cf1": "ug/m3",
        **{name: COUNT_UNIT for name in ("n0_3", "n0_5", "n1_0", "n2_5", "n5_0", "n10")},
    }

    def __init__(
        self,
        port: str,
        *,
        mode: str = "passive",
        duty: Mapping[str, float] | None = None,
        warm_up_s: float = WARM_UP_S,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        frame_timeout_s: float = FRAME_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)} (got {mode!r})")
        self.port = port
        self.mode = mode
        self.duty = duty_cycle(duty)
        self.warm_up_s = warm_up_s
        self.reply_timeout_s = reply_timeout_s  # per command attempt
        self.frame_timeout_s = frame_timeout_s  # for a frame in active mode
        self.firmware: int | None = None
        self.error_code = 0
        self._clock = clock
        self._serial: serial.SerialBase | None = None
        self._parser = FrameParser()
        self._passive = False  # the sensor confirmed passive mode
        self._frames: deque[tuple[float, DataFrame]] = deque(maxlen=MAX_FRAMES)
        self._replies: deque[Reply] = deque(maxlen=16)
        self._woke_at: float | None = None
        self._slept_at: float | None = None
        self._recent: deque[DataFrame] = deque(maxlen=STUCK_FRAMES)

    # -- the Driver protocol ------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port, wake and configure the sensor. Raises SensorNotFound, SensorFault or BusError."""
        self._drop()
        self._serial = open_port(self.port, BAUDRATE, READ_TIMEOUT_S)
        try:
            self._configure()
        except DriverError:
            self._drop()
            raise

    def read(self) -> Reading | None:
        if self._serial is None:
            self.open()
        try:
            return self._read_continuous() if self.duty is None else self._read_duty(*self.duty)
        except DriverError:
            self._drop()
            raise

    def close(self) -> None:
        """Put the sensor to sleep when it can still hear us (fan and laser off), close the port."""
        if self._serial is not None and self._woke_at is not None:
            try:
                self._write(set_sleep(True))
            except DriverError as err:
                log.info("PMS5003 on %s: not put to sleep at close: %s", self.port, err)
        self._drop()

    def probe(self) -> ProbeResult:
        """Detect from scratch (reopen); one frame is the self-test. Never raises."""
        info: dict[str, object] = {"port": self.port, "firmware": None}
        try:
            self.open()
            frames = self._fresh_frames()
            reading = self._reading(frames[-1:], warming=True)
        except DriverError as err:
            info["absent"] = isinstance(err, SensorNotFound | WrongDevice)
            return ProbeResult(False, str(err), info)
        except Exception as err:  # provisioning needs an answer, not a traceback
            return ProbeResult(False, f"PMS5003 on {self.port}: unexpected {err!r}", info)
        info.update(self._identity(), values=dict(reading.values), quality=list(reading.quality))
        v = reading.values
        detail = (
            f"PMS5003 on {self.port}: firmware {info['firmware']}, {self._mode_name()} mode, "
            f"PM1 {v['pm1']}, PM2.5 {v['pm2_5']}, PM10 {v['pm10']} ug/m3, "
            f"{v['n0_3']:.0f} particles > 0.3 um per 0.1 L"
        )
        if self.error_code:
            detail += f", error code {self.error_code:#04x}"
        return ProbeResult(True, detail, info)

    def next_read_in(self) -> float | None:
        if self.duty is None:
            return None
        on_s, off_s = self.duty
        now = self._clock()
        if self._slept_at is not None:
            return max(0.0, self._slept_at + off_s - now)
        if self._woke_at is not None:
            return max(0.0, self._woke_at + on_s - now)
        return None

    def status(self) -> dict[str, object]:
        return {**self._identity(), "bad_frames": self._parser.bad_frames, "error_code": self.error_code}

    # -- cycle --------------------------------------------------------------------------------------

    def _configure(self) -> None:
        self._parser.clear()
        self._frames.clear()
        self._replies.clear()
        self._io(self._serial.reset_input_buffer)
        self._write(set_sleep(False))  # not answered: the fan restarts and frames follow
        self._woken()
        wanted = MODES[self.mode]
        if self._command(set_mode(wanted), CHANGE_MODE, wanted):
            self._passive = wanted == MODE_PASSIVE
        else:
            self._passive = False
            self._wait(lambda: bool(self._frames), self.frame_timeout_s)
            if not self._frames:
                raise self._silent("no answer to the mode command and no data frames")
            log.warning(
                "PMS5003 on %s reports but does not hear commands (RX wire?): used in active mode", self.port
            )
        log.info(
            "PMS5003 on %s: %s mode, %s",
            self.port,
            self._mode_name(),
            "continuous" if self.duty is None else "duty on {:g} s, off {:g} s".format(*self.duty),
        )

    def _read_continuous(self) -> Reading:
        frames = self._fresh_frames()
        return self._reading(frames, warming=self._warming())

    def _read_duty(self, on_s: float, off_s: float) -> Reading | None:
        now = self._clock()
        if self._slept_at is not None:
            if now - self._slept_at < off_s:
                return None
            self._wake()
            return None
        frames = self._fresh_frames()
        if now - self._woke_at < on_s:
            return self._reading(frames, warming=True)
        reading = self._reading(frames, warming=self._warming())
        self._sleep()
        return reading

    def _wake(self) -> None:
        self._io(self._serial.reset_input_buffer)
        self._parser.clear()
        self._write(set_sleep(False))
        self._woken()

    def _woken(self) -> None:
        self._woke_at, self._slept_at = self._clock(), None
        self._frames.clear()

    def _sleep(self) -> None:
        if not self._command(set_sleep(True), SLEEP_WAKE, STATE_SLEEP):
            log.warning("PMS5003 on %s: sleep not confirmed", self.port)
        self._woke_at, self._slept_at = None, self._clock()

    def _warming(self) -> bool:
        return self._woke_at is not None and self._clock() - self._woke_at < self.warm_up_s

    def _fresh_frames(self) -> list[DataFrame]:
        """Passive: one frame asked for now. Active: the frames received since the last call."""
        if self._passive:
            self._drain()
            self._frames.clear()
            for _ in range(COMMAND_ATTEMPTS):
                self._write(read_passive())
                if self._wait(lambda: bool(self._frames), self.reply_timeout_s):
                    break
        else:
            self._wait(lambda: bool(self._frames), self.frame_timeout_s)
        frames = [frame for _, frame in self._frames]
        self._frames.clear()
        if not frames:
            raise self._silent("no data frames")
        return frames

    def _reading(self, frames: list[DataFrame], *, warming: bool) -> Reading:
        n = len(frames)
        values = {name: round(sum(getattr(f, name) for f in frames) / n, 1) for name in DATA_WORDS}
        last = frames[-1]
        self.firmware = last.version
        if last.error != self.error_code:
            if last.error:
                log.warning("PMS5003 on %s: error code %#04x in its frames", self.port, last.error)
            self.error_code = last.error
        quality = []
        if warming:
            quality.append("warming_up")
        low, high = RANGE_UG_M3
        if any(not low <= values[name] <= high for name in ("pm1", "pm2_5", "pm10")):
            quality.append("out_of_range")
        self._recent.extend(frames)
        if len(self._recent) == STUCK_FRAMES and len(set(self._recent)) == 1:
            quality.append("stuck")
        return Reading(values=values, quality=tuple(quality))

    # -- bytes --------------------------------------------------------------------------------------

    def _command(self, command: bytes, kind: int, value: int) -> bool:
        """Send `command` until the sensor confirms it; False when it never does."""
        for _ in range(COMMAND_ATTEMPTS):
            self._replies.clear()
            self._write(command)
            if self._wait(
                lambda: any(r.command == kind and r.value == value for r in self._replies),
                self.reply_timeout_s,
            ):
                return True
            if self._parser.frames == 0 and self._parser.noise_bytes >= FOREIGN_BYTES:
                raise WrongDevice(
                    f"{self.port}: {self._parser.noise_bytes} bytes but no PMS5003 frame: another device?"
                )
        return False

    def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self._drain()
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            self._receive(self._io(self._serial.read, 1))  # blocks up to READ_TIMEOUT_S

    def _drain(self) -> None:
        waiting = self._io(lambda: self._serial.in_waiting)
        if waiting:
            self._receive(self._io(self._serial.read, waiting))

    def _receive(self, data: bytes) -> None:
        if not data:
            return
        now = self._clock()
        for item in self._parser.feed(data):
            if isinstance(item, DataFrame):
                self._frames.append((now, item))
            else:
                self._replies.append(item)

    def _write(self, data: bytes) -> None:
        self._io(self._serial.write, data)
        self._io(self._serial.flush)

    def _io(self, fn: Callable, *args):
        try:
            return fn(*args)
        except OSError as err:  # pyserial's SerialException is an OSError
            raise port_error(self.port, err) from err

    def _drop(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except OSError:
                pass
        self._serial = None
        self._woke_at = self._slept_at = None
        self._frames.clear()
        self._recent.clear()

    def _silent(self, what: str) -> DriverError:
        if self._parser.frames == 0 and self._parser.noise_bytes == 0 and self._parser.bad_frames == 0:
            return SensorNotFound(f"nothing answers on {self.port}: {what}")
        return SensorFault(
            f"PMS5003 on {self.port}: {what} ({self._parser.bad_frames} bad frames, "
            f"{self._parser.noise_bytes} noise bytes so far)"
        )

    def _identity(self) -> dict[str, object]:
        return {"firmware": None if self.firmware is None else f"{self.firmware:#04x}"}

    def _mode_name(self) -> str:
        return "passive" if self._passive else "active"
