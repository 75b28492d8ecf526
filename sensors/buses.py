"""Bus backends, chosen in one place, by name, as python-can picks an interface and gpiozero a
pin factory.

Every sensor names its bus in one option, which its component declares (`Component.bus`):
`bus = "i2c:N" | "sim"`, `port = PATH | "sim" | pyserial URL`, `pin_factory = "lgpio" | "sim"`,
`root = PATH | "sim"`. `open_bus` turns that value into what the driver is built on: the real
bus (its library imported only then), or, for "sim", the sensor's simulator attached to the
simulated node. No driver builder looks at "sim".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .schema import Invalid, choice, integer, show, string

if TYPE_CHECKING:
    from .component import Component
    from .simulation import SimulatedNode

SIM = "sim"


def i2c_bus(value: Any) -> str:
    bus = string()(value)
    if bus != SIM and not re.fullmatch(r"i2c:\d+", bus):
        raise Invalid(f'must be "sim" or "i2c:N" (got {show(bus)})')
    return bus


def serial_port(value: Any) -> str:
    port = string()(value)
    if port != SIM and not port.startswith("/") and "://" not in port:
        raise Invalid(f'must be "sim", a device path or a pyserial URL (got {show(port)})')
    if not port.isprintable() or any(ch.isspace() for ch in port):  # it goes into the unit's DeviceAllow=
        raise Invalid(f"must not contain spaces or control characters (got {show(port)})")
    return port


def host_root(value: Any) -> str:
    root = string()(value)
    if root != SIM and not root.startswith("/"):
        raise Invalid(f'must be "sim" or an absolute path (got {show(root)})')
    return root


pin_factory = choice("lgpio", SIM, aliases={"mock": SIM})  # "mock": gpiozero's MockFactory
GPIO_PIN = integer(min=0, max=27)  # BCM numbering, GPIO0..GPIO27 on the 40-pin header


def _linux_i2c(value: str):
    from drivers.buses.linux_i2c import LinuxI2C

    return LinuxI2C(int(value.split(":", 1)[1]))


def _gpio(value: str):
    from drivers.pulse_counter import make_pin_factory

    return make_pin_factory(value)


# The bus option -> how its real value becomes a bus. A serial port and a host root are
# opened by their driver, from the path or URL as written.
REAL: dict[str, Callable[[str], Any]] = {
    "bus": _linux_i2c,
    "port": lambda port: port,
    "pin_factory": _gpio,
    "root": lambda root: root,
}


def serial_device(port: str) -> str | None:
    """The device node of a serial port setting: a path, or the path inside a pyserial URL
    (`spy:///dev/serial0`); None for a network port."""
    if port.startswith("/"):
        return port
    if "://" in port:
        rest = port.split("://", 1)[1].split("?", 1)[0]
        if rest.startswith("/"):
            return rest
    return None


GPIO_CHIP = "/dev/gpiochip0"

# The bus option -> the device nodes its real value opens (what systemd's DeviceAllow= grants).
DEVICES: dict[str, Callable[[str], list[str]]] = {
    "bus": lambda bus: [f"/dev/i2c-{bus.split(':', 1)[1]}"],
    "port": lambda port: [device] if (device := serial_device(port)) else [],
    "pin_factory": lambda factory: [GPIO_CHIP],
    "root": lambda root: [],
}


def device_nodes(component: Component, options: Mapping[str, Any]) -> list[str]:
    return [] if is_simulated(component, options) else DEVICES[component.bus](options[component.bus])


def is_simulated(component: Component, options: Mapping[str, Any]) -> bool:
    return options[component.bus] == SIM


def open_bus(component: Component, name: str, options: Mapping[str, Any], node: SimulatedNode) -> Any:
    """The bus sensor `name` is built on: real, or its simulator's, attached to `node`."""
    if is_simulated(component, options):
        return node.attach(name, component, options)
    return REAL[component.bus](options[component.bus])
