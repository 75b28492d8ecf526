"""`edge-node detect` for the DNMS, on real buses or on a simulated node alike."""

from __future__ import annotations

from sensors.i2c_detect import detect_on_i2c

from .driver import DNMSDriver
from .protocol import ADDRESS


def detect(probe) -> None:
    """Every I2C bus is scanned for 0x55; what answers must give a version string starting
    "DNMS", and is read over a short interval."""
    detect_on_i2c(
        probe,
        "noise",
        "DNMS",
        (ADDRESS,),
        DNMSDriver,
        lambda label, address: {"driver": "dnms", "bus": label},
    )
