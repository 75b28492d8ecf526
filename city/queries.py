"""The read side, shared by `edge-node export` and `edge-node serve`: each query streams rows
from a cursor (fetchmany), so a year of a city goes through in constant memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

from .db import Database

FETCH = 2000
READING_COLUMNS = 'r.node, r.seq, r.sensor, r.ts, r."values", r.units, r.quality, r.clock, r.backfill, r.meta'


def normalise_time(value: str) -> str:
    """`2026-12-04`, `2026-12-04T10:00`, `...Z` or `...+01:00` -> `2026-12-04T09:00:00.000Z`."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time or date (got {value!r})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _stream(db: Database, conn, statement: str, params: list) -> Iterator[tuple]:
    """The rows of `statement`, fetched a few thousand at a time."""
    if db.dialect == "postgresql" and not conn.autocommit:
        # A named (server-side) cursor: PostgreSQL sends rows as they are fetched, not all at once.
        # (It lives in a transaction; the API's bounded queries run in autocommit, client-side.)
        cur = conn.cursor(name="edge_node_stream")
        cur.itersize = FETCH
        cur.execute(statement, params)
    else:
        cur = conn.execute(db.sql(statement), params)
    try:
        while rows := cur.fetchmany(FETCH):
            yield from rows
    finally:
        cur.close()


def _where(time_from: str | None, time_to: str | None, node: str | None, exclude_flagged: bool, alias="r"):
    clauses, params = [], []
    if time_from:
        clauses.append(f"{alias}.ts >= %s")
        params.append(time_from)
    if time_to:
        clauses.append(f"{alias}.ts < %s")
        params.append(time_to)
    if node:
        clauses.append(f"{alias}.node = %s")
        params.append(node)
    if exclude_flagged:
        clauses.append(f"NOT {alias}.flagged")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def reading_dict(row: tuple) -> dict:
    """A stored reading as the node sent it (jsonl and the API): node, sensor, seq, ts, values,
    quality, clock ("unsynced" as sent, else null), backfill, units, meta (only when sent)."""
    node, seq, sensor, ts, values, units, quality, clock, backfill, meta = row
    out = {
        "node": node,
        "sensor": sensor,
        "seq": seq,
        "ts": ts,
        "values": json.loads(values),
        "quality": json.loads(quality),
    }
    out["clock"] = clock  # "unsynced" as sent, or null: the node sent none (its clock was synced)
    out["backfill"] = bool(backfill)
    out["units"] = json.loads(units)
    if meta is not None:
        out["meta"] = json.loads(meta)
    return out


def readings(
    db: Database,
    conn,
    *,
    time_from: str | None = None,
    time_to: str | None = None,
    node: str | None = None,
    exclude_flagged: bool = False,
    limit: int | None = None,
) -> Iterator[dict]:
    """Readings in time order (then node, seq), `time_from <= ts < time_to`."""
    where, params = _where(time_from, time_to, node, exclude_flagged)
    statement = f"SELECT {READING_COLUMNS} FROM readings r{where} ORDER BY r.ts, r.node, r.seq"
    if limit is not None:
        statement += " LIMIT %s"
        params.append(limit)
    for row in _stream(db, conn, statement, params):
        yield reading_dict(row)


def value_rows(
    db: Database,
    conn,
    *,
    time_from: str | None = None,
    time_to: str | None = None,
    node: str | None = None,
    exclude_flagged: bool = False,
) -> Iterator[tuple]:
    """One row per reading and value, for the CSV: node, seq, sensor, ts, lat, lon, site,
    quantity, value, unit, quality (JSON), clock, backfill."""
    where, params = _where(time_from, time_to, node, exclude_flagged, alias="v")
    statement = (
        "SELECT v.node, v.seq, r.sensor, v.ts, n.lat, n.lon, n.site, v.quantity, v.value, v.unit,"
        " r.quality, r.clock, r.backfill"
        " FROM reading_values v JOIN readings r ON r.node = v.node AND r.seq = v.seq"
        f" LEFT JOIN nodes n ON n.node = v.node{where} ORDER BY v.ts, v.node, v.seq, v.quantity"
    )
    yield from _stream(db, conn, statement, params)


NODE_COLUMNS = (
    "node", "site", "lat", "lon", "state", "state_reason", "since", "version", "boot_id", "config_hash",
    "status_at", "heartbeat_ts", "heartbeat_at", "backlog", "dropped", "first_seq", "last_seq",
    "last_reading_ts",
)  # fmt: skip


def nodes(db: Database, conn, node: str | None = None) -> list[dict]:
    """Every node (or one), with its open gaps counted: missing seqs, and of them how many its
    last heartbeat's backlog does not explain (what the fleet view calls seq_gaps)."""
    statement = (
        f"SELECT {', '.join('n.' + c for c in NODE_COLUMNS)},"
        " (SELECT COUNT(*) FROM gaps g WHERE g.node = n.node AND g.closed_at IS NULL),"
        " (SELECT COALESCE(SUM(g.last_missing - g.first_missing + 1), 0) FROM gaps g"
        "  WHERE g.node = n.node AND g.closed_at IS NULL)"
        " FROM nodes n"
    )
    params: list = []
    if node is not None:
        statement += " WHERE n.node = %s"
        params.append(node)
    statement += " ORDER BY n.node"
    out = []
    for row in db.execute(conn, statement, params).fetchall():
        item = dict(zip(NODE_COLUMNS, row, strict=False))
        item["open_gaps"], item["missing"] = int(row[-2]), int(row[-1])
        item["seq_gaps"] = max(0, item["missing"] - int(item["backlog"] or 0))
        out.append(item)
    return out


def open_gaps(db: Database, conn, node: str | None = None) -> list[dict]:
    statement = (
        "SELECT node, first_missing, last_missing, opened_at FROM gaps WHERE closed_at IS NULL"
        + (" AND node = %s" if node else "")
        + " ORDER BY node, first_missing"
    )
    rows = db.execute(conn, statement, [node] if node else []).fetchall()
    return [
        {"node": n, "first_missing": a, "last_missing": b, "missing": b - a + 1, "opened_at": t}
        for n, a, b, t in rows
    ]


def latest(
    db: Database,
    conn,
    *,
    exclude_flagged: bool = False,
    time_from: str | None = None,
    time_to: str | None = None,
) -> Iterator[dict]:
    """Per node and sensor, its newest reading (by ts, within from..to), with the node's location
    and state; ordered by node, then sensor."""
    inner, params = _where(time_from, time_to, None, exclude_flagged, alias="r2")
    inner = inner.replace(" WHERE ", " AND ")
    statement = (
        f"SELECT {READING_COLUMNS}, n.lat, n.lon, n.site, n.state FROM readings r"
        " JOIN nodes n ON n.node = r.node"
        " WHERE r.seq = (SELECT r2.seq FROM readings r2 WHERE r2.node = r.node AND r2.sensor = r.sensor"
        f"{inner} ORDER BY r2.ts DESC, r2.seq DESC LIMIT 1)"
        " ORDER BY r.node, r.sensor"
    )
    for row in db.execute(conn, statement, params).fetchall():
        reading = reading_dict(row[:10])
        lat, lon, site, state = row[10:]
        yield {**reading, "lat": lat, "lon": lon, "site": site, "state": state}


def quarantine_counts(db: Database, conn) -> dict[str, int]:
    rows = db.execute(
        conn, "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason"
    ).fetchall()
    return {reason: int(count) for reason, count in rows}


def quarantined(db: Database, conn, limit: int = 100) -> list[dict]:
    rows = db.execute(
        conn,
        "SELECT id, received_at, topic, node, reason, detail, payload FROM quarantine"
        " ORDER BY id DESC LIMIT %s",
        [limit],
    ).fetchall()
    return [
        {
            "id": i, "received_at": t, "topic": topic, "node": n, "reason": reason, "detail": detail,
            "payload": bytes(payload).decode("utf-8", "replace"),
        }
        for i, t, topic, n, reason, detail, payload in rows
    ]  # fmt: skip
