"""The simulated node: one owner for the simulated world of one node.

One seeded environment model shared by all its simulators, one simulated I2C bus, one gpiozero
`MockFactory`, a work directory (the host tree), the devices by sensor name, and their fault
hooks. The daemon under simulation (`sensors.buses.open_bus` attaches each "sim" sensor's
simulator), `edge-node detect`/`selftest --simulate`, `edge-node simulate` and the contract
tests all use it.

For `detect`, `start()` lays out a bench: what a technician meets on a node, each component's
part with the knobs it declares (`Component.bench_knobs`: no BME280, a BMP280 instead, nothing
on the UART, nobody tipping the bucket, ...). `stop()` (or `close()`) removes everything made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import components

if TYPE_CHECKING:
    from .component import Component

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often a running node steps its devices and plays its fault schedule


def pulse_components() -> dict[str, Component]:
    """The components on a pulse input, by the sensor name detect gives them ("rain", "wind")."""
    return {c.name: c for c in components().values() if c.pin is not None}


def default_pins() -> dict[str, int]:
    return {name: c.pin for name, c in pulse_components().items()}


def check_pins(pins: Mapping[str, int]) -> None:
    known = pulse_components()
    unknown = sorted(set(pins) - set(known))
    if unknown:
        raise ValueError(f"pins: unknown pulse sensor {', '.join(unknown)} (known: {', '.join(known)})")


def in_fog(c):
    """The model's conditions c in fog: humidity near saturation, droplets counted as particles."""
    return dataclasses.replace(
        c, humidity_rh=max(c.humidity_rh, 98.0), pm1=c.pm1 * 4, pm2_5=c.pm2_5 * 4, pm10=c.pm10 * 4
    )


class SimulatedNode:
    def __init__(self, *, seed: int = 42, faults: tuple[Mapping[str, Any], ...] = (), **knobs: Any) -> None:
        self.seed = seed
        self._pending = sorted(faults, key=lambda f: f["at_s"])
        self._clearing: list = []
        self.devices: dict[str, object] = {}
        self._components: dict[str, Component] = {}  # sensor name -> its component, for its faults
        self.fog = False
        self._environment = None
        self._i2c = None
        self._pin_factory = None
        self._workdir: Path | None = None
        self._stack = contextlib.ExitStack()
        self._started = False
        declared = {"pins": default_pins()}
        for component in components().values():
            declared.update(component.bench_knobs)
        for name in knobs:
            if name not in declared:
                raise TypeError(f"SimulatedNode() got an unexpected keyword argument {name!r}")
        self.knobs = {**declared, **knobs}
        check_pins(self.knobs["pins"])
        # What the bench offers to detect, made by start():
        self.serial_ports: list[tuple[str, str]] = []
        self.host_root: Path | None = None

    # -- the world -------------------------------------------------------------------------------

    def environment(self):
        if self._environment is None:
            from simulators.environment import Environment

            self._environment = Environment(self.seed)
        return self._environment

    def conditions(self):
        """The environment now, with fog (when injected) on top of the model."""
        c = self.environment().now()
        return in_fog(c) if self.fog else c

    def weather(self) -> tuple[float, float, float]:
        c = self.conditions()
        return c.temperature_c, c.humidity_rh, c.pressure_hpa

    def air(self) -> tuple[float, float]:
        c = self.conditions()
        return c.pm2_5, c.pm10

    # -- its buses -------------------------------------------------------------------------------

    @property
    def i2c(self):
        """The node's one simulated I2C bus."""
        if self._i2c is None:
            from simulators.i2c import SimI2CBus

            self._i2c = SimI2CBus()
        return self._i2c

    def pin_factory(self):
        """The node's one gpiozero MockFactory, shared by its simulated pulse inputs."""
        if self._pin_factory is None:
            from drivers.pulse_counter import make_pin_factory

            self._pin_factory = make_pin_factory("sim")
            self._stack.callback(self._pin_factory.close)
        return self._pin_factory

    def workdir(self) -> Path:
        """The simulators' private directory (0700, like tempfile.mkdtemp's: tempfile and shutil
        would cost the daemon 0.8 MB of RSS, issue 17)."""
        while self._workdir is None:
            path = Path(os.environ.get("TMPDIR") or "/tmp") / f"edge-node-sim-{os.urandom(6).hex()}"
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
                self._workdir = path
        return self._workdir

    # -- devices and faults ----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return bool(self.devices)

    def attach(self, name: str, component: Component, options: Mapping[str, Any]) -> Any:
        """Sensor `name`'s simulator on this node; returns the bus its driver is built on."""
        device, bus = component.simulate(self, name, options)
        self.add(name, device, component)
        return bus

    def add(self, name: str, device: object, component: Component | None = None) -> object:
        """A device of this node: stopped when the node closes, stepped while it runs."""
        self.devices[name] = device
        if component is not None:
            self._components[name] = component
        if hasattr(device, "stop"):
            self._stack.callback(_quietly, device.stop)
        return device

    def set_fault(self, sensor: str, fault: str, active: bool = True) -> None:
        component = self._components.get(sensor)
        switch = component.faults.get(fault) if component is not None else None
        if switch is None:
            raise KeyError(f"no fault {fault!r} for simulated sensor {sensor!r}")
        log.warning("simulation: %s fault %r %s", sensor, fault, "on" if active else "cleared")
        switch(self, sensor, active)

    def apply_due(self, elapsed_s: float) -> None:
        """Switch on the scheduled faults due by `elapsed_s`, and off those whose time is up."""
        for fault in [f for f in self._pending if f["at_s"] <= elapsed_s]:
            self._pending.remove(fault)
            self.set_fault(fault["sensor"], fault["fault"])
            if fault["for_s"] is not None:
                self._clearing.append(fault)
        for fault in [f for f in self._clearing if f["at_s"] + f["for_s"] <= elapsed_s]:
            self._clearing.remove(fault)
            self.set_fault(fault["sensor"], fault["fault"], active=False)

    def step(self, sensor: str | None = None) -> None:
        """Move the devices that move by themselves between reads (the host tree): all, or
        sensor's alone."""
        devices = self.devices.values() if sensor is None else [self.devices.get(sensor)]
        for device in devices:
            update = getattr(device, "update", None)
            if update is not None:
                update()

    async def run(self) -> None:
        """Step the devices and play the fault schedule."""
        started = time.monotonic()
        while True:
            self.apply_due(time.monotonic() - started)
            self.step()
            await asyncio.sleep(TICK_S)

    # -- the detect bench ------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> SimulatedNode:
        """Lay out the detect bench: each component's part, with this node's knobs."""
        if self._started:
            return self
        self._started = True
        try:
            for component in components().values():
                if component.bench is not None:
                    component.bench(self, self.knobs)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._pin_factory = self._i2c = None
        self.devices.clear()
        self._components.clear()
        self.serial_ports = []
        if self._workdir is not None:
            _remove_tree(self._workdir)
            self._workdir = None
        self._started = False

    def __enter__(self) -> SimulatedNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def on_close(self, callback, *args) -> None:
        self._stack.callback(callback, *args)


def _quietly(stop) -> None:
    with contextlib.suppress(Exception):
        stop()


def _remove_tree(root: Path) -> None:
    """shutil.rmtree(root, ignore_errors=True), without loading shutil into the daemon."""
    for parent, dirs, files in os.walk(root, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(parent, name))
        for name in dirs:
            path = os.path.join(parent, name)
            with contextlib.suppress(OSError):
                os.unlink(path) if os.path.islink(path) else os.rmdir(path)
    with contextlib.suppress(OSError):
        os.rmdir(root)
