"""Sensor drivers: each turns bus traffic into a `Reading`.

This package imports nothing else of edge-node. Every driver implements `Driver`:
`open()`, `read() -> Reading | None`, `close()` and `probe()`; all four block, so the
daemon calls them off the event loop. A driver may also offer `status() -> Mapping[str, object]`:
extra, JSON-ready figures for the heartbeat's entry of that sensor (e.g. the SDS011's laser
hours). Foreign exceptions (OSError from a bus, RuntimeError from Adafruit's driver, ...) are
translated once, here at the driver boundary, into the `DriverError` tree below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of one sensor: values keyed by name, plus quality flags."""

    values: Mapping[str, float]
    quality: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What `probe()` found: used by provisioning to detect and self-test."""

    found: bool
    detail: str
    info: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Driver(Protocol):
    """The one protocol every driver implements."""

    units: Mapping[str, str]

    def open(self) -> None: ...

    def read(self) -> Reading | None:
        """One reading; None when the sensor has nothing to report this time (asleep in its
        duty cycle). Raises a `DriverError` when the sensor or its bus fails."""
        ...

    def close(self) -> None: ...

    def probe(self) -> ProbeResult: ...


class DriverError(Exception):
    """Base of every error a driver raises."""


class SensorNotFound(DriverError, LookupError):
    """Nothing answers at the configured address or port."""


class WrongDevice(DriverError, ValueError):
    """Something answers, but it is not the configured sensor (e.g. a BMP280)."""


class BusError(DriverError, OSError):
    """The bus failed during a transfer (I2C NACK, serial port gone, ...)."""


class SensorFault(DriverError, RuntimeError):
    """The sensor answered with data that cannot be trusted (bad frame, stuck, ...)."""
