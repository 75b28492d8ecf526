"""Plantower PMS5003: PM1, PM2.5, PM10 and particle counts on a UART, with our own sans-IO
protocol code (Adafruit's adafruit-circuitpython-pm25 checks our frame decoding in the tests)."""

from __future__ import annotations

from sensors.buses import serial_port
from sensors.component import Component, flag, fog, lazy, unplug
from sensors.schema import Key, choice, number, table

SAMPLE = """\
[sensors.pms5003]
# PM1, PM2.5 and PM10 (ug/m3, "atmospheric environment" values; the "CF=1" ones travel beside
# them as pm1_cf1, ...) and particle counts n0_3 ... n10 (count/0.1L) on a UART at 9600 8N1.
driver = "pms5003"
port = "/dev/ttyUSB0"          # a device path (here a USB serial adapter), any pyserial URL, or "sim"
interval_s = 60
# "passive": one fresh frame per reading, asked for; "active": the mean of the frames the sensor
# sent since the previous reading.
mode = "passive"
# Optional duty cycle to spare the laser: run on_s seconds (at least 30: readings in the first 30 s
# after waking are flagged warming_up), read, then sleep off_s seconds.
# duty = { on_s = 40, off_s = 260 }
"""


def build(port, options, place):
    from .driver import PMS5003Driver

    return PMS5003Driver(port, mode=options["mode"], duty=options["duty"])


def _device(node, **kwargs):
    from .simulator import SimPMS5003

    def air() -> tuple[float, float, float]:
        c = node.conditions()
        return c.pm1, c.pm2_5, c.pm10

    return SimPMS5003(air, seed=node.seed, **kwargs)


def simulate(node, name, options):
    device = _device(node).start()
    return device, device.port


def bench(node, knobs):
    """A PMS5003 on its own UART when `pms5003` is true."""
    if knobs["pms5003"]:
        device = node.add("pms5003", _device(node, frame_interval_s=0.2, startup_s=0.2), COMPONENT)
        node.serial_ports.append(("sim", device.start().port))


def history(c):
    """What it would have read under the environment model's conditions c (`simulate --history`)."""
    from .driver import PMS5003Driver

    pm2_5 = round(c.pm2_5, 1)
    values = {"pm1": round(min(c.pm1, pm2_5), 1), "pm2_5": pm2_5, "pm10": round(max(c.pm10, c.pm2_5), 1)}
    return PMS5003Driver.units, values


COMPONENT = Component(
    driver="pms5003",
    name="pms5003",
    summary="PMS5003 on a UART: PM1, PM2.5, PM10, particle counts",
    bus="port",
    interval_s=60,
    options={
        "port": Key(serial_port, "/dev/serial0"),
        "mode": Key(choice("passive", "active"), "passive"),
        "duty": Key(table({"on_s": Key(number(min=30)), "off_s": Key(number(min=0))}), None),
    },
    claim=lambda o: None if o["port"] == "sim" else ("port", f"serial port {o['port']}"),
    build=build,
    simulate=simulate,
    history=history,
    faults={
        "garbage": flag("garbage", 0.5),
        "bad_checksum": flag("bad_checksum", 0.5),
        "partial_frames": flag("partial_frames", 0.5),
        "ignore_sleep": flag("ignore_sleep"),
        "stuck": flag("stuck"),
        "fan_error": flag("error_code", 0x02),
        "vanish": unplug,
        "fog": fog,
    },
    noisy=True,
    selftest_options=lambda o: {**o, "duty": None},
    detect=lazy(f"{__name__}.detect:detect"),
    bench_knobs={"pms5003": False},
    bench=bench,
    sample=SAMPLE,
)
