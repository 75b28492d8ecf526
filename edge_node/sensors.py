"""Backend registry: a sensor's config picks its driver and its bus, real or simulated, by name.

As in python-can, a backend's modules are imported only when a config asks for it, so a
node without GPIO never imports gpiozero, and a developer machine never needs smbus2 or lgpio.
`"sim"` swaps the bus for its simulator; the driver code is the same.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from drivers import Driver, DriverError, ProbeResult, Reading

from .config import Config, SensorConfig

log = logging.getLogger(__name__)

SIM_TICK_S = 1.0


class Simulation:
    """The simulated world of one node: one environment model shared by all its simulators."""

    def __init__(self, seed: int):
        self.seed = seed
        self._environment = None
        self._hosts: dict = {}
        self._workdir: Path | None = None

    @property
    def active(self) -> bool:
        return self._environment is not None or bool(self._hosts)

    def environment(self):
        if self._environment is None:
            from simulators.environment import Environment

            self._environment = Environment(self.seed)
        return self._environment

    def host(self, name: str):
        """The simulated host tree of the sensor `name`, made on first use."""
        if name in self._hosts:
            return self._hosts[name]
        from simulators.host import SimHost

        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="edge-node-sim-"))
        env = self.environment()
        host = SimHost(self._workdir / name, seed=self.seed, ambient=lambda: env.now().temperature_c)
        host.update()
        self._hosts[name] = host
        return host

    async def run(self) -> None:
        """Keep the simulated host trees moving; the register-level simulators need no clock."""
        while True:
            for host in self._hosts.values():
                host.update()
            await asyncio.sleep(SIM_TICK_S)

    def close(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


class UnavailableDriver:
    """Stands in for a driver this version does not have: the sensor reports a fault."""

    units: dict[str, str] = {}

    def __init__(self, driver: str):
        self.message = f"driver {driver!r} is not available in this version of edge-node"

    def open(self) -> None:
        raise DriverError(self.message)

    def read(self) -> Reading:
        raise DriverError(self.message)

    def close(self) -> None:
        pass

    def probe(self) -> ProbeResult:
        return ProbeResult(False, self.message)


def _bme280(cfg: SensorConfig, sim: Simulation, host_root: str) -> Driver:
    from drivers.bme280 import BME280Driver

    address = cfg.options["address"]
    if cfg.options["bus"] == "sim":
        from simulators.bme280 import SimBME280
        from simulators.i2c import SimI2CBus

        env = sim.environment()

        def conditions() -> tuple[float, float, float]:
            c = env.now()
            return c.temperature_c, c.humidity_rh, c.pressure_hpa

        bus = SimI2CBus({address: SimBME280(conditions)})
    else:
        from drivers.buses.linux_i2c import LinuxI2C

        bus = LinuxI2C(int(cfg.options["bus"].split(":", 1)[1]))
    return BME280Driver(bus, address)


def _pi_health(cfg: SensorConfig, sim: Simulation, disk_path: str) -> Driver:
    from drivers.pi_health import PiHealthDriver

    return PiHealthDriver(host_root_of(cfg, sim), disk_path=disk_path)


BACKENDS: dict[str, Callable[[SensorConfig, Simulation, str], Driver]] = {
    "bme280": _bme280,
    "pi_health": _pi_health,
}


def host_root_of(cfg: SensorConfig, sim: Simulation) -> str:
    root = cfg.options["root"]
    return str(sim.host(cfg.name).root) if root == "sim" else root


def build_drivers(config: Config, sim: Simulation) -> dict[str, Driver]:
    disk_path = str(config.buffer.path.parent)
    drivers: dict[str, Driver] = {}
    for name, cfg in config.sensors.items():
        backend = BACKENDS.get(cfg.driver)
        drivers[name] = backend(cfg, sim, disk_path) if backend else UnavailableDriver(cfg.driver)
    return drivers


def host_root(config: Config, sim: Simulation) -> str:
    """The root whose /sys, /proc and timesync flag describe this node: its pi_health sensor's."""
    for cfg in config.sensors.values():
        if cfg.driver == "pi_health":
            return host_root_of(cfg, sim)
    return "/"
