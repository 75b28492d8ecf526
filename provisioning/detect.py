"""`edge-node detect`: find the node's sensors and say how to configure them (DESIGN §6, issue 5).

One check per component that can be detected (`Component.detect`, in registry order), each
through the drivers' own code (`probe()`), on real buses or on a simulated node's detect bench
(`sensors.simulation.SimulatedNode`: registers, a pty, GPIO edges, a /sys and /proc tree, with
the knobs that make the faults a technician meets). Every probe gets the same `Probe`: the I2C
buses, the serial ports (those with the same device behind them, as /dev/serial0 and ttyAMA0,
probed once), the pin factory and the pins to listen on for `listen_s` (the technician's
instructions go to `prompt`, by default the report's `show`), and the host root.

`detect()` returns the sensors found as config-ready tables keyed by sensor name; a sensor that
was found but cannot be used (a BMP280) or that gave no pulses is left out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from sensors import components
from sensors.buses import REAL
from sensors.simulation import SimulatedNode, check_pins, default_pins

from .report import Report

DEFAULT_SERIAL_PORTS = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0", "/dev/ttyUSB0")

Found = dict[str, dict]


@dataclass
class Probe:
    """What detection probes: the same code runs on real buses and on a `SimulatedNode`."""

    report: Report
    i2c: list[tuple[str, object]]  # (config value of `bus`, the bus)
    serial: list[tuple[str, str]]  # (config value of `port`, the device to open)
    pin_factory: object
    pin_factory_name: str  # config value of `pin_factory`
    host: tuple[str, str]  # (config value of `root`, the directory)
    pin_error: str | None = None  # why GPIO cannot be used at all, if so
    pins: Mapping[str, int] = field(default_factory=dict)  # sensor name -> BCM pin to listen on
    listen_s: float = 5.0
    say: Callable[[str], None] = lambda line: None
    found: Found = field(default_factory=dict)
    default_serial_ports: Sequence[str] = DEFAULT_SERIAL_PORTS


def detect(
    report: Report,
    *,
    simulate: bool | SimulatedNode = False,
    i2c_buses: Sequence[int] = (1,),
    serial_ports: Sequence[str] | None = None,
    pins: Mapping[str, int] | None = None,
    listen_s: float = 5.0,
    prompt: Callable[[str], None] | None = None,
) -> Found:
    """Detect the sensors, add one check each to `report`, and return the config tables found.

    `simulate=True` detects on a default `SimulatedNode`; a `SimulatedNode` is used as given
    (started here, and stopped here, unless the caller started it). Under simulation,
    `i2c_buses` and `serial_ports` are the node's. `serial_ports=None`: those of
    `DEFAULT_SERIAL_PORTS` that exist. `pins`: pulse sensor name -> BCM pin (default: each pulse
    component's own, "rain" 6 and "wind" 5). `prompt` gets the technician's instructions
    ("tip the bucket now ..."); by default the report's `show`.
    """
    pins = default_pins() if pins is None else pins
    check_pins(pins)
    say = prompt or report.show or (lambda line: None)
    node = SimulatedNode() if simulate is True else simulate or None
    with contextlib.ExitStack() as stack:
        if node is not None:
            if not node.started:
                stack.enter_context(node)
            probe = Probe(
                report=report,
                i2c=[("sim", node.i2c)],
                serial=list(node.serial_ports),
                pin_factory=node.pin_factory(),
                pin_factory_name="sim",
                host=("sim", str(node.host_root)),
            )
        else:
            probe = stack.enter_context(_hardware(report, i2c_buses, serial_ports, bool(pins)))
        probe.pins, probe.listen_s, probe.say = pins, listen_s, say
        for component in components().values():
            if component.detect is not None:
                component.detect(probe)
    return probe.found


@contextlib.contextmanager
def _hardware(
    report: Report, i2c_buses: Sequence[int], serial_ports: Sequence[str] | None, gpio: bool
) -> Iterator[Probe]:
    buses = [(f"i2c:{n}", REAL["bus"](f"i2c:{n}")) for n in i2c_buses]
    if serial_ports is None:
        serial_ports = [p for p in DEFAULT_SERIAL_PORTS if os.path.exists(p)]
    ports, seen = [], set()
    for port in serial_ports:  # /dev/serial0 is a link to ttyAMA0 or ttyS0: probe the device once
        device = os.path.realpath(port) if port.startswith("/") else port
        if device not in seen:
            seen.add(device)
            ports.append((port, port))
    factory, pin_error = None, None
    if gpio:
        from drivers import DriverError

        try:
            factory = REAL["pin_factory"]("lgpio")
        except DriverError as err:
            pin_error = str(err)
    try:
        yield Probe(
            report=report,
            i2c=buses,
            serial=ports,
            pin_factory=factory,
            pin_factory_name="lgpio",
            host=("/", "/"),
            pin_error=pin_error,
        )
    finally:
        for _, bus in buses:
            with contextlib.suppress(Exception):
                bus.close()
        if factory is not None:
            with contextlib.suppress(Exception):
                factory.close()


__all__ = ["DEFAULT_SERIAL_PORTS", "Probe", "SimulatedNode", "detect"]
