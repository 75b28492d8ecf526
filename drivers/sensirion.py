"""Sensirion's I2C word format, sans-IO: 16-bit big-endian words, each followed by its CRC-8.

The CRC is Sensirion's (polynomial 0x31, initial value 0xFF, no reflection, no final XOR; the
SHT4x datasheet's example: 0xBEEF -> 0x92). The SHT4x speaks it, and so does the DNMS noise
sensor, whose firmware copied Sensirion's driver code. A word whose CRC does not match is a
`CRCError` (a SensorFault): the bits were damaged on the wire, or what answered is not talking.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers import SensorFault

WORD_BYTES = 3  # two data bytes and their CRC


class CRCError(SensorFault):
    """A word's CRC-8 does not match its two bytes."""


def _table() -> tuple[int, ...]:
    out = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) if crc & 0x80 else crc << 1
        out.append(crc & 0xFF)
    return tuple(out)


_CRC_TABLE = _table()


def crc8(data: bytes) -> int:
    crc = 0xFF
    for byte in data:
        crc = _CRC_TABLE[crc ^ byte]
    return crc


def encode_words(words: Iterable[int]) -> bytes:
    out = bytearray()
    for word in words:
        pair = word.to_bytes(2, "big")
        out += pair
        out.append(crc8(pair))
    return bytes(out)


def decode_words(data: bytes) -> list[int]:
    """The words of `data` (a multiple of 3 bytes), each CRC checked."""
    if len(data) % WORD_BYTES:
        raise CRCError(f"{len(data)} bytes is not a whole number of words (3 bytes each)")
    words = []
    for i in range(0, len(data), WORD_BYTES):
        pair, crc = data[i : i + 2], data[i + 2]
        if crc8(pair) != crc:
            raise CRCError(
                f"word {i // WORD_BYTES}: CRC {crc:#04x}, expected {crc8(pair):#04x} for {pair.hex()}"
            )
        words.append(int.from_bytes(pair, "big"))
    return words
