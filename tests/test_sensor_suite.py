"""A node with all five simulated sensors: every one delivers, and faults stay in their sensor."""

from __future__ import annotations

from .conftest import by_sensor, start_daemon, write_config

FIVE_SENSORS = """
[sensors.sds011]
driver = "sds011"
port = "sim"
interval_s = 2

[sensors.rain]
driver = "rain_gauge"
pin = 6
pin_factory = "sim"
interval_s = 2

[sensors.wind]
driver = "anemometer"
pin = 5
pin_factory = "sim"
interval_s = 2
"""

SCHEDULE = """
[[simulation.faults]]
sensor = "sds011"
fault = "vanish"
at_s = 4
for_s = 5

[[simulation.faults]]
sensor = "sds011"
fault = "garbage"
at_s = 0

[[simulation.faults]]
sensor = "bme280"
fault = "fog"
at_s = 0
"""


def test_all_five_sensors_deliver_with_units(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text() + FIVE_SENSORS)
    daemons.append(start_daemon(config))
    names = {"bme280", "host", "sds011", "rain", "wind"}
    rec.wait_for(lambda: set(by_sensor(rec.readings())) == names, timeout=20, what="all five sensors")
    units = {b["sensor"]: b["units"] for b in rec.payloads("/reading/sds011") + rec.payloads("/reading/wind")}
    assert units["sds011"]["pm2_5"] == "ug/m3" and units["wind"]["wind_gust"] == "m/s"
    rec.wait_for(
        lambda: "laser_hours" in rec.payloads("/heartbeat")[-1]["sensors"]["sds011"],
        what="the SDS011's laser hours in the heartbeat",
    )
    assert rec.invalid == []


def test_sds011_garbage_unplug_and_fog_are_survived_and_flagged(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text() + FIVE_SENSORS + SCHEDULE)
    proc = start_daemon(config)
    daemons.append(proc)

    def sds011_states():
        return [h["sensors"]["sds011"]["state"] for h in rec.payloads("/heartbeat")]

    rec.wait_for(lambda: "fault" in sds011_states(), timeout=20, what="the unplugged SDS011 reported")
    rec.wait_for(lambda: sds011_states()[-1] in ("ok", "warming"), timeout=30, what="the SDS011 back")
    count = len(by_sensor(rec.readings())["sds011"])
    rec.wait_for(lambda: len(by_sensor(rec.readings())["sds011"]) > count + 1, timeout=20, what="PM again")

    pm = by_sensor(rec.readings())["sds011"]
    assert all(0 <= r["values"]["pm2_5"] < 1000 for r in pm), "no value from a garbled frame"
    fogged = [r for r in pm if "high_humidity" in r["quality"]]
    assert fogged, "fog: PM above 70 %RH is flagged"
    assert all(
        r["values"]["pm2_5_corrected"] < r["values"]["pm2_5"] for r in fogged if r["values"]["pm2_5"] > 1
    )
    assert fogged[-1]["meta"]["pm_correction"]["humidity"] >= 90
    assert len(by_sensor(rec.readings())["bme280"]) > 5, "the other sensors went on"
    assert proc.poll() is None
    assert rec.invalid == []
