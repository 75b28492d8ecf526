"""The city's indices on readings made here: EAQI band edges, coverage, fog; noise; heat."""

from __future__ import annotations

import math

import pytest

from city import eaqi, heat, noise
from city.samples import HOUR_S, Sample

T0 = 1_780_000_000 - 1_780_000_000 % HOUR_S  # the start of an hour (UTC)


def pm_hour(hour: int, pm2_5: float, pm10: float, *, n: int = 60, interval: int = 60, flags=(), rh=None):
    """n readings of one hour, each corrected (as the node publishes them) to the given values."""
    out = []
    for i in range(n):
        values = {"pm2_5": pm2_5 * 1.3, "pm10": pm10 * 1.3, "pm2_5_corrected": pm2_5, "pm10_corrected": pm10}
        quality = set(flags)
        if rh is not None and rh > 70:
            quality.add("high_humidity")
        out.append(Sample(hour + i * interval, values, frozenset(quality)))
    return out


@pytest.mark.parametrize(
    ("pollutant", "value", "band"),
    [
        ("pm2_5", 0.0, "good"),
        ("pm2_5", 5.0, "good"),
        ("pm2_5", 5.01, "fair"),
        ("pm2_5", 15.0, "fair"),
        ("pm2_5", 15.01, "moderate"),
        ("pm2_5", 50.0, "moderate"),
        ("pm2_5", 50.01, "poor"),
        ("pm2_5", 90.0, "poor"),
        ("pm2_5", 90.01, "very_poor"),
        ("pm2_5", 140.0, "very_poor"),
        ("pm2_5", 140.01, "extremely_poor"),
        ("pm10", 15.0, "good"),
        ("pm10", 15.01, "fair"),
        ("pm10", 45.0, "fair"),
        ("pm10", 45.01, "moderate"),
        ("pm10", 120.0, "moderate"),
        ("pm10", 120.01, "poor"),
        ("pm10", 195.0, "poor"),
        ("pm10", 195.01, "very_poor"),
        ("pm10", 270.0, "very_poor"),
        ("pm10", 270.01, "extremely_poor"),
        ("pm10", 5000.0, "extremely_poor"),
    ],
)
def test_band_edges_follow_the_eea_2024_table(pollutant, value, band):
    assert eaqi.band_for(pollutant, value).key == band


def test_a_negative_or_nan_concentration_is_refused():
    with pytest.raises(ValueError, match="pm2_5"):
        eaqi.band_for("pm2_5", -1.0)
    with pytest.raises(ValueError):
        eaqi.band_for("pm10", math.nan)


def test_the_node_band_is_the_worse_pollutant_from_the_corrected_hourly_mean():
    (hour,) = eaqi.hourly_index(pm_hour(T0, 4.0, 50.0), interval_s=60)
    assert hour.band == "moderate" and hour.driver == "pm10"
    assert hour.means == {"pm2_5": 4.0, "pm10": 50.0}  # corrected, not the raw 1.3x
    assert hour.indicative and hour.coverage == 1.0 and hour.reason is None


def test_flagged_readings_are_left_out_of_the_mean():
    samples = pm_hour(T0, 10.0, 20.0, n=50)
    samples += pm_hour(T0 + 50 * 60, 400.0, 900.0, n=10, flags={"stuck"})
    (hour,) = eaqi.hourly_index(samples, interval_s=60)
    assert hour.excluded == 10 and hour.valid == 50
    assert hour.means["pm2_5"] == 10.0 and hour.band == "fair"


def test_an_hour_under_75_percent_of_its_expected_readings_has_no_band_and_says_why():
    (short,) = eaqi.hourly_index(pm_hour(T0, 10.0, 20.0, n=44), interval_s=60)
    assert short.band is None
    assert short.reason == "coverage 73% < 75%: 44 valid of 60 expected readings"
    (enough,) = eaqi.hourly_index(pm_hour(T0, 10.0, 20.0, n=45), interval_s=60)
    assert enough.band == "fair" and enough.coverage == 0.75


def test_warming_up_readings_count_against_coverage():
    samples = pm_hour(T0, 10.0, 20.0, n=40) + pm_hour(T0 + 2400, 10.0, 20.0, n=20, flags={"warming_up"})
    (hour,) = eaqi.hourly_index(samples, interval_s=60)
    assert hour.band is None and "40 valid of 60" in hour.reason


def test_an_hour_of_only_flagged_readings_names_the_flags():
    (hour,) = eaqi.hourly_index(pm_hour(T0, 10.0, 20.0, flags={"out_of_range"}), interval_s=60)
    assert hour.band is None and hour.reason == "no valid readings (60 flagged out_of_range)"


def test_a_foggy_hour_is_banded_on_the_corrected_pm_and_says_how_humid_it_was():
    # Fog: the raw counts read water (x1.3 here); the corrected value is what is banded, and
    # the hour carries the share of readings taken above 70 %RH.
    samples = pm_hour(T0, 12.0, 30.0, n=45, rh=96) + pm_hour(T0 + 2700, 12.0, 30.0, n=15, rh=60)
    (hour,) = eaqi.hourly_index(samples, interval_s=60)
    assert hour.band == "fair"
    assert hour.humid_share == 0.75
    assert hour.indicative


def test_a_reading_without_a_correction_is_used_raw_and_counted():
    samples = [Sample(T0 + i * 60, {"pm2_5": 3.0, "pm10": 8.0}) for i in range(60)]
    (hour,) = eaqi.hourly_index(samples, interval_s=60)
    assert hour.band == "good" and hour.uncorrected == 60


def test_the_interval_is_inferred_from_the_readings():
    samples = pm_hour(T0, 3.0, 8.0, n=12, interval=300)
    (hour,) = eaqi.hourly_index(samples)
    assert hour.expected == 12 and hour.band == "good"


def test_the_hour_in_progress_counts_coverage_on_its_elapsed_part():
    samples = pm_hour(T0, 3.0, 8.0, n=20)
    (hour,) = eaqi.hourly_index(samples, interval_s=60, now=T0 + 20 * 60 + 5)
    assert hour.partial and hour.expected == 20 and hour.band == "good"
    assert eaqi.current([hour], now=T0 + 20 * 60 + 5) is hour


def test_a_24_hour_running_mean_needs_18_hours():
    samples = []
    for h in range(24):
        samples += pm_hour(T0 + h * HOUR_S, 10.0 + h, 20.0, n=60 if h >= 6 else 10)
    hours = eaqi.hourly_index(samples, interval_s=60)
    assert hours[-2].running_24h == {}  # 17 hours with a band
    assert hours[-1].running_24h == {
        "pm2_5": round(sum(10.0 + h for h in range(6, 24)) / 18, 2),
        "pm10": 20.0,
    }


def test_the_current_band_is_none_when_the_node_has_been_silent_for_hours():
    hours = eaqi.hourly_index(pm_hour(T0, 3.0, 8.0), interval_s=60)
    assert eaqi.current(hours, now=T0 + 3 * HOUR_S) is None


def test_hourly_laeq_is_an_energy_mean():
    samples = [Sample(T0 + i * 60, {"laeq": 60.0 if i % 2 else 70.0}) for i in range(60)]
    (hour,) = noise.hourly_laeq(samples, interval_s=60)
    assert hour.laeq == round(10 * math.log10((10**6 + 10**7) / 2), 1) == 67.4


def test_hourly_laeq_needs_coverage():
    samples = [Sample(T0 + i * 60, {"laeq": 60.0}) for i in range(30)]
    (hour,) = noise.hourly_laeq(samples, interval_s=60)
    assert hour.laeq is None and "30 of 60" in hour.reason


def test_lden_of_a_constant_level_is_6_4_db_above_it():
    assert round(noise.lden(60.0, 60.0, 60.0), 1) == 66.4


def test_day_evening_night_use_local_time_and_the_who_values():
    # 2026-07-01 in Terrassa is UTC+2: 07:00 local is 05:00 UTC.
    start = 1_782_864_000  # 2026-07-01T00:00:00Z
    hourly = {
        start + h * HOUR_S: (65.0 if 5 <= h < 17 else 62.0 if 17 <= h < 21 else 50.0) for h in range(24)
    }
    out = noise.day_evening_night(hourly, "Europe/Madrid")
    assert (out["lday"], out["levening"], out["lnight"]) == (65.0, 62.0, 50.0)
    assert out["hours"] == {"day": 12, "evening": 4, "night": 8}
    assert out["lden"] == round(noise.lden(65.0, 62.0, 50.0), 1)
    assert out["who_road_lden_db"] == 53.0 and out["above_who_lden"] and out["above_who_lnight"]


def test_lden_needs_every_period():
    out = noise.day_evening_night({1_782_864_000 + 8 * HOUR_S: 60.0})
    assert out["lden"] is None and out["reason"] == "no hours in: evening, night"


@pytest.mark.parametrize(
    ("t_f", "rh", "hi_f"),
    # NWS heat index chart (rounded to whole degrees F there).
    [(90, 60, 100), (96, 50, 108), (80, 40, 80), (104, 55, 137), (86, 90, 105)],
)
def test_heat_index_matches_the_nws_chart(t_f, rh, hi_f):
    hi_c = heat.heat_index_c((t_f - 32) * 5 / 9, rh)
    assert abs(hi_c * 9 / 5 + 32 - hi_f) <= 1.0


def test_heat_index_categories():
    assert heat.heat_category(25.0) is None
    assert heat.heat_category(30.0) == "caution"
    assert heat.heat_category(40.0) == "danger"


def test_humidex_matches_environment_canada_table():
    # Masterton and Richardson's worked example: 30 C air with a dew point of 15 C -> humidex 34;
    # dry air adds nothing beyond the 10 hPa the formula subtracts.
    for t, dew, expected in [(30.0, 15.0, 34), (25.0, 7.0, 25)]:
        rh = 100 * math.exp(17.625 * dew / (243.04 + dew)) / math.exp(17.625 * t / (243.04 + t))
        assert round(heat.humidex(t, rh)) == expected
