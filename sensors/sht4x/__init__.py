"""Sensirion SHT4x: temperature and humidity on I2C, through Adafruit's driver on our bus, with
the heater against condensation."""

from __future__ import annotations

from typing import Any

from sensors.buses import i2c_bus
from sensors.component import Component, flag, fog, lazy
from sensors.schema import Invalid, Key, choice, show

SAMPLE = """\
[sensors.sht4x]
# Temperature and humidity on I2C (Sensirion SHT40/41/45).
driver = "sht4x"
bus = "i2c:1"                  # "i2c:N" for /dev/i2c-N, or "sim"
address = 0x44                 # 0x44 (SHT4x-A); 0x45 and 0x46 for the -B and -C parts
interval_s = 10
# Above 95 %RH, a 1 s heater pulse (200 mW) at most every 5 minutes dries a condensed film;
# the next reading waits until the die has cooled (10 s). false: never heat.
heater = true
"""


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false (got {show(value)})")
    return value


def build(bus, options, place):
    from .driver import SHT4xDriver

    return SHT4xDriver(bus, options["address"], heater=options["heater"])


def _device(node):
    from .simulator import SimSHT4x

    return SimSHT4x(lambda: node.weather()[:2], seed=node.seed)


def simulate(node, name, options):
    device = _device(node)
    node.i2c.attach(options["address"], device)
    return device, node.i2c


def bench(node, knobs):
    """An SHT4x at 0x44 when `sht4x` is true."""
    if knobs["sht4x"]:
        node.i2c.attach(0x44, node.add("sht4x", _device(node), COMPONENT))


def history(c):
    """What it would have read under the environment model's conditions c (`simulate --history`)."""
    from .driver import SHT4xDriver

    return SHT4xDriver.units, {"temperature": round(c.temperature_c, 2), "humidity": round(c.humidity_rh, 1)}


COMPONENT = Component(
    driver="sht4x",
    name="sht4x",
    summary="SHT4x on I2C: temperature, humidity (heater against condensation)",
    bus="bus",
    interval_s=10,
    options={
        "bus": Key(i2c_bus, "i2c:1"),
        "address": Key(choice(0x44, 0x45, 0x46, show=hex), 0x44),
        "heater": Key(boolean, True),
    },
    claim=lambda o: (
        None if o["bus"] == "sim" else ("address", f"I2C address {o['address']:#x} on {o['bus']}")
    ),
    build=build,
    simulate=simulate,
    history=history,
    faults={
        "nack": flag("nack"),
        "bad_crc": flag("bad_crc", 0.2),
        "stuck": flag("stuck"),
        "condensed": flag("condensed"),
        "fog": fog,
    },
    noisy=True,
    detect=lazy(f"{__name__}.detect:detect"),
    bench_knobs={"sht4x": False},
    bench=bench,
    sample=SAMPLE,
)
