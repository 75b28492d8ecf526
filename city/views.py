"""What the map and its API show, computed from a node list and the last day of readings.

Pure functions: `city.webmap` feeds them from the database, the tests from readings they make.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import eaqi, heat, noise
from .areas import Areas
from .samples import HOUR_S, Sample, energy_mean, flag_counts, iso

DAY_S = 24 * HOUR_S
# A node silent this long is shown grey as stale; the fleet view calls a node offline after the
# same 15 minutes (edge_node/fleet.py).
STALE_S = 15 * 60
SERIES_BIN_S = 300  # the popup's plots: 5-minute means of the last 24 h
SERIES = ("pm2_5", "pm2_5_corrected", "pm10", "pm10_corrected", "temperature", "humidity", "laeq")


@dataclass
class NodeInfo:
    node: str
    lat: float | None = None
    lon: float | None = None
    site: str = ""
    state: str = "unknown"  # the node's last status: online, offline or unknown
    state_since: float | None = None  # when that status was received
    last_seen: float | None = None  # the newest reading stored for the node


@dataclass
class NodeDay:
    """One node's readings of the last day, by sensor."""

    info: NodeInfo
    by_sensor: dict[str, list[Sample]] = field(default_factory=dict)

    def samples_with(self, name: str) -> list[Sample]:
        """The readings (of whichever sensors give it) that carry the value `name`."""
        return [s for samples in self.by_sensor.values() for s in samples if name in s.values]


def node_state(info: NodeInfo, now: float) -> tuple[str, float | None]:
    """offline (its Last Will or a clean stop), stale (silent for STALE_S), or live."""
    if info.state == "offline":
        return "offline", info.state_since or info.last_seen
    if info.last_seen is None:
        return "no_data", None
    if now - info.last_seen > STALE_S:
        return "stale", info.last_seen
    return "live", None


def pm_samples(day: NodeDay) -> list[Sample]:
    return [
        s
        for samples in day.by_sensor.values()
        for s in samples
        if not eaqi.POLLUTANTS_SET.isdisjoint(s.values)
    ]


def node_summary(day: NodeDay, now: float, areas: Areas) -> dict:
    """One marker: where, what band (or why none), and whether the node is live."""
    info = day.info
    state, since = node_state(info, now)
    hours = eaqi.hourly_index(pm_samples(day), now=now)
    item = eaqi.current(hours, now)
    band = eaqi.BAND_BY_KEY[item.band] if item is not None and item.band else None
    out = {
        "node": info.node,
        "lat": info.lat,
        "lon": info.lon,
        "site": info.site,
        "area": areas.area_of(info.node, info.lat, info.lon),
        "state": state,
        "since": iso(since),
        "last_seen": iso(info.last_seen),
        "band": band.key if band else None,
        "band_index": band.index if band else None,
        "colour": band.colour if band else None,
        "hour": iso(item.hour) if item else None,
        "reason": None,
        "indicative": True,
        "humid_share": item.humid_share if item else None,
        "means": item.means if item else {},
        "partial": item.partial if item else False,
    }
    if band is None:
        out["reason"] = item.reason if item is not None else "no PM readings in the last two hours"
    heat_now = latest_heat(day)
    if heat_now:
        out["heat"] = heat_now
    laeq = [h for h in noise.hourly_laeq(day.samples_with("laeq"), now=now) if h.laeq is not None]
    if laeq:
        out["laeq_hour"] = laeq[-1].laeq
    return out


def latest_heat(day: NodeDay) -> dict | None:
    samples = [s for s in day.samples_with("temperature") if not s.excluded and "humidity" in s.values]
    if not samples:
        return None
    last = max(samples, key=lambda s: s.ts)
    t, rh = float(last.values["temperature"]), float(last.values["humidity"])
    hi = heat.heat_index_c(t, rh)
    return {
        "ts": iso(last.ts),
        "temperature": t,
        "humidity": rh,
        "heat_index": hi,
        "category": heat.heat_category(hi),
        "humidex": heat.humidex(t, rh),
    }


def city_summary(markers: Sequence[Mapping]) -> dict:
    counts = {"total": len(markers), "live": 0, "stale": 0, "offline": 0, "no_data": 0}
    by_band = {band.key: 0 for band in eaqi.BANDS}
    areas: dict[str, dict] = {}
    for marker in markers:
        counts[marker["state"]] = counts.get(marker["state"], 0) + 1
        if marker["state"] != "live" or not marker["band"]:
            continue
        by_band[marker["band"]] += 1
        area = areas.setdefault(marker["area"], {"area": marker["area"], "band_index": 0, "nodes": []})
        area["nodes"].append(marker["node"])
        if marker["band_index"] > area["band_index"]:
            area["band_index"], area["band"] = marker["band_index"], marker["band"]
    worst = sorted(areas.values(), key=lambda a: (-a["band_index"], a["area"]))
    for area in worst:
        area["nodes"].sort()
    return {"nodes": counts, "reporting": counts["live"], "by_band": by_band, "worst_areas": worst[:5]}


def map_view(days: Iterable[NodeDay], now: float, areas: Areas, alerts: Sequence[Mapping] = ()) -> dict:
    markers = sorted((node_summary(day, now, areas) for day in days), key=lambda m: m["node"])
    return {
        "generated_at": iso(now),
        "source": eaqi.SOURCE,
        "bands": [
            {
                "key": band.key,
                "label": band.label,
                "colour": band.colour,
                "pm2_5_upper": _upper("pm2_5", band.index),
                "pm10_upper": _upper("pm10", band.index),
            }
            for band in eaqi.BANDS
        ],
        "stale_after_s": STALE_S,
        "nodes": markers,
        "summary": city_summary(markers),
        "alerts": list(alerts),
    }


def _upper(pollutant: str, index: int) -> float | None:
    limits = eaqi.UPPER_LIMITS[pollutant]
    return limits[index - 1] if index <= len(limits) else None


def binned_series(samples: Iterable[Sample], name: str, start: float) -> list[list[float]]:
    """[time, mean] per SERIES_BIN_S bin (energy mean for sound levels), flagged readings left out."""
    bins: dict[int, list[float]] = {}
    for s in samples:
        value = s.values.get(name)
        if value is None or s.excluded or s.ts < start or not math.isfinite(value):
            continue
        bins.setdefault(int(s.ts // SERIES_BIN_S) * SERIES_BIN_S, []).append(float(value))
    out = []
    for at in sorted(bins):
        values = bins[at]
        mean = energy_mean(values) if name == "laeq" else sum(values) / len(values)
        out.append([at, round(mean, 2)])
    return out


def node_day_view(day: NodeDay, now: float, areas: Areas) -> dict:
    """The popup: the last 24 h as plots, the hourly index, noise and heat, the QC flags."""
    start = now - DAY_S
    all_samples = [s for samples in day.by_sensor.values() for s in samples if s.ts >= start]
    series = {}
    for name in SERIES:
        points = binned_series(all_samples, name, start)
        if points:
            series[name] = points
    hours = [h.as_dict() for h in eaqi.hourly_index(pm_samples(day), now=now) if h.hour >= start - HOUR_S]
    laeq_hours = noise.hourly_laeq(day.samples_with("laeq"), now=now)
    complete = {h.hour: h.laeq for h in laeq_hours if h.laeq is not None and h.hour + HOUR_S <= now}
    last_day = {hour: level for hour, level in complete.items() if hour >= now - DAY_S}
    latest = max(all_samples, key=lambda s: s.ts, default=None)
    return {
        "node": node_summary(day, now, areas),
        "from": iso(start),
        "to": iso(now),
        "series": series,
        "hours": hours,
        "noise": {
            "hourly": [h.as_dict() for h in laeq_hours if h.hour >= start - HOUR_S],
            "den": noise.day_evening_night(last_day) if last_day else None,
            "source": noise.SOURCE,
        },
        "heat": latest_heat(day),
        "heat_source": heat.SOURCE,
        "flags": flag_counts(all_samples),
        "latest_flags": sorted(latest.quality) if latest else [],
        "source": eaqi.SOURCE,
    }
