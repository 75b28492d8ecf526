"""The wire contract's checks on the consumer's side (DESIGN §4, edge_node/schemas).

Readings are the hot path (thousands of messages a second), so their schema is checked by hand
here, key for key as reading.json says; jsonschema then only words the error (and checks the rare
statuses and heartbeats). tests/test_city_validate.py holds the two in agreement.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

import jsonschema

from edge_node import schemas

NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
SENSOR = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
QUALITY = frozenset({"warming_up", "out_of_range", "stuck", "high_humidity", "clock_corrected"})
BATCH_KEYS = frozenset({"node", "sensor", "units", "backfill", "readings"})
READING_REQUIRED = frozenset({"seq", "ts", "values", "quality"})
READING_KEYS = READING_REQUIRED | {"clock", "meta"}
META_KEYS = frozenset({"calibration", "pm_correction"})
EARLIEST_TS = "2020-01-01T00:00:00.000Z"  # no node of ours read anything before this
LATEST_AHEAD_S = 86400.0  # a ts further ahead of its arrival than this is absurd

_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}


class Invalid(ValueError):
    """`reason` is the quarantine code (malformed, schema), the message says what exactly."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # no field is larger than a 64-bit counter (400 digits broke float())
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def parse(payload: bytes) -> dict:
    try:
        data = json.loads(
            payload, parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise Invalid("malformed", f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise Invalid("malformed", f"not a JSON object but {type(data).__name__}")
    return data


def validator(kind: str) -> jsonschema.protocols.Validator:
    if kind not in _VALIDATORS:
        _VALIDATORS[kind] = jsonschema.Draft202012Validator(schemas.load(kind))
    return _VALIDATORS[kind]


def schema_error(kind: str, data: dict) -> str | None:
    """jsonschema's words for why `data` is not a valid `kind`, or None when it is."""
    error = jsonschema.exceptions.best_match(validator(kind).iter_errors(data))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{kind} schema: {where + ': ' if where else ''}{error.message}"[:500]


def check(kind: str, data: dict) -> None:
    """Raise Invalid("schema", ...) unless `data` is a valid `kind` payload whose numbers a
    database column can hold."""
    if not (kind == "reading" and _reading_ok(data)):
        message = schema_error(kind, data)
        if message is not None:
            raise Invalid("schema", message)
    problem = _out_of_range(kind, data)
    if problem:
        raise Invalid("schema", f"{kind}: {problem}")


MAX_BIGINT = 2**63 - 1


def _out_of_range(kind: str, data: dict) -> str | None:
    """What JSON allows and the schemas do not bound but a BIGINT or a DOUBLE cannot hold
    (1e400 parses as infinity; a 30-digit seq overflows)."""
    if kind == "reading":
        for r in data["readings"]:
            if r["seq"] > MAX_BIGINT:
                return f"seq {r['seq']} is out of range"
            for name, value in r["values"].items():
                if not _finite(value):
                    return f"seq {r['seq']}: values.{name} is not a finite number"
    elif kind == "heartbeat":
        for key in ("backlog", "dropped"):
            value = data.get(key)
            if not (_finite(value) and -MAX_BIGINT <= value <= MAX_BIGINT):
                return f"{key} is out of range"
    elif kind == "status" and isinstance(data.get("location"), dict):
        if not all(_finite(v) for v in data["location"].values()):
            return "location is not finite"
    return None


def _finite(value) -> bool:
    try:
        return _number(value) and math.isfinite(float(value))
    except OverflowError:
        return False


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return _number(value) and (isinstance(value, int) or value.is_integer())


def _meta_ok(meta) -> bool:
    if not isinstance(meta, dict) or not meta.keys() <= META_KEYS:
        return False
    calibration = meta.get("calibration", {})
    if not isinstance(calibration, dict):
        return False
    for entry in calibration.values():
        if not isinstance(entry, dict) or entry.keys() != {"offset", "slope"}:
            return False
        if not (_number(entry["offset"]) and _number(entry["slope"])):
            return False
    if "pm_correction" in meta:
        pm = meta["pm_correction"]
        if not isinstance(pm, dict) or pm.keys() != {"model", "humidity"}:
            return False
        if not (isinstance(pm["model"], str) and _number(pm["humidity"])):
            return False
    return True


def _reading_ok(data: dict) -> bool:
    """reading.json, by hand; False means "ask jsonschema" (which then names the fault)."""
    if data.keys() != BATCH_KEYS:
        return False
    node, sensor, units, readings = data["node"], data["sensor"], data["units"], data["readings"]
    if not (
        isinstance(node, str)
        and NODE_ID.fullmatch(node)
        and isinstance(sensor, str)
        and SENSOR.fullmatch(sensor)
    ):
        return False
    if not isinstance(units, dict) or not all(isinstance(u, str) for u in units.values()):
        return False
    if not isinstance(data["backfill"], bool) or not isinstance(readings, list) or not readings:
        return False
    for r in readings:
        if not isinstance(r, dict) or not (READING_REQUIRED <= r.keys() <= READING_KEYS):
            return False
        seq, ts, values, quality = r["seq"], r["ts"], r["values"], r["quality"]
        if not (_integer(seq) and seq >= 1 and isinstance(ts, str) and TS.fullmatch(ts)):
            return False
        if not isinstance(values, dict) or not all(_number(v) for v in values.values()):
            return False
        if not isinstance(quality, list) or len(set(map(str, quality))) != len(quality):
            return False
        if not all(isinstance(q, str) and q in QUALITY for q in quality):
            return False
        if "clock" in r and r["clock"] != "unsynced":
            return False
        if "meta" in r and not _meta_ok(r["meta"]):
            return False
    return True


def epoch(ts: str) -> float:
    """A wire timestamp (`2026-12-04T10:00:00.000Z`, already matched by TS) as epoch seconds;
    ValueError for a date that does not exist (month 13)."""
    return datetime.fromisoformat(ts[:-1]).replace(tzinfo=UTC).timestamp()


def ts_problem(ts: str, received: float) -> str | None:
    """Why a reading's (schema-valid) ts is absurd, or None."""
    try:
        when = epoch(ts)
    except ValueError:
        return f"ts {ts} is not a date"
    if ts < EARLIEST_TS:
        return f"ts {ts} is before {EARLIEST_TS[:10]}"
    if when - received > LATEST_AHEAD_S:
        return f"ts {ts} is {(when - received) / 86400:.1f} days after its arrival"
    return None
