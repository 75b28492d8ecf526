"""The configured sensors, built: each sensor's component (the registry in `sensors/`) opens its
bus, real or simulated (`sensors.buses`), and builds its driver on it. A sensor that cannot be
built reports a fault with the reason; the node's other sensors go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from drivers import Driver, DriverError, ProbeResult, Reading
from sensors.buses import is_simulated, open_bus
from sensors.component import Place
from sensors.simulation import SimulatedNode

from .config import DRIVERS, Config, ConfigError

log = logging.getLogger(__name__)


def check_faults(config: Config) -> None:
    """Scheduled faults must name a simulated sensor and one of its component's faults."""
    for i, fault in enumerate(config.simulation.faults):
        key = f"simulation.faults.{i}"
        sensor = config.sensors.get(fault["sensor"])
        if sensor is None:
            raise ConfigError(config.source, f"{key}.sensor", f"no sensor named {fault['sensor']!r}")
        component = DRIVERS[sensor.driver]
        if fault["fault"] not in component.faults:
            known = ", ".join(sorted(component.faults))
            raise ConfigError(
                config.source,
                f"{key}.fault",
                f"unknown fault {fault['fault']!r} for {sensor.driver} (known: {known})",
            )
        if not is_simulated(component, sensor.options):
            raise ConfigError(config.source, f"{key}.sensor", f"sensors.{sensor.name} is not simulated")


class UnavailableDriver:
    """Stands in for a driver that cannot be built (no GPIO chip, no lgpio, ...): the sensor
    reports a fault with the reason, and the node's other sensors go on."""

    units: dict[str, str] = {}

    def __init__(self, message: str):
        self.message = message

    def open(self) -> None:
        raise DriverError(self.message)

    def read(self) -> Reading:
        raise DriverError(self.message)

    def close(self) -> None:
        pass

    def probe(self) -> ProbeResult:
        return ProbeResult(False, self.message)


@dataclass
class Sensors:
    drivers: dict[str, Driver]
    host_root: str  # whose /sys, /proc and timesync flag describe this node: its host sensor's, else /


def build_sensors(config: Config, node: SimulatedNode) -> Sensors:
    buffer_dir = config.buffer.path.parent
    drivers: dict[str, Driver] = {}
    root = "/"
    for name, cfg in config.sensors.items():
        component = DRIVERS[cfg.driver]
        place = Place(state_path=Path(buffer_dir) / f"{name}.state.json", buffer_dir=buffer_dir)
        try:
            bus = open_bus(component, name, cfg.options, node)
            drivers[name] = component.build(bus, cfg.options, place)
        except Exception as err:
            log.error("sensor %s: %s: %s", name, type(err).__name__, err)
            drivers[name] = UnavailableDriver(f"{type(err).__name__}: {err}")
            continue
        if component.bus == "root" and root == "/":
            root = str(bus)
    return Sensors(drivers, root)


def build_drivers(config: Config, node: SimulatedNode) -> dict[str, Driver]:
    return build_sensors(config, node).drivers
