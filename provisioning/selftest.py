"""`edge-node selftest`: read each configured sensor several times and judge it (DESIGN §6, issue 5).

The drivers are built as the daemon builds them (`edge_node.sensors.build_drivers`, with a
`SimulatedNode` for the "sim" buses); the config's `[[simulation.faults]]` scheduled at `at_s = 0`
are switched on before any driver opens (later ones, and the clearing of `for_s`, belong to a
running daemon and are not played here). Each sensor then gets one check, `selftest.<name>`:
open, then `reads` reads `spacing_s` apart. It passes when

- every read succeeded (a `DriverError`, or anything else raised, is a fault; so is a failed
  open, after which the sensor is not read),
- the values are plausible: no read flagged `out_of_range`,
- they are not stuck: no read flagged `stuck` by the driver, and, for the sensors whose
  component says they are noisy (`Component.noisy`), the value sets are not identical across
  all reads (with at least `IDENTICAL_MIN_READS` reads; a still 0 mm of rain or a calm are
  normal and never "stuck"),
- and at least one read returned a reading (None means asleep).

Each sensor is read with the options its component gives for a self-test
(`Component.selftest_options`): a duty-cycled SDS011 would sleep through most of a short test, so
it runs continuously. Readings within a warm-up carry `warming_up`, which is not a failure.

Sensors are tested in parallel, one thread each, so five sensors read five times a second apart
take about five seconds, not 25; the checks are added in config order once all are done.
Everything is closed, and the simulators stopped, afterwards.

On hardware the test opens the same pins and ports as the daemon: run it while the service is
stopped (pulse inputs cannot be claimed twice; two readers of one serial port share its bytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Mapping

from drivers import Driver
from edge_node.config import DRIVERS, Config
from edge_node.sensors import build_drivers, check_faults
from sensors.component import describe_error
from sensors.simulation import SimulatedNode

from .report import Check, Report

IDENTICAL_MIN_READS = 3  # fewer identical reads prove nothing
GIVE_UP_AFTER_S = 15.0  # beyond reads x spacing, a failing sensor gets no more reads


def selftest(config: Config, report: Report, *, reads: int = 5, spacing_s: float = 1.0) -> None:
    """Add `selftest.<name>` to `report` for every sensor in `config` (see the module's docstring).

    Raises ConfigError when `[[simulation.faults]]` names an unknown sensor or fault.
    """
    if reads < 1:
        raise ValueError(f"reads must be >= 1 (got {reads})")
    if spacing_s < 0:
        raise ValueError(f"spacing_s must be >= 0 (got {spacing_s})")
    check_faults(config)
    config = _as_tested(config)
    sim = SimulatedNode(seed=config.simulation.seed, faults=config.simulation.faults)
    drivers: dict[str, Driver] = {}
    results: dict[str, Check] = {}
    try:
        for name in config.sensors:
            started = time.monotonic()
            try:  # one sensor at a time, so one that cannot be built fails alone
                drivers.update(build_drivers(_only(config, name), sim))
            except Exception as err:
                detail = f"fault: {describe_error(err)}"
                results[name] = Check(f"selftest.{name}", "FAIL", detail, None, time.monotonic() - started)
        for fault in config.simulation.faults:
            if fault["at_s"] == 0 and fault["sensor"] in drivers:
                sim.set_fault(fault["sensor"], fault["fault"])
        threads = [
            threading.Thread(
                target=_run,
                args=(results, name, driver, config.sensors[name].driver, sim, reads, spacing_s),
                name=f"selftest:{name}",
                daemon=True,
            )
            for name, driver in drivers.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for driver in drivers.values():
            with contextlib.suppress(Exception):
                driver.close()
        sim.close()
    for name in config.sensors:
        report.add(results[name])


def _as_tested(config: Config) -> Config:
    """The config with each sensor's options as its component has it self-tested."""
    sensors = {
        name: dataclasses.replace(cfg, options=dict(DRIVERS[cfg.driver].selftest_options(cfg.options)))
        for name, cfg in config.sensors.items()
    }
    return dataclasses.replace(config, sensors=sensors)


def _only(config: Config, name: str) -> Config:
    return dataclasses.replace(config, sensors={name: config.sensors[name]})


def _run(
    results: dict[str, Check],
    name: str,
    driver: Driver,
    driver_name: str,
    sim: SimulatedNode,
    reads: int,
    spacing_s: float,
) -> None:
    started = time.monotonic()
    try:
        passed, detail, measured = _test(name, driver, driver_name, sim, reads, spacing_s)
    except Exception as err:  # a bug here is a FAIL with its reason, never a lost check
        passed, detail, measured = False, f"fault: {describe_error(err)}", None
    results[name] = Check(
        f"selftest.{name}", "PASS" if passed else "FAIL", detail, measured, time.monotonic() - started
    )


def _test(
    name: str, driver: Driver, driver_name: str, sim: SimulatedNode, reads: int, spacing_s: float
) -> tuple[bool, str, dict | None]:
    try:
        driver.open()
    except Exception as err:
        return False, f"fault: {describe_error(err)}", {"failed_at": "open"}
    values: list[dict[str, float]] = []
    flags: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    asleep = attempted = 0
    start = time.monotonic()
    give_up = start + reads * spacing_s + GIVE_UP_AFTER_S
    for i in range(reads):
        delay = start + i * spacing_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() > give_up:
            break
        sim.step(name)  # its simulated device moves as SimulatedNode.run() would move it
        attempted += 1
        try:
            reading = driver.read()
        except Exception as err:
            faults[describe_error(err)] += 1
            continue
        if reading is None:
            asleep += 1
            continue
        values.append(dict(reading.values))
        flags.update(set(reading.quality))

    problems = []
    for message, count in faults.items():
        problems.append(f"fault: {message}" + ("" if count == attempted else f" ({count} of {reads} reads)"))
    if attempted < reads:
        problems.append(f"gave up after {attempted} of {reads} reads")
    last = values[-1] if values else {}
    if (
        DRIVERS[driver_name].noisy
        and len(values) == reads
        and reads >= IDENTICAL_MIN_READS
        and all(v == values[0] for v in values)
    ):
        problems.append(f"stuck: {_show(last)} in all {reads} reads")
    elif flags["stuck"]:
        problems.append(f"stuck: {_show(last)} (flagged by the driver)")
    if flags["out_of_range"]:
        implausible = flags["out_of_range"]
        problems.append(f"out_of_range: {_show(last)} (implausible in {implausible} of {reads} reads)")
    if not values and not faults:
        problems.append(f"no reading in {reads} reads (asleep)")

    measured: dict = {"values": last, "reads": len(values)}
    notes = sorted(flag for flag in flags if flag not in ("stuck", "out_of_range"))
    if notes:
        measured["quality"] = notes
    if asleep:
        measured["asleep"] = asleep
    if problems:
        return False, "; ".join(problems), measured
    detail = f"{len(values)} reads, last {_show(last)}"
    if notes:
        detail += f" ({', '.join(notes)})"
    return True, detail, measured


def _show(values: Mapping[str, float]) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


__all__ = ["selftest"]
