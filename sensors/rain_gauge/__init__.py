"""Tipping-bucket rain gauge: a reed switch on a GPIO pin (gpiozero); mm of rain per interval."""

from __future__ import annotations

from sensors.buses import GPIO_PIN, pin_factory
from sensors.component import Component, flag
from sensors.schema import Key, number

SAMPLE = """\
[sensors.rain]
# Tipping-bucket rain gauge: a reed switch on a GPIO pin; reports mm per interval.
driver = "rain_gauge"
pin = 6                        # required: BCM GPIO number, 0..27
pin_factory = "lgpio"          # "lgpio" on a Pi, or "sim" (gpiozero's MockFactory; "mock" also works)
mm_per_tip = 0.2794            # rain per bucket tip (more than 0)
interval_s = 60
"""


def build(factory, options, place):
    from .driver import RainGaugeDriver

    return RainGaugeDriver(
        options["pin"], pin_factory=factory, mm_per_tip=options["mm_per_tip"], state_path=place.state_path
    )


def simulate(node, name, options):
    from simulators.gpio import rain_source

    factory, env = node.pin_factory(), node.environment()
    source = rain_source(
        factory, options["pin"], lambda: env.now().rain_mm_h, mm_per_tip=options["mm_per_tip"], seed=node.seed
    )
    return source.start(), factory


def detect(probe):
    from sensors.pulses import detect_pulses

    from .driver import RainGaugeDriver

    detect_pulses(
        probe,
        "rain",
        "rain_gauge",
        lambda pin, factory: RainGaugeDriver(pin, pin_factory=factory),
        "tip the bucket",
        "tips",
    )


def bench(node, knobs):
    from sensors.pulses import bench_pulses
    from simulators.gpio import RAIN_CLOSED_S

    bench_pulses(node, "rain", knobs["rain_hz"], closed_s=RAIN_CLOSED_S)


COMPONENT = Component(
    driver="rain_gauge",
    name="rain",
    summary="tipping-bucket rain gauge on a GPIO pin: rain in mm",
    bus="pin_factory",
    interval_s=60,
    options={
        "pin": Key(GPIO_PIN),
        "pin_factory": Key(pin_factory, "lgpio"),
        "mm_per_tip": Key(number(above=0), 0.2794),
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
    pin=6,
    bench_knobs={"rain_hz": 3.0},  # the technician's tipping; 0: nobody does, or the cable is cut
    bench=bench,
    sample=SAMPLE,
)
