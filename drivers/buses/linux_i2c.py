"""`I2CBus` on a Linux I2C adapter (`/dev/i2c-N`) through smbus2's `i2c_rdwr`.

Each call is one I2C_RDWR ioctl, so a write-then-read is one transaction with a repeated
start, and no I2C_SLAVE address binding is needed (nor refused where a kernel driver
holds the address). Errors are the kernel's `OSError`s, unchanged: EREMOTEIO or ENXIO for
a NACK, ETIMEDOUT for a stuck bus (Documentation/i2c/fault-codes.rst); drivers translate
them. The device file is opened at the first transfer, so a node whose I2C is not enabled
yet still starts, and every transfer reports why the bus is unusable.
"""

from __future__ import annotations

import errno
import threading

# i2cdetect's default probes: a 1-byte read where a quick write could corrupt an EEPROM
# (0x30-0x37, 0x50-0x5f), an address-only (quick) write elsewhere.
_READ_PROBE = set(range(0x30, 0x38)) | set(range(0x50, 0x60))
_SCAN_RANGE = range(0x08, 0x78)  # 0x00-0x07 and 0x78-0x7f are reserved
_NO_BUS = {errno.ENOENT, errno.ENODEV, errno.EACCES, errno.EPERM}  # no usable bus, not an empty one


class LinuxI2C:
    def __init__(self, bus_number: int) -> None:
        self.bus_number = bus_number
        self.path = f"/dev/i2c-{bus_number}"
        self._lock = threading.Lock()  # the busio-style lock that callers take
        self._smbus = None

    def try_lock(self) -> bool:
        return self._lock.acquire(blocking=False)

    def unlock(self) -> None:
        self._lock.release()

    def close(self) -> None:
        if self._smbus is not None:
            self._smbus.close()
            self._smbus = None

    def scan(self) -> list[int]:
        return [address for address in _SCAN_RANGE if self._acknowledges(address)]

    def writeto(self, address: int, buffer: bytes, *, start: int = 0, end: int | None = None) -> None:
        from smbus2 import i2c_msg

        self._transfer(i2c_msg.write(address, bytes(buffer[start:end])))

    def readfrom_into(
        self, address: int, buffer: bytearray, *, start: int = 0, end: int | None = None
    ) -> None:
        from smbus2 import i2c_msg

        end = len(buffer) if end is None else end
        msg = i2c_msg.read(address, end - start)
        self._transfer(msg)
        buffer[start:end] = bytes(msg)

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
        from smbus2 import i2c_msg

        in_end = len(buffer_in) if in_end is None else in_end
        msg_in = i2c_msg.read(address, in_end - in_start)
        self._transfer(i2c_msg.write(address, bytes(buffer_out[out_start:out_end])), msg_in)
        buffer_in[in_start:in_end] = bytes(msg_in)

    def _acknowledges(self, address: int) -> bool:
        try:
            if address in _READ_PROBE:
                self.readfrom_into(address, bytearray(1))
            else:
                try:
                    self.writeto(address, b"")
                except OSError as err:
                    if err.errno != errno.EOPNOTSUPP:  # some adapters cannot send zero-length messages
                        raise
                    self.readfrom_into(address, bytearray(1))
        except OSError as err:
            if err.errno in _NO_BUS:
                raise
            return False
        return True

    def _transfer(self, *msgs) -> None:
        if self._smbus is None:
            from smbus2 import SMBus

            self._smbus = SMBus(self.path)
        try:
            self._smbus.i2c_rdwr(*msgs)
        except OSError as err:
            if err.errno == errno.ENODEV:  # adapter gone (USB unplugged): reopen next time
                self.close()
            raise
