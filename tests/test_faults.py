"""Faults injected into simulated sensors: reported in the heartbeat, the others go on, recovery
by itself when the fault clears, all without a restart (issue 4)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .conftest import by_sensor, start_daemon, write_config

NACK_SCHEDULE = """
[[simulation.faults]]
sensor = "bme280"
fault = "nack"
at_s = 2
for_s = 4
"""


def test_a_faulty_sensor_is_reported_the_others_go_on_and_it_recovers(
    tmp_path, broker, recorder_factory, daemons
):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text() + NACK_SCHEDULE)
    proc = start_daemon(config)
    daemons.append(proc)

    def bme280_states():
        return [h["sensors"]["bme280"] for h in rec.payloads("/heartbeat")]

    rec.wait_for(
        lambda: any(s["state"] == "fault" for s in bme280_states()), timeout=15, what="fault reported"
    )
    fault = next(s for s in bme280_states() if s["state"] == "fault")
    assert "121" in fault["error"] or "Remote I/O" in fault["error"], fault
    during = len(by_sensor(rec.readings())["host"])
    rec.wait_for(lambda: len(by_sensor(rec.readings())["host"]) >= during + 2, what="host goes on")
    rec.wait_for(lambda: bme280_states()[-1]["state"] == "ok", timeout=30, what="recovery")
    count = len(by_sensor(rec.readings())["bme280"])
    rec.wait_for(lambda: len(by_sensor(rec.readings())["bme280"]) > count, what="bme280 readings again")
    assert proc.poll() is None
    assert rec.invalid == []


def test_an_unknown_scheduled_fault_is_a_config_error(tmp_path, broker):
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text() + NACK_SCHEDULE.replace('"nack"', '"gremlins"'))
    result = subprocess.run(
        [sys.executable, "-m", "edge_node", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{config}: simulation.faults.0.fault: "
        "unknown fault 'gremlins' for bme280 (known: fog, nack, stuck, wrong_chip)"
    )


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="needs a machine without lgpio")
def test_a_sensor_that_cannot_be_built_is_a_fault_not_a_dead_node(
    tmp_path, broker, recorder_factory, daemons
):
    """lgpio missing (or no GPIO chip): the rain gauge reports why; the other sensors go on."""
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(
        config.read_text() + '[sensors.rain]\ndriver = "rain_gauge"\npin = 6\npin_factory = "lgpio"\n'
    )
    proc = start_daemon(config)
    daemons.append(proc)
    rec.wait_for(
        lambda: (
            rec.payloads("/heartbeat")
            and rec.payloads("/heartbeat")[-1]["sensors"]["rain"]["state"] == "fault"
        ),
        what="the rain gauge's fault",
    )
    rec.wait_seq(4)
    assert proc.poll() is None
