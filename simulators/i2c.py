"""A simulated I2C bus: implements `drivers.buses.I2CBus` over register-level device models.

Like CircuitPython's `busio.I2C`, every transfer needs the bus lock (`try_lock()`), so code
that forgets it fails here rather than on a shared bus in the field. A transfer to an
address where nothing acknowledges raises `OSError(EREMOTEIO)`, as Linux does on a NACK.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping
from typing import Protocol


class SimI2CDevice(Protocol):
    """A device on the simulated bus. Register-pointer devices take the register address as
    the first byte written and auto-increment it on reads. Raising OSError is a NACK."""

    def write(self, data: bytes) -> None: ...

    def read(self, n: int) -> bytes: ...


def nack() -> OSError:
    """The error Linux's i2c-dev gives when a device does not acknowledge."""
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


class SimI2CBus:
    def __init__(self, devices: Mapping[int, SimI2CDevice] | None = None) -> None:
        self._devices: dict[int, SimI2CDevice] = dict(devices or {})
        self._lock = threading.Lock()

    def attach(self, address: int, device: SimI2CDevice) -> None:
        self._devices[address] = device

    def detach(self, address: int) -> None:
        self._devices.pop(address, None)

    def try_lock(self) -> bool:
        return self._lock.acquire(blocking=False)

    def unlock(self) -> None:
        self._lock.release()

    def scan(self) -> list[int]:
        self._check_locked()
        found = []
        for address, device in sorted(self._devices.items()):
            try:
                device.write(b"")  # an address-only write, as i2cdetect's quick probe
            except OSError:
                continue
            found.append(address)
        return found

    def writeto(self, address: int, buffer: bytes, *, start: int = 0, end: int | None = None) -> None:
        self._device(address).write(bytes(buffer[start:end]))

    def readfrom_into(
        self, address: int, buffer: bytearray, *, start: int = 0, end: int | None = None
    ) -> None:
        end = len(buffer) if end is None else end
        memoryview(buffer)[start:end] = self._device(address).read(end - start)

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
    ) -> None:
        device = self._device(address)
        in_end = len(buffer_in) if in_end is None else in_end
        device.write(bytes(buffer_out[out_start:out_end]))
        memoryview(buffer_in)[in_start:in_end] = device.read(in_end - in_start)

    def _device(self, address: int) -> SimI2CDevice:
        self._check_locked()
        device = self._devices.get(address)
        if device is None:
            raise nack()
        return device

    def _check_locked(self) -> None:
        if not self._lock.locked():
            raise RuntimeError("I2C bus not locked: call try_lock() first")
