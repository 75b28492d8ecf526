"""A power cut, simulated on the real buffer: what the card holds is the files as of the last
fsync, plus whatever part of the later WAL writes the kernel had flushed (a random prefix, cut
mid-frame). The reopened buffer must pass integrity_check and hold every reading committed
before the last sync, that is, lose nothing older than `sync_interval_s` (DESIGN §3)."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from edge_node.store import NewReading, Store

CYCLES = 200 if os.environ.get("EDGE_NODE_SOAK") else 20


class CardSnapshotStore(Store):
    """The real Store; at each sync, the bytes it made durable are copied aside as "the card"."""

    def __init__(self, path: Path, card: Path):
        super().__init__(path, max_rows=100_000, max_bytes=10**9, sync_interval_s=1)
        self.card = card
        self.synced_seqs: list[int] = []

    def sync(self) -> None:
        super().sync()
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{self.path}{suffix}", f"{self.card}{suffix}")
        self.synced_seqs = [r.seq for r in self.fetch(0, limit=10**6)]


def reading(i: int) -> NewReading:
    return NewReading("bme280", {"temperature": 20 + i / 100}, (), time.time(), float(i), "boot", True)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(CYCLES))
def test_a_power_cut_loses_nothing_older_than_the_last_sync(tmp_path, seed):
    rng = random.Random(seed)
    store = CardSnapshotStore(tmp_path / "buffer.db", tmp_path / "card.db")
    store.open()
    acked: set[int] = set()  # delivered: these may go, and are not "lost"
    for _ in range(rng.randint(1, 6)):  # sync intervals, each with a few commits and acks
        for _ in range(rng.randint(1, 20)):
            store.append([reading(i) for i in range(rng.randint(1, 3))])
        if rng.random() < 0.5:
            delivered = store.synced_seqs[: rng.randint(0, len(store.synced_seqs))]
            store.ack(delivered)
            acked.update(delivered)
        store.sync()
    for _ in range(rng.randint(0, 20)):  # commits after the last sync: at risk
        store.append([reading(0)])
    wal = Path(f"{store.path}-wal").read_bytes()
    durable = Path(f"{store.card}-wal").read_bytes()
    flushed = wal[len(durable) : len(durable) + rng.randint(0, max(0, len(wal) - len(durable)))]
    with open(f"{store.card}-wal", "ab") as card_wal:  # the kernel got part of the rest out
        card_wal.write(flushed)
    expected = set(store.synced_seqs) - acked
    os.close(store._wal_fd)  # the process dies with the power: no clean close
    store._db.close()

    with sqlite3.connect(store.card) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        survived = {row[0] for row in db.execute("SELECT seq FROM readings")}
    assert expected <= survived, f"lost committed-and-synced readings: {sorted(expected - survived)[:10]}"
