"""The Pi itself as a sensor: CPU temperature, load, memory, disk, throttling, Wi-Fi, from /sys and
/proc under a root (`drivers.host`; simulated by `simulators.host`, the node's generated tree)."""

from __future__ import annotations

from sensors.buses import host_root
from sensors.component import Component, flag
from sensors.schema import Key

SAMPLE = """\
[sensors.host]
# The Pi's own health: CPU temperature, load, memory, disk, throttling, clock sync.
driver = "pi_health"
root = "/"                     # where /sys and /proc are, or "sim" for a generated tree
interval_s = 60
"""


def build(root, options, place):
    from drivers.host import PiHealthDriver

    return PiHealthDriver(root, disk_path=place.buffer_dir)


def simulate(node, name, options):
    from simulators.host import SimHost

    env = node.environment()
    host = SimHost(node.workdir() / name, seed=node.seed, ambient=lambda: env.now().temperature_c)
    return host, str(host.root)


def detect(probe):
    from drivers.host import PiHealthDriver

    label, root = probe.host
    with probe.report.step("detect.host") as outcome:
        result = PiHealthDriver(root).probe()
        outcome["measured"] = dict(result.info)
        outcome["detail"] = result.detail
        if result.found:
            probe.found["host"] = {"driver": "pi_health", "root": label}
            outcome["passed"] = True


def bench(node, knobs):
    """The node's host tree; `host=False`: a root without /proc (not a Linux root)."""
    from simulators.host import SimHost

    node.host_root = node.workdir() / "host"
    if knobs["host"]:
        env = node.environment()
        SimHost(node.host_root, seed=node.seed, ambient=lambda: env.now().temperature_c)
    else:
        (node.host_root / "sys").mkdir(parents=True)


COMPONENT = Component(
    driver="pi_health",
    name="host",
    summary="the Pi's own health from /sys and /proc",
    bus="root",
    interval_s=60,
    options={"root": Key(host_root, "/")},
    build=build,
    simulate=simulate,
    faults={
        "under_voltage": flag("under_voltage"),
        "overheat": flag("overheat"),
        "clock_unsynced": flag("clock_unsynced"),
        "missing_thermal": flag("missing_thermal"),
    },
    detect=detect,
    bench_knobs={"host": True},
    bench=bench,
    sample=SAMPLE,
)
