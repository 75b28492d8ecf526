"""The European Air Quality Index (EAQI) per node and hour, from the node's particulate matter.

Source: the European Environment Agency's index as published at
https://airindex.eea.europa.eu/AQI/index.html ("About the index"), with the bands revised in 2024
(ETC HE Report 2024/17, "EEA's revision of the European Air Quality Index bands"). Since that
revision the EEA determines the index from the *hourly* concentration of every pollutant,
PM2.5 and PM10 included ("To determine the AQI level, hourly concentrations of all five
pollutants are used"); before it, PM used a 24-hour running mean. So the band here comes from
the hourly means, and the 24-hour running mean is computed beside it for the popup and the
planners (it is what the WHO 2021 24-hour guideline values, 15 and 45 ug/m3, are read against).

Bands (ug/m3; a value belongs to the first band whose upper limit it does not exceed):

    band             PM2.5       PM10
    good             0-5         0-15
    fair             5-15        15-45
    moderate         15-50       45-120
    poor             50-90       120-195
    very poor        90-140      195-270
    extremely poor   > 140       > 270

The node's overall band is the worse of the two (the EEA takes the poorest pollutant).

What a low-cost street node adds, and the EEA's reference stations do not need:
- the means are of the humidity-corrected PM (`pm2_5_corrected`, `pm10_corrected`, kappa-Koehler,
  see edge_node/quality.py); a reading without a correction (no humidity at the node) is used
  raw and counted in `uncorrected`;
- readings flagged `warming_up`, `stuck` or `out_of_range` are left out;
- an hour has a band only when its valid readings are at least 75 % of those expected from the
  sensor's interval (the EU's data-capture rule for hourly and daily aggregates, Directive
  2008/50/EC Annex I); otherwise no band, and the reason says why;
- every band is marked `indicative`: these are not reference instruments;
- `humid_share` is the share of the hour's readings taken above 70 %RH (flagged
  `high_humidity`), where fog or mist makes optical counters read water as particles even after
  the correction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from .samples import EXCLUDING_FLAGS, HOUR_S, Sample, infer_interval_s

SOURCE = (
    "EEA European Air Quality Index, bands revised 2024 (ETC HE Report 2024/17), "
    "https://airindex.eea.europa.eu/AQI/index.html"
)
MIN_COVERAGE = 0.75
HIGH_HUMIDITY_FLAG = "high_humidity"
DEFAULT_PM_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Band:
    index: int  # 1 (good) .. 6 (extremely poor)
    key: str
    label: str
    colour: str  # the EEA's palette on airindex.eea.europa.eu


BANDS: tuple[Band, ...] = (
    Band(1, "good", "Good", "#50F0E6"),
    Band(2, "fair", "Fair", "#50CCAA"),
    Band(3, "moderate", "Moderate", "#F0E641"),
    Band(4, "poor", "Poor", "#FF5050"),
    Band(5, "very_poor", "Very poor", "#960032"),
    Band(6, "extremely_poor", "Extremely poor", "#7D2181"),
)
BAND_BY_KEY = {band.key: band for band in BANDS}

# Upper limits of bands 1..5 per pollutant; above the last one is band 6.
UPPER_LIMITS: dict[str, tuple[float, ...]] = {
    "pm2_5": (5.0, 15.0, 50.0, 90.0, 140.0),
    "pm10": (15.0, 45.0, 120.0, 195.0, 270.0),
}
POLLUTANTS = tuple(UPPER_LIMITS)
POLLUTANTS_SET = frozenset(POLLUTANTS)

# 24-hour running mean: valid when 18 of its 24 hourly means exist (75 %, as above).
RUNNING_HOURS = 24
RUNNING_MIN_HOURS = 18


def band_for(pollutant: str, concentration: float) -> Band:
    if not math.isfinite(concentration) or concentration < 0:
        raise ValueError(f"{pollutant}: not a concentration: {concentration!r}")
    for band, upper in zip(BANDS, UPPER_LIMITS[pollutant], strict=False):
        if concentration <= upper:
            return band
    return BANDS[-1]


def worst(bands: Iterable[Band | None]) -> Band | None:
    present = [band for band in bands if band is not None]
    return max(present, key=lambda band: band.index) if present else None


@dataclass(frozen=True)
class HourIndex:
    hour: int  # start of the hour, seconds since the epoch, UTC
    band: str | None  # a key of BAND_BY_KEY, or None with `reason`
    reason: str | None
    driver: str | None  # the pollutant whose band is the node's band
    means: dict[str, float]  # hourly means of the (corrected) PM, ug/m3
    running_24h: dict[str, float]  # 24-hour running means ending with this hour, where valid
    expected: int  # readings expected in the hour from the sensor's interval
    valid: int  # readings used (no warming_up / stuck / out_of_range)
    coverage: float  # valid / expected
    excluded: int  # readings left out for their flags
    uncorrected: int  # valid readings without a humidity-corrected value
    humid_share: float  # share of the hour's readings taken above 70 %RH
    partial: bool  # the hour is still in progress (coverage counted on its elapsed part)
    indicative: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


class _HourSums:
    """What one pass over an hour's readings collects."""

    __slots__ = ("total", "excluded", "humid", "sum2_5", "n2_5", "sum10", "n10", "uncorrected", "flags")

    def __init__(self) -> None:
        self.total = self.excluded = self.humid = self.n2_5 = self.n10 = self.uncorrected = 0
        self.sum2_5 = self.sum10 = 0.0
        self.flags: set[str] = set()


def hourly_index(
    samples: Iterable[Sample],
    *,
    interval_s: float | None = None,
    now: float | None = None,
) -> list[HourIndex]:
    """The index of one node for every hour it has PM readings in, oldest first.

    `samples` are the node's PM sensor readings (others are skipped). `interval_s` is the
    sensor's reading interval (inferred from the readings when not given). With `now` inside an
    hour, that hour is marked partial and its coverage is counted on the part already elapsed.
    One pass, no per-reading objects: a city's day (300 nodes, 432,000 readings) in well under 1 s.
    """
    hours: dict[int, _HourSums] = {}
    times: list[float] = []
    excluding = EXCLUDING_FLAGS
    start = end = 0.0
    sums = _HourSums()
    for sample in samples:
        values = sample.values
        raw2_5, raw10 = values.get("pm2_5"), values.get("pm10")
        if raw2_5 is None and raw10 is None:
            continue
        ts = sample.ts
        times.append(ts)
        if not start <= ts < end:  # readings come in time order: the hour changes seldom
            start = int(ts // HOUR_S) * HOUR_S
            end = start + HOUR_S
            sums = hours.get(start)
            if sums is None:
                sums = hours[start] = _HourSums()
        sums.total += 1
        quality = sample.quality
        if quality:
            if HIGH_HUMIDITY_FLAG in quality:
                sums.humid += 1
            if not excluding.isdisjoint(quality):
                sums.excluded += 1
                sums.flags.update(quality)
                continue
        uncorrected = False
        value = values.get("pm2_5_corrected")
        if value is None and raw2_5 is not None:
            value, uncorrected = raw2_5, True
        if value is not None:
            sums.sum2_5 += value
            sums.n2_5 += 1
        value = values.get("pm10_corrected")
        if value is None and raw10 is not None:
            value, uncorrected = raw10, True
        if value is not None:
            sums.sum10 += value
            sums.n10 += 1
        sums.uncorrected += uncorrected
    if interval_s is None:
        interval_s = infer_interval_s(times, DEFAULT_PM_INTERVAL_S)
    out: list[HourIndex] = []
    history: dict[int, dict[str, float]] = {}
    for hour in sorted(hours):
        item = _one_hour(hour, hours[hour], interval_s, now)
        if item.band is not None:
            history[hour] = item.means
        out.append(_with_running(item, running_means(history, hour)))
    return out


def _one_hour(hour: int, sums: _HourSums, interval_s: float, now: float | None) -> HourIndex:
    span = HOUR_S
    partial = now is not None and hour <= now < hour + HOUR_S
    if partial:
        span = max(now - hour, interval_s)
    expected = max(1, math.floor(span / interval_s + 1e-9))
    valid = sums.total - sums.excluded
    means = {}
    if sums.n2_5:
        means["pm2_5"] = round(sums.sum2_5 / sums.n2_5, 2)
    if sums.n10:
        means["pm10"] = round(sums.sum10 / sums.n10, 2)
    # Coverage says how much of the hour is known, never more than all of it.
    coverage = min(1.0, valid / expected)
    band = driver = reason = None
    if not valid:
        names = "/".join(sorted(sums.flags - {HIGH_HUMIDITY_FLAG})) or "-"
        reason = f"no valid readings ({sums.excluded} flagged {names})"
    elif coverage < MIN_COVERAGE:
        share = f"{coverage:.0%} < {MIN_COVERAGE:.0%}"
        reason = f"coverage {share}: {valid} valid of {expected} expected readings"
    else:
        per_pollutant = {p: band_for(p, max(0.0, m)) for p, m in means.items()}
        band = worst(per_pollutant.values()).key
        driver = max(per_pollutant, key=lambda p: (per_pollutant[p].index, p == "pm2_5"))
    return HourIndex(
        hour=hour,
        band=band,
        reason=reason,
        driver=driver,
        means=means,
        running_24h={},
        expected=expected,
        valid=valid,
        coverage=round(coverage, 3),
        excluded=sums.excluded,
        uncorrected=sums.uncorrected,
        humid_share=round(sums.humid / sums.total, 3) if sums.total else 0.0,
        partial=partial,
    )


def running_means(history: dict[int, dict[str, float]], hour: int) -> dict[str, float]:
    """24-hour running means ending with `hour`, from the hours that had a band."""
    window = [
        history[h] for h in range(hour - (RUNNING_HOURS - 1) * HOUR_S, hour + 1, HOUR_S) if h in history
    ]
    out = {}
    for pollutant in POLLUTANTS:
        values = [means[pollutant] for means in window if pollutant in means]
        if len(values) >= RUNNING_MIN_HOURS:
            out[pollutant] = round(sum(values) / len(values), 2)
    return out


def _with_running(item: HourIndex, running: dict[str, float]) -> HourIndex:
    if not running:
        return item
    return HourIndex(**{**asdict(item), "running_24h": running})


def current(hours: Sequence[HourIndex], now: float) -> HourIndex | None:
    """What the map shows as a node's band now: the latest hour, unless it is still young.

    The hour in progress counts once a quarter of it has passed; before that the previous
    complete hour stands. An hour without a band is returned too (its reason is shown).
    """
    for item in reversed(hours):
        if item.hour > now:
            continue
        if item.partial and now - item.hour < HOUR_S / 4 and len(hours) > 1:
            continue
        if now - item.hour >= 2 * HOUR_S:
            return None
        return item
    return None
