"""`edge-node detect` for an I2C sensor found by its address and confirmed by its driver's probe
(the SHT4x, the DNMS): one check per sensor, the same code on real buses and on a simulated node.

These are optional parts: nothing at their addresses is "not fitted", a pass; something there
that fails its driver's probe (a NACK after the scan, bad CRCs, another chip), or a bus that
cannot be used, is a fault."""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sensors.component import describe_error

LOCK_TIMEOUT_S = 2.0


@contextlib.contextmanager
def locked(bus) -> Iterator[None]:
    """busio's lock, as Adafruit's I2CDevice takes it."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while not bus.try_lock():
        if time.monotonic() > deadline:
            raise TimeoutError("the I2C bus stays locked")
        time.sleep(0.001)
    try:
        yield
    finally:
        bus.unlock()


def bus_problem(label: str, bus, err: Exception) -> str:
    """Why a bus cannot be scanned, with what to do about it."""
    path = getattr(bus, "path", label)
    if isinstance(err, OSError) and err.errno in (errno.ENOENT, errno.ENODEV):
        return f"no {path}: enable I2C (sudo raspi-config nonint do_i2c 0) and reboot"
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {path}: the user needs the i2c group"
    return f"{path}: {describe_error(err)}"


def answering_buses(
    probe, devices: dict[str, list[str]], problems: list[str]
) -> Iterator[tuple[str, Any, list[int]]]:
    """Each I2C bus of `probe` with the addresses that acknowledge its scan (also recorded in
    `devices`); a bus that cannot be scanned becomes one line in `problems` instead."""
    for label, bus in probe.i2c:
        try:
            with locked(bus):
                present = bus.scan()
        except Exception as err:
            problems.append(bus_problem(label, bus, err))
            continue
        devices[label] = [f"{a:#04x}" for a in present]
        yield label, bus, present


def detect_on_i2c(
    probe,
    name: str,
    title: str,
    addresses: Sequence[int],
    driver_at: Callable[[Any, int], Any],
    table: Callable[[str, int], dict],
) -> None:
    """Scan each bus for sensor `name` (`title` in messages); at each of `addresses` that
    acknowledges, `driver_at(bus, address).probe()` decides."""
    with probe.report.step(f"detect.{name}") as outcome:
        devices: dict[str, list[str]] = {}
        problems: list[str] = []
        wrong: list[str] = []
        for label, bus, present in answering_buses(probe, devices, problems):
            for address in addresses:
                if address not in present:
                    continue
                driver = driver_at(bus, address)
                try:
                    result = driver.probe()
                finally:
                    driver.close()
                if not result.found:
                    wrong.append(result.detail)
                    continue
                outcome["measured"] = {
                    "bus": label,
                    "address": f"{address:#04x}",
                    **{k: v for k, v in result.info.items() if k != "address"},
                    "devices": devices,
                }
                probe.found[name] = table(label, address)
                outcome.update(passed=True, detail=f"{result.detail} ({label})")
                return
        outcome["measured"] = {"devices": devices}
        if wrong or problems:
            outcome["detail"] = "; ".join(wrong + problems)
            return
        where = ", ".join(devices) or "no bus"
        shown = " or ".join(f"{a:#04x}" for a in addresses)
        outcome.update(passed=True, detail=f"no {title} fitted: nothing answers at {shown} on {where}")
