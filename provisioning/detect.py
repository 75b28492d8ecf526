"""`edge-node detect`: find the node's sensors and say how to configure them (DESIGN §6, issue 5).

One check per candidate, each through the drivers' own code (`probe()`), on real buses or on a
simulated node built at the lowest layer (registers, a pty, GPIO edges, a /sys and /proc tree):

- `detect.bme280`: every I2C bus in `i2c_buses` is scanned; a device at 0x76 or 0x77 is told
  apart by its chip id (register 0xD0): a BME280 (0x60) is then read once through its driver;
  a BMP280 (0x56-0x58: no humidity), BMP180 or BME680 is reported as found but wrong.
- `detect.sds011`: each serial port is opened and the SDS011 woken, configured, asked for its
  firmware and listened to; it is identified by valid frames from it. Ports with the same
  device behind them (/dev/serial0 is a link to ttyAMA0 or ttyS0) are probed once.
- `detect.rain`, `detect.wind`: the technician tips the bucket / turns the cups while the pin
  is listened to for `listen_s` (the prompt goes to `prompt`, by default the report's `show`).
- `detect.host`: the Pi's own /sys and /proc.

`detect()` returns the sensors found as config-ready tables keyed by sensor name; a sensor that
was found but cannot be used (a BMP280) or that gave no pulses is left out.

Under simulation, `SimulatedNode` is the node: a BME280 register model on a `SimI2CBus`, an
SDS011 on a pseudo-terminal, pulse sources driving a gpiozero `MockFactory` (the technician's
hand: a steady rate of tips and rotations), and a generated host tree; its knobs make the
faults a technician meets (no BME280, a BMP280 instead, nothing on the UART, no pulses, ...).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from sensors.bme280.driver import CHIP_ID_BME280, OTHER_CHIPS, BME280Driver

from .report import Report

DEFAULT_SERIAL_PORTS = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0", "/dev/ttyUSB0")
DEFAULT_PINS: Mapping[str, int] = MappingProxyType({"rain": 6, "wind": 5})
BME280_ADDRESSES = (0x76, 0x77)
REG_CHIP_ID = 0xD0
BMP280_CHIP_IDS = (0x56, 0x57, 0x58)
LOCK_TIMEOUT_S = 2.0

# Pulse sensors by their sensor name: (driver, what the technician does, what a pulse is called).
PULSE_SENSORS = {
    "rain": ("rain_gauge", "tip the bucket", "tips"),
    "wind": ("anemometer", "turn the anemometer", "pulses"),
}

Found = dict[str, dict]


class SimulatedNode:
    """A simulated node for `detect(simulate=...)`, built at the lowest layer, seeded.

    Knobs (each a fault a technician meets):
    - `bme280_chip_id`: what answers register 0xD0 at `bme280_address`; None: nothing attached;
      0x58: a BMP280 instead of a BME280.
    - `bme280_nack`: the chip acknowledges the scan's quick write, then NACKs every transfer.
    - `sds011`: False: a UART with nothing attached (a pty nobody answers on).
    - `pins`: where the rain gauge and the anemometer are wired; `rain_hz` / `wind_hz`: the
      technician's tipping and turning (0: nobody does, or the cable is cut).
    - `host`: False: a host root without /proc (not a Linux root).
    `start()` builds it all (`detect` does when given an unstarted node, and cleans up after);
    `stop()` removes everything it made.
    """

    def __init__(
        self,
        *,
        seed: int = 42,
        bme280_chip_id: int | None = CHIP_ID_BME280,
        bme280_address: int = 0x76,
        bme280_nack: bool = False,
        sds011: bool = True,
        sds011_frame_s: float = 1.0,
        pins: Mapping[str, int] = DEFAULT_PINS,
        rain_hz: float = 3.0,
        wind_hz: float = 6.0,
        host: bool = True,
    ) -> None:
        self.seed = seed
        self.bme280_chip_id = bme280_chip_id
        self.bme280_address = bme280_address
        self.bme280_nack = bme280_nack
        self.sds011 = sds011
        self.sds011_frame_s = sds011_frame_s
        unknown = sorted(set(pins) - set(PULSE_SENSORS))
        if unknown:
            raise ValueError(f"pins: unknown pulse sensor {', '.join(unknown)} (known: rain, wind)")
        self.pins = dict(pins)
        self.rain_hz = rain_hz
        self.wind_hz = wind_hz
        self.host = host
        # Made by start():
        self.i2c = None  # SimI2CBus
        self.bme280 = None  # SimBME280, when attached
        self.sds011_sim = None  # SimSDS011, when attached
        self.serial_port: str | None = None
        self.pin_factory = None  # gpiozero MockFactory
        self.sources: dict = {}  # sensor name -> SimPulseSource
        self.host_root: Path | None = None
        self._workdir: Path | None = None
        self.empty_uart: tuple[int, int] | None = None  # (master, slave) of the pty when sds011=False
        self._cleanup: contextlib.ExitStack | None = None

    @property
    def started(self) -> bool:
        return self._cleanup is not None

    def start(self) -> SimulatedNode:
        if self.started:
            return self
        from gpiozero.pins.mock import MockFactory

        from sensors.bme280.simulator import SimBME280
        from sensors.sds011.simulator import SimSDS011
        from simulators.environment import Environment
        from simulators.gpio import RAIN_CLOSED_S, SimPulseSource
        from simulators.host import SimHost
        from simulators.i2c import SimI2CBus

        stack = contextlib.ExitStack()
        try:
            env = Environment(self.seed)
            self._workdir = Path(tempfile.mkdtemp(prefix="edge-node-detect-"))
            stack.callback(shutil.rmtree, self._workdir, ignore_errors=True)

            self.i2c = SimI2CBus()
            if self.bme280_chip_id is not None:

                def weather() -> tuple[float, float, float]:
                    c = env.now()
                    return c.temperature_c, c.humidity_rh, c.pressure_hpa

                self.bme280 = SimBME280(weather, chip_id=self.bme280_chip_id)
                self.bme280.faults.nack = self.bme280_nack
                if self.bme280_nack:
                    self.i2c.attach(self.bme280_address, _AcksScanOnly(self.bme280))
                else:
                    self.i2c.attach(self.bme280_address, self.bme280)

            if self.sds011:

                def air() -> tuple[float, float]:
                    c = env.now()
                    return c.pm2_5, c.pm10

                self.sds011_sim = SimSDS011(air, frame_interval_s=self.sds011_frame_s, seed=self.seed)
                stack.callback(self.sds011_sim.stop)
                self.serial_port = self.sds011_sim.start().port
            else:  # a UART with nothing on it: the port exists, nobody answers
                master, slave = os.openpty()
                self.empty_uart = (master, slave)
                stack.callback(os.close, master)
                stack.callback(os.close, slave)
                self.serial_port = os.ttyname(slave)

            self.pin_factory = MockFactory()
            stack.callback(self.pin_factory.close)
            for name, pin in self.pins.items():
                # The technician's hand: a steady rate of tips or rotations, whatever the weather.
                hz = {"rain": self.rain_hz, "wind": self.wind_hz}[name]
                options = {"closed_s": RAIN_CLOSED_S} if name == "rain" else {}
                source = SimPulseSource(self.pin_factory, pin, lambda hz=hz: hz, seed=self.seed, **options)
                self.sources[name] = source.start()
                stack.callback(source.stop)

            self.host_root = self._workdir / "host"
            if self.host:
                SimHost(self.host_root, seed=self.seed, ambient=lambda: env.now().temperature_c)
            else:
                (self.host_root / "sys").mkdir(parents=True)
        except BaseException:
            stack.close()
            raise
        self._cleanup = stack
        return self

    def stop(self) -> None:
        if self._cleanup is not None:
            self._cleanup.close()
            self._cleanup = None
        self.sources = {}

    def __enter__(self) -> SimulatedNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _targets(self) -> _Targets:
        return _Targets(
            i2c=[("sim", self.i2c)],
            serial=[("sim", self.serial_port)] if self.serial_port else [],
            pin_factory=self.pin_factory,
            pin_factory_name="sim",
            host=("sim", str(self.host_root)),
        )


class _AcksScanOnly:
    """A device that acknowledges its address (the scan sees it) but NACKs every register transfer."""

    def __init__(self, device) -> None:
        self.device = device

    def write(self, data: bytes) -> None:
        if data:
            self.device.write(data)

    def read(self, n: int) -> bytes:
        return self.device.read(n)


class _Targets:
    """What detection probes: the same code runs on real buses and on a `SimulatedNode`."""

    def __init__(
        self,
        *,
        i2c: list[tuple[str, object]],
        serial: list[tuple[str, str]],
        pin_factory: object,
        pin_factory_name: str,
        host: tuple[str, str],
        pin_error: str | None = None,
    ) -> None:
        self.i2c = i2c  # (config value of `bus`, the bus)
        self.serial = serial  # (config value of `port`, the device to open)
        self.pin_factory = pin_factory
        self.pin_factory_name = pin_factory_name  # config value of `pin_factory`
        self.pin_error = pin_error  # why GPIO cannot be used at all, if so
        self.host = host  # (config value of `root`, the directory)


def detect(
    report: Report,
    *,
    simulate: bool | SimulatedNode = False,
    i2c_buses: Sequence[int] = (1,),
    serial_ports: Sequence[str] | None = None,
    pins: Mapping[str, int] = DEFAULT_PINS,
    listen_s: float = 5.0,
    prompt: Callable[[str], None] | None = None,
) -> Found:
    """Detect the sensors, add one check each to `report`, and return the config tables found.

    `simulate=True` detects on a default `SimulatedNode`; a `SimulatedNode` is used as given
    (started here, and stopped here, unless the caller started it). Under simulation,
    `i2c_buses` and `serial_ports` are the node's. `serial_ports=None`: those of
    `DEFAULT_SERIAL_PORTS` that exist. `pins`: sensor name ("rain" or "wind") -> BCM pin.
    `prompt` gets the technician's instructions ("tip the bucket now ..."); by default the
    report's `show`.
    """
    unknown = sorted(set(pins) - set(PULSE_SENSORS))
    if unknown:
        raise ValueError(f"pins: unknown pulse sensor {', '.join(unknown)} (known: rain, wind)")
    say = prompt or report.show or (lambda line: None)
    node = SimulatedNode() if simulate is True else simulate or None
    found: Found = {}
    with contextlib.ExitStack() as stack:
        if node is not None:
            if not node.started:
                stack.enter_context(node)
            targets = node._targets()
        else:
            targets = stack.enter_context(_hardware(i2c_buses, serial_ports, bool(pins)))
        _detect_bme280(report, targets, found)
        _detect_sds011(report, targets, found)
        for name, pin in pins.items():
            _detect_pulses(report, targets, name, pin, listen_s, say, found)
        _detect_host(report, targets, found)
    return found


@contextlib.contextmanager
def _hardware(i2c_buses: Sequence[int], serial_ports: Sequence[str] | None, gpio: bool) -> Iterator[_Targets]:
    from drivers.buses.linux_i2c import LinuxI2C

    buses = [(f"i2c:{n}", LinuxI2C(n)) for n in i2c_buses]
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
        from drivers.pulse_counter import make_pin_factory

        try:
            factory = make_pin_factory("lgpio")
        except DriverError as err:
            pin_error = str(err)
    try:
        yield _Targets(
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


# -- BME280 ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(bus) -> Iterator[None]:
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


def _read_chip_id(bus, address: int) -> int:
    buffer = bytearray(1)
    with _locked(bus):
        bus.writeto_then_readfrom(address, bytes([REG_CHIP_ID]), buffer)
    return buffer[0]


def _bus_problem(label: str, bus, err: Exception) -> str:
    path = getattr(bus, "path", label)
    if isinstance(err, OSError) and err.errno in (errno.ENOENT, errno.ENODEV):
        return f"no {path}: enable I2C (sudo raspi-config nonint do_i2c 0) and reboot"
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {path}: the user needs the i2c group"
    return f"{path}: {describe_error(err)}"


def _chip_name(chip_id: int) -> str:
    return "BME280" if chip_id == CHIP_ID_BME280 else OTHER_CHIPS.get(chip_id, "an unknown chip")


def _detect_bme280(report: Report, targets: _Targets, found: Found) -> None:
    with report.step("detect.bme280") as outcome:
        devices: dict[str, list[str]] = {}
        candidates: list[dict] = []
        problems: list[str] = []  # bus-level, worst first
        wrong: list[str] = []  # something else answers where a BME280 should
        for label, bus in targets.i2c:
            try:
                with _locked(bus):
                    addresses = bus.scan()
            except Exception as err:
                problems.append(_bus_problem(label, bus, err))
                continue
            devices[label] = [f"{a:#04x}" for a in addresses]
            for address in BME280_ADDRESSES:
                if address not in addresses:
                    continue
                entry: dict = {"bus": label, "address": f"{address:#04x}", "chip_id": None}
                candidates.append(entry)
                try:
                    chip_id = _read_chip_id(bus, address)
                except Exception as err:
                    entry["error"] = describe_error(err)
                    wrong.append(
                        f"a device acknowledges at {address:#04x} on {label}, but its chip id cannot be "
                        f"read: {describe_error(err)}"
                    )
                    continue
                entry.update(chip_id=f"{chip_id:#04x}", chip=_chip_name(chip_id))
                if chip_id != CHIP_ID_BME280:
                    wrong.append(_wrong_chip(chip_id, address))
                    continue
                driver = BME280Driver(bus, address)
                try:
                    result = driver.probe()
                finally:
                    driver.close()
                if not result.found:
                    wrong.append(result.detail)
                    continue
                entry["values"] = dict(result.info.get("values", {}))
                outcome["measured"] = {**entry, "devices": devices}
                found["bme280"] = {"driver": "bme280", "bus": label, "address": address}
                outcome.update(passed=True, detail=f"{result.detail} (chip id {chip_id:#04x}, {label})")
                return
        outcome["measured"] = {"devices": devices, "candidates": candidates}
        if wrong:
            outcome["detail"] = "; ".join(wrong + problems)
        elif problems and not devices:
            outcome["detail"] = "no BME280: " + "; ".join(problems)
        else:
            where = ", ".join(devices) or "no bus"
            others = [a for addresses in devices.values() for a in addresses]
            extra = f" (the bus has {', '.join(others)})" if others else ""
            outcome["detail"] = (
                f"no BME280: nothing answers at 0x76 or 0x77 on {where}{extra}: check the wiring "
                "(SDA to GPIO2, SCL to GPIO3, 3V3, GND)"
            )
            if problems:
                outcome["detail"] += "; " + "; ".join(problems)


def _wrong_chip(chip_id: int, address: int) -> str:
    if chip_id in BMP280_CHIP_IDS:
        return f"BMP280 (chip id {chip_id:#04x}) at {address:#04x}: no humidity; a BME280 is needed"
    return (
        f"{_chip_name(chip_id)} (chip id {chip_id:#04x}) at {address:#04x}: not a BME280 "
        f"(chip id {CHIP_ID_BME280:#04x}); a BME280 is needed"
    )


# -- SDS011 ---------------------------------------------------------------------------------------


def _detect_sds011(report: Report, targets: _Targets, found: Found) -> None:
    from sensors.sds011.driver import SDS011Driver

    with report.step("detect.sds011") as outcome:
        if not targets.serial:
            outcome["detail"] = (
                f"no SDS011: none of {', '.join(DEFAULT_SERIAL_PORTS)} exists: enable the UART "
                "(sudo raspi-config nonint do_serial_hw 0) or plug in the USB adapter"
            )
            return
        tried = []
        for label, port in targets.serial:
            driver = SDS011Driver(port)
            try:
                result = driver.probe()
            finally:
                driver.close()
            if not result.found:
                tried.append({"port": port, "detail": result.detail})
                continue
            info = result.info
            detail = result.detail
            if info.get("firmware") is None:
                detail += "; it reports but does not answer commands: check its RX wire (to the Pi's TX)"
            outcome["measured"] = {
                "port": port,
                "device_id": info.get("device_id"),
                "firmware": info.get("firmware"),
                "values": dict(info.get("values", {})),
            }
            if tried:
                outcome["measured"]["tried"] = tried
            found["sds011"] = {"driver": "sds011", "port": label}
            outcome.update(passed=True, detail=detail)
            return
        outcome["measured"] = {"tried": tried}
        outcome["detail"] = "no SDS011: " + "; ".join(t["detail"] for t in tried)


# -- Pulse inputs ---------------------------------------------------------------------------------


def _detect_pulses(
    report: Report,
    targets: _Targets,
    name: str,
    pin: int,
    listen_s: float,
    say: Callable[[str], None],
    found: Found,
) -> None:
    driver_name, action, unit = PULSE_SENSORS[name]
    if targets.pin_error is None:
        say(f"{action} now: listening on GPIO{pin} for {listen_s:g} s")
    with report.step(f"detect.{name}") as outcome:
        outcome["measured"] = {"pin": pin, "listen_s": listen_s}
        if targets.pin_error is not None:
            outcome["detail"] = f"GPIO{pin}: {targets.pin_error}"
            return
        if driver_name == "rain_gauge":
            from sensors.rain_gauge.driver import RainGaugeDriver as Pulses
        else:
            from sensors.anemometer.driver import AnemometerDriver as Pulses
        driver = Pulses(pin, pin_factory=targets.pin_factory)
        try:
            result = driver.probe(listen_s=listen_s)
        finally:
            driver.close()
        count = result.info.get(unit)
        if count is None:  # the pin could not be used
            outcome["detail"] = result.detail
            return
        outcome["measured"] = {**outcome["measured"], **result.info}
        if count == 0:
            outcome["detail"] = f"no pulses on GPIO{pin} in {listen_s:g} s: {action}"
            return
        found[name] = {"driver": driver_name, "pin": pin, "pin_factory": targets.pin_factory_name}
        detail = f"{count} {unit if count != 1 else unit[:-1]} on GPIO{pin} in {listen_s:g} s"
        if name == "wind":
            detail += f" ({result.info.get('wind_speed')} m/s)"
        outcome.update(passed=True, detail=detail)


# -- Host -----------------------------------------------------------------------------------------


def _detect_host(report: Report, targets: _Targets, found: Found) -> None:
    from drivers.host import PiHealthDriver

    label, root = targets.host
    with report.step("detect.host") as outcome:
        result = PiHealthDriver(root).probe()
        outcome["measured"] = dict(result.info)
        outcome["detail"] = result.detail
        if result.found:
            found["host"] = {"driver": "pi_health", "root": label}
            outcome["passed"] = True


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


__all__ = ["DEFAULT_PINS", "DEFAULT_SERIAL_PORTS", "SimulatedNode", "describe_error", "detect"]
