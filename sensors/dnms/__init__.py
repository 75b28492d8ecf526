"""DNMS (Sensor.Community's Digital Noise Measurement Sensor): LAeq, LAmin, LAmax in dB(A) per
interval on I2C, read with our own sans-IO code for its firmware's protocol."""

from __future__ import annotations

from sensors.buses import i2c_bus
from sensors.component import Component, flag, lazy
from sensors.schema import Key

from .protocol import ADDRESS  # 0x55, fixed in the module's firmware

SAMPLE = """\
[sensors.noise]
# Street noise on I2C (the DNMS module at 0x55): LAeq over each interval, and the quietest
# and loudest 125 ms (LAmin, LAmax), in dB(A).
driver = "dnms"
bus = "i2c:1"                  # "i2c:N" for /dev/i2c-N, or "sim"
interval_s = 60
"""


def build(bus, options, place):
    from .driver import DNMSDriver

    return DNMSDriver(bus, ADDRESS)


def _device(node):
    from .simulator import SimDNMS

    return SimDNMS(lambda: node.conditions().noise_dba, seed=node.seed)


def simulate(node, name, options):
    device = _device(node)
    node.i2c.attach(ADDRESS, device)
    return device, node.i2c


def bench(node, knobs):
    """A DNMS at 0x55 when `dnms` is true."""
    if knobs["dnms"]:
        node.i2c.attach(ADDRESS, node.add("noise", _device(node), COMPONENT))


def history(c):
    """What it would have read under the environment model's conditions c (`simulate --history`):
    the model's level as the interval's LAeq, its quietest and loudest 125 ms around it."""
    from .driver import DNMSDriver

    level = c.noise_dba
    return DNMSDriver.units, {
        "laeq": round(level, 1),
        "lamin": round(level - 6, 1),
        "lamax": round(level + 12, 1),
    }


COMPONENT = Component(
    driver="dnms",
    name="noise",
    summary="DNMS on I2C: street noise LAeq, LAmin, LAmax in dB(A)",
    bus="bus",
    interval_s=60,
    options={"bus": Key(i2c_bus, "i2c:1")},
    claim=lambda o: None if o["bus"] == "sim" else ("bus", f"I2C address {ADDRESS:#x} on {o['bus']}"),
    build=build,
    simulate=simulate,
    history=history,
    faults={
        "nack": flag("nack"),
        "bad_crc": flag("bad_crc", 0.2),
        "garbage": flag("garbage", 0.2),
        "stuck": flag("stuck"),
        "hung": flag("never_ready"),
        "wrong_device": flag("version", "SPS30 2.2"),
    },
    noisy=True,
    detect=lazy(f"{__name__}.detect:detect"),
    bench_knobs={"dnms": False},
    bench=bench,
    sample=SAMPLE,
)
