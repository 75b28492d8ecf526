"""The shape the city's indices read: one stored reading, reduced to what an index needs.

The indices (`eaqi`, `noise`, `heat`, `alerts`) are pure functions over these, so they are tested
on readings made in the test and computed the same way from the database (`city.views`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

HOUR_S = 3600

# Readings an index never averages: the sensor itself said the value is not a measurement of
# the air (DESIGN §4 flags). `high_humidity` is not here: those readings are corrected and counted.
EXCLUDING_FLAGS = frozenset({"warming_up", "stuck", "out_of_range"})


@dataclass(frozen=True)
class Sample:
    ts: float  # seconds since the epoch, UTC
    values: Mapping[str, float]
    quality: frozenset[str] = field(default_factory=frozenset)

    @property
    def excluded(self) -> bool:
        return not EXCLUDING_FLAGS.isdisjoint(self.quality)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hour_start(ts: float) -> int:
    return int(ts // HOUR_S) * HOUR_S


def by_hour(samples: Iterable[Sample]) -> dict[int, list[Sample]]:
    hours: dict[int, list[Sample]] = {}
    for sample in samples:
        hours.setdefault(hour_start(sample.ts), []).append(sample)
    return hours


def infer_interval_s(timestamps: Iterable[float], default: float) -> float:
    """A sensor's reading interval, from the median gap between its readings.

    The median holds while fewer than half the readings are missing, which is exactly where a
    coverage figure matters; with fewer than three readings there is nothing to infer from.
    """
    ordered = sorted(timestamps)
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False) if b > a]
    if len(gaps) < 2:
        return default
    return max(1.0, round(statistics.median(gaps)))


def energy_mean(levels: Iterable[float]) -> float | None:
    """The energy (logarithmic) mean of sound levels in dB: 10 lg(mean(10^(L/10)))."""
    powers = [10.0 ** (level / 10.0) for level in levels]
    if not powers:
        return None
    return 10.0 * math.log10(sum(powers) / len(powers))


def flag_counts(samples: Iterable[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in samples:
        for flag in sample.quality:
            counts[flag] = counts.get(flag, 0) + 1
    return dict(sorted(counts.items()))
