"""Heat stress from temperature and relative humidity: the heat index and the humidex.

- Heat index: the US National Weather Service's equation (NOAA Weather Prediction Center, "The
  Heat Index Equation", https://www.wpc.ncep.noaa.gov/html/heatindex_equation.shtml): Steadman's
  simple formula below 80 F, else the Rothfusz regression with its two humidity adjustments.
  Categories (NWS): caution from 80 F (26.7 C), extreme caution 90 F (32.2 C), danger 103 F
  (39.4 C), extreme danger 125 F (51.7 C).
- Humidex: Environment and Climate Change Canada's index (Masterton and Richardson, 1979,
  "Humidex: a method of quantifying human discomfort due to excessive heat and humidity"):
  T + 0.5555 (e - 10), e the vapour pressure in hPa at the dew point; the dew point from the
  Magnus formula with Alduchov and Eskridge's (1996) coefficients.
"""

from __future__ import annotations

import math

SOURCE = (
    "Heat index: NOAA/NWS Rothfusz regression (wpc.ncep.noaa.gov heat index equation); "
    "humidex: Masterton & Richardson 1979 (Environment and Climate Change Canada)"
)

# (lower limit in degrees C, category key), highest first.
HEAT_INDEX_CATEGORIES = (
    (51.7, "extreme_danger"),
    (39.4, "danger"),
    (32.2, "extreme_caution"),
    (26.7, "caution"),
)


def _f(celsius: float) -> float:
    return celsius * 9 / 5 + 32


def _c(fahrenheit: float) -> float:
    return (fahrenheit - 32) * 5 / 9


def heat_index_c(temperature_c: float, humidity_pct: float) -> float:
    t, rh = _f(temperature_c), min(max(humidity_pct, 0.0), 100.0)
    simple = 0.5 * (t + 61.0 + (t - 68.0) * 1.2 + rh * 0.094)
    if (simple + t) / 2 < 80.0:
        return round(_c(simple), 1)
    hi = (
        -42.379
        + 2.04901523 * t
        + 10.14333127 * rh
        - 0.22475541 * t * rh
        - 0.00683783 * t * t
        - 0.05481717 * rh * rh
        + 0.00122874 * t * t * rh
        + 0.00085282 * t * rh * rh
        - 0.00000199 * t * t * rh * rh
    )
    if rh < 13 and 80 <= t <= 112:
        hi -= ((13 - rh) / 4) * math.sqrt((17 - abs(t - 95)) / 17)
    elif rh > 85 and 80 <= t <= 87:
        hi += ((rh - 85) / 10) * ((87 - t) / 5)
    return round(_c(hi), 1)


def heat_category(heat_index: float) -> str | None:
    for lower, key in HEAT_INDEX_CATEGORIES:
        if heat_index >= lower:
            return key
    return None


def dew_point_c(temperature_c: float, humidity_pct: float) -> float:
    a, b = 17.625, 243.04
    gamma = math.log(max(humidity_pct, 0.1) / 100.0) + a * temperature_c / (b + temperature_c)
    return b * gamma / (a - gamma)


def humidex(temperature_c: float, humidity_pct: float) -> float:
    dew_k = dew_point_c(temperature_c, humidity_pct) + 273.15
    e = 6.11 * math.exp(5417.7530 * (1 / 273.16 - 1 / dew_k))
    return round(temperature_c + 0.5555 * (e - 10.0), 1)
