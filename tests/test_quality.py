"""Calibration and the humidity effect on PM, as the sampler applies them to every reading."""

from __future__ import annotations

import pytest

from edge_node.quality import (
    HIGH_HUMIDITY_RH,
    PM_CORRECTION_MODEL,
    NodeAir,
    growth_factor,
    refine,
    units_with_corrections,
)

from .conftest import start_daemon, write_config


def test_calibration_is_applied_and_recorded():
    cal = {"temperature": {"offset": -0.5, "slope": 1.0}, "humidity": {"offset": 0.0, "slope": 1.1}}
    result = refine({"temperature": 20.0, "humidity": 50.0, "pressure": 1000.0}, (), cal, NodeAir())
    assert result.values == {"temperature": 19.5, "humidity": 55.0, "pressure": 1000.0}
    assert result.meta == {"calibration": cal}


def test_no_calibration_no_meta():
    assert refine({"temperature": 20.0}, (), {}, NodeAir()).meta is None


def test_pm_above_70_rh_is_flagged_and_corrected_beside_the_raw_value():
    air = NodeAir()
    refine({"humidity": 85.0}, (), {}, air)
    result = refine({"pm2_5": 30.0, "pm10": 45.0}, (), {}, air)
    assert "high_humidity" in result.quality
    assert result.values["pm2_5"] == 30.0, "the raw value stays"
    assert result.values["pm2_5_corrected"] == round(30.0 / growth_factor(85.0), 1) < 30.0
    assert result.meta["pm_correction"] == {"model": PM_CORRECTION_MODEL, "humidity": 85.0}


def test_dry_air_is_corrected_a_little_and_not_flagged():
    air = NodeAir()
    refine({"humidity": 40.0}, (), {}, air)
    result = refine({"pm2_5": 30.0}, (), {}, air)
    assert "high_humidity" not in result.quality
    assert 20 < result.values["pm2_5_corrected"] < 30


def test_no_humidity_known_means_no_correction():
    result = refine({"pm2_5": 30.0}, (), {}, NodeAir())
    assert "pm2_5_corrected" not in result.values and result.meta is None


def test_a_stuck_or_implausible_humidity_is_not_used():
    air = NodeAir()
    refine({"humidity": 95.0}, ("stuck",), {}, air)
    assert air.current_humidity() is None


@pytest.mark.parametrize("rh", [0.0, 50.0, HIGH_HUMIDITY_RH, 99.0, 100.0])
def test_growth_factor_is_finite_and_at_least_one(rh):
    assert 1.0 <= growth_factor(rh) < 10


def test_units_name_the_corrected_values():
    assert units_with_corrections({"pm2_5": "ug/m3", "pm10": "ug/m3"}) == {
        "pm2_5": "ug/m3",
        "pm10": "ug/m3",
        "pm2_5_corrected": "ug/m3",
        "pm10_corrected": "ug/m3",
    }


def test_calibration_reaches_the_broker_in_meta(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    text = config.read_text().replace(
        'driver = "bme280"', 'driver = "bme280"\ncalibration = { temperature = { offset = -100 } }'
    )
    config.write_text(text)
    daemons.append(start_daemon(config))
    rec.wait_for(lambda: rec.payloads("/reading/bme280"), what="a bme280 reading")
    reading = rec.payloads("/reading/bme280")[0]["readings"][0]
    assert reading["values"]["temperature"] < -50
    assert reading["meta"] == {"calibration": {"temperature": {"offset": -100.0, "slope": 1.0}}}
    assert rec.invalid == []
