"""Nova Fitness SDS011 (PM2.5 and PM10, laser scattering) on a serial port, through pyserial.

`port` is a device path (`/dev/serial0`, `/dev/ttyUSB0`) or any pyserial URL (`spy:///dev/serial0`
to log the traffic in the field). The bytes are `sensors.sds011.protocol`'s business; this module
moves them, keeps time and translates errors, once, into the `DriverError` tree.

open(): opens the port, wakes the sensor (a sleeping SDS011 ignores every other command), sets
active reporting (a frame a second) and working period 0 (continuous: the duty cycle is ours, not
the firmware's), and reads its firmware version and device id. Each command is tried
`COMMAND_ATTEMPTS` times, `REPLY_TIMEOUT_S` each. Nothing at all on the line raises
SensorNotFound, as does a missing port (the message names it); bytes but no valid frame raise
SensorFault; other port errors raise BusError. A sensor that reports but never answers
(a broken RX wire) is used as it is, with a warning.

read(), without `duty`: the sensor works continuously. The mean of the valid data frames received
since the previous read (waiting up to `NO_DATA_TIMEOUT_S` for at least one, else SensorFault
"no data frames"), rounded to 0.1 ug/m3. Frames from the first `WARM_UP_S` after waking are left
out when later ones exist; when there are none yet, the reading is flagged `warming_up`.

read(), with `duty={"on_s", "off_s"}`: a cycle of on_s awake then off_s asleep, driven by read()
and the `clock`. The last `AVERAGING_S` of on_s (at most half of it) is the averaging window;
before it, the fan and laser are warming up.
- Awake, less than on_s after waking: the mean of the frames since the previous read, flagged
  `warming_up`.
- Awake, on_s or more after waking: the mean of every frame since the window opened, clean; then
  the sensor is told to sleep. The cycle moves only when read() is called; `next_read_in()` tells
  the caller when the next step is due (the daemon's sampler reads then, even between its
  intervals), so the laser runs on_s, not up to one interval more.
- Asleep, less than off_s after sleeping: None (nothing to report).
- Asleep, off_s or more after sleeping: wakes it and returns None.
After the sleep command the sensor must confirm, or go quiet: `FRAMES_AFTER_SLEEP` more data
frames within `QUIET_S` raise `NotAsleep` (a SensorFault) once, counted in status(); the cycle
goes on as if it slept, and laser time keeps counting until a sleep is confirmed.

Frames are timed by the `clock` as they are read, spread evenly over the time since the previous
read of the port (they waited in the kernel's buffer meanwhile). The `clock` drives the duty
cycle and the laser hours; waits for bytes use time.monotonic, so a test may drive the cycle
with a fake clock while the bytes flow in real time.

Laser hours: the time the sensor is believed awake (from a wake to a confirmed sleep, a close or
a port failure), persisted in `state_path` (JSON, written atomically at most every
`SAVE_EVERY_S` and at close) with the device id; a different device id at open means a new sensor
and the count starts again. Nova rates the laser for `LASER_LIFE_H` hours.

Quality: `out_of_range` outside 0..999.9 ug/m3 (the datasheet's range), `stuck` after
`STUCK_FRAMES` bit-identical frames in a row, `warming_up` as above.

After a failure (the port vanishing: BusError; no frames: SensorFault) the port is closed and
the next read() reopens it, so an unplugged and replugged sensor recovers without a restart.
The one exception is `NotAsleep`, which keeps the port.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import serial

from drivers import BusError, DriverError, ProbeResult, Reading, SensorFault, SensorNotFound
from drivers.serial_port import duty_cycle, open_port, port_error
from sensors.sds011.protocol import (
    MODE_ACTIVE,
    PERIOD_CONTINUOUS,
    DataFrame,
    FirmwareReply,
    FrameParser,
    Reply,
    ReportingModeReply,
    SleepWorkReply,
    WorkingPeriodReply,
    query_firmware,
    set_reporting_mode,
    set_sleep_work,
    set_working_period,
)

log = logging.getLogger(__name__)

BAUDRATE = 9600  # 8N1, pyserial's default framing
READ_TIMEOUT_S = 0.05  # the longest one serial read() blocks
REPLY_TIMEOUT_S = 0.5
COMMAND_ATTEMPTS = 3
NO_DATA_TIMEOUT_S = 3.0  # a working sensor sends a frame every second
QUIET_S = 2.5
FRAMES_AFTER_SLEEP = 2  # one frame may already be on the wire when the sleep command lands
WARM_UP_S = 30.0  # as the firmware's own working-period mode: 30 s of fan before a report
AVERAGING_S = 5.0
RANGE_UG_M3 = (0.0, 999.9)
LASER_LIFE_H = 8000.0
SAVE_EVERY_S = 60.0
# A live sensor's frames differ from one second to the next (0.1 ug/m3 steps) even in clean air.
STUCK_FRAMES = 30
MAX_FRAMES = 4096  # bounds memory if reads stop while the sensor keeps reporting


class NotAsleep(SensorFault):
    """The sensor kept reporting after it was told to sleep."""


def _is_awake(reply: Reply) -> bool:
    return isinstance(reply, SleepWorkReply) and reply.working


class SDS011Driver:
    units = {"pm2_5": "ug/m3", "pm10": "ug/m3"}

    def __init__(
        self,
        port: str,
        *,
        duty: Mapping[str, float] | None = None,
        state_path: str | os.PathLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.duty = duty_cycle(duty)
        self.state_path = None if state_path is None else Path(state_path)
        self._clock = clock
        self.firmware: str | None = None  # "YY-MM-DD", once the sensor said
        self.device_id: int | None = None
        self.sleep_failures = 0

        self._serial: serial.SerialBase | None = None
        self._parser = FrameParser()
        self._received = 0  # bytes since open
        self._replies: deque[Reply] = deque(maxlen=16)
        self._recent: deque[DataFrame] = deque(maxlen=MAX_FRAMES)  # since the previous read
        self._window: deque[DataFrame] = deque(maxlen=MAX_FRAMES)  # since warm-up ended
        self._data_frames = 0
        self._stamped_at = 0.0  # clock time up to which received frames are timed
        self._woke_at: float | None = None  # None: asleep, or the port is closed
        self._warm_until = 0.0
        self._slept_at: float | None = None
        self._last_values: tuple[float, float] | None = None
        self._repeats = 0

        self._lock = threading.Lock()  # status() runs on the daemon's loop while read() runs in a thread
        self._laser_s = 0.0
        self._laser_since: float | None = None
        self._state_device: str | None = None
        self._saved: tuple[str | None, float] | None = None
        self._saved_at = clock()
        self._save_failed = False
        self._load_state()

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
        """See the module's docstring; reopens first if the last open or read failed."""
        if self._serial is None:
            self.open()
        try:
            reading = self._read_continuous() if self.duty is None else self._read_duty(*self.duty)
        except NotAsleep:
            raise
        except DriverError:
            self._drop()
            raise
        finally:
            self._account()
            if self._clock() - self._saved_at >= SAVE_EVERY_S:
                self._save()
        return reading

    def close(self) -> None:
        """Put the sensor to sleep when it can still hear us, close the port, save the laser hours."""
        if self._serial is not None and self._laser_since is not None:
            try:
                self._write(set_sleep_work(False))
                self._wait(self._sleep_confirmed, REPLY_TIMEOUT_S)
            except DriverError as err:
                log.info("SDS011 on %s: not put to sleep at close: %s", self.port, err)
        self._drop()
        self._save()

    def probe(self) -> ProbeResult:
        """Detect from scratch (reopen); the first frames after waking are the self-test. Never raises."""
        info: dict[str, object] = {}
        try:
            self.open()
            self._collect(lambda: bool(self._recent))
            reading = self._reading(list(self._recent), warming=True)
            self._recent.clear()
        except DriverError as err:
            return ProbeResult(False, str(err), self._identity(info))
        except Exception as err:  # provisioning needs an answer, not a traceback
            return ProbeResult(False, f"SDS011 on {self.port}: unexpected {err!r}", self._identity(info))
        info.update(values=dict(reading.values), quality=list(reading.quality))
        info = self._identity(info)
        v = reading.values
        detail = (
            f"SDS011 on {self.port}: id {info['device_id'] or '?'}, firmware {info['firmware'] or '?'}, "
            f"PM2.5 {v['pm2_5']} ug/m3, PM10 {v['pm10']} ug/m3 (just woken: warming up)"
        )
        return ProbeResult(True, detail, info)

    def next_read_in(self) -> float | None:
        """Seconds until the duty cycle's next step (the wake, or the clean reading); None without
        a duty cycle or while the port is closed."""
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
        """Laser hours and what else is known, for the heartbeat. Cheap; never touches the port."""
        with self._lock:
            laser_s = self._laser_s
            if self._laser_since is not None:
                laser_s += max(0.0, self._clock() - self._laser_since)
        hours = laser_s / 3600.0
        out: dict[str, object] = {
            "laser_hours": round(hours, 3),
            "laser_life_used": round(hours / LASER_LIFE_H, 6),
            "sleep_failures": self.sleep_failures,
            "bad_frames": self._parser.bad_frames,
        }
        return {**out, **{k: v for k, v in self._identity({}).items() if v is not None}}

    # -- cycle ------------------------------------------------------------------------------------

    def _configure(self) -> None:
        self._parser.clear()
        self._received = 0
        self._replies.clear()
        self._recent.clear()
        self._io(self._serial.reset_input_buffer)
        woke = self._command(set_sleep_work(True), _is_awake)
        if woke is None:
            if not self._recent:
                raise self._no_frames("no answer to the wake-up command")
            log.warning("SDS011 on %s reports but does not hear commands (RX wire?): used as is", self.port)
        else:
            self._learn_device(woke.device_id)
            for command, reply in (
                (set_reporting_mode(MODE_ACTIVE), ReportingModeReply),
                (set_working_period(PERIOD_CONTINUOUS), WorkingPeriodReply),
            ):
                if self._command(command, lambda r, kind=reply: isinstance(r, kind)) is None:
                    log.warning("SDS011 on %s: no answer to %s", self.port, command.hex(" "))
            firmware = self._command(query_firmware(), lambda r: isinstance(r, FirmwareReply))
            if firmware is not None:
                self.firmware = firmware.version
        self._woken()
        log.info(
            "SDS011 on %s: id %s, firmware %s, %s",
            self.port,
            self._identity({})["device_id"],
            self.firmware,
            "continuous" if self.duty is None else "duty on {:g} s, off {:g} s".format(*self.duty),
        )

    def _read_continuous(self) -> Reading:
        self._collect(lambda: bool(self._recent))
        clean = list(self._window)
        reading = self._reading(clean or list(self._recent), warming=not clean)
        self._recent.clear()
        self._window.clear()
        return reading

    def _read_duty(self, on_s: float, off_s: float) -> Reading | None:
        now = self._clock()
        if self._slept_at is not None:
            if now - self._slept_at < off_s:
                return None
            self._wake()
            return None
        if now - self._woke_at < on_s:
            self._collect(lambda: bool(self._recent))
            reading = self._reading(list(self._recent), warming=True)
            self._recent.clear()
            return reading
        self._collect(lambda: bool(self._window))
        reading = self._reading(list(self._window), warming=False)
        self._sleep()
        return reading

    def _wake(self) -> None:
        self._io(self._serial.reset_input_buffer)
        self._parser.clear()
        if self._command(set_sleep_work(True), _is_awake) is None:
            log.warning("SDS011 on %s: no answer to the wake-up command", self.port)
        self._woken()

    def _woken(self) -> None:
        now = self._clock()
        self._woke_at, self._slept_at = now, None
        if self.duty is None:
            self._warm_until = now + WARM_UP_S
        else:
            on_s = self.duty[0]
            self._warm_until = now + on_s - min(AVERAGING_S, on_s / 2)
        self._stamped_at = now
        self._recent.clear()
        self._window.clear()
        self._account(laser_on=True)

    def _sleep(self) -> None:
        self._drain()
        before = self._data_frames
        self._replies.clear()
        self._write(set_sleep_work(False))

        def reporting() -> bool:
            return self._data_frames - before >= FRAMES_AFTER_SLEEP

        self._wait(lambda: self._sleep_confirmed() or reporting(), QUIET_S)
        self._slept_at, self._woke_at = self._clock(), None
        self._recent.clear()
        self._window.clear()
        if reporting() and not self._sleep_confirmed():
            self.sleep_failures += 1
            after = self._data_frames - before
            raise NotAsleep(
                f"SDS011 on {self.port} did not go to sleep: {after} data frames after the command"
            )
        self._account(laser_on=False)

    def _sleep_confirmed(self) -> bool:
        return any(isinstance(r, SleepWorkReply) and r.is_set and not r.working for r in self._replies)

    def _reading(self, frames: list[DataFrame], *, warming: bool) -> Reading:
        values = {
            "pm2_5": round(statistics.fmean(f.pm2_5 for f in frames), 1),
            "pm10": round(statistics.fmean(f.pm10 for f in frames), 1),
        }
        quality = ["warming_up"] if warming else []
        low, high = RANGE_UG_M3
        if any(not low <= v <= high for v in values.values()):
            quality.append("out_of_range")
        if self._repeats >= STUCK_FRAMES - 1:
            quality.append("stuck")
        return Reading(values=values, quality=tuple(quality))

    # -- bytes ------------------------------------------------------------------------------------

    def _command(self, frame: bytes, answers: Callable[[Reply], bool]) -> Reply | None:
        """Send `frame` until a reply that `answers` it arrives; None after COMMAND_ATTEMPTS."""
        for _ in range(COMMAND_ATTEMPTS):
            self._replies.clear()
            self._write(frame)
            if self._wait(lambda: any(answers(r) for r in self._replies), REPLY_TIMEOUT_S):
                return next(r for r in self._replies if answers(r))
        return None

    def _collect(self, enough: Callable[[], bool]) -> None:
        """Read what has arrived; if that is not `enough`, wait up to NO_DATA_TIMEOUT_S for more."""
        self._drain()
        if not enough() and not self._wait(enough, NO_DATA_TIMEOUT_S):
            raise self._no_frames(f"no data frames for {NO_DATA_TIMEOUT_S:g} s")

    def _drain(self) -> None:
        while self._io(lambda: self._serial.in_waiting):
            self._receive()
        self._stamped_at = self._clock()

    def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() >= deadline:
                return False
            self._receive()
        return True

    def _receive(self) -> None:
        """One read of the port: what is waiting, else up to READ_TIMEOUT_S for a byte."""
        data = self._io(lambda: self._serial.read(self._serial.in_waiting or 1))
        if not data:
            return
        self._received += len(data)
        frames = self._parser.feed(data)
        data_frames = [f for f in frames if isinstance(f, DataFrame)]
        now = self._clock()
        step = (now - self._stamped_at) / max(len(data_frames), 1)
        for i, frame in enumerate(data_frames, 1):
            self._on_data(frame, self._stamped_at + i * step)
        self._stamped_at = now
        self._replies.extend(f for f in frames if not isinstance(f, DataFrame))

    def _on_data(self, frame: DataFrame, at: float) -> None:
        self._data_frames += 1
        self._learn_device(frame.device_id)
        values = (frame.pm2_5, frame.pm10)
        self._repeats = self._repeats + 1 if values == self._last_values else 0
        self._last_values = values
        self._recent.append(frame)
        if at >= self._warm_until:
            self._window.append(frame)

    def _write(self, frame: bytes) -> None:
        self._io(lambda: self._serial.write(frame))

    def _io(self, operation: Callable[[], object]):
        if self._serial is None:
            raise BusError(f"serial port {self.port} is closed")
        try:
            return operation()
        except OSError as err:  # SerialException is an OSError
            raise port_error(self.port, err) from err

    def _drop(self) -> None:
        """Close the port; until a reopen, nothing is known about the laser."""
        if self._serial is not None:
            try:
                self._serial.close()
            except OSError as err:
                log.debug("SDS011 on %s: closing: %s", self.port, err)
        self._serial = None
        self._woke_at = self._slept_at = None
        self._account(laser_on=False)

    # -- errors, identity, laser hours ------------------------------------------------------------

    def _no_frames(self, what: str) -> DriverError:
        if not self._received:
            return SensorNotFound(f"nothing answers on {self.port}: {what}")
        return SensorFault(
            f"SDS011 on {self.port}: {what} ({self._received} bytes received, "
            f"{self._parser.bad_frames} bad frames in all)"
        )

    def _identity(self, info: dict[str, object]) -> dict[str, object]:
        device = None if self.device_id is None else f"{self.device_id:04X}"
        return {**info, "firmware": self.firmware, "device_id": device}

    def _learn_device(self, device_id: int) -> None:
        if device_id == self.device_id:
            return
        self.device_id = device_id
        label = f"{device_id:04X}"
        with self._lock:
            if self._state_device not in (None, label):
                log.warning(
                    "SDS011 on %s: device %s replaces %s: laser hours start again from 0",
                    self.port,
                    label,
                    self._state_device,
                )
                self._laser_s = 0.0
                if self._laser_since is not None:
                    self._laser_since = self._clock()
            self._state_device = label

    def _account(self, laser_on: bool | None = None) -> None:
        """Add the laser time up to now; switch the count on or off."""
        with self._lock:
            now = self._clock()
            if self._laser_since is not None:
                self._laser_s += max(0.0, now - self._laser_since)
                self._laser_since = now
            if laser_on is True and self._laser_since is None:
                self._laser_since = now
            elif laser_on is False:
                self._laser_since = None

    def _load_state(self) -> None:
        if self.state_path is None:
            return
        try:
            state = json.loads(self.state_path.read_text())
            self._laser_s = max(0.0, float(state["laser_s"]))
            self._state_device = state.get("device_id")
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning("SDS011 state %s unreadable (%s): laser hours start from 0", self.state_path, err)
            return
        self._saved = (self._state_device, self._laser_s)

    def _save(self) -> None:
        self._account()
        with self._lock:
            state = (self._state_device, round(self._laser_s, 1))
        self._saved_at = self._clock()
        if self.state_path is None or state == self._saved:
            return
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=self.state_path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"device_id": state[0], "laser_s": state[1]}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.state_path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as err:  # a full or read-only card must not stop the readings
            log.log(
                logging.DEBUG if self._save_failed else logging.WARNING, "SDS011 state not saved: %s", err
            )
            self._save_failed = True
            return
        self._saved = state
        self._save_failed = False
