"""A byte-level Nova Fitness SDS011 on a pseudo-terminal ("Laser Dust Sensor Control Protocol V1.3").

Any serial code, `sensors.sds011.driver` included, opens `sim.port` as it would `/dev/ttyUSB0`. That
path is a symlink to the current pty's slave, so unplugging (`faults.vanish()`) and replugging
(`faults.reappear()`) keep it stable. A pty ignores the baud rate; the frame rate is
`frame_interval_s` (1 s on a real sensor).

Modelled: active and query reporting; QUERY_DATA; sleep/work (asleep, the sensor sends nothing
and hears nothing but a wake-up command, as observed on real ones); working period n (a cycle of
n minutes: 30 s of fan, one report, then quiet; `minute_s` shortens the minute for tests);
device id change; firmware version; commands for another device id ignored; bad commands
ignored. The settings survive vanish/reappear (the sensor stays powered; a real one also keeps
mode, period and id across power cycles). Values come from `conditions()` with a few percent of
seeded noise per frame, PM10 never below PM2.5.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import random
import select
import shutil
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from sensors.sds011.protocol import (
    ALL_DEVICES,
    FIRMWARE,
    MODE_ACTIVE,
    MODE_QUERY,
    OP_SET,
    PERIOD_CONTINUOUS,
    PERIOD_MAX_MINUTES,
    QUERY_DATA,
    REPORTING_MODE,
    SET_DEVICE_ID,
    SLEEP_WORK,
    STATE_WORK,
    WORKING_PERIOD,
    Command,
    CommandParser,
    DeviceIdReply,
    FirmwareReply,
    ReportingModeReply,
    SleepWorkReply,
    WorkingPeriodReply,
    encode_data_frame,
    encode_reply,
)

log = logging.getLogger(__name__)

MINUTE_S = 60.0
PERIOD_WORK_MINUTES = 0.5  # working-period mode runs the fan 30 s before each report
RELATIVE_NOISE = 0.03
ABSOLUTE_NOISE_UG = 0.3
IDLE_S = 0.5  # the longest the thread sleeps with nothing to do
GARBAGE_MAX = 16


@dataclass
class SDS011Faults:
    """Faults injectable at run time. The probabilities apply to each frame sent (data or reply);
    True counts as 1.0: every frame."""

    garbage: float = 0.0  # random bytes before the frame
    bad_checksum: float = 0.0  # a wrong checksum byte
    partial_frames: float = 0.0  # the frame cut short
    ignore_sleep: bool = False  # sleep commands go unheard: no reply, reports go on
    stuck: bool = False  # the measurement freezes at its last value
    pm_multiplier: float = 1.0  # fog: droplets counted as particles
    _sim: SimSDS011 | None = field(default=None, repr=False, compare=False)

    def vanish(self) -> None:
        """Unplug: close the pty (the reader's next read fails) and remove the port's link."""
        if self._sim is not None:
            self._sim._request("vanish")

    def reappear(self) -> None:
        """Plug back in: a new pty behind the same `port` path."""
        if self._sim is not None:
            self._sim._request("reappear")


class SimSDS011:
    """`conditions()` returns (pm2_5, pm10) in ug/m3 at the time of a measurement."""

    def __init__(
        self,
        conditions: Callable[[], tuple[float, float]],
        *,
        device_id: int = 0xA1B2,
        firmware: tuple[int, int, int] = (18, 11, 16),
        frame_interval_s: float = 1.0,
        minute_s: float = MINUTE_S,
        seed: int = 0,
    ) -> None:
        self._conditions = conditions
        self.device_id = device_id
        self.firmware = firmware
        self.frame_interval_s = frame_interval_s
        self.minute_s = minute_s
        self.faults = SDS011Faults(_sim=self)
        # Sensor state, as the protocol exposes it.
        self.reporting_mode = MODE_ACTIVE
        self.working = True
        self.period_minutes = PERIOD_CONTINUOUS

        self._rng = random.Random(seed)
        self._parser = CommandParser()
        self._values: tuple[float, float] | None = None
        now = time.monotonic()
        self._next_frame = now + frame_interval_s
        self._cycle_start = now
        self._reported_cycle = -1

        self._dir = tempfile.mkdtemp(prefix="sim-sds011-")
        self.port = os.path.join(self._dir, "ttySDS011")
        self._master: int | None = None
        self._slave: int | None = None
        self._open_pty()
        self._wake_r, self._wake_w = os.pipe()
        self._requests: queue.SimpleQueue[tuple[str, threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> SimSDS011:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sim-sds011", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._closed:
            return
        if self._thread is not None:
            self._request("stop")
            self._thread.join(timeout=5)
            self._thread = None
        self._close_pty()
        os.close(self._wake_r)
        os.close(self._wake_w)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> SimSDS011:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _request(self, action: str) -> None:
        """Run `action` on the simulator's thread (which owns the pty), or here if none runs."""
        if self._thread is None or not self._thread.is_alive():
            self._perform(action)
            return
        done = threading.Event()
        self._requests.put((action, done))
        os.write(self._wake_w, b"!")
        if not done.wait(timeout=5):
            raise TimeoutError(f"simulated SDS011 did not {action}")

    def _perform(self, action: str) -> None:
        if action == "vanish":
            self._close_pty()
        elif action == "reappear" and self._master is None:
            self._open_pty()

    # -- the pty ----------------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)  # no echo of our own frames before a reader configures the port
        os.set_blocking(master, False)  # a full buffer drops bytes, as a UART overrun would
        link = self.port + ".new"
        os.symlink(os.ttyname(slave), link)
        os.replace(link, self.port)
        # Holding the slave open keeps the master from reporting EIO (and select from spinning)
        # while no reader has the port open.
        self._master, self._slave = master, slave
        self._parser.clear()

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        try:
            os.unlink(self.port)
        except FileNotFoundError:
            pass

    # -- the sensor's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            try:
                self._tick(now)
            except Exception:  # a broken conditions() must not kill the sensor silently
                log.exception("simulated SDS011: measurement failed")
            fds = [self._wake_r] if self._master is None else [self._wake_r, self._master]
            timeout = min(max(self._next_event(now) - time.monotonic(), 0.0), IDLE_S)
            readable, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
                while not self._requests.empty():
                    action, done = self._requests.get()
                    if action == "stop":
                        done.set()
                        return
                    self._perform(action)
                    done.set()
            if self._master is not None and self._master in readable:
                self._receive()

    def _next_event(self, now: float) -> float:
        if not self.working or self._master is None:
            return now + IDLE_S
        if self.period_minutes == PERIOD_CONTINUOUS:
            return self._next_frame if self.reporting_mode == MODE_ACTIVE else now + IDLE_S
        period = self.period_minutes * self.minute_s
        cycle = int((now - self._cycle_start) // period)
        if cycle <= self._reported_cycle:
            cycle += 1
        return self._cycle_start + cycle * period + PERIOD_WORK_MINUTES * self.minute_s

    def _tick(self, now: float) -> None:
        if not self.working or self._master is None:
            return
        if self.period_minutes == PERIOD_CONTINUOUS:
            if self.reporting_mode == MODE_ACTIVE and now >= self._next_frame:
                self._send_data()
                self._next_frame += self.frame_interval_s
                if self._next_frame < now:  # fell behind (a stalled thread): no burst
                    self._next_frame = now + self.frame_interval_s
            return
        period = self.period_minutes * self.minute_s
        elapsed = now - self._cycle_start
        cycle = int(elapsed // period)
        if elapsed - cycle * period >= PERIOD_WORK_MINUTES * self.minute_s and cycle > self._reported_cycle:
            self._reported_cycle = cycle
            self._measure()
            if self.reporting_mode == MODE_ACTIVE:
                self._send_data(measure=False)

    def _receive(self) -> None:
        try:
            data = os.read(self._master, 1024)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EIO):
                raise
            return
        for command in self._parser.feed(data):
            self._handle(command, time.monotonic())

    def _handle(self, cmd: Command, now: float) -> None:
        if cmd.device_id not in (ALL_DEVICES, self.device_id):
            return
        is_set = cmd.op == OP_SET
        if not self.working:  # asleep: deaf to all but a wake-up
            if cmd.command == SLEEP_WORK and is_set and cmd.value == STATE_WORK:
                self._set_working(True, now)
                self._reply(SleepWorkReply(True, True, self.device_id))
            return
        if cmd.command == REPORTING_MODE:
            if is_set:
                if cmd.value not in (MODE_ACTIVE, MODE_QUERY):
                    return
                self.reporting_mode = cmd.value
            self._reply(ReportingModeReply(is_set, self.reporting_mode, self.device_id))
        elif cmd.command == QUERY_DATA:
            self._send_data(measure=self.period_minutes == PERIOD_CONTINUOUS or self._values is None)
        elif cmd.command == SET_DEVICE_ID:
            self.device_id = cmd.new_device_id
            self._reply(DeviceIdReply(self.device_id))
        elif cmd.command == SLEEP_WORK:
            if is_set:
                if self.faults.ignore_sleep and cmd.value != STATE_WORK:
                    return
                self._set_working(cmd.value == STATE_WORK, now)
            self._reply(SleepWorkReply(is_set, self.working, self.device_id))
        elif cmd.command == WORKING_PERIOD:
            if is_set:
                if cmd.value > PERIOD_MAX_MINUTES:
                    return
                self.period_minutes = cmd.value
                self._restart_cycle(now)
            self._reply(WorkingPeriodReply(is_set, self.period_minutes, self.device_id))
        elif cmd.command == FIRMWARE:
            self._reply(FirmwareReply(*self.firmware, self.device_id))

    def _set_working(self, working: bool, now: float) -> None:
        if working and not self.working:
            self._restart_cycle(now)
        self.working = working

    def _restart_cycle(self, now: float) -> None:
        self._next_frame = now + self.frame_interval_s
        self._cycle_start = now
        self._reported_cycle = -1

    # -- what goes on the wire ----------------------------------------------------------------------

    def _measure(self) -> tuple[float, float]:
        if self.faults.stuck and self._values is not None:
            return self._values
        pm2_5, pm10 = self._conditions()
        m = self.faults.pm_multiplier

        def noisy(value: float) -> float:
            value *= m * (1 + self._rng.gauss(0, RELATIVE_NOISE))
            return max(0.0, value + self._rng.gauss(0, ABSOLUTE_NOISE_UG))

        fine = noisy(pm2_5)
        self._values = (fine, max(noisy(pm10), fine))
        return self._values

    def _send_data(self, *, measure: bool = True) -> None:
        pm2_5, pm10 = self._measure() if measure else self._values
        self._send(encode_data_frame(pm2_5, pm10, self.device_id))

    def _reply(self, reply: object) -> None:
        self._send(encode_reply(reply))

    def _send(self, frame: bytes) -> None:
        if self._master is None:
            return
        rng, faults = self._rng, self.faults
        out = bytearray()
        if rng.random() < faults.garbage:
            out += rng.randbytes(rng.randint(1, GARBAGE_MAX))
        frame = bytearray(frame)
        if rng.random() < faults.bad_checksum:
            frame[-2] ^= rng.randint(1, 0xFF)
        if rng.random() < faults.partial_frames:
            frame = frame[: rng.randint(1, len(frame) - 1)]
        out += frame
        try:
            os.write(self._master, out)  # a short write loses the rest, like an overrun
        except BlockingIOError:
            pass
