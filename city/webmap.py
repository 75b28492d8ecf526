"""The citizens' map on `edge-node serve`: the page at `/`, its assets, and the JSON it reads.

    GET /                      the map (Leaflet, shipped in city/static; no internet needed)
    GET /static/{file}         its assets
    GET /api/config            tile server (if any) and Terrassa's streets (drawn when no tiles)
    GET /api/map               every node's marker: band or state, the city summary, active alerts
    GET /api/nodes/{node}/day  one node's last 24 h: plots, hourly index, noise, heat, QC flags
    GET /api/alerts            the alerts of the city's rules file (`--alerts FILE`)

Options of `edge-node serve` added here: `--tiles URL` (an XYZ tile URL such as
`https://tile.openstreetmap.org/{z}/{x}/{y}.png` or a city's own tile server; without it the map
draws the streets it knows on a plain background), `--tiles-attribution TEXT`, `--alerts FILE`.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import mimetypes
import time
from importlib import resources
from pathlib import PurePosixPath

from aiohttp import web

from . import alerts as alert_rules
from . import eaqi, stored, terrassa
from .api import OPTIONS_KEY, POOL_KEY, Routes, node_param, param, query
from .areas import Areas
from .db import DatabaseError
from .samples import HOUR_S, hour_start
from .views import DAY_S, STALE_S, NodeDay, map_view, node_day_view

routes = Routes()
log = logging.getLogger("city.serve")
STATIC = resources.files("city") / "static"
HEAT_RECENT_S = 30 * 60
# Every citizen's page asks for the same map: it is computed at most once per this many seconds
# (readings arrive once a minute or so; a city of 300 nodes costs ~0.4 s of CPU to compute).
MAP_CACHE_S = 10.0


class MapCache:
    """The map's JSON, computed at most every MAP_CACHE_S and in the background once there is
    one: no citizen's page waits for it but the first after a start."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.body: bytes | None = None
        self.at = 0.0
        self._task: asyncio.Task | None = None

    async def compute(self, app: web.Application, options: dict) -> None:
        now = time.time()
        data = await query_app(app, map_data, options, now)
        self.body, self.at = json.dumps(data, ensure_ascii=False).encode(), now

    def refresh_soon(self, app: web.Application, options: dict) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh(app, options))

    async def _refresh(self, app: web.Application, options: dict) -> None:
        async with self.lock:
            try:
                await self.compute(app, options)
            except DatabaseError as err:  # the last map stands; the next request tries again
                log.warning("map not refreshed: %s", err)


async def query_app(app: web.Application, function, *args):
    """`function(db, conn, *args)` on the service's pool, outside a request."""
    return await app[POOL_KEY].run(function, *args)


def _options(request: web.Request) -> dict:
    return request.app.get(OPTIONS_KEY) or {}


# -- reading the database -----------------------------------------------------------------------


def _areas(options: dict) -> Areas:
    rules = options.get("rules")
    return rules.areas if rules is not None else Areas()


def evaluate_stored(db, conn, rules: alert_rules.Rules, now: float) -> list[alert_rules.Alert]:
    since = now - rules.history_s
    kinds = {rule.kind for rule in rules.rules}
    quantities = set()
    if "rain" in kinds:
        quantities.add("rain")
    if "noise" in kinds:
        quantities.add("laeq")
    if "heat_index" in kinds:
        quantities |= {"temperature", "humidity"}
    by_node = stored.value_readings(db, conn, since, quantities)
    if "eaqi" in kinds:
        for node, samples in stored.pm_readings(db, conn, since).items():
            by_node.setdefault(node, []).extend(samples)
    infos = {info.node: info for info in stored.node_infos(db, conn)}
    nodes = [
        alert_rules.NodeReadings(
            node,
            infos[node].lat if node in infos else None,
            infos[node].lon if node in infos else None,
            samples,
        )
        for node, samples in sorted(by_node.items())
    ]
    return alert_rules.evaluate(rules, nodes, now)


def map_data(db, conn, options: dict, now: float) -> dict:
    infos = stored.node_infos(db, conn)
    pm = stored.pm_readings(db, conn, hour_start(now) - HOUR_S)
    heat = stored.latest_values(db, conn, now - HEAT_RECENT_S, "temperature")
    days = []
    for info in infos:
        day = NodeDay(info, {"pm": pm.get(info.node, [])})
        if info.node in heat:
            day.by_sensor["env"] = [heat[info.node]]
        days.append(day)
    rules = options.get("rules")
    active = []
    if rules is not None:
        active = [a for a in options["alerts_cache"].get(db, conn, rules, now) if a["state"] == "active"]
    return map_view(days, now, _areas(options), active)


def day_data(db, conn, options: dict, node: str, now: float) -> dict | None:
    infos = stored.node_infos(db, conn, node)
    if not infos:
        return None
    # 47 h: the day shown, and the 23 hours before its first hour for the 24-hour running means.
    day = stored.node_day(db, conn, infos[0], now - DAY_S - 23 * HOUR_S)
    return node_day_view(day, now, _areas(options))


# -- routes -------------------------------------------------------------------------------------


def _json(data) -> web.Response:
    return web.json_response(data, dumps=lambda v: json.dumps(v, ensure_ascii=False))


@routes.get("/", summary="the citizens' map", content_type="text/html", in_openapi=False)
async def index(request: web.Request) -> web.Response:
    """The page, with every node's line already in it: the map's text alternative, readable with
    no script (the page redraws it in the reader's language)."""
    page = STATIC.joinpath("index.html").read_text()
    options = _options(request)
    cache = options.get("map_cache")
    if cache is not None and cache.body is None:
        async with cache.lock:
            if cache.body is None:
                await cache.compute(request.app, options)
    data = (
        json.loads(cache.body) if cache is not None else await query(request, map_data, options, time.time())
    )
    items = "".join(
        f'<li data-node="{html.escape(n["node"])}">{html.escape(node_line(n))}</li>' for n in data["nodes"]
    )
    body = page.replace("<!--NODE-LIST-->", items)
    return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-cache"})


def node_line(node: dict) -> str:
    """`trs-007: Fair (2/6), indicative` / `gone-001: offline since 2026-12-04T16:01:00Z`."""
    if node["state"] in ("offline", "stale"):
        return f"{node['node']}: {node['state']}" + (f" since {node['since']}" if node["since"] else "")
    if node["state"] == "no_data":
        return f"{node['node']}: no data yet"
    if not node["band"]:
        return f"{node['node']}: no band ({node['reason']})"
    label = next(b.label for b in eaqi.BANDS if b.key == node["band"])
    return f"{node['node']}: {label} ({node['band_index']}/6), indicative"


@routes.get("/static/{name:.+}", summary="the map's assets", in_openapi=False)
async def static(request: web.Request) -> web.Response:
    return _file_response(request.match_info["name"])


def _file_response(name: str) -> web.Response:
    parts = PurePosixPath(name).parts
    if not parts or any(part in ("..", "") or part.startswith(".") for part in parts):
        raise web.HTTPNotFound()
    target = STATIC.joinpath(*parts)
    if not target.is_file():
        raise web.HTTPNotFound()
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type == "text/html":
        headers = {"Cache-Control": "no-cache"}
    else:
        headers = {"Cache-Control": "public, max-age=3600"}
    return web.Response(body=target.read_bytes(), content_type=content_type, headers=headers)


@routes.get(
    "/api/config",
    summary="the map's settings: tile server (or none) and the streets drawn without tiles",
    response={"type": "object"},
)
async def map_config(request: web.Request) -> web.Response:
    options = _options(request)
    return _json(
        {
            "tiles": options.get("tiles"),
            "city": terrassa.CITY,
            "centre": terrassa.CENTRE,
            "streets": [{"name": s.name, "area": s.area, "axis": s.axis} for s in terrassa.STREETS],
            "stale_after_s": STALE_S,
        }
    )


@routes.get(
    "/api/map",
    summary="every node's current European Air Quality Index band (indicative) or state, "
    "the city summary and the active alerts",
    response={"$ref": "#/components/schemas/CityMap"},
)
async def city_map(request: web.Request) -> web.Response:
    options = _options(request)
    cache = options.get("map_cache")
    if cache is None:
        return _json(await query(request, map_data, options, time.time()))
    if cache.body is None:
        async with cache.lock:  # the first page after a start waits; those behind it share its result
            if cache.body is None:
                await cache.compute(request.app, options)
    elif time.time() - cache.at >= MAP_CACHE_S:
        cache.refresh_soon(request.app, options)  # this page gets the last map, the next a new one
    return web.Response(body=cache.body, content_type="application/json")


@routes.get(
    "/api/nodes/{node}/day",
    summary="one node's last 24 h: 5-minute series, hourly index, noise levels, heat index, QC flags",
    parameters=[param("node", "node id", where="path")],
    response={"type": "object"},
)
async def node_day(request: web.Request) -> web.Response:
    node = node_param(request, where="path")
    found = await query(request, day_data, _options(request), node, time.time())
    if found is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such node"}), content_type="application/json")
    return _json(found)


@routes.get(
    "/api/alerts",
    summary="the alerts of the city's rules file: active ones, and those ended within its lookback",
    response={"type": "array", "items": {"type": "object"}},
)
async def list_alerts(request: web.Request) -> web.Response:
    options = _options(request)
    rules = options.get("rules")
    if rules is None:
        return _json([])
    return _json(await query(request, options["alerts_cache"].get, rules, time.time()))


SCHEMAS = {
    "CityMap": {
        "type": "object",
        "properties": {
            "generated_at": {"type": "string", "format": "date-time"},
            "source": {"type": "string"},
            "bands": {"type": "array"},
            "nodes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "node": {"type": "string"},
                        "state": {"enum": ["live", "stale", "offline", "no_data"]},
                        "since": {"type": ["string", "null"]},
                        "band": {"type": ["string", "null"]},
                        "reason": {"type": ["string", "null"]},
                        "indicative": {"type": "boolean"},
                        "humid_share": {"type": ["number", "null"]},
                    },
                },
            },
            "summary": {"type": "object"},
            "alerts": {"type": "array"},
        },
    }
}
