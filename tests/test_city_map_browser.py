"""The citizens' map as a person sees it, in a real browser (issue 15 point 4).

A simulated Terrassa runs end to end, every piece its real program in its own process: Mosquitto,
`edge-node ingest` into a database, `edge-node simulate` (real daemons on simulated sensors with
two hours of history, one node in fog), a second fleet of one node switched off once its history
is stored (offline), and `edge-node serve` with the map. Debian's Chromium, driven by Playwright
(`executable_path`: no browser download), loads the page and we check what is on the screen.
Screenshots go to test-artefacts/ (one of them is in the README).
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from operations.democity import SimulatedCity

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "test-artefacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GREY = "rgb(158, 158, 158)"

RULES = """
[[alert]]
id = "warm"
title = "Warm afternoon"
kind = "heat_index"
raise_at = -40.0
clear_at = -50.0
min_duration_s = 600
"""


def rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    return f"rgb({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)})"


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("city")
    with SimulatedCity(
        workdir, nodes=6, offline=1, fog=2, history_h=2, interval_s=60, rules=RULES
    ) as running:
        running.wait_history(timeout=120)
        yield running


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-GB")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert errors == []


def api(city, path: str) -> dict:
    with urllib.request.urlopen(city.url + path, timeout=10) as response:
        return json.load(response)


def load(page, city, query: str = "") -> None:
    page.goto(city.url + query)
    page.wait_for_selector("body[data-loaded=true]", timeout=15_000)


def test_every_node_has_a_marker_named_with_its_id_and_band_or_state(city, page):
    load(page, city)
    data = api(city, "api/map")
    markers = page.locator(".node-marker")
    assert markers.count() == 6 == len(data["nodes"])
    for node in data["nodes"]:
        marker = page.locator(f'.node-marker[data-node="{node["node"]}"]')
        name = marker.get_attribute("aria-label")
        assert name.startswith(f"Node {node['node']}: ")
        dot = marker.locator(".dot")
        if node["state"] == "live":
            assert node["band"], node
            band = next(b for b in data["bands"] if b["key"] == node["band"])
            assert f"{band['label']} ({node['band_index']}/6)" in name
            assert dot.evaluate("e => getComputedStyle(e).backgroundColor") == rgb(band["colour"])
            assert dot.inner_text() == str(node["band_index"])  # a label, not colour alone
        else:
            assert node["node"] == "gone-001" and node["state"] == "offline"
            assert "offline since" in name
            assert dot.evaluate("e => getComputedStyle(e).backgroundColor") == GREY
            assert dot.inner_text() == "×"
    assert page.get_by_role("button", name="Node gone-001: offline since").count() == 1
    ARTEFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "map.png"))


def test_the_summary_counts_nodes_and_shows_the_alert(city, page):
    load(page, city)
    assert page.inner_text("#reporting") == "5 of 6 nodes reporting; 0 stale, 1 offline."
    assert page.locator("#worst li").count() >= 1
    alerts = page.locator("#alerts li[data-alert=warm]")
    assert alerts.count() >= 1 and "Warm afternoon" in alerts.first.inner_text()
    named = {n for a in api(city, "api/map")["alerts"] for n in a["nodes"]}
    badged = {m.get_attribute("data-node") for m in page.locator(".node-marker:has(.alerting)").all()}
    assert badged == named and len(named) >= 5
    assert "Warm afternoon" in page.locator(f'.node-marker[data-node="{sorted(named)[0]}"]').get_attribute(
        "aria-label"
    )


def test_a_click_opens_the_last_hours_as_plots_with_the_band_colours_behind(city, page):
    load(page, city)
    fog = city.fog_node
    page.click(f'.node-marker[data-node="{fog}"]')
    popup = page.locator(f'.popup[data-node="{fog}"]')
    popup.locator("svg path.series").first.wait_for(timeout=15_000)
    series = {
        p.get_attribute("data-series"): int(p.get_attribute("data-points"))
        for p in popup.locator("svg path.series").all()
    }
    assert {"pm2_5 raw", "pm2_5 corrected", "pm10 raw", "pm10 corrected", "temperature", "humidity"} <= set(
        series
    )
    assert all(points >= 20 for points in series.values())  # two hours of 5-minute means
    assert popup.locator("svg rect.band").count() >= 2
    text = popup.inner_text()
    assert "100% of readings above 70 %RH" in text  # the fog node says so
    assert "high_humidity" in text  # its QC flags
    # The sound level meter's period levels (two hours of history: no Lden, which needs all three).
    assert any(period in text for period in ("Lday", "Levening", "Lnight"))
    page.wait_for_timeout(400)  # the popup's fade and pan
    page.screenshot(path=str(ARTEFACTS / "map-popup.png"))


def test_the_page_speaks_catalan_and_spanish_and_fits_a_phone(city, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        load(page, city, "?lang=ca")
        assert page.inner_text("#title") == "Qualitat de l'aire ara"
        assert "Bona" in page.inner_text("#legend")
        assert (
            page.locator('.node-marker[data-node="gone-001"]')
            .get_attribute("aria-label")
            .startswith("Node gone-001: desconnectat des de")
        )
        page.click("#langs button[data-lang=es]")
        assert page.inner_text("#title") == "Calidad del aire ahora"
        assert "Razonablemente buena" in page.inner_text("#legend")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing wider than the phone
        page.screenshot(path=str(ARTEFACTS / "map-phone-es.png"))
    finally:
        context.close()


def test_the_map_works_with_no_tile_server_and_no_internet(city, page):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    load(page, city)
    assert api(city, "api/config")["tiles"] is None
    assert page.locator(".leaflet-tile").count() == 0
    assert page.locator("path.leaflet-interactive, .leaflet-overlay-pane path").count() >= 10  # the streets
    assert all(url.startswith(city.url) or url.startswith("data:") for url in requests), requests


def test_the_page_holds_every_node_as_text_before_any_script_runs(city):
    with urllib.request.urlopen(city.url, timeout=10) as response:
        page = response.read().decode()
    for node in api(city, "api/map")["nodes"]:
        assert f'<li data-node="{node["node"]}">{node["node"]}: ' in page
    assert '<li data-node="gone-001">gone-001: offline since ' in page
    assert f'<li data-node="{city.fog_node}">{city.fog_node}: ' in page and "/6), indicative</li>" in page
