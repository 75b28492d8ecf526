"""What a node sends, read as untrusted data: every field validated once, here, at the boundary.

A node (or anyone who may write to its topics) can send anything: numbers too large for a
float, `NaN`, 400-digit integers, timestamps in the year 9999, lone surrogates, terminal escape
sequences, 20,000 sensor names. Every consumer (the fleet view, ingest) reads a node's status,
heartbeat and readings through these parsers, which return plain records whose every field is
of its type, finite, in range, bounded in length and printable. A field that is not is dropped
(None) and counted in the record's `bad_fields`; the rest of the message stays. Only a message
that is not a JSON object at all (or not a status with a valid `state`, or not a reading batch)
raises `Malformed`. Nothing else escapes from these functions, whatever the bytes (a property
test feeds them arbitrary JSON).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from .config import NODE_ID_PATTERN, SENSOR_NAME_PATTERN

MAX_PAYLOAD_BYTES = 128 * 1024  # a node's reading batch is at most 64 KiB
MAX_READINGS_PER_MESSAGE = 2000  # 64 KiB of the smallest readings
MAX_SENSORS_PER_HEARTBEAT = 64
MAX_TEXT = 200  # an error string, a version
MAX_INT = 2**63 - 1  # SQLite's integer: what a node's counters are stored as
MAX_SECONDS = 100 * 365 * 86400.0  # an uptime or an age beyond a century is not one
MAX_INT_DIGITS = 20
_NODE_ID = re.compile(NODE_ID_PATTERN.removeprefix("^").removesuffix("$"))
_SENSOR_NAME = re.compile(SENSOR_NAME_PATTERN.removeprefix("^").removesuffix("$"))
SENSOR_STATES = ("ok", "warming", "fault")
UPDATE_STATES = ("fetching", "installing", "switching", "on_trial", "confirmed", "rolled_back", "refused")
THROTTLED_FLAGS = tuple(
    f"{flag}_{when}"
    for when in ("now", "since_boot")
    for flag in ("under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit")
)


class Malformed(ValueError):
    """The message as a whole cannot be read (the problem in one line, no payload echoed)."""


class _Rejected:
    """What the JSON hooks put in place of a number that cannot be a value: NaN, Infinity, or an
    integer of more digits than any counter has (Python would parse 400 digits, then fail in
    float(); over 4,300 digits it refuses the whole document)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<rejected number>"


REJECTED = _Rejected()


def _parse_int(text: str):
    return int(text) if len(text) <= MAX_INT_DIGITS else REJECTED


def load_object(payload: bytes) -> dict:
    """The payload as a JSON object; Malformed when it is not one (or is over the size cap)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Malformed(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES} cap")
    try:
        data = json.loads(payload, parse_int=_parse_int, parse_constant=lambda _: REJECTED)
    except (ValueError, RecursionError) as err:
        raise Malformed(clean_text(f"not JSON: {err}")) from None
    if not isinstance(data, dict):
        raise Malformed("not a JSON object")
    return data


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """Printable text of at most `limit` characters: every control character (C0, C1, ESC, DEL),
    format character (bidi overrides), separator other than the space, and lone surrogate
    becomes `?`, so no escape sequence reaches a terminal and no JSON encoder or Prometheus
    label meets a character it cannot write."""
    if not value.isprintable():
        value = "".join(ch if ch.isprintable() else "?" for ch in value)
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value


def is_node_id(value: str) -> bool:
    return _NODE_ID.fullmatch(value) is not None


def is_sensor_name(value: str) -> bool:
    return _SENSOR_NAME.fullmatch(value) is not None


class _Fields:
    """Reads fields of one object, counting each that is present but not valid."""

    def __init__(self) -> None:
        self.bad = 0

    def _drop(self):
        self.bad += 1

    def number(self, obj: dict, key: str, lo: float, hi: float, *, nullable: bool = False) -> float | None:
        value = obj.get(key)
        if value is None:
            if key in obj and not nullable:
                self._drop()
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._drop()
        value = float(value)
        if not (math.isfinite(value) and lo <= value <= hi):
            return self._drop()
        return value

    def count(self, obj: dict, key: str) -> int | None:
        value = obj.get(key)
        if value is None:
            if key in obj:
                self._drop()
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
            return self._drop()
        return value

    def flag(self, obj: dict, key: str) -> bool | None:
        value = obj.get(key)
        if value is None or isinstance(value, bool):
            if value is None and key in obj:
                self._drop()
            return value
        return self._drop()

    def text(self, obj: dict, key: str, limit: int = MAX_TEXT) -> str | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            return self._drop()
        return clean_text(value, limit)

    def choice(self, obj: dict, key: str, allowed: tuple[str, ...]) -> str | None:
        value = obj.get(key)
        if value is None:
            if key in obj:
                self._drop()
            return None
        if value not in allowed:
            return self._drop()
        return value

    def ts(self, obj: dict, key: str, not_after: float) -> float | None:
        value = obj.get(key)
        if value is None:
            if key in obj:
                self._drop()
            return None
        epoch = parse_ts(value, not_after)
        if epoch is None:
            self._drop()
        return epoch

    def table(self, obj: dict, key: str) -> dict | None:
        value = obj.get(key)
        if value is None:
            if key in obj:
                self._drop()
            return None
        if not isinstance(value, dict):
            return self._drop()
        return value


def parse_ts(value, not_after: float) -> float | None:
    """An RFC 3339 timestamp with its offset as epoch seconds, no later than `not_after` (the
    arrival time: a node's clock ahead of ours must not keep it looking alive); None when it is
    not one, names no offset (it would be read in our time zone), or lies before 1970."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            return None
        epoch = when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    if not 0 <= epoch:
        return None
    return min(epoch, not_after)


@dataclass(slots=True)
class Status:
    state: str  # "online" | "offline"
    reason: str | None  # "lost" | "shutdown" when offline
    version: str | None
    bad_fields: int = 0


@dataclass(slots=True)
class SensorHealth:
    state: str | None
    error: str | None
    last_ok: float | None
    laser_life_used: float | None


@dataclass(slots=True)
class Heartbeat:
    ts: float | None
    uptime_s: float | None
    seq_sent: int | None
    backlog: int | None
    oldest_unsent_age_s: float | None
    dropped: int | None
    sensors: dict[str, SensorHealth]
    sensors_over_cap: int  # sensors beyond MAX_SENSORS_PER_HEARTBEAT, not kept
    cpu_temp_c: float | None
    disk_free_mb: float | None
    throttled: dict[str, int | bool] | None
    clock_synced: bool | None
    buffer_fault: str | None  # the error while the buffer is at fault, else None
    bad_fields: int = 0
    refused: str | None = None  # while the broker refuses its readings: "0x87 Not authorized since ..."
    update: str | None = None  # a software update: "on_trial 0.2.0", "rolled_back 0.3.0: reason" (issue 16)


@dataclass(slots=True)
class ReadingBatch:
    sensor: str
    seqs: list[int] = field(default_factory=list)
    bad_fields: int = 0


def parse_status(payload: bytes) -> Status:
    data = load_object(payload)
    fields = _Fields()
    state = data.get("state")
    if state not in ("online", "offline"):
        raise Malformed("status: state is not online or offline")
    reason = fields.choice(data, "reason", ("lost", "shutdown")) if state == "offline" else None
    version = fields.text(data, "version", 64)
    return Status(state, reason, version, fields.bad)


def parse_heartbeat(payload: bytes, arrival: float) -> Heartbeat:
    """The heartbeat of DESIGN §4, each field checked; `arrival` bounds every timestamp."""
    data = load_object(payload)
    f = _Fields()
    ts = f.ts(data, "ts", arrival)
    sensors: dict[str, SensorHealth] = {}
    over_cap = 0
    for name, raw in (f.table(data, "sensors") or {}).items():
        if not is_sensor_name(name) or not isinstance(raw, dict):
            f.bad += 1
        elif len(sensors) >= MAX_SENSORS_PER_HEARTBEAT:
            over_cap += 1
        else:
            life = f.number(raw, "laser_life_used", 0.0, 1000.0)
            last_ok = f.ts(raw, "last_ok", arrival if ts is None else ts)
            sensors[name] = SensorHealth(
                f.choice(raw, "state", SENSOR_STATES), f.text(raw, "error"), last_ok, life
            )
    host = f.table(data, "host") or {}
    throttled = None
    raw_throttled = f.table(host, "throttled")
    if raw_throttled is not None:
        throttled = {}
        raw_bits = f.count(raw_throttled, "raw")
        if raw_bits is not None and raw_bits <= 0xFFFFFFFF:
            throttled["raw"] = raw_bits
        for flag in THROTTLED_FLAGS:
            value = f.flag(raw_throttled, flag)
            if value is not None:
                throttled[flag] = value
    buffer_fault = None
    buffer = f.table(data, "buffer")
    if buffer is not None and f.choice(buffer, "state", ("fault",)) == "fault":
        buffer_fault = f.text(buffer, "error") or "cannot write"
    refused = None
    raw_refused = f.table(data, "refused")
    if raw_refused is not None:  # issue 10
        code = f.count(raw_refused, "reason_code")
        refused = f.text(raw_refused, "reason", 80) or (f"0x{code:02X}" if code is not None else "refused")
        if since := f.text(raw_refused, "since", 40):
            refused += f" since {since}"
    update = None
    raw_update = f.table(data, "update")
    if raw_update is not None:  # issue 16
        update = f.choice(raw_update, "state", UPDATE_STATES)
        if update is not None:
            if version := f.text(raw_update, "version", 20):
                update += f" {version}"
            if reason := f.text(raw_update, "reason", 120):
                update += f": {reason}"
    return Heartbeat(
        ts=ts,
        uptime_s=f.number(data, "uptime_s", 0.0, MAX_SECONDS),
        seq_sent=f.count(data, "seq_sent"),
        backlog=f.count(data, "backlog"),
        oldest_unsent_age_s=f.number(data, "oldest_unsent_age_s", 0.0, MAX_SECONDS),
        dropped=f.count(data, "dropped"),
        sensors=sensors,
        sensors_over_cap=over_cap,
        cpu_temp_c=f.number(host, "cpu_temp_c", -273.0, 1000.0, nullable=True),
        disk_free_mb=f.number(host, "disk_free_mb", 0.0, 1e12, nullable=True),
        throttled=throttled,
        clock_synced=f.flag(host, "clock_synced"),
        buffer_fault=buffer_fault,
        bad_fields=f.bad,
        refused=refused,
        update=update,
    )


def parse_reading(sensor: str, payload: bytes) -> ReadingBatch:
    """The seqs of a reading batch on `{root}/reading/{sensor}`; a reading whose seq is not a
    counter is dropped and counted; over MAX_READINGS_PER_MESSAGE the message is refused."""
    if not is_sensor_name(sensor):
        raise Malformed("reading: the topic's sensor name is not a sensor name")
    data = load_object(payload)
    readings = data.get("readings")
    if not isinstance(readings, list) or not readings:
        raise Malformed("reading: no readings list")
    if len(readings) > MAX_READINGS_PER_MESSAGE:
        raise Malformed(f"reading: {len(readings)} readings, over the cap of {MAX_READINGS_PER_MESSAGE}")
    batch = ReadingBatch(sensor)
    f = _Fields()
    for reading in readings:
        if not isinstance(reading, dict) or "seq" not in reading:
            f.bad += 1
        elif (seq := f.count(reading, "seq")) is not None:
            batch.seqs.append(seq)
    batch.bad_fields = f.bad
    return batch
