"""Alert rules on stored readings: a simulated storm and a simulated heat wave; hysteresis and
minimum duration, so that one noisy reading never raises an alert; the rules file's errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from city import alerts
from city.alerts import NodeReadings, RulesError, load_rules, parse_rules
from city.samples import HOUR_S, Sample
from tests.city_support import ScriptedNode, batch, iso, start_ingest, stop, wait_count

T0 = 1_782_900_000 - 1_782_900_000 % HOUR_S  # 2026-07-01, an hour's start (UTC)

RULES = """
[settings]
step_s = 60
lookback_s = 43200

[areas."Centre"]
nodes = ["trs-00*"]

[areas."Les Arenes"]
box = [41.550, 2.020, 41.575, 2.035]

[[alert]]
id = "flash-flood"
title = "Flash flood risk"
kind = "rain"
window_s = 900
raise_at = 30.0
clear_at = 5.0
min_duration_s = 1200
clear_after_s = 1800

[[alert]]
id = "heat"
title = "Dangerous heat"
kind = "heat_index"
raise_at = 39.4
clear_at = 32.2
min_duration_s = 7200
clear_after_s = 3600

[[alert]]
id = "noise"
kind = "noise"
window_s = 3600
raise_at = 70.0
clear_at = 65.0
min_duration_s = 3700

[[alert]]
id = "air"
title = "Poor air"
kind = "eaqi"
raise_at = "poor"
clear_at = "moderate"
min_duration_s = 3600
"""


def rules(tmp_path):
    path = tmp_path / "alerts.toml"
    path.write_text(RULES)
    return load_rules(path)


def rain_node(node, minute_mm, minutes=12 * 60, lat=None, lon=None):
    """A rain gauge read every minute; minute_mm(m) is the rain in minute m."""
    return NodeReadings(node, lat, lon, [Sample(T0 + m * 60, {"rain": minute_mm(m)}) for m in range(minutes)])


def storm(m):
    # Dry, then a cloudburst at 2 mm/min (120 mm/h) from 6:00 to 6:40, then a drizzle.
    if 360 <= m < 400:
        return 2.0
    return 0.05 if 400 <= m < 460 else 0.0


def test_a_storm_raises_a_flash_flood_alert_naming_its_nodes_and_readings(tmp_path):
    city = rules(tmp_path)
    nodes = [rain_node("trs-001", storm), rain_node("trs-002", lambda m: 0.0)]
    during = T0 + 390 * 60
    (alert,) = [a for a in alerts.evaluate(city, nodes, now=during) if a.rule.id == "flash-flood"]
    assert alert.state == "active" and alert.area == "Centre"
    assert alert.nodes == ["trs-001"]
    # The 15-minute window first reaches 30 mm/h 4 minutes into the burst; raised 20 minutes later.
    assert alert.since == T0 + 363 * 60 and alert.raised_at == T0 + 383 * 60
    (reading,) = alert.readings
    assert reading["node"] == "trs-001" and reading["rain_mm"] == 30.0 and reading["readings"] == 15
    out = alert.as_dict()
    assert out["topic"] == "city/terrassa/alerts/centre/flash-flood"
    assert out["ends_when"] == "rain falls to 5 mm/h or less (over 15 min) for 30 min"
    assert out["summary"] == "120.0 mm/h"


def test_the_storm_alert_ends_only_after_the_rain_stayed_low_for_its_clear_time(tmp_path):
    city = rules(tmp_path)
    nodes = [rain_node("trs-001", storm)]
    # 6:40 the burst stops; then drizzle, 0.05 mm/min = 3 mm/h.
    still = [a for a in alerts.evaluate(city, nodes, now=T0 + 440 * 60) if a.rule.id == "flash-flood"]
    assert [a.state for a in still] == ["active"]
    (ended,) = [a for a in alerts.evaluate(city, nodes, now=T0 + 600 * 60) if a.rule.id == "flash-flood"]
    assert ended.state == "ended"
    # The burst's last reading (6:39) leaves the 15-minute window at 6:54; clear for 30 min after.
    assert ended.ended_at == T0 + (399 + 15 + 30) * 60


def test_one_noisy_rain_reading_never_raises_an_alert(tmp_path):
    city = rules(tmp_path)
    # A chattering contact: 20 mm in one minute, once. It holds the 15-minute window at 80 mm/h,
    # but only for those 15 minutes: shorter than the 20 the rule asks for.
    spike = rain_node("trs-001", lambda m: 20.0 if m == 300 else 0.0)
    for now in (T0 + 310 * 60, T0 + 330 * 60, T0 + 600 * 60):
        assert [a for a in alerts.evaluate(city, [spike], now=now) if a.rule.id == "flash-flood"] == []


def test_a_window_as_long_as_the_minimum_duration_is_refused():
    rule = {"id": "x", "kind": "rain", "raise_at": 30, "window_s": 900, "min_duration_s": 600}
    with pytest.raises(RulesError, match=r"min_duration_s: must be longer than window_s \(900\)"):
        parse_rules({"alert": [rule]})


def heat_node(node, temp_at, rh=45.0, hours=12, step=600):
    samples = []
    for i in range(hours * HOUR_S // step):
        t = T0 + i * step
        samples.append(Sample(t, {"temperature": temp_at(t), "humidity": rh, "pressure": 1013.0}))
    return NodeReadings(node, 41.56, 2.03, samples)  # in the Les Arenes box


def heat_wave(t):
    # 30 C, then 41 C from 2 h to 7 h (heat index ~44 C at 45 %RH), then 29 C.
    hour = (t - T0) / HOUR_S
    return 41.0 if 2 <= hour < 7 else 29.0 if hour >= 7 else 30.0


def test_a_heat_wave_raises_after_its_minimum_duration_and_ends_after_it_cooled(tmp_path):
    city = rules(tmp_path)
    node = heat_node("trs-101", heat_wave)
    before = [a for a in alerts.evaluate(city, [node], now=T0 + 3.5 * HOUR_S) if a.rule.id == "heat"]
    assert before == []  # 1.5 h over the threshold: not yet the 2 h it must hold
    (alert,) = [a for a in alerts.evaluate(city, [node], now=T0 + 5 * HOUR_S) if a.rule.id == "heat"]
    assert alert.state == "active" and alert.area == "Les Arenes" and alert.nodes == ["trs-101"]
    assert alert.readings[0]["temperature"] == 41.0 and alert.readings[0]["heat_index"] > 39.4
    assert alert.as_dict()["ends_when"] == "the heat index falls to 32.2 °C or less for 1 h"
    (ended,) = [a for a in alerts.evaluate(city, [node], now=T0 + 11 * HOUR_S) if a.rule.id == "heat"]
    assert ended.state == "ended" and ended.ended_at >= T0 + 8 * HOUR_S


def test_a_single_hot_reading_never_raises_a_heat_alert(tmp_path):
    city = rules(tmp_path)
    node = heat_node("trs-101", lambda t: 48.0 if t == T0 + 3 * HOUR_S else 28.0)
    assert [a for a in alerts.evaluate(city, [node], now=T0 + 10 * HOUR_S) if a.rule.id == "heat"] == []


def test_stuck_readings_are_not_evidence(tmp_path):
    city = rules(tmp_path)
    node = heat_node("trs-101", heat_wave)
    node.samples = [Sample(s.ts, s.values, frozenset({"stuck"})) for s in node.samples]
    assert [a for a in alerts.evaluate(city, [node], now=T0 + 6 * HOUR_S) if a.rule.id == "heat"] == []


def test_sustained_noise_raises_with_hysteresis(tmp_path):
    city = rules(tmp_path)

    # 75 dB(A) for 3 hours, then 68 (between clear_at and raise_at: the alert holds), then 55.
    def level(m):
        return 75.0 if 60 <= m < 240 else 68.0 if 240 <= m < 480 else 55.0

    node = NodeReadings("trs-004", None, None, [Sample(T0 + m * 60, {"laeq": level(m)}) for m in range(720)])
    (held,) = [a for a in alerts.evaluate(city, [node], now=T0 + 7 * HOUR_S) if a.rule.id == "noise"]
    assert held.state == "active"
    (ended,) = [a for a in alerts.evaluate(city, [node], now=T0 + 12 * HOUR_S) if a.rule.id == "noise"]
    assert ended.state == "ended"


def test_poor_air_for_an_hour_raises_the_air_alert(tmp_path):
    city = rules(tmp_path)
    samples = []
    for m in range(8 * 60):
        pm = 70.0 if 2 * 60 <= m < 5 * 60 else 8.0  # PM2.5 70: poor
        samples.append(
            Sample(T0 + m * 60, {"pm2_5": pm, "pm10": pm, "pm2_5_corrected": pm, "pm10_corrected": pm})
        )
    node = NodeReadings("trs-005", None, None, samples)
    (alert,) = [a for a in alerts.evaluate(city, [node], now=T0 + 4.5 * HOUR_S) if a.rule.id == "air"]
    assert alert.state == "active" and alert.readings[0]["band"] == "poor"
    assert alert.as_dict()["ends_when"] == "the air index is moderate or better for 0 s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[alert]]\nid = "x"\nkind = "hail"\nraise_at = 1',
            "alert[0] (x).kind: must be one of eaqi, rain, heat_index, noise",
        ),
        (
            '[[alert]]\nid = "x"\nkind = "rain"\nraise_at = 5\nclear_at = 9',
            "alert[0] (x).clear_at: must not be above raise_at",
        ),
        ('[[alert]]\nid = "x"\nkind = "eaqi"\nraise_at = "awful"', "alert[0] (x).raise_at: must be a band"),
        ('[[alert]]\nid = "x"\nkind = "rain"\nraise_at = "lots"', "alert[0] (x).raise_at: must be a number"),
        ('[[alert]]\nid = "x"\nkind = "rain"\nraise_at = 5\nwindow = 3', "alert[0] (x).window: unknown key"),
        ('[[alert]]\nid = "Bad Id"\nkind = "rain"\nraise_at = 5', "alert[0].id: must be"),
        ("[settings]\nstep_s = 1", "settings.step_s: must be >= 10"),
        ("[areas.C]\nbox = [1, 2]", "areas.C.box: must be [south, west, north, east]"),
        ("[[alert]\n", "not valid TOML"),
    ],
)
def test_a_bad_rules_file_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


# -- end to end: a storm sent by a node, stored by ingest, published retained by `edge-node alerts` --


def test_a_storm_sent_through_ingest_is_published_retained_per_area_and_alert(broker, tmp_path):

    dsn = f"sqlite:///{tmp_path / 'city.db'}"
    ingest = start_ingest(broker.url, dsn, log_path=tmp_path / "ingest.log")
    now = time.time()
    try:
        node = ScriptedNode(broker.port, node="trs-001")
        node.status(site="Rambla d'Ègara 12", lat=41.5636, lon=2.0089)
        # The last hour of a rain gauge read every minute: dry, then 2 mm a minute for 30 minutes.
        minutes = list(range(60, 0, -1))
        rain = [{"seq": i + 1, "ts": iso(now - m * 60), "values": {"rain": 2.0 if m <= 30 else 0.0},
                 "quality": []} for i, m in enumerate(minutes)]  # fmt: skip
        node.publish(
            f"{node.root}/reading/rain",
            batch("trs-001", rain, sensor="rain", units={"rain": "mm"}, backfill=True),
        )
        node.close()
        wait_count(dsn, "SELECT COUNT(*) FROM readings", 60)
    finally:
        stop(ingest)
    rules = tmp_path / "alerts.toml"
    rules.write_text(RULES)
    got: dict[str, dict] = {}
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-listener")
    listener.on_message = lambda c, u, m: got.__setitem__(m.topic, json.loads(m.payload))
    command = ["alerts", "--db", dsn, "--rules", str(rules), "--broker", broker.url]
    out = subprocess.run(
        [sys.executable, "-m", "edge_node", *command], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stderr  # an alert is active
    # 2 mm a minute is 120 mm/h; the evaluation runs a few seconds after the last reading, so its
    # 15-minute window may hold one reading fewer.
    assert re.search(r"^ACTIVE  Centre: Flash flood risk \((120|112)\.0 mm/h\) since ", out.stdout, re.M), (
        out.stdout
    )
    assert "nodes: trs-001; ends when rain falls to 5 mm/h or less (over 15 min) for 30 min" in out.stdout
    # Published retained: a subscriber that comes later still gets it.
    listener.connect("127.0.0.1", broker.port)
    listener.subscribe("city/terrassa/alerts/#", qos=1)
    listener.loop_start()
    deadline = time.monotonic() + 10
    while "city/terrassa/alerts/centre/flash-flood" not in got and time.monotonic() < deadline:
        time.sleep(0.05)
    listener.loop_stop()
    alert = got["city/terrassa/alerts/centre/flash-flood"]
    assert alert["state"] == "active" and alert["area"] == "Centre" and alert["nodes"] == ["trs-001"]
    assert alert["readings"][0]["node"] == "trs-001" and alert["readings"][0]["rain_mm"] in (28.0, 30.0)
    assert alert["ends_when"].startswith("rain falls to 5 mm/h")


def test_a_bad_rules_file_stops_alerts_with_one_line_and_exit_2(tmp_path):

    rules = tmp_path / "alerts.toml"
    rules.write_text('[[alert]]\nid = "x"\nkind = "rain"\nraise_at = 5\nclear_at = 9\n')
    command = ["alerts", "--db", f"sqlite:///{tmp_path}/c.db", "--rules", str(rules)]
    out = subprocess.run(
        [sys.executable, "-m", "edge_node", *command], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"edge-node alerts: {rules}: alert[0] (x).clear_at: must not be above raise_at (hysteresis: 9 > 5)"
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--tiles", "tiles.example/{z}"], "--tiles: must be an http(s) URL or a path with {z}/{x}/{y}"),
        (["--alerts", "missing.toml"], "missing.toml: cannot read: No such file or directory"),
    ],
)
def test_serve_refuses_a_bad_map_option_with_one_line_and_exit_2(tmp_path, option, message):
    command = ["serve", "--db", f"sqlite:///{tmp_path}/c.db", "--port", "0", *option]
    out = subprocess.run(
        [sys.executable, "-m", "edge_node", *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("edge-node serve: ") and message in line
