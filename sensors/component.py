"""What a sensor component declares (`COMPONENT` in `sensors/<driver>/__init__.py`)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers import Driver

    from .schema import Key

# The simulated node (sensors.simulation.SimulatedNode), which reads these declarations.
Node = Any
# A fault of a simulated sensor, switched on or off at run time: (node, sensor name, active).
FaultSwitch = Callable[[Node, str, bool], None]
# The hardware a sensor holds, as (option, description), so no two sensors hold the same; None
# when it holds nothing exclusive (a simulated bus).
Claim = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Place:
    """Where a sensor's driver keeps what is not on its bus."""

    state_path: Path  # what must survive a restart (counters, laser hours): beside the buffer
    buffer_dir: Path  # the buffer's directory (the host's free disk is measured there)


@dataclass(frozen=True)
class Component:
    driver: str  # the `driver = "..."` of its [sensors.NAME] tables
    name: str  # the sensor name that detect proposes and the sample config uses
    summary: str  # what it measures and how it is attached, one line
    bus: str  # the option naming its bus: "bus" (I2C), "port" (UART), "pin_factory" (GPIO), "root" (host)
    interval_s: float  # the default sampling interval
    options: Mapping[str, Key]  # its keys besides driver, interval_s and calibration
    # The driver, on what `sensors.buses.open_bus` opened for its bus option: (bus, options, place).
    build: Callable[[Any, Mapping[str, Any], Place], Driver]
    # Its simulator on the node's simulated buses: (node, sensor name, options) -> (device, bus).
    simulate: Callable[[Node, str, Mapping[str, Any]], tuple[object, Any]]
    sample: str  # its commented [sensors.NAME] table in config.sample.toml
    faults: Mapping[str, FaultSwitch] = field(default_factory=dict)
    claim: Claim | None = None
    noisy: bool = False  # selftest: a live one never repeats all its values read after read
    # The options selftest reads it with (e.g. without a duty cycle that would sleep through it).
    selftest_options: Callable[[Mapping[str, Any]], Mapping[str, Any]] = lambda options: options
    # `edge-node detect`: (probe) -> None; adds one check and, when found, the config table.
    detect: Callable[[Any], None] | None = None
    # The detect bench of a simulated node: its knobs with their defaults, and (node, knobs) -> None
    # attaching what a technician would meet on the node's buses.
    bench_knobs: Mapping[str, Any] = field(default_factory=dict)
    bench: Callable[[Node, Mapping[str, Any]], None] | None = None
    pin: int | None = None  # pulse inputs: the BCM pin detect listens on by default
    # `simulate --history`: what it would have read under the environment model's conditions (a
    # `simulators.environment.Conditions`), as (its driver's units, values); None: no past.
    history: Callable[[Any], tuple[Mapping[str, str], dict[str, float]]] | None = None


def flag(attribute: str, value: object = True) -> FaultSwitch:
    """A fault that is one attribute of the simulator's `faults`, set while active."""

    def switch(node: Node, sensor: str, active: bool) -> None:
        faults = node.devices[sensor].faults  # type: ignore[attr-defined]
        setattr(faults, attribute, value if active else getattr(type(faults)(), attribute))

    return switch


def fog(node: Node, sensor: str, active: bool) -> None:
    """Fog is the air's, not one sensor's: humidity near saturation and droplets counted as PM."""
    node.fog = active


def unplug(node: Node, sensor: str, active: bool) -> None:
    faults = node.devices[sensor].faults  # type: ignore[attr-defined]
    faults.vanish() if active else faults.reappear()


def describe_error(err: BaseException) -> str:
    """`Type: message`, with the OS error underneath when the message does not say it already."""
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    cause = err.__cause__ or err.__context__
    for _ in range(8):  # a chain is short; a cycle must not hang us
        if cause is None or isinstance(cause, OSError):
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno:
        reason = os.strerror(cause.errno)
        if reason not in text:
            text += f" ([Errno {cause.errno}] {reason})"
    return text


def lazy(target: str) -> Callable[..., Any]:
    """The function `module:name`, imported at its first call: a declaration loads no driver."""
    module, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call
