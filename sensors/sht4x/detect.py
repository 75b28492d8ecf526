"""`edge-node detect` for the SHT4x, on real buses or on a simulated node alike."""

from __future__ import annotations

from sensors.i2c_detect import detect_on_i2c

from .driver import SHT4xDriver

ADDRESSES = (0x44, 0x45, 0x46)


def detect(probe) -> None:
    """Every I2C bus is scanned for 0x44-0x46; what answers is reset, asked for its serial number
    (CRC-checked, so another chip there fails) and read once."""
    detect_on_i2c(
        probe,
        "sht4x",
        "SHT4x",
        ADDRESSES,
        lambda bus, address: SHT4xDriver(bus, address, heater=False),
        lambda label, address: {"driver": "sht4x", "bus": label, "address": address},
    )
