"""Street noise from the sound level meter (the DNMS component, value `laeq` in dB(A)).

- Hourly LAeq: the energy mean of the hour's readings, 10 lg(mean(10^(L/10))), each reading being
  the LAeq over one equal reading interval; the same 75 % coverage rule as the air index, and
  readings flagged warming_up / stuck / out_of_range left out.
- Lden-style day/evening/night levels, as the EU Environmental Noise Directive 2002/49/EC
  (Annex I) defines them: Lday 07-19, Levening 19-23, Lnight 23-07 local time, and
      Lden = 10 lg( (12 * 10^(Ld/10) + 4 * 10^((Le + 5)/10) + 8 * 10^((Ln + 10)/10)) / 24 )
  i.e. +5 dB for the evening and +10 dB for the night. Computed here over whatever hours are given
  (the map uses the last 24): "Lden-style", since the Directive's Lden is an annual average.
- Read against the WHO Environmental Noise Guidelines for the European Region (WHO Regional
  Office for Europe, 2018), for road traffic noise, the source at a street node: Lden 53 dB and
  Lnight 45 dB (railway 54 / 44, aircraft 45 / 40).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from .samples import HOUR_S, Sample, by_hour, energy_mean, infer_interval_s

SOURCE = (
    "Lden: EU Environmental Noise Directive 2002/49/EC Annex I; guideline values: WHO Environmental "
    "Noise Guidelines for the European Region (2018), road traffic"
)
WHO_ROAD_LDEN_DB = 53.0
WHO_ROAD_LNIGHT_DB = 45.0
MIN_COVERAGE = 0.75
DEFAULT_NOISE_INTERVAL_S = 60.0
DEFAULT_TZ = "Europe/Madrid"  # Terrassa
EVENING_PENALTY_DB = 5.0
NIGHT_PENALTY_DB = 10.0
PERIOD_HOURS = {"day": 12, "evening": 4, "night": 8}


@dataclass(frozen=True)
class HourNoise:
    hour: int
    laeq: float | None
    reason: str | None
    valid: int
    expected: int
    coverage: float

    def as_dict(self) -> dict:
        return asdict(self)


def hourly_laeq(
    samples: Iterable[Sample], *, interval_s: float | None = None, now: float | None = None
) -> list[HourNoise]:
    noise = [s for s in samples if "laeq" in s.values]
    if interval_s is None:
        interval_s = infer_interval_s((s.ts for s in noise), DEFAULT_NOISE_INTERVAL_S)
    out = []
    for hour, items in sorted(by_hour(noise).items()):
        span = HOUR_S
        if now is not None and hour <= now < hour + HOUR_S:
            span = max(now - hour, interval_s)
        expected = max(1, math.floor(span / interval_s + 1e-9))
        valid = [float(s.values["laeq"]) for s in items if not s.excluded]
        coverage = min(1.0, len(valid) / expected)
        if coverage < MIN_COVERAGE:
            laeq, reason = None, f"coverage {coverage:.0%} < {MIN_COVERAGE:.0%}: {len(valid)} of {expected}"
        else:
            laeq, reason = round(energy_mean(valid), 1), None
        out.append(HourNoise(hour, laeq, reason, len(valid), expected, round(coverage, 3)))
    return out


def period_of(hour: int, tz: ZoneInfo) -> str:
    local = datetime.fromtimestamp(hour, UTC).astimezone(tz).hour
    if 7 <= local < 19:
        return "day"
    if 19 <= local < 23:
        return "evening"
    return "night"


def day_evening_night(hourly: Mapping[int, float], tz_name: str = DEFAULT_TZ) -> dict:
    """Lday, Levening, Lnight and the Lden-style level over the given hourly LAeq values.

    A period's level is the energy mean of its hours; Lden needs all three periods, else it is
    None and `reason` names what is missing.
    """
    tz = ZoneInfo(tz_name)
    periods: dict[str, list[float]] = {"day": [], "evening": [], "night": []}
    for hour, level in hourly.items():
        if level is not None:
            periods[period_of(hour, tz)].append(level)
    levels = {name: energy_mean(values) for name, values in periods.items()}
    out = {
        "lday": _round(levels["day"]),
        "levening": _round(levels["evening"]),
        "lnight": _round(levels["night"]),
        "hours": {name: len(values) for name, values in periods.items()},
        "lden": None,
        "reason": None,
        "who_road_lden_db": WHO_ROAD_LDEN_DB,
        "who_road_lnight_db": WHO_ROAD_LNIGHT_DB,
    }
    missing = [name for name, level in levels.items() if level is None]
    if missing:
        out["reason"] = "no hours in: " + ", ".join(missing)
        return out
    out["lden"] = round(lden(levels["day"], levels["evening"], levels["night"]), 1)
    out["above_who_lden"] = out["lden"] > WHO_ROAD_LDEN_DB
    out["above_who_lnight"] = out["lnight"] > WHO_ROAD_LNIGHT_DB
    return out


def lden(lday: float, levening: float, lnight: float) -> float:
    energy = (
        PERIOD_HOURS["day"] * 10 ** (lday / 10)
        + PERIOD_HOURS["evening"] * 10 ** ((levening + EVENING_PENALTY_DB) / 10)
        + PERIOD_HOURS["night"] * 10 ** ((lnight + NIGHT_PENALTY_DB) / 10)
    )
    return 10 * math.log10(energy / 24)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
