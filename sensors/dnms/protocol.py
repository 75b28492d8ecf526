"""The DNMS (Digital Noise Measurement Sensor) I2C protocol, sans-IO: commands out, words in.

The DNMS is Sensor.Community's sound level meter: a Teensy 4.0 reading an ICS-43434 (or
IM72D128) MEMS microphone over I2S, A-weighting the signal and keeping, between two "calculate"
commands, the energy mean LAeq and the lowest and highest 125 ms level (LAmin, LAmax). It is
an I2C target at 0x55. The protocol is defined by its firmware (github.com/hbitter/DNMS,
Firmware/Teensy, and the host side in airrohr-firmware's dnms_i2c.cpp):

- A command is a 16-bit number written big-endian, two bytes, no CRC.
- A reply is read after its command, as Sensirion words: 16 bits big-endian plus CRC-8.
- RESET 0x0001; READ_VERSION 0x0002: an ASCII string "DNMS Version x.y.z", two characters per
  word; CALCULATE_LEQ 0x0003: close the interval (the result is ready within one 125 ms block);
  READ_DATA_READY 0x0004: one word, non-zero once the result is ready; READ_LEQ 0x0005: three
  IEEE-754 floats (LAeq, LAmin, LAmax in dB(A)), each as two words, high word first.
- A read the firmware has nothing queued for returns whatever the bus floats to (0xFF bytes),
  which fails the CRC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers import SensorFault
from drivers.sensirion import WORD_BYTES, decode_words, encode_words

ADDRESS = 0x55

RESET = 0x0001
READ_VERSION = 0x0002
CALCULATE_LEQ = 0x0003
READ_DATA_READY = 0x0004
READ_LEQ = 0x0005

VERSION_PREFIX = "DNMS"
VERSION_WORDS = 9  # "DNMS Version 5.2.6": 18 characters, as Sensor.Community's Pi tool reads it
LEQ_WORDS = 6
DATA_READY_WORDS = 1


@dataclass(frozen=True, slots=True)
class Levels:
    """One interval's A-weighted levels in dB(A)."""

    laeq: float
    lamin: float
    lamax: float


def encode_command(command: int) -> bytes:
    return command.to_bytes(2, "big")


def decode_command(data: bytes) -> int | None:
    """What a target hears (the simulator): the command, or None for fewer than two bytes."""
    return int.from_bytes(data[:2], "big") if len(data) >= 2 else None


def reply_length(words: int) -> int:
    return words * WORD_BYTES


def decode_version(data: bytes) -> str:
    """The version string; NUL padding and what follows it dropped."""
    raw = b"".join(word.to_bytes(2, "big") for word in decode_words(data))
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def encode_version(version: str, words: int = VERSION_WORDS) -> bytes:
    raw = version.encode("ascii")[: words * 2].ljust(words * 2, b"\0")
    return encode_words(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))


def decode_data_ready(data: bytes) -> bool:
    return decode_words(data)[0] != 0


def encode_data_ready(ready: bool) -> bytes:
    return encode_words([1 if ready else 0])


def decode_levels(data: bytes) -> Levels:
    words = decode_words(data)
    if len(words) != LEQ_WORDS:
        raise SensorFault(f"DNMS levels are {LEQ_WORDS} words, got {len(words)}")
    raw = b"".join(word.to_bytes(2, "big") for word in words)
    return Levels(*struct.unpack(">fff", raw))


def encode_levels(levels: Levels) -> bytes:
    raw = struct.pack(">fff", levels.laeq, levels.lamin, levels.lamax)
    return encode_words(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))
