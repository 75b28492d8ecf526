"""The ingest's pure parts: the gap bookkeeping against a brute-force set, and the hand-written
reading check against the shipped JSON Schema."""

from __future__ import annotations

import copy
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from city.gaps import SeqRange
from city.validate import _reading_ok, schema_error


def missing(stored: set[int]) -> set[int]:
    return set(range(min(stored), max(stored) + 1)) - stored if stored else set()


@given(st.lists(st.lists(st.integers(1, 300), max_size=40), max_size=12))
def test_gaps_are_exactly_the_seqs_missing_between_the_lowest_and_highest_stored(batches):
    stored: set[int] = set()
    seq_range = SeqRange(None, None)
    for batch in batches:
        new = set(batch) - stored
        seq_range.add(new)
        stored |= new
        gaps = [(g.first, g.last) for g in seq_range.gaps]
        assert gaps == sorted(gaps)
        assert all(a <= b for a, b in gaps)
        assert all(
            b + 1 < a2 for (_, b), (a2, _) in zip(gaps, gaps[1:], strict=False)
        )  # disjoint, not touching
        assert {s for a, b in gaps for s in range(a, b + 1)} == missing(stored)
        if stored:
            assert (seq_range.first, seq_range.last) == (min(stored), max(stored))


def test_a_gap_filled_in_its_middle_keeps_its_row_for_the_lower_part():
    seq_range = SeqRange(1, 20)
    from city.gaps import Gap

    seq_range.gaps = [Gap(5, 15, id=7, opened_at="T")]
    seq_range.add([10])
    assert [(g.first, g.last, g.id, g.opened_at) for g in seq_range.gaps] == [
        (5, 9, 7, "T"),
        (11, 15, None, "T"),
    ]


VALID = {
    "node": "trs-0001",
    "sensor": "sds011",
    "units": {"pm2_5": "ug/m3"},
    "backfill": False,
    "readings": [
        {
            "seq": 1,
            "ts": "2026-12-04T10:00:00.000Z",
            "values": {"pm2_5": 3.5},
            "quality": ["high_humidity"],
            "clock": "unsynced",
            "meta": {"calibration": {"pm2_5": {"offset": 0, "slope": 1.1}},
                     "pm_correction": {"model": "k", "humidity": 80}},
        }
    ],
}  # fmt: skip

MUTATIONS = [
    lambda d: d.pop("units"),
    lambda d: d.update(extra=1),
    lambda d: d.update(node="TRS"),
    lambda d: d.update(sensor=""),
    lambda d: d.update(backfill="no"),
    lambda d: d.update(readings=[]),
    lambda d: d["units"].update(x=1),
    lambda d: d["readings"][0].pop("seq"),
    lambda d: d["readings"][0].update(seq=0),
    lambda d: d["readings"][0].update(seq=True),
    lambda d: d["readings"][0].update(seq=1.5),
    lambda d: d["readings"][0].update(seq=2.0),  # valid: JSON Schema's integer
    lambda d: d["readings"][0].update(ts="2026-12-04 10:00:00"),
    lambda d: d["readings"][0].update(values={"x": "1"}),
    lambda d: d["readings"][0].update(values={"x": True}),
    lambda d: d["readings"][0].update(quality=["nope"]),
    lambda d: d["readings"][0].update(quality=["stuck", "stuck"]),
    lambda d: d["readings"][0].update(clock="synced"),
    lambda d: d["readings"][0].update(other=1),
    lambda d: d["readings"][0]["meta"].update(x=1),
    lambda d: d["readings"][0]["meta"]["calibration"]["pm2_5"].pop("slope"),
    lambda d: d["readings"][0]["meta"]["pm_correction"].update(model=3),
    lambda d: d["readings"][0]["meta"].pop("pm_correction"),  # valid
    lambda d: d["readings"].append("x"),
]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(range(len(MUTATIONS))), max_size=3))
def test_the_hand_written_reading_check_agrees_with_the_json_schema(picks):
    data = copy.deepcopy(VALID)
    for i in picks:
        try:
            MUTATIONS[i](data)
        except (KeyError, IndexError, TypeError, AttributeError):
            pass
    data = json.loads(json.dumps(data))
    assert _reading_ok(data) == (schema_error("reading", data) is None), data
