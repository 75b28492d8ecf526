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

from .samples import HOUR_S, Sample, by_hour, infer_interval_s

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


def _pm_value(sample: Sample, pollutant: str) -> tuple[float | None, bool]:
    corrected = sample.values.get(f"{pollutant}_corrected")
    if corrected is not None:
        return float(corrected), True
    raw = sample.values.get(pollutant)
    return (None, True) if raw is None else (float(raw), False)


def hourly_index(
    samples: Iterable[Sample],
    *,
    interval_s: float | None = None,
    now: float | None = None,
) -> list[HourIndex]:
    """The index of one node for every hour it has PM readings in, oldest first.

    `samples` are the node's PM sensor readings. `interval_s` is the sensor's reading interval
    (inferred from the readings when not given). With `now` inside an hour, that hour is marked
    partial and its coverage is counted on the part already elapsed.
    """
    pm_samples = [s for s in samples if any(p in s.values for p in POLLUTANTS)]
    if interval_s is None:
        interval_s = infer_interval_s((s.ts for s in pm_samples), DEFAULT_PM_INTERVAL_S)
    hours = by_hour(pm_samples)
    out: list[HourIndex] = []
    history: dict[int, dict[str, float]] = {}
    for hour in sorted(hours):
        item = _one_hour(hour, hours[hour], interval_s, now)
        if item.band is not None:
            history[hour] = item.means
        running = running_means(history, hour)
        out.append(_with_running(item, running))
    return out


def _one_hour(hour: int, samples: Sequence[Sample], interval_s: float, now: float | None) -> HourIndex:
    span = HOUR_S
    partial = now is not None and hour <= now < hour + HOUR_S
    if partial:
        span = max(now - hour, interval_s)
    expected = max(1, math.floor(span / interval_s + 1e-9))
    valid = [s for s in samples if not s.excluded]
    excluded = len(samples) - len(valid)
    humid = sum(1 for s in samples if HIGH_HUMIDITY_FLAG in s.quality)
    humid_share = humid / len(samples) if samples else 0.0
    sums: dict[str, list[float]] = {p: [] for p in POLLUTANTS}
    uncorrected = 0
    for sample in valid:
        any_raw = False
        for pollutant in POLLUTANTS:
            value, corrected = _pm_value(sample, pollutant)
            if value is not None:
                sums[pollutant].append(value)
                any_raw |= not corrected
        uncorrected += any_raw
    means = {p: round(sum(v) / len(v), 2) for p, v in sums.items() if v}
    # Duplicates (a reading stored twice cannot happen, but two sensors can share a node) are
    # capped: coverage says how much of the hour is known, never more than all of it.
    coverage = min(1.0, len(valid) / expected)
    band = driver = reason = None
    if not valid:
        reason = (
            f"no valid readings ({excluded} flagged {_flag_names(samples)})" if samples else "no readings"
        )
    elif coverage < MIN_COVERAGE:
        share = f"{coverage:.0%} < {MIN_COVERAGE:.0%}"
        reason = f"coverage {share}: {len(valid)} valid of {expected} expected readings"
    else:
        per_pollutant = {p: band_for(p, max(0.0, m)) for p, m in means.items()}
        worst_band = worst(per_pollutant.values())
        band = worst_band.key
        driver = max(per_pollutant, key=lambda p: (per_pollutant[p].index, p == "pm2_5"))
    return HourIndex(
        hour=hour,
        band=band,
        reason=reason,
        driver=driver,
        means=means,
        running_24h={},
        expected=expected,
        valid=len(valid),
        coverage=round(coverage, 3),
        excluded=excluded,
        uncorrected=uncorrected,
        humid_share=round(humid_share, 3),
        partial=partial,
    )


def _flag_names(samples: Sequence[Sample]) -> str:
    names = sorted({flag for s in samples for flag in s.quality if flag != HIGH_HUMIDITY_FLAG})
    return "/".join(names) or "-"


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
