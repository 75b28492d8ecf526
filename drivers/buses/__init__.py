"""Bus interfaces: the one seam between hardware and code.

I2C: the subset of CircuitPython's `busio.I2C` that `adafruit_bus_device` uses, so
Adafruit's drivers run unchanged on a Linux I2C device or on a simulator.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class I2CBus(Protocol):
    def try_lock(self) -> bool: ...

    def unlock(self) -> None: ...

    def scan(self) -> list[int]: ...

    def writeto(self, address: int, buffer: bytes, *, start: int = 0, end: int | None = None) -> None: ...

    def readfrom_into(
        self, address: int, buffer: bytearray, *, start: int = 0, end: int | None = None
    ) -> None: ...

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: bytes,
        buffer_in: bytearray,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None: ...
