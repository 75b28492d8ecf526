"""Reading payloads on the wire (DESIGN §4), built from stored rows without re-encoding values."""

from __future__ import annotations

import json
from collections.abc import Sequence

from .clock import format_ts
from .store import StoredReading

MAX_PAYLOAD_BYTES = 64 * 1024


class ClockView:
    """What the forwarder knows about the clock at send time, to correct unsynced rows."""

    def __init__(self, boot_id: str, synced: bool, wall: float, mono: float):
        self.boot_id, self.synced, self.wall, self.mono = boot_id, synced, wall, mono


def reading_json(row: StoredReading, clock: ClockView) -> str:
    if row.synced:
        return row.body
    if clock.synced and row.boot_id == clock.boot_id:
        # Read before this boot's first clock sync: the boot clock says when it really was.
        reading = json.loads(row.body)
        reading["ts"] = format_ts(clock.wall - (clock.mono - row.mono))
        reading["quality"].append("clock_corrected")
        return json.dumps(reading, separators=(",", ":"))
    return row.body[:-1] + ',"clock":"unsynced"}'


def batch_payload(node: str, sensor: str, units_json: str, backfill: bool, readings: Sequence[str]) -> bytes:
    head = json.dumps({"node": node, "sensor": sensor}, separators=(",", ":"))[:-1]
    flag = "true" if backfill else "false"
    return f'{head},"units":{units_json},"backfill":{flag},"readings":[{",".join(readings)}]}}'.encode()


def group_batches(
    rows: Sequence[StoredReading], clock: ClockView, batch_max: int, max_bytes: int = MAX_PAYLOAD_BYTES
) -> list[tuple[list[StoredReading], list[str]]]:
    """The rows as messages: per sensor, oldest first, at most `batch_max` readings and about
    `max_bytes` each (64 KiB, or less where the broker says so); the messages ordered by their
    first seq. A node's sensors interleave in the buffer, so grouping by sensor (not by runs of
    one sensor) is what makes batches full."""
    per_sensor: dict[str, list[StoredReading]] = {}
    for row in rows:
        per_sensor.setdefault(row.sensor, []).append(row)
    batches = []
    for sensor_rows in per_sensor.values():
        taken: list[StoredReading] = []
        texts: list[str] = []
        size = 256
        for row in sensor_rows:
            text = reading_json(row, clock)
            if taken and (len(taken) >= batch_max or size + len(text) + 1 > max_bytes):
                batches.append((taken, texts))
                taken, texts, size = [], [], 256
            taken.append(row)
            texts.append(text)
            size += len(text) + 1
        batches.append((taken, texts))
    batches.sort(key=lambda batch: batch[0][0].seq)
    return batches
