"""Backend registry: a sensor's config picks its driver and its bus, real or simulated, by name.

As in python-can, a backend's modules are imported only when a config asks for it, so a
node without GPIO never imports gpiozero, and a developer machine never needs smbus2 or lgpio.
`"sim"` swaps the bus for its simulator; the driver code is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from drivers import Driver, DriverError, ProbeResult, Reading

from .config import Config, ConfigError, SensorConfig

log = logging.getLogger(__name__)

SIM_TICK_S = 1.0


FaultSwitch = Callable[["Simulation", str, bool], None]


def _flag(attribute: str, value: object = True) -> FaultSwitch:
    """A fault that is one attribute of a simulator's `faults`, set while active."""

    def switch(sim: Simulation, sensor: str, active: bool) -> None:
        faults = sim.devices[sensor].faults  # type: ignore[attr-defined]
        setattr(faults, attribute, value if active else getattr(type(faults)(), attribute))

    return switch


def _fog(sim: Simulation, sensor: str, active: bool) -> None:
    """Fog is the air's, not one sensor's: humidity near saturation and droplets counted as PM."""
    sim.fog = active


def _unplug(sim: Simulation, sensor: str, active: bool) -> None:
    faults = sim.devices[sensor].faults  # type: ignore[attr-defined]
    faults.vanish() if active else faults.reappear()


# The faults a simulated node's config (`[[simulation.faults]]`) may schedule, per driver.
FAULTS: dict[str, dict[str, FaultSwitch]] = {
    "bme280": {
        "nack": _flag("nack"),
        "wrong_chip": _flag("chip_id", 0x58),
        "stuck": _flag("stuck"),
        "fog": _fog,
    },
    "sds011": {
        "garbage": _flag("garbage", 0.5),
        "bad_checksum": _flag("bad_checksum", 0.5),
        "partial_frames": _flag("partial_frames", 0.5),
        "ignore_sleep": _flag("ignore_sleep"),
        "stuck": _flag("stuck"),
        "vanish": _unplug,
        "fog": _fog,
    },
    "rain_gauge": {
        "bounce_storm": _flag("bounce_storm"),
        "stuck_closed": _flag("stuck_closed"),
        "disconnected": _flag("disconnected"),
    },
    "anemometer": {
        "bounce_storm": _flag("bounce_storm"),
        "stuck_closed": _flag("stuck_closed"),
        "disconnected": _flag("disconnected"),
    },
    "pi_health": {
        "under_voltage": _flag("under_voltage"),
        "overheat": _flag("overheat"),
        "clock_unsynced": _flag("clock_unsynced"),
        "missing_thermal": _flag("missing_thermal"),
    },
}


class Simulation:
    """The simulated world of one node: one environment model shared by all its simulators,
    each simulator reachable by its sensor's name (`devices`) for faults at run time."""

    def __init__(self, seed: int, faults: tuple = ()):
        self.seed = seed
        self._pending = sorted(faults, key=lambda f: f["at_s"])
        self._clearing: list = []
        self.devices: dict[str, object] = {}
        self._drivers: dict[str, str] = {}  # sensor name -> driver name, for the fault table
        self._environment = None
        self.pin_factory = None  # one gpiozero MockFactory for all simulated pulse sensors
        self.fog = False
        self._hosts: dict = {}
        self._workdir: Path | None = None

    @property
    def active(self) -> bool:
        return bool(self.devices)

    def environment(self):
        if self._environment is None:
            from simulators.environment import Environment

            self._environment = Environment(self.seed)
        return self._environment

    def conditions(self):
        """The environment now, with fog (when injected) on top of the model."""
        c = self.environment().now()
        if self.fog:
            c = dataclasses.replace(
                c, humidity_rh=max(c.humidity_rh, 98.0), pm2_5=c.pm2_5 * 4, pm10=c.pm10 * 4
            )
        return c

    def workdir(self) -> Path:
        """The simulators' private directory (0700, like tempfile.mkdtemp's: tempfile and shutil
        would cost the daemon 0.8 MB of RSS, issue 17)."""
        while self._workdir is None:
            path = Path(os.environ.get("TMPDIR") or "/tmp") / f"edge-node-sim-{os.urandom(6).hex()}"
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
                self._workdir = path
        return self._workdir

    def add(self, sensor: str, driver: str, device: object) -> object:
        self.devices[sensor] = device
        self._drivers[sensor] = driver
        return device

    def host(self, name: str):
        """The simulated host tree of the sensor `name`, made on first use."""
        if name in self._hosts:
            return self._hosts[name]
        from simulators.host import SimHost

        env = self.environment()
        host = SimHost(self.workdir() / name, seed=self.seed, ambient=lambda: env.now().temperature_c)
        self._hosts[name] = self.add(name, "pi_health", host)
        return host

    def set_fault(self, sensor: str, fault: str, active: bool = True) -> None:
        switch = FAULTS.get(self._drivers.get(sensor, ""), {}).get(fault)
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

    def update_hosts(self) -> None:
        for host in self._hosts.values():
            host.update()

    async def run(self) -> None:
        """Keep the simulated host trees moving and play the fault schedule."""
        started = time.monotonic()
        while True:
            self.apply_due(time.monotonic() - started)
            self.update_hosts()
            await asyncio.sleep(SIM_TICK_S)

    def close(self) -> None:
        for device in self.devices.values():
            with contextlib.suppress(Exception):
                getattr(device, "stop", lambda: None)()
        if self.pin_factory is not None:
            with contextlib.suppress(Exception):
                self.pin_factory.close()
        if self._workdir is not None:
            _remove_tree(self._workdir)


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


def check_faults(config: Config) -> None:
    """Scheduled faults must name a simulated sensor and one of its driver's faults."""
    for i, fault in enumerate(config.simulation.faults):
        key = f"simulation.faults.{i}"
        sensor = config.sensors.get(fault["sensor"])
        if sensor is None:
            raise ConfigError(config.source, f"{key}.sensor", f"no sensor named {fault['sensor']!r}")
        known = FAULTS.get(sensor.driver, {})
        if fault["fault"] not in known:
            raise ConfigError(
                config.source,
                f"{key}.fault",
                f"unknown fault {fault['fault']!r} for {sensor.driver} (known: {', '.join(sorted(known))})",
            )
        if not _is_simulated(sensor):
            raise ConfigError(config.source, f"{key}.sensor", f"sensors.{sensor.name} is not simulated")


def _is_simulated(cfg: SensorConfig) -> bool:
    return "sim" in (
        cfg.options.get("bus"),
        cfg.options.get("port"),
        cfg.options.get("root"),
        cfg.options.get("pin_factory"),
    )


class UnavailableDriver:
    """Stands in for a driver that cannot be built (no such driver, no GPIO chip, no lgpio):
    the sensor reports a fault with the reason, and the node's other sensors go on."""

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


def _bme280(cfg: SensorConfig, sim: Simulation, host_root: str) -> Driver:
    from sensors.bme280.driver import BME280Driver

    address = cfg.options["address"]
    if cfg.options["bus"] == "sim":
        from sensors.bme280.simulator import SimBME280
        from simulators.i2c import SimI2CBus

        def conditions() -> tuple[float, float, float]:
            c = sim.conditions()
            return c.temperature_c, c.humidity_rh, c.pressure_hpa

        bus = SimI2CBus({address: sim.add(cfg.name, "bme280", SimBME280(conditions))})
    else:
        from drivers.buses.linux_i2c import LinuxI2C

        bus = LinuxI2C(int(cfg.options["bus"].split(":", 1)[1]))
    return BME280Driver(bus, address)


def _pi_health(cfg: SensorConfig, sim: Simulation, disk_path: str) -> Driver:
    from drivers.host import PiHealthDriver

    return PiHealthDriver(host_root_of(cfg, sim), disk_path=disk_path)


def _sds011(cfg: SensorConfig, sim: Simulation, state_dir: str) -> Driver:
    from sensors.sds011.driver import SDS011Driver

    port = cfg.options["port"]
    if port == "sim":
        from sensors.sds011.simulator import SimSDS011

        def conditions() -> tuple[float, float]:
            c = sim.conditions()
            return c.pm2_5, c.pm10

        device = SimSDS011(conditions, seed=sim.seed)
        port = sim.add(cfg.name, "sds011", device).start().port
    return SDS011Driver(port, duty=cfg.options["duty"], state_path=_state(state_dir, cfg))


def _pin_factory(cfg: SensorConfig, sim: Simulation):
    """gpiozero's factory: lgpio on a Pi; under simulation one MockFactory shared by the node."""
    from drivers.pulse_counter import make_pin_factory

    if cfg.options["pin_factory"] != "sim":
        return make_pin_factory(cfg.options["pin_factory"])
    if sim.pin_factory is None:
        sim.pin_factory = make_pin_factory("sim")
    return sim.pin_factory


def _rain_gauge(cfg: SensorConfig, sim: Simulation, state_dir: str) -> Driver:
    from sensors.rain_gauge.driver import RainGaugeDriver

    factory = _pin_factory(cfg, sim)
    pin, mm_per_tip = cfg.options["pin"], cfg.options["mm_per_tip"]
    if cfg.options["pin_factory"] == "sim":
        from simulators.gpio import rain_source

        env = sim.environment()
        source = rain_source(factory, pin, lambda: env.now().rain_mm_h, mm_per_tip=mm_per_tip, seed=sim.seed)
        sim.add(cfg.name, "rain_gauge", source).start()
    return RainGaugeDriver(pin, pin_factory=factory, mm_per_tip=mm_per_tip, state_path=_state(state_dir, cfg))


def _anemometer(cfg: SensorConfig, sim: Simulation, state_dir: str) -> Driver:
    from sensors.anemometer.driver import AnemometerDriver

    factory = _pin_factory(cfg, sim)
    pin, ms_per_hz = cfg.options["pin"], cfg.options["ms_per_hz"]
    if cfg.options["pin_factory"] == "sim":
        from simulators.gpio import wind_source

        env = sim.environment()
        source = wind_source(factory, pin, lambda: env.now().wind_ms, ms_per_hz=ms_per_hz, seed=sim.seed)
        sim.add(cfg.name, "anemometer", source).start()
    return AnemometerDriver(pin, pin_factory=factory, ms_per_hz=ms_per_hz, state_path=_state(state_dir, cfg))


def _state(state_dir: str, cfg: SensorConfig) -> Path:
    """Where a driver keeps what must survive a restart (counters, laser hours): beside the buffer."""
    return Path(state_dir) / f"{cfg.name}.state.json"


BACKENDS: dict[str, Callable[[SensorConfig, Simulation, str], Driver]] = {
    "bme280": _bme280,
    "sds011": _sds011,
    "pi_health": _pi_health,
    "rain_gauge": _rain_gauge,
    "anemometer": _anemometer,
}


def host_root_of(cfg: SensorConfig, sim: Simulation) -> str:
    root = cfg.options["root"]
    return str(sim.host(cfg.name).root) if root == "sim" else root


def build_drivers(config: Config, sim: Simulation) -> dict[str, Driver]:
    disk_path = str(config.buffer.path.parent)
    drivers: dict[str, Driver] = {}
    for name, cfg in config.sensors.items():
        backend = BACKENDS.get(cfg.driver)
        if backend is None:
            drivers[name] = UnavailableDriver(f"driver {cfg.driver!r} is not available in this version")
            continue
        try:
            drivers[name] = backend(cfg, sim, disk_path)
        except Exception as err:
            log.error("sensor %s: %s: %s", name, type(err).__name__, err)
            drivers[name] = UnavailableDriver(f"{type(err).__name__}: {err}")
    return drivers


def host_root(config: Config, sim: Simulation) -> str:
    """The root whose /sys, /proc and timesync flag describe this node: its pi_health sensor's."""
    for cfg in config.sensors.values():
        if cfg.driver == "pi_health":
            return host_root_of(cfg, sim)
    return "/"
