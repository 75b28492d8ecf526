"""Bosch BME280: temperature, humidity and pressure on I2C, through Adafruit's driver on our bus."""

from __future__ import annotations

from sensors.buses import i2c_bus
from sensors.component import Component, flag, fog, lazy
from sensors.schema import Key, choice

SAMPLE = """\
[sensors.bme280]
# Temperature, humidity and pressure on I2C.
driver = "bme280"
bus = "i2c:1"                  # "i2c:N" for /dev/i2c-N, or "sim"
address = 0x76                 # 0x76 (SDO to GND) or 0x77 (SDO to VDD)
interval_s = 10
# Every sensor accepts an optional calibration per value, applied as value * slope + offset
# (slope > 0; defaults 1 and 0) and recorded in each reading's "meta" on the wire:
# calibration = { temperature = { offset = -0.4 }, humidity = { slope = 1.03 } }
"""


def build(bus, options, place):
    from .driver import BME280Driver

    return BME280Driver(bus, options["address"])


def simulate(node, name, options):
    from .simulator import SimBME280

    device = SimBME280(node.weather)
    node.i2c.attach(options["address"], device)
    return device, node.i2c


def bench(node, knobs):
    """A BME280 (or, by `bme280_chip_id`, another chip; None: nothing) at `bme280_address`;
    `bme280_nack`: it acknowledges the scan's quick write, then NACKs every transfer."""
    from .simulator import SimBME280

    chip_id = knobs["bme280_chip_id"]
    if chip_id is None:  # nothing attached
        return
    device = SimBME280(node.weather, chip_id=chip_id)
    device.faults.nack = knobs["bme280_nack"]
    node.i2c.attach(knobs["bme280_address"], _AcksScanOnly(device) if knobs["bme280_nack"] else device)
    node.add("bme280", device, COMPONENT)


class _AcksScanOnly:
    """A device that acknowledges its address (the scan sees it) but NACKs every register transfer."""

    def __init__(self, device) -> None:
        self.device = device

    def write(self, data: bytes) -> None:
        if data:
            self.device.write(data)

    def read(self, n: int) -> bytes:
        return self.device.read(n)


def history(c):
    """What it would have read under the environment model's conditions c (`simulate --history`)."""
    from .driver import BME280Driver

    values = {"temperature": round(c.temperature_c, 2), "humidity": round(c.humidity_rh, 1)}
    return BME280Driver.units, {**values, "pressure": round(c.pressure_hpa, 2)}


COMPONENT = Component(
    driver="bme280",
    name="bme280",
    summary="BME280 on I2C: temperature, humidity, pressure",
    bus="bus",
    interval_s=10,
    options={
        "bus": Key(i2c_bus, "i2c:1"),
        "address": Key(choice(0x76, 0x77, show=hex), 0x76),  # hex, as datasheets write it
    },
    claim=lambda o: (
        None if o["bus"] == "sim" else ("address", f"I2C address {o['address']:#x} on {o['bus']}")
    ),
    build=build,
    simulate=simulate,
    history=history,
    faults={"nack": flag("nack"), "wrong_chip": flag("chip_id", 0x58), "stuck": flag("stuck"), "fog": fog},
    noisy=True,
    detect=lazy(f"{__name__}.detect:detect"),
    bench_knobs={
        "bme280_chip_id": 0x60,  # a BME280's (CHIP_ID_BME280)
        "bme280_address": 0x76,
        "bme280_nack": False,
    },
    bench=bench,
    sample=SAMPLE,
)
