"""The Plantower PMS5003 serial protocol, sans-IO: bytes in, frames out, and the inverse.

Reference: Plantower "Digital universal particle concentration sensor PMS5003 series data
manual" V2.3 (appendix I and II). 9600 8N1.

    sensor -> host:  42 4D LEN_H LEN_L  DATA (LEN - 2 bytes)  CHK_H CHK_L
        data frame:  LEN = 28: thirteen 16-bit big-endian words
                     1-3   PM1.0, PM2.5, PM10 in ug/m3, "CF=1, standard particle"
                     4-6   PM1.0, PM2.5, PM10 in ug/m3, "under atmospheric environment"
                     7-12  particles beyond 0.3, 0.5, 1.0, 2.5, 5.0, 10 um in 0.1 L of air
                     13    reserved: firmware version (high byte), error code (low byte)
        reply:       LEN = 4: the command byte and its data byte echoed (to a mode change or
                     a sleep; a wake-up answers with data frames once the fan runs)
    host -> sensor:  42 4D CMD DATA_H DATA_L LRC_H LRC_L
        E2 00 00     read, in passive mode (answered with one data frame)
        E1 00 0x     change mode: 00 passive, 01 active (the power-on default: a frame every
                     0.2-2.3 s, faster as the concentration changes)
        E4 00 0x     00 sleep (fan and laser off), 01 wake up

CHK and LRC are the 16-bit sum of every byte before them, head included.

`FrameParser` (sensor -> host) and `CommandParser` (host -> sensor, for the simulator)
resynchronise on noise: a candidate starts at 42 4D; when its length is not one the protocol
uses, or its checksum is wrong, it is counted and dropped, and the search restarts one byte
after its head, so a good frame that began inside a broken one is still found.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

HEAD = b"\x42\x4d"

READ_PASSIVE = 0xE2
CHANGE_MODE = 0xE1
SLEEP_WAKE = 0xE4
MODE_PASSIVE = 0x00
MODE_ACTIVE = 0x01
STATE_SLEEP = 0x00
STATE_WAKE = 0x01

DATA_LENGTH = 28  # the LEN field of a data frame: 13 words and the checksum
REPLY_LENGTH = 4
COMMAND_BYTES = 7
WORD_MAX = 0xFFFF


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFF


@dataclass(frozen=True, slots=True)
class DataFrame:
    pm1_cf1: int  # ug/m3, "CF=1, standard particle"
    pm2_5_cf1: int
    pm10_cf1: int
    pm1: int  # ug/m3, "under atmospheric environment"
    pm2_5: int
    pm10: int
    n0_3: int  # particles beyond 0.3 um in 0.1 L of air
    n0_5: int
    n1_0: int
    n2_5: int
    n5_0: int
    n10: int
    version: int = 0  # firmware version, as the reserved word's high byte
    error: int = 0  # error code, its low byte (0: none)


DATA_WORDS = tuple(f.name for f in fields(DataFrame))[:12]


@dataclass(frozen=True, slots=True)
class Reply:
    command: int  # CHANGE_MODE or SLEEP_WAKE
    value: int


@dataclass(frozen=True, slots=True)
class Command:
    command: int
    value: int


def _frame(body: bytes) -> bytes:
    raw = HEAD + len(body + b"\0\0").to_bytes(2, "big") + body
    return raw + checksum(raw).to_bytes(2, "big")


def encode_data_frame(frame: DataFrame) -> bytes:
    words = [min(WORD_MAX, max(0, getattr(frame, name))) for name in DATA_WORDS]
    return _frame(struct.pack(">12H", *words) + bytes([frame.version & 0xFF, frame.error & 0xFF]))


def encode_reply(reply: Reply) -> bytes:
    return _frame(bytes([reply.command, reply.value]))


def encode_command(command: int, value: int = 0) -> bytes:
    raw = HEAD + bytes([command]) + value.to_bytes(2, "big")
    return raw + checksum(raw).to_bytes(2, "big")


def read_passive() -> bytes:
    return encode_command(READ_PASSIVE)


def set_mode(mode: int) -> bytes:
    return encode_command(CHANGE_MODE, mode)


def set_sleep(asleep: bool) -> bytes:
    return encode_command(SLEEP_WAKE, STATE_SLEEP if asleep else STATE_WAKE)


T = TypeVar("T")


class _Framer(Generic[T]):
    """Finds frames in a byte stream: `feed(bytes) -> list[T]`, resynchronising on noise."""

    def __init__(self, length_of: Callable[[bytes], int | None], decode: Callable[[bytes], T]) -> None:
        self._length_of = length_of  # frame length from its first 4 bytes; None: no such frame
        self._decode = decode
        self._buffer = bytearray()
        self.frames = 0
        self.bad_frames = 0
        self.noise_bytes = 0

    def feed(self, data: bytes) -> list[T]:
        buf = self._buffer
        buf += data
        out: list[T] = []
        pos = 0
        while True:
            start = buf.find(HEAD, pos)
            if start < 0:
                keep = len(buf) - 1 if buf[-1:] == HEAD[:1] else len(buf)
                self.noise_bytes += keep - pos
                pos = keep
                break
            self.noise_bytes += start - pos
            if len(buf) - start < 4:
                pos = start
                break
            length = self._length_of(bytes(buf[start : start + 4]))
            if length is None:
                self.bad_frames += 1
                self.noise_bytes += 1
                pos = start + 1
                continue
            if len(buf) - start < length:
                pos = start
                break
            raw = bytes(buf[start : start + length])
            if checksum(raw[:-2]) == int.from_bytes(raw[-2:], "big"):
                out.append(self._decode(raw))
                self.frames += 1
                pos = start + length
            else:
                self.bad_frames += 1
                self.noise_bytes += 1
                pos = start + 1
        del buf[:pos]
        return out

    def clear(self) -> None:
        """Forget a partial frame (e.g. after reopening the port); the counters stay."""
        self._buffer.clear()


def _sensor_frame_length(head: bytes) -> int | None:
    length = int.from_bytes(head[2:4], "big")
    return 4 + length if length in (DATA_LENGTH, REPLY_LENGTH) else None


def _decode_sensor_frame(raw: bytes) -> DataFrame | Reply:
    if len(raw) == 4 + REPLY_LENGTH:
        return Reply(raw[4], raw[5])
    words = struct.unpack(">12H", raw[4:28])
    return DataFrame(*words, version=raw[28], error=raw[29])


def _command_length(head: bytes) -> int | None:
    return COMMAND_BYTES if head[2] in (READ_PASSIVE, CHANGE_MODE, SLEEP_WAKE) else None


def _decode_command(raw: bytes) -> Command:
    return Command(raw[2], int.from_bytes(raw[3:5], "big"))


class FrameParser(_Framer[DataFrame | Reply]):
    """Sensor -> host: `feed(bytes) -> list[DataFrame | Reply]`."""

    def __init__(self) -> None:
        super().__init__(_sensor_frame_length, _decode_sensor_frame)


class CommandParser(_Framer[Command]):
    """Host -> sensor (what a sensor, or the simulator, hears): `feed(bytes) -> list[Command]`."""

    def __init__(self) -> None:
        super().__init__(_command_length, _decode_command)
