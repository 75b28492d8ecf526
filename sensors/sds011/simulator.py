"""A byte-level Nova Fitness SDS011 on a pseudo-terminal ("Laser Dust Sensor Control Protocol V1.3").

Any serial code, `sensors.sds011.driver` included, opens `sim.port` as it would `/dev/ttyUSB0`
(`simulators.serial_pty`: unplugging with `faults.vanish()`, replugging with `faults.reappear()`).
A pty ignores the baud rate; the frame rate is `frame_interval_s` (1 s on a real sensor).

Modelled: active and query reporting; QUERY_DATA; sleep/work (asleep, the sensor sends nothing
and hears nothing but a wake-up command, as observed on real ones); working period n (a cycle of
n minutes: 30 s of fan, one report, then quiet; `minute_s` shortens the minute for tests);
device id change; firmware version; commands for another device id ignored; bad commands
ignored. The settings survive vanish/reappear (the sensor stays powered; a real one also keeps
mode, period and id across power cycles). Values come from `conditions()` with a few percent of
seeded noise per frame, PM10 never below PM2.5.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

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
from simulators.serial_pty import IDLE_S, LineFaults, PtyDevice

MINUTE_S = 60.0
PERIOD_WORK_MINUTES = 0.5  # working-period mode runs the fan 30 s before each report
RELATIVE_NOISE = 0.03
ABSOLUTE_NOISE_UG = 0.3


@dataclass
class SDS011Faults(LineFaults):
    """Faults injectable at run time. The line faults apply to each frame sent (data or reply)."""

    ignore_sleep: bool = False  # sleep commands go unheard: no reply, reports go on
    stuck: bool = False  # the measurement freezes at its last value
    pm_multiplier: float = 1.0  # fog: droplets counted as particles


class SimSDS011(PtyDevice):
    """`conditions()` returns (pm2_5, pm10) in ug/m3 at the time of a measurement."""

    name = "sds011"
    checksum_offset = -2

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
        self.faults = SDS011Faults(_device=self)
        # Sensor state, as the protocol exposes it.
        self.reporting_mode = MODE_ACTIVE
        self.working = True
        self.period_minutes = PERIOD_CONTINUOUS

        self._parser = CommandParser()
        self._values: tuple[float, float] | None = None
        now = time.monotonic()
        self._next_frame = now + frame_interval_s
        self._cycle_start = now
        self._reported_cycle = -1
        super().__init__(seed=seed)

    def _line_faults(self) -> LineFaults:
        return self.faults

    def _plugged(self) -> None:
        self._parser.clear()

    # -- the sensor's thread ----------------------------------------------------------------------

    def _next_event(self, now: float) -> float:
        if not self.working or not self.plugged:
            return now + IDLE_S
        if self.period_minutes == PERIOD_CONTINUOUS:
            return self._next_frame if self.reporting_mode == MODE_ACTIVE else now + IDLE_S
        period = self.period_minutes * self.minute_s
        cycle = int((now - self._cycle_start) // period)
        if cycle <= self._reported_cycle:
            cycle += 1
        return self._cycle_start + cycle * period + PERIOD_WORK_MINUTES * self.minute_s

    def _tick(self, now: float) -> None:
        if not self.working or not self.plugged:
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

    def _receive(self, data: bytes, now: float) -> None:
        for command in self._parser.feed(data):
            self._handle(command, now)

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
