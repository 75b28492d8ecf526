"""Reading payloads on the wire (DESIGN §4), built from stored rows without re-encoding values."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from .clock import format_ts
from .store import StoredReading

MAX_PAYLOAD_BYTES = 64 * 1024


class ClockView:
    """What the forwarder knows about the clock at send time, to correct unsynced rows."""

    def __init__(self, boot_id: str, synced: bool, wall: float, mono: float):
        self.boot_id, self.synced, self.wall, self.mono = boot_id, synced, wall, mono


def reading_json(row: StoredReading, clock: ClockView) -> str:
    if row.synced:
        return f'{{"seq":{row.seq},"ts":"{format_ts(row.wall)}",{row.body}}}'
    if clock.synced and row.boot_id == clock.boot_id:
        # Read before this boot's first clock sync: the boot clock says when it really was.
        body = json.loads("{" + row.body + "}")
        body["quality"].append("clock_corrected")
        wall = clock.wall - (clock.mono - row.mono)
        return json.dumps({"seq": row.seq, "ts": format_ts(wall), **body}, separators=(",", ":"))
    return f'{{"seq":{row.seq},"ts":"{format_ts(row.wall)}",{row.body},"clock":"unsynced"}}'


def batch_payload(node: str, sensor: str, units_json: str, backfill: bool, readings: Sequence[str]) -> bytes:
    head = json.dumps({"node": node, "sensor": sensor}, separators=(",", ":"))[:-1]
    flag = "true" if backfill else "false"
    return f'{head},"units":{units_json},"backfill":{flag},"readings":[{",".join(readings)}]}}'.encode()


def split_batches(
    rows: Sequence[StoredReading], clock: ClockView, batch_max: int
) -> Iterator[tuple[str, list[StoredReading], list[str]]]:
    """Consecutive rows of one sensor, at most `batch_max` readings and about 64 KiB a message."""
    i = 0
    while i < len(rows):
        sensor = rows[i].sensor
        taken: list[StoredReading] = []
        texts: list[str] = []
        size = 256
        while i < len(rows) and rows[i].sensor == sensor and len(taken) < batch_max:
            text = reading_json(rows[i], clock)
            if taken and size + len(text) + 1 > MAX_PAYLOAD_BYTES:
                break
            taken.append(rows[i])
            texts.append(text)
            size += len(text) + 1
            i += 1
        yield sensor, taken, texts
