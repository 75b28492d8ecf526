"""Provisioning's `detect` and `selftest` on simulated nodes, and detect's hardware path without hardware.

Detection runs the drivers' own probes on a `SimulatedNode` built at the lowest layer; the
self-test builds the drivers from a config as the daemon does. Listening and spacing are short
to keep the file quick.
"""

from __future__ import annotations

import threading
import time

import pytest

from edge_node.config import parse_config
from provisioning.detect import SimulatedNode, detect
from provisioning.report import Report
from provisioning.selftest import selftest
from sensors import components

LISTEN_S = 0.6  # at the simulated technician's 3 tips and 6 turns a second: >= 1 tip, >= 2 pulses


def _node(**knobs) -> SimulatedNode:
    """A simulated node whose SDS011 reports five times a second, for tests not about it."""
    return SimulatedNode(**{"sds011_frame_s": 0.2, **knobs})


def _report() -> Report:
    return Report(node="trs-test", config_hash="0" * 16)


def _checks(report: Report) -> dict:
    return {c.name: c for c in report.checks}


def _sim_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("sim-", "selftest:"))]


# -- detect ---------------------------------------------------------------------------------------


def test_simulated_detection_finds_all_five_and_cleans_up():
    node = SimulatedNode(seed=7)
    report = _report()
    found = detect(report, simulate=node, listen_s=LISTEN_S)

    assert found == {
        "bme280": {"driver": "bme280", "bus": "sim", "address": 0x76},
        "sds011": {"driver": "sds011", "port": "sim"},
        "rain": {"driver": "rain_gauge", "pin": 6, "pin_factory": "sim"},
        "wind": {"driver": "anemometer", "pin": 5, "pin_factory": "sim"},
        "host": {"driver": "pi_health", "root": "sim"},
    }
    checks = _checks(report)
    assert list(checks) == [f"detect.{component.name}" for component in components().values()]
    assert report.result == "PASS", [c.detail for c in report.checks]
    assert checks["detect.bme280"].measured["chip_id"] == "0x60"
    assert checks["detect.bme280"].measured["address"] == "0x76"
    assert set(checks["detect.bme280"].measured["values"]) == {"temperature", "humidity", "pressure"}
    assert checks["detect.sds011"].measured["firmware"] == "18-11-16"
    assert checks["detect.sds011"].measured["device_id"] == "A1B2"
    assert checks["detect.rain"].measured["tips"] >= 1
    assert checks["detect.wind"].measured["pulses"] >= 2
    assert "load1" in checks["detect.host"].measured
    # detect started the node, so detect stopped it: no simulator left running, no files left.
    assert not node.started
    assert not node.host_root.exists()
    assert _sim_threads() == []


def test_simulate_true_builds_and_removes_its_own_node():
    report = _report()
    found = detect(report, simulate=True, pins={}, listen_s=0)
    assert set(found) == {"bme280", "sds011", "host"}
    assert report.result == "PASS"
    assert _sim_threads() == []


def test_missing_sensors_each_fail_with_a_clear_line():
    node = _node(bme280_chip_id=None, sds011=False, rain_hz=0, host=False)
    report = _report()
    found = detect(report, simulate=node, listen_s=LISTEN_S)

    assert found == {"wind": {"driver": "anemometer", "pin": 5, "pin_factory": "sim"}}
    checks = _checks(report)
    assert checks["detect.bme280"].result == "FAIL"
    assert checks["detect.bme280"].detail.startswith("no BME280: nothing answers at 0x76 or 0x77 on sim")
    assert checks["detect.sds011"].result == "FAIL"
    assert checks["detect.sds011"].detail.startswith("no SDS011: nothing answers on")
    assert checks["detect.rain"].result == "FAIL"
    assert checks["detect.rain"].detail == f"no pulses on GPIO6 in {LISTEN_S:g} s: tip the bucket"
    assert checks["detect.rain"].measured["tips"] == 0
    assert checks["detect.wind"].result == "PASS"
    assert checks["detect.host"].result == "FAIL"
    assert "proc/loadavg" in checks["detect.host"].detail


def test_no_pulses_on_the_anemometer_pin_fails():
    node = _node(pins={"wind": 5}, wind_hz=0)  # nobody turns the cups
    report = _report()
    found = detect(report, simulate=node, pins={"wind": 5}, listen_s=LISTEN_S)
    check = _checks(report)["detect.wind"]
    assert "wind" not in found
    assert check.result == "FAIL"
    assert check.detail == f"no pulses on GPIO5 in {LISTEN_S:g} s: turn the anemometer"


def test_anemometer_wired_to_another_pin_gives_no_pulses():
    node = _node(pins={"wind": 13})
    report = _report()
    detect(report, simulate=node, pins={"wind": 5}, listen_s=LISTEN_S)
    assert _checks(report)["detect.wind"].detail.startswith("no pulses on GPIO5")


def test_a_bmp280_is_found_but_wrong():
    report = _report()
    found = detect(report, simulate=_node(bme280_chip_id=0x58), pins={}, listen_s=0)
    check = _checks(report)["detect.bme280"]
    assert "bme280" not in found
    assert check.result == "FAIL"
    assert check.detail == "BMP280 (chip id 0x58) at 0x76: no humidity; a BME280 is needed"
    assert check.measured["candidates"][0]["chip_id"] == "0x58"


def test_a_bme280_at_0x77_is_found_there():
    report = _report()
    found = detect(report, simulate=_node(bme280_address=0x77), pins={}, listen_s=0)
    assert found["bme280"] == {"driver": "bme280", "bus": "sim", "address": 0x77}


def test_a_nacking_bme280_fails_naming_the_error():
    report = _report()
    found = detect(report, simulate=_node(bme280_nack=True), pins={}, listen_s=0)
    check = _checks(report)["detect.bme280"]
    assert "bme280" not in found
    assert check.result == "FAIL"
    assert "0x76" in check.detail and "Remote I/O error" in check.detail


def test_hardware_path_without_hardware_says_what_is_missing(tmp_path):
    report = _report()
    absent = str(tmp_path / "ttyNone")
    found = detect(report, i2c_buses=(99,), serial_ports=[absent], pins={}, listen_s=0)
    checks = _checks(report)
    assert checks["detect.bme280"].result == "FAIL"
    assert "no /dev/i2c-99: enable I2C" in checks["detect.bme280"].detail
    assert checks["detect.sds011"].result == "FAIL"
    assert f"no serial port at {absent}" in checks["detect.sds011"].detail
    assert checks["detect.host"].result == "PASS"  # any Linux has /proc
    assert found == {"host": {"driver": "pi_health", "root": "/"}}


def test_unknown_pulse_sensor_is_refused():
    with pytest.raises(ValueError, match="unknown pulse sensor"):
        detect(_report(), simulate=True, pins={"rain": 6, "snow": 7})


# -- selftest -------------------------------------------------------------------------------------

SENSORS = {
    "bme280": '[sensors.bme280]\ndriver = "bme280"\nbus = "sim"\n',
    "sds011": '[sensors.sds011]\ndriver = "sds011"\nport = "sim"\nduty = { on_s = 30, off_s = 270 }\n',
    "rain": '[sensors.rain]\ndriver = "rain_gauge"\npin = 6\npin_factory = "sim"\n',
    "wind": '[sensors.wind]\ndriver = "anemometer"\npin = 5\npin_factory = "sim"\n',
    "host": '[sensors.host]\ndriver = "pi_health"\nroot = "sim"\n',
}


def _config(tmp_path, sensors=tuple(SENSORS), faults: str = ""):
    text = (
        '[node]\nid = "trs-test"\n[broker]\nurl = "mqtt://127.0.0.1:1883"\n'
        f'[buffer]\npath = "{tmp_path / "state" / "buffer.db"}"\n'
        + "".join(SENSORS[name] for name in sensors)
        + faults
    )
    return parse_config(text, source="config.toml")


def test_selftest_passes_a_healthy_simulated_node_in_parallel(tmp_path):
    report = _report()
    started = time.monotonic()
    selftest(_config(tmp_path), report, reads=3, spacing_s=0.5)
    elapsed = time.monotonic() - started

    checks = _checks(report)
    assert list(checks) == [f"selftest.{name}" for name in SENSORS]
    assert report.result == "PASS", [c.detail for c in report.checks]
    assert set(checks["selftest.bme280"].measured["values"]) == {"temperature", "humidity", "pressure"}
    assert checks["selftest.bme280"].measured["reads"] == 3
    # The duty-cycled SDS011 ran continuously for the test: every read gave a reading.
    assert checks["selftest.sds011"].measured["reads"] == 3
    assert set(checks["selftest.sds011"].measured["values"]) == {"pm2_5", "pm10"}
    assert set(checks["selftest.rain"].measured["values"]) == {"rain", "rain_total"}
    assert "load1" in checks["selftest.host"].measured["values"]
    # Five sensors x 3 reads: about the SDS011's three frames (a second apart), not the sum.
    assert elapsed < 6.0, elapsed
    assert _sim_threads() == []


def test_selftest_fails_a_stuck_bme280_naming_stuck(tmp_path):
    faults = '[[simulation.faults]]\nsensor = "bme280"\nfault = "stuck"\nat_s = 0\n'
    report = _report()
    selftest(_config(tmp_path, ("bme280", "host"), faults), report, reads=5, spacing_s=0.05)
    checks = _checks(report)
    check = checks["selftest.bme280"]
    assert check.result == "FAIL"
    assert check.detail.startswith("stuck: temperature=")
    assert check.detail.endswith("in all 5 reads")
    assert checks["selftest.host"].result == "PASS"  # the fault stays in its sensor


def test_selftest_stuck_needs_no_driver_flag(tmp_path):
    """Three identical reads of a noisy sensor are stuck, before the driver's own flag (five) rises."""
    faults = '[[simulation.faults]]\nsensor = "bme280"\nfault = "stuck"\n'
    report = _report()
    selftest(_config(tmp_path, ("bme280",), faults), report, reads=3, spacing_s=0.05)
    assert report.checks[0].detail.endswith("in all 3 reads")


def test_selftest_fails_a_nacking_bme280_naming_the_error(tmp_path):
    faults = '[[simulation.faults]]\nsensor = "bme280"\nfault = "nack"\n'
    report = _report()
    selftest(_config(tmp_path, ("bme280",), faults), report, reads=3, spacing_s=0.05)
    check = report.checks[0]
    assert check.name == "selftest.bme280"
    assert check.result == "FAIL"
    assert check.detail.startswith("fault: ")
    assert "Remote I/O error" in check.detail and "0x76" in check.detail


def test_selftest_faults_later_than_zero_are_not_played(tmp_path):
    faults = '[[simulation.faults]]\nsensor = "bme280"\nfault = "nack"\nat_s = 60\n'
    report = _report()
    selftest(_config(tmp_path, ("bme280",), faults), report, reads=3, spacing_s=0.05)
    assert report.result == "PASS"


def test_selftest_fails_a_vanished_sds011(tmp_path):
    faults = '[[simulation.faults]]\nsensor = "sds011"\nfault = "vanish"\n'
    report = _report()
    selftest(_config(tmp_path, ("sds011",), faults), report, reads=3, spacing_s=0.05)
    check = report.checks[0]
    assert check.result == "FAIL"
    assert check.detail.startswith("fault: SensorNotFound: no serial port at")
    assert _sim_threads() == []
