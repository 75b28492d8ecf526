"""The Nova Fitness SDS011 serial protocol, sans-IO: bytes in, frames out, and the inverse.

Reference: "Laser Dust Sensor Control Protocol V1.3" (Nova Fitness, 2015-07-20). 9600 8N1.

    sensor -> host, 10 bytes:  AA C0 PM25lo PM25hi PM10lo PM10hi ID1 ID2 CHK AB   (data)
                               AA C5 CMD    b3     b4     b5     ID1 ID2 CHK AB   (reply)
    host -> sensor, 19 bytes:  AA B4 CMD    b3 ... b14 (12 bytes)   ID1 ID2 CHK AB

CHK is the low byte of the sum of every byte between the command id and CHK. PM values are
little-endian tenths of ug/m3. ID1 ID2 is the device id, written "ID1ID2" in hex on the label
(e.g. A160); a command addressed to 0xFFFF is for whichever sensor hears it.

`FrameParser` (sensor -> host) and `CommandParser` (host -> sensor, for the simulator) share
one resynchronising framer: a candidate starts at a head byte followed by a known command id;
when its tail or checksum is wrong it is counted and dropped, and the search restarts one byte
after its head, so a good frame that began inside a broken one is still found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

HEAD = 0xAA
TAIL = 0xAB
# Command ids (byte 1).
ID_COMMAND = 0xB4  # host -> sensor
ID_DATA = 0xC0  # sensor -> host: a measurement, active report or answer to QUERY_DATA
ID_REPLY = 0xC5  # sensor -> host: answer to any other command

# Commands (byte 2, "data byte 1").
REPORTING_MODE = 0x02
QUERY_DATA = 0x04
SET_DEVICE_ID = 0x05
SLEEP_WORK = 0x06
FIRMWARE = 0x07
WORKING_PERIOD = 0x08

# Byte 3 of REPORTING_MODE, SLEEP_WORK and WORKING_PERIOD: read the setting, or change it.
OP_QUERY = 0x00
OP_SET = 0x01
# Byte 4 of REPORTING_MODE (persists across power cycles; factory default active).
MODE_ACTIVE = 0x00  # a data frame every second
MODE_QUERY = 0x01  # data only in answer to QUERY_DATA
# Byte 4 of SLEEP_WORK (not persistent: the sensor powers up working).
STATE_SLEEP = 0x00
STATE_WORK = 0x01
# Byte 4 of WORKING_PERIOD (persists): 0 continuous, n = work 30 s then sleep, once per n minutes.
PERIOD_CONTINUOUS = 0
PERIOD_MAX_MINUTES = 30

ALL_DEVICES = 0xFFFF

FRAME_LENGTH = 10
COMMAND_LENGTH = 19
COMMAND_DATA_LENGTH = 12  # bytes 3..14 of a command, between CMD and the device id
NEW_ID_OFFSET = 10  # SET_DEVICE_ID: the new id sits in the last two of those 12 bytes

PM_SCALE = 10  # PM values travel in tenths of ug/m3
PM_RAW_MAX = 0xFFFF


def checksum(body: Iterable[int]) -> int:
    """Low byte of the sum: of bytes 2..7 of a sensor frame, bytes 2..16 of a command."""
    return sum(body) & 0xFF


def _id_bytes(device_id: int) -> bytes:
    if not 0 <= device_id <= 0xFFFF:
        raise ValueError(f"device id must be 0..0xFFFF (got {device_id:#x})")
    return device_id.to_bytes(2, "big")  # ID1 is the high byte of the label's hex


# -- frames: sensor -> host ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataFrame:
    pm2_5: float  # ug/m3
    pm10: float  # ug/m3
    device_id: int


@dataclass(frozen=True, slots=True)
class ReportingModeReply:
    is_set: bool  # answer to a set (True) or to a query (False)
    mode: int  # MODE_ACTIVE or MODE_QUERY
    device_id: int


@dataclass(frozen=True, slots=True)
class DeviceIdReply:
    device_id: int  # the new id


@dataclass(frozen=True, slots=True)
class SleepWorkReply:
    is_set: bool
    working: bool
    device_id: int


@dataclass(frozen=True, slots=True)
class WorkingPeriodReply:
    is_set: bool
    minutes: int  # PERIOD_CONTINUOUS or 1..30
    device_id: int


@dataclass(frozen=True, slots=True)
class FirmwareReply:
    year: int  # two digits, as the sensor sends it
    month: int
    day: int
    device_id: int

    @property
    def version(self) -> str:
        return f"{self.year:02d}-{self.month:02d}-{self.day:02d}"


@dataclass(frozen=True, slots=True)
class UnknownReply:
    """A well-formed reply to a command this module does not know."""

    command: int
    data: bytes  # bytes 3..5
    device_id: int


Reply = (
    ReportingModeReply | DeviceIdReply | SleepWorkReply | WorkingPeriodReply | FirmwareReply | UnknownReply
)
Frame = DataFrame | Reply


def _decode_frame(raw: bytes) -> Frame:
    device_id = int.from_bytes(raw[6:8], "big")
    if raw[1] == ID_DATA:
        pm2_5 = int.from_bytes(raw[2:4], "little") / PM_SCALE
        pm10 = int.from_bytes(raw[4:6], "little") / PM_SCALE
        return DataFrame(pm2_5, pm10, device_id)
    command, b3, b4 = raw[2], raw[3], raw[4]
    if command == REPORTING_MODE:
        return ReportingModeReply(b3 == OP_SET, b4, device_id)
    if command == SET_DEVICE_ID:
        return DeviceIdReply(device_id)
    if command == SLEEP_WORK:
        return SleepWorkReply(b3 == OP_SET, b4 == STATE_WORK, device_id)
    if command == WORKING_PERIOD:
        return WorkingPeriodReply(b3 == OP_SET, b4, device_id)
    if command == FIRMWARE:
        return FirmwareReply(b3, b4, raw[5], device_id)
    return UnknownReply(command, bytes(raw[3:6]), device_id)


def _sensor_frame(command_id: int, payload: bytes, device_id: int) -> bytes:
    body = payload + _id_bytes(device_id)
    return bytes([HEAD, command_id, *body, checksum(body), TAIL])


def encode_data_frame(pm2_5: float, pm10: float, device_id: int) -> bytes:
    """The 10-byte data frame for these values (clamped to what 16 bits of tenths can carry)."""

    def raw(value: float) -> bytes:
        return min(max(round(value * PM_SCALE), 0), PM_RAW_MAX).to_bytes(2, "little")

    return _sensor_frame(ID_DATA, raw(pm2_5) + raw(pm10), device_id)


def encode_reply(reply: Reply) -> bytes:
    """The 10-byte reply frame carrying `reply`."""
    match reply:
        case ReportingModeReply(is_set, mode, device_id):
            payload = bytes([REPORTING_MODE, int(is_set), mode, 0])
        case DeviceIdReply(device_id):
            payload = bytes([SET_DEVICE_ID, 0, 0, 0])
        case SleepWorkReply(is_set, working, device_id):
            payload = bytes([SLEEP_WORK, int(is_set), STATE_WORK if working else STATE_SLEEP, 0])
        case WorkingPeriodReply(is_set, minutes, device_id):
            payload = bytes([WORKING_PERIOD, int(is_set), minutes, 0])
        case FirmwareReply(year, month, day, device_id):
            payload = bytes([FIRMWARE, year, month, day])
        case UnknownReply(command, data, device_id):
            payload = bytes([command, *data])
        case _:
            raise TypeError(f"not a reply: {reply!r}")
    return _sensor_frame(ID_REPLY, payload, device_id)


# -- commands: host -> sensor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    command: int  # REPORTING_MODE, QUERY_DATA, ...
    data: bytes  # the 12 bytes between the command and the device id
    device_id: int  # ALL_DEVICES or one sensor's id

    @property
    def op(self) -> int:
        return self.data[0]

    @property
    def value(self) -> int:
        return self.data[1]

    @property
    def new_device_id(self) -> int:
        return int.from_bytes(self.data[NEW_ID_OFFSET : NEW_ID_OFFSET + 2], "big")


def encode_command(command: int, data: bytes = b"", device_id: int = ALL_DEVICES) -> bytes:
    """The 19-byte command frame: `data` is bytes 3.. (up to 12), zero-padded."""
    if len(data) > COMMAND_DATA_LENGTH:
        raise ValueError(f"a command carries at most {COMMAND_DATA_LENGTH} data bytes (got {len(data)})")
    body = bytes([command]) + data.ljust(COMMAND_DATA_LENGTH, b"\0") + _id_bytes(device_id)
    return bytes([HEAD, ID_COMMAND, *body, checksum(body), TAIL])


def query_reporting_mode(*, device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(REPORTING_MODE, bytes([OP_QUERY]), device_id)


def set_reporting_mode(mode: int, *, device_id: int = ALL_DEVICES) -> bytes:
    if mode not in (MODE_ACTIVE, MODE_QUERY):
        raise ValueError(f"reporting mode must be MODE_ACTIVE or MODE_QUERY (got {mode})")
    return encode_command(REPORTING_MODE, bytes([OP_SET, mode]), device_id)


def query_data(*, device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(QUERY_DATA, b"", device_id)


def set_device_id(new_id: int, *, device_id: int = ALL_DEVICES) -> bytes:
    data = bytes(NEW_ID_OFFSET) + _id_bytes(new_id)
    return encode_command(SET_DEVICE_ID, data, device_id)


def query_sleep_work(*, device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(SLEEP_WORK, bytes([OP_QUERY]), device_id)


def set_sleep_work(working: bool, *, device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(SLEEP_WORK, bytes([OP_SET, STATE_WORK if working else STATE_SLEEP]), device_id)


def query_working_period(*, device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(WORKING_PERIOD, bytes([OP_QUERY]), device_id)


def set_working_period(minutes: int, *, device_id: int = ALL_DEVICES) -> bytes:
    if not PERIOD_CONTINUOUS <= minutes <= PERIOD_MAX_MINUTES:
        raise ValueError(f"working period must be 0..{PERIOD_MAX_MINUTES} minutes (got {minutes})")
    return encode_command(WORKING_PERIOD, bytes([OP_SET, minutes]), device_id)


def query_firmware(*, device_id: int = ALL_DEVICES) -> bytes:
    return encode_command(FIRMWARE, b"", device_id)


def _decode_command(raw: bytes) -> Command:
    return Command(raw[2], bytes(raw[3 : 3 + COMMAND_DATA_LENGTH]), int.from_bytes(raw[15:17], "big"))


# -- the framer -----------------------------------------------------------------------------------

T = TypeVar("T")


class _Framer(Generic[T]):
    """Finds fixed-length frames `HEAD id ... CHK TAIL` in a byte stream fed in arbitrary pieces."""

    def __init__(self, length: int, ids: frozenset[int], decode: Callable[[bytes], T]) -> None:
        self._length = length
        self._ids = ids
        self._decode = decode
        self._buffer = bytearray()
        self.bad_frames = 0  # candidates with a wrong checksum or tail: never decoded
        self.noise_bytes = 0  # bytes outside any frame (garbage, truncated frames' heads)
        self.frames = 0

    def feed(self, data: bytes) -> list[T]:
        buf = self._buffer
        buf += data
        out: list[T] = []
        pos = 0
        while True:
            start = buf.find(HEAD, pos)
            if start < 0:
                self.noise_bytes += len(buf) - pos
                pos = len(buf)
                break
            self.noise_bytes += start - pos
            pos = start
            if len(buf) - start < 2:
                break
            if buf[start + 1] not in self._ids:
                self.noise_bytes += 1
                pos = start + 1
                continue
            if len(buf) - start < self._length:
                break
            raw = bytes(buf[start : start + self._length])
            if raw[-1] == TAIL and raw[-2] == checksum(raw[2:-2]):
                out.append(self._decode(raw))
                self.frames += 1
                pos = start + self._length
            else:
                self.bad_frames += 1
                self.noise_bytes += 1
                pos = start + 1  # what follows the head may be the start of a good frame
        del buf[:pos]
        return out

    def clear(self) -> None:
        """Forget a partial frame (e.g. after reopening the port); the counters stay."""
        self._buffer.clear()


class FrameParser(_Framer[Frame]):
    """Sensor -> host: `feed(bytes) -> list[DataFrame | ...Reply]`."""

    def __init__(self) -> None:
        super().__init__(FRAME_LENGTH, frozenset({ID_DATA, ID_REPLY}), _decode_frame)


class CommandParser(_Framer[Command]):
    """Host -> sensor (what a sensor, or the simulator, hears): `feed(bytes) -> list[Command]`."""

    def __init__(self) -> None:
        super().__init__(COMMAND_LENGTH, frozenset({ID_COMMAND}), _decode_command)
