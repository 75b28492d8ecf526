"""A simulated node with the three sensors added through the registry (PMS5003, SHT4x, DNMS)
beside the standard ones: each delivers schema-valid readings with its units, the PMS5003's PM
gets the humidity correction from the node's humidity, and faults stay in their sensor."""

from __future__ import annotations

from .conftest import by_sensor, start_daemon, write_config

NEW_SENSORS = """
[sensors.pms5003]
driver = "pms5003"
port = "sim"
interval_s = 1

[sensors.sht4x]
driver = "sht4x"
bus = "sim"
interval_s = 1

[sensors.noise]
driver = "dnms"
bus = "sim"
interval_s = 2

[[simulation.faults]]
sensor = "sht4x"
fault = "fog"
at_s = 0

[[simulation.faults]]
sensor = "pms5003"
fault = "garbage"
at_s = 0

[[simulation.faults]]
sensor = "pms5003"
fault = "vanish"
at_s = 3
for_s = 3

[[simulation.faults]]
sensor = "noise"
fault = "bad_crc"
at_s = 0
"""


def test_the_new_sensors_deliver_flagged_corrected_and_through_faults(
    tmp_path, broker, recorder_factory, daemons
):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text() + NEW_SENSORS)
    proc = start_daemon(config)
    daemons.append(proc)

    def pms_states():
        return [h["sensors"]["pms5003"]["state"] for h in rec.payloads("/heartbeat")]

    rec.wait_for(lambda: "fault" in pms_states(), timeout=20, what="the unplugged PMS5003 reported")
    rec.wait_for(lambda: pms_states()[-1] in ("ok", "warming"), timeout=30, what="the PMS5003 back")
    count = len(by_sensor(rec.readings())["pms5003"])
    rec.wait_for(lambda: len(by_sensor(rec.readings())["pms5003"]) > count + 1, timeout=20, what="PM again")
    rec.wait_for(lambda: len(by_sensor(rec.readings())["noise"]) >= 3, timeout=40, what="noise levels")

    units = {name: rec.payloads(f"/reading/{name}")[-1]["units"] for name in ("pms5003", "sht4x", "noise")}
    assert units["pms5003"]["pm1"] == "ug/m3" and units["pms5003"]["n0_3"] == "count/0.1L"
    assert units["pms5003"]["pm1_corrected"] == "ug/m3"
    assert units["sht4x"] == {"temperature": "Cel", "humidity": "%RH"}
    assert set(units["noise"].values()) == {"dB(A)"}

    readings = by_sensor(rec.readings())
    pm = readings["pms5003"]
    assert all(0 <= r["values"]["pm1"] <= r["values"]["pm2_5"] <= r["values"]["pm10"] < 1000 for r in pm)
    assert "warming_up" in pm[0]["quality"], "just woken: the fan is not at speed"
    fogged = [r for r in pm if "high_humidity" in r["quality"]]
    assert fogged, "fog: PM above 70 %RH (the SHT4x's) is flagged"
    assert all("pm1_corrected" in r["values"] for r in fogged)
    assert all(r["values"]["humidity"] >= 95 for r in readings["sht4x"][2:]), "fog at the SHT4x"
    noise = readings["noise"]
    assert all(r["values"]["lamin"] <= r["values"]["laeq"] <= r["values"]["lamax"] for r in noise)
    assert len(readings["bme280"]) > 5, "the other sensors went on"
    assert proc.poll() is None
    assert rec.invalid == []
