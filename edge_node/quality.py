"""Data quality that needs more than one driver knows: calibration and the humidity effect on PM.

Each driver flags what its own datasheet and noise tell it (`out_of_range`, `stuck`,
`warming_up`). Here, in the sampler, the node adds what needs configuration or another sensor:
- the configured calibration (value * slope + offset), recorded in the reading's `meta`;
- PM readings above ~70 %RH flagged `high_humidity`: water uptake makes optical PM sensors
  overestimate, so a humidity-corrected PM is published *beside* the raw value, with the name of
  the correction model in `meta`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

HIGH_HUMIDITY_RH = 70.0
HUMIDITY_MAX_AGE_S = 900.0  # an older humidity reading no longer describes the air at the PM sensor

# Kappa-Koehler hygroscopic growth, as used to correct low-cost optical PM sensors (Crilley et al.
# 2018, Atmos. Meas. Tech. 11, 709; Di Antonio et al. 2018, Sensors 18, 2790):
#   PM_dry = PM_measured / (1 + (kappa / 1.65) / (100 / RH - 1))
# kappa 0.4 is a typical urban mixed aerosol; 1.65 is the assumed particle density (g/cm3).
PM_CORRECTION_MODEL = "kappa-koehler(k=0.4,rho=1.65)"
KAPPA = 0.4
DENSITY = 1.65
RH_CAP = 95.0  # the model diverges towards 100 %RH, where fog droplets are no longer aerosol
PM_VALUES = ("pm1", "pm2_5", "pm10")  # the SDS011 reports the last two, the PMS5003 all three


@dataclass
class QualityResult:
    values: dict[str, float]
    quality: tuple[str, ...]
    meta: dict | None


class NodeAir:
    """The latest humidity any sensor of this node reported, for the PM correction."""

    def __init__(self) -> None:
        self.humidity: float | None = None
        self.humidity_at = 0.0

    def observe(self, values: Mapping[str, float], quality: tuple[str, ...]) -> None:
        if "humidity" in values and "out_of_range" not in quality and "stuck" not in quality:
            self.humidity, self.humidity_at = values["humidity"], time.monotonic()

    def current_humidity(self) -> float | None:
        if self.humidity is None or time.monotonic() - self.humidity_at > HUMIDITY_MAX_AGE_S:
            return None
        return self.humidity


def units_with_corrections(units: Mapping[str, str]) -> dict[str, str]:
    """A driver's units plus those of the corrected values published beside the raw ones."""
    out = dict(units)
    for name in PM_VALUES:
        if name in units:
            out[f"{name}_corrected"] = units[name]
    return out


def growth_factor(rh: float) -> float:
    rh = min(rh, RH_CAP)
    return 1.0 + (KAPPA / DENSITY) / (100.0 / rh - 1.0) if rh > 0 else 1.0


def correct_pm(values: dict[str, float], flags: list[str], rh: float) -> dict:
    """Put the PM values corrected for humidity rh beside the raw ones and flag `high_humidity`
    above HIGH_HUMIDITY_RH (both in place); returns the reading's `meta["pm_correction"]`."""
    if rh > HIGH_HUMIDITY_RH and "high_humidity" not in flags:
        flags.append("high_humidity")
    factor = growth_factor(rh)
    for name in PM_VALUES:
        if name in values:
            values[f"{name}_corrected"] = round(values[name] / factor, 1)
    return {"model": PM_CORRECTION_MODEL, "humidity": rh}


def refine(
    values: Mapping[str, float],
    quality: tuple[str, ...],
    calibration: Mapping[str, Mapping[str, float]],
    air: NodeAir,
) -> QualityResult:
    out = dict(values)
    meta: dict = {}
    applied = {}
    for name, cal in calibration.items():
        if name in out:
            out[name] = round(out[name] * cal["slope"] + cal["offset"], 4)
            applied[name] = {"offset": cal["offset"], "slope": cal["slope"]}
    if applied:
        meta["calibration"] = applied
    flags = list(quality)
    if any(name in out for name in PM_VALUES):
        rh = air.current_humidity()
        if rh is not None:
            meta["pm_correction"] = correct_pm(out, flags, rh)
    air.observe(out, tuple(flags))
    return QualityResult(out, tuple(flags), meta or None)
