"""Node messages read as untrusted data (edge_node.untrusted) and the fleet view's bounded state.

No broker here: the parsers and `Fleet.ingest` are fed directly (tests/test_hostile.py plays
the same messages through a real Mosquitto)."""

from __future__ import annotations

import json
import math
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_node import untrusted
from edge_node.untrusted import Heartbeat, Malformed, ReadingBatch, Status
from operations import fleet

from .test_fleet import heartbeat

PREFIX = "city/terrassa/nodes"
NOW = float(int(time.time()))  # heartbeat() stamps the real time

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)
HEARTBEAT_KEYS = [
    "ts",
    "uptime_s",
    "seq_sent",
    "backlog",
    "oldest_unsent_age_s",
    "dropped",
    "sensors",
    "host",
    "buffer",
]
heartbeat_like = st.fixed_dictionaries(
    {},
    optional={
        **{key: json_values for key in HEARTBEAT_KEYS},
        "sensors": st.dictionaries(
            st.text(max_size=10) | st.sampled_from(["bme280", "sds011"]),
            st.fixed_dictionaries(
                {},
                optional={
                    "state": st.sampled_from(["ok", "fault", "warming"]) | json_values,
                    "error": json_values,
                    "last_ok": json_values,
                    "laser_life_used": json_values,
                },
            ),
            max_size=4,
        ),
        "host": st.fixed_dictionaries(
            {},
            optional={
                "cpu_temp_c": json_values,
                "disk_free_mb": json_values,
                "clock_synced": json_values,
                "throttled": st.dictionaries(st.sampled_from(["raw", "under_voltage_now", "x"]), json_values),
            },
        ),
        "ts": st.sampled_from(
            ["2026-01-01T00:00:00.000Z", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"]
        )
        | json_values,
    },
)


def _encode(value) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")  # NaN, Infinity and lone surrogates kept


def _assert_clean(value) -> None:
    """Every number finite, every string printable and bounded, in a record or a row."""
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, str):
        assert value.isprintable() and len(value) <= untrusted.MAX_TEXT, repr(value)
    elif isinstance(value, (Heartbeat, Status, ReadingBatch, untrusted.SensorHealth)):
        for name in value.__slots__:
            _assert_clean(getattr(value, name))
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_clean(k)
            _assert_clean(v)
    elif isinstance(value, list):
        for v in value:
            _assert_clean(v)


def _assert_outputs_clean(f: fleet.Fleet) -> None:
    rows = f.rows(NOW + 1)
    _assert_clean(rows)
    json.dumps(rows, allow_nan=False)
    for text in (fleet.table(rows, f.ignored()), fleet.prometheus(rows, f)):
        assert all(ch.isprintable() or ch == "\n" for ch in text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(heartbeat_like, json_values))
def test_heartbeat_parser_takes_any_json(value):
    try:
        record = untrusted.parse_heartbeat(_encode(value), NOW)
    except Malformed:
        assert not isinstance(value, dict)
        return
    _assert_clean(record)
    assert record.ts is None or 0 <= record.ts <= NOW
    assert len(record.sensors) <= untrusted.MAX_SENSORS_PER_HEARTBEAT
    f = fleet.Fleet(PREFIX)
    f.ingest(f"{PREFIX}/trs-x/heartbeat", _encode(value), False, NOW)
    _assert_outputs_clean(f)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {"state": st.sampled_from(["online", "offline"])},
            optional={"reason": json_values, "version": json_values},
        ),
        json_values,
    )
)
def test_status_parser_takes_any_json(value):
    try:
        record = untrusted.parse_status(_encode(value))
    except Malformed:
        assert not isinstance(value, dict) or value.get("state") not in ("online", "offline")
        return
    _assert_clean(record)
    assert record.state in ("online", "offline") and record.reason in (None, "lost", "shutdown")


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.fixed_dictionaries(
            {
                "readings": st.lists(
                    st.fixed_dictionaries({}, optional={"seq": json_values}) | json_values, max_size=8
                )
            }
        ),
        json_values,
    )
)
def test_reading_parser_takes_any_json(value):
    try:
        batch = untrusted.parse_reading("bme280", _encode(value))
    except Malformed:
        return
    assert all(isinstance(s, int) and 0 <= s <= untrusted.MAX_INT for s in batch.seqs)
    f = fleet.Fleet(PREFIX)
    f.ingest(f"{PREFIX}/trs-x/reading/bme280", _encode(value), False, NOW)
    _assert_outputs_clean(f)


def test_clean_text_strips_every_control_and_bounds_the_length():
    assert untrusted.clean_text("a\x1b]52;c;eA==\x07b\x9b2J\ud800\u202e\x00") == "a?]52;c;eA==?b?2J???"
    assert len(untrusted.clean_text("x" * 10_000)) == untrusted.MAX_TEXT


def test_node_ids_must_match_whole():
    assert untrusted.is_node_id("good-node") and not untrusted.is_node_id("good-node\n")
    f = fleet.Fleet(PREFIX)
    f.ingest(f"{PREFIX}/good-node\n/heartbeat", _encode(heartbeat()), False)
    assert f.nodes == {} and f.unattributed == 1


def test_a_future_heartbeat_is_clamped_to_its_arrival_so_the_node_still_goes_offline():
    f = fleet.Fleet(PREFIX, fleet.Rules(offline_after_s=60))
    f.ingest(f"{PREFIX}/n/heartbeat", _encode(heartbeat(ts="2126-01-01T00:00:00.000Z")), True, NOW)
    f.ingest(f"{PREFIX}/n/status", b'{"state": "offline", "reason": "lost"}', True, NOW)
    row = f.rows(NOW + 3600)[0]
    assert row["last_seen_age_s"] == 3600 and row["needs_visit"] == ["offline (lost) for 60m"]


def test_seq_runs_stay_bounded_and_count_what_they_forget():
    runs = fleet.SeqRuns(max_runs=4)
    for seq in [5, 1, 2, 3, 3, 4]:
        runs.add(seq)
    assert (list(runs.firsts), list(runs.lasts), runs.missing()) == ([1], [5], 0)
    for seq in range(10, 40, 3):  # 10 runs with holes of 2
        runs.add(seq)
    assert len(runs.firsts) == 4
    assert runs.missing() == (37 - 1 + 1) - 5 - 10  # every hole counted, forgotten or not
    runs.add(2)  # below the floor now: ignored
    assert len(runs.firsts) == 4


def test_watch_state_is_bounded_per_node_and_in_nodes():
    f = fleet.Fleet(PREFIX, window_s=fleet.WATCH_WINDOW_S, max_nodes=3)
    t = NOW
    for i in range(10_000):  # a week of heartbeats every minute and far more
        f.ingest(f"{PREFIX}/n0/heartbeat", _encode(heartbeat()), False, t + i * 60)
        f.ingest(f"{PREFIX}/n0/reading/bme280", _encode({"readings": [{"seq": 2 * i}]}), False, t + i * 60)
    node = f.nodes["n0"]
    assert len(node.backlog_samples) <= fleet.MAX_BACKLOG_SAMPLES and len(node.hb_arrivals) <= 5
    assert len(node.seqs.firsts) == fleet.MAX_SEQ_RANGES
    assert f.rows(t + 10_000 * 60)[0]["seq_gaps"] == 9_999
    for n in range(10):
        f.ingest(f"{PREFIX}/fake-{n}/heartbeat", _encode(heartbeat()), False, t)
    assert len(f.nodes) == 3 and f.over_node_cap == 8
    assert "8 messages from nodes over the cap of 3 ignored" in fleet.table(f.rows(), f.ignored())
    assert 'edge_node_fleet_ignored_messages_total{reason="over_node_cap"} 8' in fleet.prometheus(f.rows(), f)


def test_one_bad_field_leaves_the_rest_of_the_row():
    f = fleet.Fleet(PREFIX)
    hb = json.dumps(heartbeat(backlog=4)).replace('"cpu_temp_c": 50.0', '"cpu_temp_c": ' + "9" * 400)
    f.ingest(f"{PREFIX}/n/heartbeat", hb.encode(), False, NOW)
    row = f.rows(NOW)[0]
    assert (row["cpu_temp_c"], row["backlog"], row["disk_free_mb"], row["malformed"]) == (None, 4, 5000.0, 1)


def test_a_row_that_cannot_be_evaluated_does_not_take_the_others_down(monkeypatch):
    f = fleet.Fleet(PREFIX)
    for node in ("a", "b"):
        f.ingest(f"{PREFIX}/{node}/heartbeat", _encode(heartbeat()), False)
    f.nodes["a"].heartbeat.sensors = None  # a bug's worth of state
    rows = {r["node"]: r for r in f.rows()}
    assert rows["b"]["cpu_temp_c"] == 50.0 and rows["a"]["malformed"] == 1


def test_ingest_refuses_what_no_node_sends_as_malformed():
    """The city's ingest reads the same untrusted messages (city/validate.py): a 400-digit
    number, 1e400, NaN or a 100,000-deep nesting is quarantined as malformed, not stored."""
    from city.validate import Invalid, parse

    for payload in (
        b'{"seq": ' + b"9" * 400 + b"}",
        b'{"t": 1e400}',
        b'{"t": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
    ):
        try:
            parse(payload)
        except Invalid as err:
            assert err.reason == "malformed"
        else:
            raise AssertionError(f"accepted {payload[:30]!r}")


def test_sensors_over_the_cap_are_counted_and_reported():
    f = fleet.Fleet(PREFIX)
    crowded = heartbeat(sensors={f"s{k}": {"state": "fault", "error": "x"} for k in range(100)})
    f.ingest(f"{PREFIX}/n/heartbeat", _encode(crowded), False, NOW)
    row = f.rows(NOW)[0]
    assert len(row["sensors"]) == untrusted.MAX_SENSORS_PER_HEARTBEAT and row["sensors_over_cap"] == 36
    exposition = fleet.prometheus([row], f)
    assert 'edge_node_sensors_over_cap{node="n"} 36' in exposition
    assert exposition.count("edge_node_sensor_fault{") == untrusted.MAX_SENSORS_PER_HEARTBEAT
