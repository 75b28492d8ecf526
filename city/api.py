"""`edge-node serve`: the read-only JSON API over the city's database, with its OpenAPI description.

aiohttp serves it; database calls run in a small thread pool, each thread with its own
read-only connection (reopened when the database went away).

Adding routes (the map, the indices): a module listed in ROUTE_MODULES defines a module-level
`routes = Routes()` and decorates its handlers with `@routes.get(path, summary=..., ...)`;
`create_app` registers them and adds them to `/api/openapi.json`. Handlers reach the database
with `await query(request, function, *args)`, where `function(db, conn, *args)` runs in a thread.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from . import __doc__ as _package_doc
from . import queries
from .db import Database, DatabaseError

# Modules whose `routes` create_app registers, in order. The map adds its own here.
ROUTE_MODULES = ["city.api", "city.webmap"]

API_VERSION = "1"
NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
DB_KEY = web.AppKey("db", Database)
POOL_KEY = web.AppKey("pool", Any)
OPENAPI_KEY = web.AppKey("openapi", dict)
OPTIONS_KEY = web.AppKey("options", dict)  # what route modules were given (the map: tiles, alert rules)


class Routes:
    """Handlers and their OpenAPI operations, registered together."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, Callable, dict]] = []

    def get(
        self,
        path: str,
        *,
        summary: str,
        parameters: list[dict] | None = None,
        response: dict | None = None,
        content_type: str = "application/json",
        in_openapi: bool = True,
    ):
        def register(handler: Callable) -> Callable:
            operation = {
                "summary": summary,
                "operationId": handler.__name__,
                "parameters": parameters or [],
                "responses": {
                    "200": {"description": "OK", "content": {content_type: {"schema": response or {}}}},
                    "400": {"description": "a bad parameter, named in `error`"},
                    "503": {"description": "the database cannot be reached"},
                },
            }
            self.entries.append(("GET", path, handler, operation if in_openapi else {}))
            return handler

        return register


def param(name: str, description: str, *, where: str = "query", schema: dict | None = None) -> dict:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


class _Connections:
    """A read-only connection per pool thread."""

    def __init__(self, db: Database, threads: int = 4):
        self.db = db
        self.local = threading.local()
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="edge-node-serve-db")

    def _run(self, function: Callable, args: tuple):
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = self.db.open(read_only=True)
            try:
                try:
                    return function(self.db, conn, *args)
                finally:
                    if self.db.dialect == "postgresql" and not conn.closed:
                        conn.rollback()
            except self.db.errors as err:
                self.local.conn = None
                try:
                    conn.close()
                except self.db.errors:
                    pass
                if attempt == 2:
                    raise DatabaseError(str(err)) from err
        raise AssertionError("unreachable")

    async def run(self, function: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._run, function, args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def query(request: web.Request, function: Callable, *args):
    """`function(db, conn, *args)` on a pool thread; a database that is away is a 503."""
    try:
        return await request.app[POOL_KEY].run(function, *args)
    except DatabaseError as err:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": f"database unavailable: {err}"}), content_type="application/json"
        ) from err


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def time_param(request: web.Request, name: str) -> str | None:
    """An RFC 3339 time (or a date) from the query, normalised to the stored form."""
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return queries.normalise_time(value)
    except ValueError as err:
        raise bad_request(f"{name}: {err}") from None


def int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise bad_request(f"{name}: must be an integer from 1 to {maximum} (got {value!r})")
    return int(value)


def bool_param(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise bad_request(f"{name}: must be true or false (got {value!r})")
    return value in ("true", "1")


def node_param(request: web.Request, *, where: str = "query") -> str | None:
    value = request.match_info.get("node") if where == "path" else request.query.get("node")
    if value is not None and not NODE_ID.fullmatch(value):
        raise bad_request(f"node: not a node id (got {value!r})")
    return value


# -- the data API ---------------------------------------------------------------------------------

routes = Routes()
TIME_PARAMS = [
    param("from", "readings at or after this time (RFC 3339 or a date, UTC if no offset)"),
    param("to", "readings before this time"),
]
READING_SCHEMA = {"$ref": "#/components/schemas/Reading"}


@routes.get(
    "/api/nodes",
    summary="every node: location, site, state, last heartbeat, seq range, open gaps",
    response={"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
)
async def list_nodes(request: web.Request) -> web.Response:
    return web.json_response(await query(request, queries.nodes))


@routes.get(
    "/api/nodes/{node}",
    summary="one node",
    parameters=[param("node", "node id", where="path")],
    response={"$ref": "#/components/schemas/Node"},
)
async def get_node(request: web.Request) -> web.Response:
    found = await query(request, queries.nodes, node_param(request, where="path"))
    if not found:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such node"}), content_type="application/json")
    return web.json_response(found[0])


@routes.get(
    "/api/readings",
    summary="stored readings in time order, as the nodes sent them (the jsonl export's objects)",
    parameters=[
        *TIME_PARAMS,
        param("node", "only this node"),
        param("exclude_flagged", "leave out flagged readings", schema={"type": "boolean"}),
        param("limit", "at most this many (default 1000, max 10000)", schema={"type": "integer"}),
    ],
    response={"type": "array", "items": READING_SCHEMA},
)
async def list_readings(request: web.Request) -> web.Response:
    args = {
        "time_from": time_param(request, "from"),
        "time_to": time_param(request, "to"),
        "node": node_param(request),
        "exclude_flagged": bool_param(request, "exclude_flagged"),
        "limit": int_param(request, "limit", 1000, 10000),
    }
    rows = await query(request, lambda db, conn: list(queries.readings(db, conn, **args)))
    return web.json_response(rows)


@routes.get(
    "/api/latest",
    summary="the latest reading of each node's sensors, as GeoJSON (the geojson export)",
    parameters=[param("exclude_flagged", "leave out flagged readings", schema={"type": "boolean"})],
    response={"type": "object", "description": "a GeoJSON FeatureCollection, one Point per node"},
    content_type="application/geo+json",
)
async def latest(request: web.Request) -> web.Response:
    from .export import geojson_collection

    exclude = bool_param(request, "exclude_flagged")
    collection = await query(
        request, lambda db, conn: geojson_collection(queries.latest(db, conn, exclude_flagged=exclude))
    )
    return web.json_response(collection, content_type="application/geo+json")


@routes.get(
    "/api/gaps",
    summary="open gaps: seq ranges each node sent that are not stored (yet)",
    parameters=[param("node", "only this node")],
    response={"type": "array", "items": {"$ref": "#/components/schemas/Gap"}},
)
async def list_gaps(request: web.Request) -> web.Response:
    return web.json_response(await query(request, queries.open_gaps, node_param(request)))


@routes.get(
    "/api/quarantine",
    summary="messages not stored as readings, counted by reason, and the latest of them",
    parameters=[param("limit", "latest rows to include (default 100, max 1000)", schema={"type": "integer"})],
    response={"type": "object"},
)
async def list_quarantine(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 100, 1000)

    def both(db, conn):
        return {"counts": queries.quarantine_counts(db, conn), "latest": queries.quarantined(db, conn, limit)}

    return web.json_response(await query(request, both))


@routes.get("/api/openapi.json", summary="this description", in_openapi=False)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


COMPONENTS = {
    "schemas": {
        "Reading": {
            "type": "object",
            "required": ["node", "sensor", "seq", "ts", "values", "quality", "backfill"],
            "properties": {
                "node": {"type": "string"},
                "sensor": {"type": "string"},
                "seq": {"type": "integer"},
                "ts": {"type": "string", "format": "date-time"},
                "values": {"type": "object", "additionalProperties": {"type": "number"}},
                "quality": {"type": "array", "items": {"type": "string"}},
                "clock": {"const": "unsynced"},
                "backfill": {"type": "boolean"},
                "units": {"type": "object", "additionalProperties": {"type": "string"}},
                "meta": {"type": "object"},
            },
        },
        "Node": {
            "type": "object",
            "properties": {
                **{c: {"type": ["string", "null"]} for c in queries.NODE_COLUMNS},
                **{c: {"type": ["number", "null"]} for c in ("lat", "lon")},
                **{
                    c: {"type": ["integer", "null"]}
                    for c in (
                        "backlog",
                        "dropped",
                        "first_seq",
                        "last_seq",
                        "open_gaps",
                        "missing",
                        "seq_gaps",
                    )
                },
            },
        },
        "Gap": {
            "type": "object",
            "properties": {
                "node": {"type": "string"},
                "first_missing": {"type": "integer"},
                "last_missing": {"type": "integer"},
                "missing": {"type": "integer"},
                "opened_at": {"type": "string", "format": "date-time"},
            },
        },
    }
}


# -- the application --------------------------------------------------------------------------


def create_app(
    db: Database, *, route_modules: list[str] | None = None, options: dict | None = None
) -> web.Application:
    app = web.Application()
    app[DB_KEY] = db
    app[OPTIONS_KEY] = options or {}
    app[POOL_KEY] = _Connections(db)
    spec: dict = {
        "openapi": "3.1.0",
        "info": {
            "title": "edge-node city API",
            "version": API_VERSION,
            "description": (_package_doc or "").strip().splitlines()[0],
        },
        "paths": {},
        "components": json.loads(json.dumps(COMPONENTS)),
    }
    for name in route_modules or ROUTE_MODULES:
        module = importlib.import_module(name)
        for method, path, handler, operation in module.routes.entries:
            app.router.add_route(method, path, handler)
            if operation:
                spec["paths"].setdefault(path, {})[method.lower()] = operation
        spec["components"]["schemas"].update(getattr(module, "SCHEMAS", {}))
    app[OPENAPI_KEY] = spec

    async def close_pool(app: web.Application) -> None:
        app[POOL_KEY].close()

    app.on_cleanup.append(close_pool)
    return app


async def serve(
    db: Database,
    host: str,
    port: int,
    stop: asyncio.Event,
    ready: Callable[[int], None] | None = None,
    options: dict | None = None,
):
    """Serve until `stop` is set."""
    runner = web.AppRunner(create_app(db, options=options), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        if ready:
            ready(bound)
        await stop.wait()
    finally:
        await runner.cleanup()
