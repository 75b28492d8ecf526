"""What the pulse-input components (rain gauge, anemometer) share: their detect probe, which
listens while the technician tips the bucket or turns the cups, and their detect bench, where
the technician's hand is a steady rate of pulses."""

from __future__ import annotations

from collections.abc import Callable


def detect_pulses(
    probe,
    name: str,
    driver_name: str,
    open_driver: Callable,
    action: str,
    unit: str,
    detail_extra: Callable[[dict], str] = lambda info: "",
) -> None:
    """One check, `detect.<name>`, when the probe listens on a pin for this sensor."""
    pin = probe.pins.get(name)
    if pin is None:
        return
    listen_s = probe.listen_s
    if probe.pin_error is None:
        probe.say(f"{action} now: listening on GPIO{pin} for {listen_s:g} s")
    with probe.report.step(f"detect.{name}") as outcome:
        outcome["measured"] = {"pin": pin, "listen_s": listen_s}
        if probe.pin_error is not None:
            outcome["detail"] = f"GPIO{pin}: {probe.pin_error}"
            return
        driver = open_driver(pin, probe.pin_factory)
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
        probe.found[name] = {"driver": driver_name, "pin": pin, "pin_factory": probe.pin_factory_name}
        detail = f"{count} {unit if count != 1 else unit[:-1]} on GPIO{pin} in {listen_s:g} s"
        outcome.update(passed=True, detail=detail + detail_extra(result.info))


def bench_pulses(node, name: str, hz: float, **options) -> None:
    """A steady `hz` of pulses on the pin the node's `pins` knob gives `name`, if any."""
    from simulators.gpio import SimPulseSource

    pin = node.knobs["pins"].get(name)
    if pin is None:
        return
    source = SimPulseSource(node.pin_factory(), pin, lambda: hz, seed=node.seed, **options)
    node.add(name, source.start())
