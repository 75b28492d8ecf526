"""What the map shows, from readings made here: states, bands, the city summary, the popup's day."""

from __future__ import annotations

from city import terrassa
from city.areas import Areas, parse_areas
from city.samples import HOUR_S, Sample, iso
from city.views import NodeDay, NodeInfo, map_view, node_day_view

NOW = 1_782_900_000 - 1_782_900_000 % HOUR_S + 40 * 60  # 40 minutes into an hour


def pm_day(node, pm2_5, *, hours=3, rh=50.0, last=NOW, state="online", lat=41.5636, lon=2.0111, **kw):
    samples = []
    t = last - hours * HOUR_S
    while t <= last:
        flags = frozenset({"high_humidity"}) if rh > 70 else frozenset()
        values = {
            "pm2_5": pm2_5 * 1.5,
            "pm10": pm2_5 * 2,
            "pm2_5_corrected": pm2_5,
            "pm10_corrected": pm2_5 * 1.4,
        }
        samples.append(Sample(t, values, flags))
        t += 60
    env = [Sample(last, {"temperature": 33.0, "humidity": 60.0, "pressure": 1010.0})]
    info = NodeInfo(node, lat, lon, "a street", state, kw.get("state_since"), last)
    return NodeDay(info, {"sds011": samples, "bme280": env})


def test_markers_carry_band_state_and_since():
    days = [
        pm_day("trs-001", 3.0),
        pm_day("trs-002", 60.0, rh=96.0),
        pm_day("trs-003", 3.0, last=NOW - 20 * 60),
        pm_day("trs-004", 3.0, state="offline", state_since=NOW - 300, last=NOW - 300),
        NodeDay(NodeInfo("trs-005")),
    ]
    view = map_view(days, NOW, Areas())
    by_node = {m["node"]: m for m in view["nodes"]}
    assert by_node["trs-001"]["band"] == "good" and by_node["trs-001"]["state"] == "live"
    assert by_node["trs-001"]["indicative"] is True
    fog = by_node["trs-002"]
    assert fog["band"] == "poor" and fog["humid_share"] == 1.0 and fog["colour"] == "#FF5050"
    stale = by_node["trs-003"]
    assert stale["state"] == "stale" and stale["since"] == iso(NOW - 20 * 60)
    offline = by_node["trs-004"]
    assert offline["state"] == "offline" and offline["since"] == iso(NOW - 300)
    assert by_node["trs-005"]["state"] == "no_data" and by_node["trs-005"]["band"] is None
    assert by_node["trs-005"]["reason"] == "no PM readings in the last two hours"
    assert by_node["trs-001"]["heat"]["heat_index"] > 33.0  # 33 C at 60 %RH feels hotter


def test_the_city_summary_counts_nodes_and_names_the_worst_areas():
    areas = parse_areas({"Nord": {"nodes": ["trs-1*"]}}, "alerts.toml: areas")
    days = [
        pm_day("trs-001", 3.0),
        pm_day("trs-101", 60.0),
        pm_day("trs-102", 20.0),
        pm_day("trs-003", 3.0, last=NOW - 3600),
    ]
    summary = map_view(days, NOW, areas)["summary"]
    assert summary["nodes"] == {"total": 4, "live": 3, "stale": 1, "offline": 0, "no_data": 0}
    assert summary["reporting"] == 3
    assert summary["worst_areas"][0] == {
        "area": "Nord",
        "band_index": 4,
        "band": "poor",
        "nodes": ["trs-101", "trs-102"],
    }
    assert summary["worst_areas"][1]["area"] == "Centre"  # the nearest of Terrassa's areas


def test_a_node_outside_the_listed_areas_falls_in_the_nearest_neighbourhood():
    lat, lon, site = terrassa.placement(4)
    assert Areas().area_of("x", lat, lon) == site.rsplit(", ", 1)[1]
    assert Areas().area_of("x", None, None) == "unplaced"


def test_every_simulated_node_stands_on_a_street_of_terrassa():
    spots = {terrassa.placement(i)[:2] for i in range(300)}
    assert len(spots) == 300  # no two on the same spot
    lats = [p[0] for p in spots]
    lons = [p[1] for p in spots]
    assert 41.54 < min(lats) and max(lats) < 41.59 and 1.98 < min(lons) and max(lons) < 2.04


def test_the_popup_day_has_5_minute_series_hours_and_flags():
    day = pm_day("trs-002", 60.0, rh=96.0, hours=30)
    out = node_day_view(day, NOW, Areas())
    assert set(out["series"]) >= {
        "pm2_5",
        "pm2_5_corrected",
        "pm10",
        "pm10_corrected",
        "temperature",
        "humidity",
    }
    assert len(out["series"]["pm2_5"]) == 289  # 24 h of 5-minute bins, on the clock's 5 minutes
    assert all(t % 300 == 0 for t, _ in out["series"]["pm2_5"])
    assert out["series"]["pm2_5_corrected"][0][1] == 60.0 and out["series"]["pm2_5"][0][1] == 90.0
    assert out["flags"] == {"high_humidity": 24 * 60 + 1}
    last = out["hours"][-1]
    assert last["band"] == "poor" and last["partial"] and last["running_24h"]["pm2_5"] == 60.0
