"""Cup anemometer: a reed switch on a GPIO pin (gpiozero); mean wind speed and gust."""

from __future__ import annotations

from sensors.buses import GPIO_PIN, pin_factory
from sensors.component import Component, flag
from sensors.schema import Key, number

SAMPLE = """\
[sensors.wind]
# Cup anemometer: a reed switch on a GPIO pin; reports mean wind speed and gust.
driver = "anemometer"
pin = 5                        # required: BCM GPIO number, 0..27
pin_factory = "lgpio"          # "lgpio" on a Pi, or "sim"
ms_per_hz = 0.667              # wind speed in m/s per pulse per second (more than 0)
interval_s = 10
"""


def build(factory, options, place):
    from .driver import AnemometerDriver

    return AnemometerDriver(
        options["pin"], pin_factory=factory, ms_per_hz=options["ms_per_hz"], state_path=place.state_path
    )


def simulate(node, name, options):
    from simulators.gpio import wind_source

    factory, env = node.pin_factory(), node.environment()
    source = wind_source(
        factory, options["pin"], lambda: env.now().wind_ms, ms_per_hz=options["ms_per_hz"], seed=node.seed
    )
    return source.start(), factory


def detect(probe):
    from sensors.pulses import detect_pulses

    from .driver import AnemometerDriver

    detect_pulses(
        probe,
        "wind",
        "anemometer",
        lambda pin, factory: AnemometerDriver(pin, pin_factory=factory),
        "turn the anemometer",
        "pulses",
        lambda info: f" ({info.get('wind_speed')} m/s)",
    )


def bench(node, knobs):
    from sensors.pulses import bench_pulses

    bench_pulses(node, "wind", knobs["wind_hz"])


COMPONENT = Component(
    driver="anemometer",
    name="wind",
    summary="cup anemometer on a GPIO pin: wind speed and gust in m/s",
    bus="pin_factory",
    interval_s=10,
    options={
        "pin": Key(GPIO_PIN),
        "pin_factory": Key(pin_factory, "lgpio"),
        "ms_per_hz": Key(number(above=0), 0.667),
    },
    claim=lambda o: ("pin", f"GPIO{o['pin']}"),
    build=build,
    simulate=simulate,
    faults={
        "bounce_storm": flag("bounce_storm"),
        "stuck_closed": flag("stuck_closed"),
        "disconnected": flag("disconnected"),
    },
    detect=detect,
    pin=5,
    bench_knobs={"wind_hz": 6.0},  # the technician's turning; 0: nobody does, or the cable is cut
    bench=bench,
    sample=SAMPLE,
)
