"""One seeded, reproducible weather model shared by all simulated sensors of a node.

`Environment.at(t)` is a pure function of the seed and the Unix time `t`: the same seed
and time give the same `Conditions` in any process, so simulated nodes, tests and
benchmarks are reproducible without storing state. Slow weather (fronts, rain events,
pollution episodes) comes from smooth value noise on a hashed lattice; the daily and
yearly cycles are deterministic; sensor-scale noise is hashed per 100 ms.

The defaults describe Terrassa (41.56 N, 2.01 E, Mediterranean climate). Pressure is
reduced to sea level (QNH), as weather services report it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

NOW_RESOLUTION_S = 0.1
_DAY_S = 86_400.0
_HOUR_S = 3_600.0
_YEAR_DAYS = 365.2422

# Noise channels: one independent stream each.
(
    _WARM,
    _WARM_FAST,
    _FRONT,
    _FRONT_FAST,
    _DEW,
    _STORM,
    _STORM_SLOW,
    _EPISODE,
    _COARSE,
    _WIND,
    _GUST,
    _GUST_FAST,
    _DIRECTION,
    _DIRECTION_FAST,
    _JITTER_T,
    _JITTER_RH,
    _JITTER_P,
    _JITTER_PM,
    _FINE,
    _JITTER_NOISE,
) = range(20)


@dataclass(frozen=True, slots=True)
class Conditions:
    """The environment at one instant, as a well-placed reference instrument would see it."""

    temperature_c: float
    humidity_rh: float
    pressure_hpa: float  # reduced to sea level
    pm2_5: float  # ug/m3
    pm10: float  # ug/m3
    rain_mm_h: float  # rain rate now
    wind_ms: float  # instantaneous, gusts included
    wind_dir_deg: float  # where the wind comes from, clockwise from north
    pm1: float = 0.0  # ug/m3, never above pm2_5
    noise_dba: float = 0.0  # street noise, LAeq over a few seconds, dB(A)


_MASK64 = (1 << 64) - 1


def _mix(z: int) -> int:
    """splitmix64's finaliser: a cheap, well-distributed 64-bit hash step."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@lru_cache(maxsize=16_384)
def _lattice(seed: int, channel: int, i: int) -> float:
    """A reproducible value, uniform in [-1, 1), for lattice point `i` of one channel."""
    z = _mix((seed + 0x9E3779B97F4A7C15) & _MASK64)
    z = _mix(z ^ channel)
    z = _mix(z ^ (i & _MASK64))
    return z / 2.0**63 - 1.0


def _bump(hour: float, centre: float, width: float) -> float:
    """A daily Gaussian bump in [0, 1], peaking at `centre` o'clock."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width) ** 2)


class Environment:
    """Weather for one node: diurnal and seasonal cycles, fronts, rain, pollution, wind."""

    def __init__(
        self,
        seed: int = 42,
        *,
        latitude: float = 41.56,
        longitude: float = 2.01,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.seed = seed
        self.latitude = latitude
        self.longitude = longitude
        self._clock = clock
        self._latest: tuple[float, Conditions] | None = None

    def now(self) -> Conditions:
        """The weather does not change within NOW_RESOLUTION_S: a BME280 read measures three times,
        and a node's sensors are read together, so they share one evaluation of the model."""
        t = self._clock()
        latest = self._latest
        if latest is None or abs(t - latest[0]) >= NOW_RESOLUTION_S:
            latest = self._latest = (t, self.at(t))
        return latest[1]

    def at(self, t: float) -> Conditions:
        day_of_year = (t / _DAY_S) % _YEAR_DAYS  # within a day of the calendar's
        season = math.cos(2 * math.pi * (day_of_year - 20.0) / _YEAR_DAYS)  # +1 mid-Jan, -1 mid-Jul
        solar_hour = (t / _HOUR_S + self.longitude / 15.0) % 24.0

        rain = self._rain(t, day_of_year)
        recent = (
            rain + 0.6 * self._rain(t - _HOUR_S, day_of_year) + 0.3 * self._rain(t - 3 * _HOUR_S, day_of_year)
        )
        wet = 1.0 - math.exp(-recent)  # 0 dry .. 1 soaked

        # Temperature: a mean of 15.5 C swinging from 7.5 (Jan) to 23.5 (Jul), days of
        # +-4..5 C around it, flattened and cooled by rain, plus multi-day anomalies.
        daily_half_range = (4.5 - 0.5 * season) * (1.0 - 0.6 * wet)
        temperature = (
            15.5
            - 8.0 * season
            + daily_half_range * self._diurnal(solar_hour, day_of_year)
            + 3.0 * self._smooth(_WARM, t, 3 * _DAY_S)
            + 1.0 * self._smooth(_WARM_FAST, t, 0.5 * _DAY_S)
            - 2.0 * wet
            + 0.03 * self._jitter(_JITTER_T, t)
        )

        # Humidity follows from a slowly varying dew point (Magnus formula): it falls as the
        # day warms and rises at night. Rain drives the air towards saturation.
        dew_point = 9.5 - 6.5 * season + 2.5 * self._smooth(_DEW, t, 2 * _DAY_S)
        dew_point += (temperature - dew_point) * 0.85 * wet
        dew_point = min(dew_point, temperature)
        humidity = 100.0 * math.exp(
            17.625 * dew_point / (243.04 + dew_point) - 17.625 * temperature / (243.04 + temperature)
        )
        humidity = min(100.0, max(0.0, humidity + 0.3 * self._jitter(_JITTER_RH, t)))

        # Pressure: fronts of several hPa over days, the semi-diurnal atmospheric tide
        # (maxima near 10:00 and 22:00 solar time).
        pressure = (
            1014.0
            + self._front(t)
            + 0.5 * math.cos(2 * math.pi * (solar_hour - 10.0) / 12.0)
            + 0.02 * self._jitter(_JITTER_P, t)
        )

        # Wind: an afternoon sea breeze on a variable background, stronger in storms,
        # with gusts of up to ~1.5x the mean over seconds.
        mean_wind = max(
            0.3,
            2.0 + 1.5 * _bump(solar_hour, 15.0, 3.0) + 1.2 * self._smooth(_WIND, t, 1.5 * _DAY_S) + 3.0 * wet,
        )
        wind = mean_wind * (
            1.0 + 0.35 * self._smooth(_GUST, t, 6.0) + 0.15 * self._smooth(_GUST_FAST, t, 1.5)
        )
        direction = (
            200.0
            + 70.0 * self._smooth(_DIRECTION, t, 10 * _HOUR_S)
            + 20.0 * self._smooth(_DIRECTION_FAST, t, 8.0)
        ) % 360.0

        # Particulate matter: a background with multi-day episodes, rush-hour peaks
        # (weaker at weekends), dispersed by wind and washed out by rain.
        civil_hour = self._civil_hour(t, day_of_year)
        weekend = (math.floor(t / _DAY_S) + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        traffic = (0.5 if weekend else 1.0) * (
            1.2 * _bump(civil_hour, 8.5, 1.3) + 0.9 * _bump(civil_hour, 19.5, 1.8)
        )
        pm2_5 = (
            (13.0 + 6.0 * self._smooth(_EPISODE, t, 4 * _DAY_S))
            * (1.0 + traffic)
            / (1.0 + 0.15 * mean_wind)
            * (1.0 - 0.7 * wet)
            * (1.0 + 0.03 * self._jitter(_JITTER_PM, t))
        )
        pm10 = pm2_5 * (1.6 + 0.2 * self._smooth(_COARSE, t, _DAY_S)) + 3.0 * traffic * (1.0 - wet)
        # PM1 is most of PM2.5 in urban air (combustion particles): 60-76 % of it here.
        pm1 = pm2_5 * (0.68 + 0.08 * self._smooth(_FINE, t, _DAY_S))

        # Street noise beside a city road: about 44 dB(A) at night, 58 in the day, 65-68 at rush
        # hour (the same traffic that makes the PM peaks), louder on wet roads (tyre spray) and in
        # wind (at the microphone); a second-to-second swing of +-1 dB.
        activity = (0.6 if weekend else 1.0) * _bump(civil_hour, 13.5, 4.5)
        noise = (
            44.0
            + 14.0 * activity
            + 5.0 * traffic
            + 4.0 * wet
            + 0.6 * max(0.0, mean_wind - 4.0)
            + 1.0 * self._jitter(_JITTER_NOISE, t)
        )

        return Conditions(
            temperature_c=temperature,
            humidity_rh=humidity,
            pressure_hpa=pressure,
            pm2_5=pm2_5,
            pm10=pm10,
            rain_mm_h=rain,
            wind_ms=max(0.0, wind),
            wind_dir_deg=direction,
            pm1=pm1,
            noise_dba=noise,
        )

    def _smooth(self, channel: int, t: float, period_s: float) -> float:
        """Smooth value noise in [-1, 1] with features about `period_s` apart."""
        x = t / period_s
        i = math.floor(x)
        f = x - i
        f = f * f * (3.0 - 2.0 * f)
        a = _lattice(self.seed, channel, i)
        return a + (_lattice(self.seed, channel, i + 1) - a) * f

    def _jitter(self, channel: int, t: float) -> float:
        """White noise in [-1, 1), constant over each 100 ms."""
        return _lattice(self.seed, channel, math.floor(t * 10.0))

    def _front(self, t: float) -> float:
        """Pressure anomaly in hPa: fronts passing every few days."""
        return 10.0 * self._smooth(_FRONT, t, 3.5 * _DAY_S) + 3.0 * self._smooth(_FRONT_FAST, t, 16 * _HOUR_S)

    def _rain(self, t: float, day_of_year: float) -> float:
        """Rain rate in mm/h: showers of hours when a storm passes, likelier under low
        pressure and in autumn (about 5 % of the time, some 600 mm a year)."""
        storm = (
            0.7 * self._smooth(_STORM, t, 5 * _HOUR_S)
            + 0.3 * self._smooth(_STORM_SLOW, t, 2 * _DAY_S)
            - self._front(t) / 40.0
        )
        threshold = 0.6 - 0.08 * math.cos(2 * math.pi * (day_of_year - 290.0) / _YEAR_DAYS)
        if storm <= threshold:
            return 0.0
        return 20.0 * (storm - threshold) ** 1.5

    def _diurnal(self, solar_hour: float, day_of_year: float) -> float:
        """The daily temperature cycle in [-1, 1]: minimum at sunrise, maximum at 14:30 solar time."""
        declination = math.radians(-23.44) * math.cos(2 * math.pi * (day_of_year + 10.0) / _YEAR_DAYS)
        cos_h0 = -math.tan(math.radians(self.latitude)) * math.tan(declination)
        sunrise = 12.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos_h0)))) / 15.0
        peak = 14.5
        if sunrise <= solar_hour < peak:
            return -math.cos(math.pi * (solar_hour - sunrise) / (peak - sunrise))
        return math.cos(math.pi * ((solar_hour - peak) % 24.0) / (24.0 - (peak - sunrise)))

    @staticmethod
    def _civil_hour(t: float, day_of_year: float) -> float:
        """Local clock time in Spain: CET, CEST from about the last Sunday of March to
        the last Sunday of October (good to a few days, enough for rush hours)."""
        offset = 2.0 if 87.0 <= day_of_year < 300.0 else 1.0
        return (t / _HOUR_S + offset) % 24.0
