"""What the UART sensors (SDS011, PMS5003) share: opening a port by path or pyserial URL, with
the errors translated once, and the duty-cycle option's check."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

import serial

from drivers import BusError, SensorNotFound


def open_port(port: str, baudrate: int, timeout_s: float) -> serial.SerialBase:
    """`port` opened 8N1; a missing device or an unusable URL is SensorNotFound, else BusError."""
    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=timeout_s)
    except ValueError as err:  # an unknown URL scheme or bad parameters
        raise SensorNotFound(f"{port}: not a usable serial port ({err})") from err
    except OSError as err:  # SerialException is an OSError
        if err.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise SensorNotFound(f"no serial port at {port} ({os.strerror(err.errno)})") from err
        raise port_error(port, err) from err


def port_error(port: str, err: OSError) -> BusError:
    message = f"serial port {port} failed: {err.strerror or err}"
    return BusError(err.errno, message) if err.errno else BusError(message)


def duty_cycle(duty: Mapping[str, float] | None) -> tuple[float, float] | None:
    """`{on_s, off_s}` as (on_s, off_s), or None for continuous operation."""
    if duty is None:
        return None
    on_s, off_s = float(duty["on_s"]), float(duty["off_s"])
    if on_s <= 0 or off_s < 0:
        raise ValueError(f"duty needs on_s > 0 and off_s >= 0 (got {dict(duty)})")
    return on_s, off_s
