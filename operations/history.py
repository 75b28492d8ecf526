"""The past hours of a simulated node, put in its buffer before it starts (`simulate --history`).

A city map needs hours of readings to show an hourly index and a day of plots; a simulated node
that starts now has none. So each node's buffer is filled with what its sensors would have read
over the last hours, from the same seeded environment model its simulated sensors read live
(`SimulatedNode.environment()`): each component says what it would have read (its `history`),
and the node's own PM correction and flags (`edge_node.quality.correct_pm`) are applied on top.
The daemon then sends that backlog as backfill, behind its live readings, exactly as a node back
from a dead zone does: the city's ingest stores it like any other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_node.clock import boot_id, boottime
from edge_node.quality import PM_VALUES, correct_pm, units_with_corrections
from edge_node.store import NewReading, Store
from sensors import components
from sensors.simulation import SimulatedNode, in_fog


@dataclass
class Past:
    readings: list[NewReading] = field(default_factory=list)
    units: dict[str, dict[str, str]] = field(default_factory=dict)  # by sensor, as the daemon records them


def node_history(
    seed: int,
    sensors: Mapping[str, str],
    interval_s: float,
    start: float,
    end: float,
    *,
    fog: bool = False,
) -> Past:
    """Readings of the given sensors (name -> driver; those whose component has a history) every
    interval_s in [start, end)."""
    env = SimulatedNode(seed=seed).environment()  # the model its simulated sensors read live
    histories = {driver: c.history for driver, c in components().items() if c.history is not None}
    wanted = [(name, histories[driver]) for name, driver in sensors.items() if driver in histories]
    boot, mono_now, wall_now = boot_id(), boottime(), time.time()
    past = Past()
    t = start
    while t < end:
        c = in_fog(env.at(t)) if fog else env.at(t)
        mono = mono_now - (wall_now - t)
        for sensor, history in wanted:
            units, values = history(c)
            past.units.setdefault(sensor, units_with_corrections(units))
            flags: list[str] = []
            meta = None
            if any(name in values for name in PM_VALUES):  # as a node corrects it, by the air's humidity
                meta = {"pm_correction": correct_pm(values, flags, round(c.humidity_rh, 1))}
            past.readings.append(NewReading(sensor, values, tuple(flags), t, mono, boot, True, meta))
        t += interval_s
    return past


def prefill(buffer: Path, past: Past, chunk: int = 5000) -> None:
    """Store the readings in the node's buffer, through the node's own Store."""
    store = Store(buffer, max_rows=10_000_000, max_bytes=10**10, sync_interval_s=10)
    store.open()
    try:
        for sensor, units in past.units.items():
            store.set_units(sensor, units)
        readings = past.readings
        for i in range(0, len(readings), chunk):
            store.append(readings[i : i + chunk])
    finally:
        store.close()
