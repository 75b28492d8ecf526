"""The past hours of a simulated node, put in its buffer before it starts (`simulate --history`).

A city map needs hours of readings to show an hourly index and a day of plots; a simulated node
that starts now has none. So each node's buffer is filled with what its sensors would have read
over the last hours, from the same seeded environment model its simulated sensors read live
(`SimulatedNode.environment()`), with the node's own PM correction and flags (`edge_node.quality`).
The daemon then sends that backlog as backfill, behind its live readings, exactly as a node back
from a dead zone does: the city's ingest stores it like any other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from edge_node.clock import boot_id, boottime
from edge_node.quality import HIGH_HUMIDITY_RH, PM_CORRECTION_MODEL, growth_factor
from edge_node.store import NewReading, Store
from sensors.simulation import SimulatedNode

# By driver: the values (and units) each kind of sensor gives, as far as the map needs them.
PM_UNITS = {"pm2_5": "ug/m3", "pm10": "ug/m3", "pm2_5_corrected": "ug/m3", "pm10_corrected": "ug/m3"}
UNITS = {
    "bme280": {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"},
    "sht4x": {"temperature": "Cel", "humidity": "%RH"},
    "sds011": PM_UNITS,
    "pms5003": {"pm1": "ug/m3", **PM_UNITS},
    "dnms": {"laeq": "dB(A)", "lamin": "dB(A)", "lamax": "dB(A)"},
}
FOG_RH = 98.0
FOG_PM_FACTOR = 4.0  # as edge_node.sensors.Simulation.conditions: droplets counted as particles


def node_history(
    seed: int,
    sensors: Mapping[str, str],
    interval_s: float,
    start: float,
    end: float,
    *,
    fog: bool = False,
) -> list[NewReading]:
    """Readings of the given sensors (name -> driver; those with a history here) every
    interval_s in [start, end)."""
    env = SimulatedNode(seed=seed).environment()  # the model its simulated sensors read live
    wanted = [(name, driver) for name, driver in sensors.items() if driver in UNITS]
    boot, mono_now, wall_now = boot_id(), boottime(), time.time()
    out = []
    t = start
    while t < end:
        c = env.at(t)
        rh = max(c.humidity_rh, FOG_RH) if fog else c.humidity_rh
        mono = mono_now - (wall_now - t)
        for sensor, driver in wanted:
            if driver in ("bme280", "sht4x"):
                values = {"temperature": round(c.temperature_c, 2), "humidity": round(rh, 1)}
                if driver == "bme280":
                    values["pressure"] = round(c.pressure_hpa, 2)
                out.append(NewReading(sensor, values, (), t, mono, boot, True))
            elif driver == "dnms":
                level = c.noise_dba
                values = {
                    "laeq": round(level, 1),
                    "lamin": round(level - 6, 1),
                    "lamax": round(level + 12, 1),
                }
                out.append(NewReading(sensor, values, (), t, mono, boot, True))
            else:
                scale = FOG_PM_FACTOR if fog else 1.0
                pm2_5, pm10 = round(c.pm2_5 * scale, 1), round(max(c.pm10, c.pm2_5) * scale, 1)
                factor = growth_factor(rh)
                values = {
                    "pm2_5": pm2_5,
                    "pm10": pm10,
                    "pm2_5_corrected": round(pm2_5 / factor, 1),
                    "pm10_corrected": round(pm10 / factor, 1),
                }
                if driver == "pms5003":
                    values = {"pm1": round(min(c.pm1 * scale, pm2_5), 1), **values}
                quality = ("high_humidity",) if rh > HIGH_HUMIDITY_RH else ()
                meta = {"pm_correction": {"model": PM_CORRECTION_MODEL, "humidity": round(rh, 1)}}
                out.append(NewReading(sensor, values, quality, t, mono, boot, True, meta))
        t += interval_s
    return out


def prefill(buffer: Path, readings: list[NewReading], sensors: Mapping[str, str], chunk: int = 5000) -> None:
    """Store the readings in the node's buffer, through the node's own Store."""
    store = Store(buffer, max_rows=10_000_000, max_bytes=10**10, sync_interval_s=10)
    store.open()
    try:
        for sensor in {r.sensor for r in readings}:
            store.set_units(sensor, UNITS[sensors[sensor]])
        for i in range(0, len(readings), chunk):
            store.append(readings[i : i + chunk])
    finally:
        store.close()
