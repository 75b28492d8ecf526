"""Nova SDS011: PM2.5 and PM10 on a UART, with our own sans-IO protocol code."""

from __future__ import annotations

from sensors.buses import serial_port
from sensors.component import Component, flag, fog, lazy, unplug
from sensors.schema import Key, number, table

SAMPLE = """\
[sensors.sds011]
# PM2.5 and PM10 on a UART at 9600 8N1.
driver = "sds011"
port = "/dev/serial0"          # a device path, any pyserial URL, or "sim"
interval_s = 60
# Optional duty cycle to spare the laser: run on_s seconds (at least 10: the fan and laser need
# to warm up), read, then sleep off_s seconds. Without `duty` the sensor runs continuously and is
# read every interval_s.
duty = { on_s = 30, off_s = 270 }
"""


def build(port, options, place):
    from .driver import SDS011Driver

    return SDS011Driver(port, duty=options["duty"], state_path=place.state_path)


def simulate(node, name, options):
    from .simulator import SimSDS011

    device = SimSDS011(node.air, seed=node.seed).start()
    return device, device.port


def bench(node, knobs):
    """An SDS011 reporting every `sds011_frame_s`; `sds011=False`: a UART with nothing on it."""
    import os

    from .simulator import SimSDS011

    if knobs["sds011"]:
        device = SimSDS011(node.air, frame_interval_s=knobs["sds011_frame_s"], seed=node.seed)
        node.add("sds011", device, COMPONENT)
        node.serial_ports.append(("sim", device.start().port))
    else:  # the port exists, nobody answers
        master, slave = os.openpty()
        node.on_close(os.close, master)
        node.on_close(os.close, slave)
        node.serial_ports.append(("sim", os.ttyname(slave)))


def history(c):
    """What it would have read under the environment model's conditions c (`simulate --history`)."""
    from .driver import SDS011Driver

    return SDS011Driver.units, {"pm2_5": round(c.pm2_5, 1), "pm10": round(max(c.pm10, c.pm2_5), 1)}


COMPONENT = Component(
    driver="sds011",
    name="sds011",
    summary="SDS011 on a UART: PM2.5 and PM10",
    bus="port",
    interval_s=60,
    options={
        "port": Key(serial_port, "/dev/serial0"),
        # Without `duty` the sensor runs continuously; with it, it warms up for on_s (the fan and
        # laser need >= 10 s), is read, and sleeps for off_s to spare the laser.
        "duty": Key(table({"on_s": Key(number(min=10)), "off_s": Key(number(min=0))}), None),
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
        "vanish": unplug,
        "fog": fog,
    },
    noisy=True,
    # A duty cycle would sleep through most of a short self-test: it runs continuously for it.
    selftest_options=lambda o: {**o, "duty": None},
    detect=lazy(f"{__name__}.detect:detect"),
    bench_knobs={"sds011": True, "sds011_frame_s": 1.0},
    bench=bench,
    sample=SAMPLE,
)
