"""The buffer's contract (DESIGN §3), on a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from edge_node.store import BufferPathError, NewReading, Store, StoreError


def reading(sensor: str = "bme280", value: float = 20.0, quality: tuple[str, ...] = ()) -> NewReading:
    return NewReading(sensor, {"temperature": value}, quality, time.time(), 12.5, "boot-a", True)


@pytest.fixture
def open_store(tmp_path):
    stores = []

    def make(**limits) -> Store:
        store = Store(
            tmp_path / "buffer.db", **{"max_rows": 1000, "max_bytes": 10**8, "sync_interval_s": 1, **limits}
        )
        store.open()
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()


def test_seq_is_node_wide_and_starts_at_1(open_store):
    store = open_store()
    assert store.append([reading("a"), reading("b")]) == [1, 2]
    assert store.append([reading("a")]) == [3]
    assert [r.sensor for r in store.fetch(0)] == ["a", "b", "a"]


def test_seq_is_never_reused_after_delete_and_reopen(open_store):
    store = open_store()
    store.append([reading() for _ in range(5)])
    store.ack([1, 2, 3, 4, 5])
    store.flush_acked()
    store.close()
    store = open_store()
    assert store.backlog == 0
    assert store.append([reading()]) == [6]


def test_rows_leave_only_when_deleted_and_survive_reopen(open_store):
    store = open_store()
    store.append([reading(value=v) for v in (1.0, 2.0, 3.0)])
    store.ack([2])
    assert store.flush_acked() == 1
    store.close()
    store = open_store()
    assert [r.seq for r in store.fetch(0)] == [1, 3]
    assert store.backlog == 2


def test_body_keeps_values_and_quality_as_json(open_store):
    store = open_store()
    store.append([reading(value=21.5, quality=("out_of_range",))])
    (row,) = store.fetch(0)
    body = json.loads(row.body)
    assert body.pop("ts").endswith("Z")
    assert body == {"seq": 1, "values": {"temperature": 21.5}, "quality": ["out_of_range"]}


def test_fetch_honours_the_seq_window(open_store):
    store = open_store()
    store.append([reading() for _ in range(10)])
    assert [r.seq for r in store.fetch(3, before=7)] == [4, 5, 6]
    assert [r.seq for r in store.fetch(0, limit=2)] == [1, 2]


def test_full_buffer_drops_the_oldest_and_counts_them_across_restarts(open_store):
    store = open_store(max_rows=100)
    for _ in range(13):
        store.append([reading() for _ in range(10)])
    assert store.backlog == 100 and store.dropped == 30
    assert store.fetch(0, limit=1)[0].seq == 31
    store.close()
    store = open_store(max_rows=100)
    assert store.dropped == 30, "the drop count is persisted"
    assert store.append([reading()]) == [131]


def test_max_bytes_bounds_the_buffer_too(open_store):
    store = open_store(max_bytes=20_000)
    for i in range(300):
        store.append([reading(value=float(i))])
    assert store.dropped > 0
    assert store.backlog < 300
    assert store.fetch(0)[-1].seq == 300, "the newest stay"


def test_nan_is_refused_rather_than_sent(open_store):
    store = open_store()
    with pytest.raises(ValueError):
        store.append([reading(value=float("nan"))])
    assert store.backlog == 0


def test_a_commit_survives_sigkill_of_the_writer(tmp_path):
    """Append, report, SIGKILL itself: the reopened buffer has the row (WAL, synchronous=NORMAL)."""
    script = textwrap.dedent(f"""
        import os, signal, time
        from edge_node.store import NewReading, Store
        s = Store({str(tmp_path / "buffer.db")!r}, max_rows=1000, max_bytes=10**8, sync_interval_s=3600)
        s.open()
        s.append([NewReading("bme280", {{"temperature": 1.0}}, (), time.time(), 1.0, "b", True)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert proc.returncode == -9
    with sqlite3.connect(tmp_path / "buffer.db") as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 1


SYNC_SCRIPT = """
import pathlib, sys, time
from edge_node.store import NewReading, Store, StoreError

state, switch = map(pathlib.Path, sys.argv[1:])
store = Store(state / "buffer.db", max_rows=1000, max_bytes=10**8, sync_interval_s=1)
store.open()
store.append([NewReading("t", {"v": 1.0}, (), time.time(), 0.0, "boot", True)])
switch.touch()  # from now on every fsync/fdatasync on the card fails with EIO
try:
    store.sync()
    sys.exit("sync() met no failing fdatasync: it did not sync the WAL")
except StoreError:
    pass
switch.unlink()
store.sync()  # the healthy card takes it
switch.touch()
store.sync()  # nothing stored since: no fdatasync, so the failing card goes unnoticed
switch.unlink()
store.close()
"""


def test_sync_fsyncs_the_wal(card):
    """Proven on a card whose fdatasync fails (the EIO shim): sync() reaches the card after a
    commit, and makes no call when nothing was stored since the last sync."""
    on_card = card("sync")
    result = on_card.run(SYNC_SCRIPT, str(on_card.state), str(on_card.switch))
    assert result.returncode == 0, result.stderr


def test_a_corrupt_buffer_is_moved_aside_and_the_seq_goes_on(open_store, tmp_path):
    store = open_store()
    store.append([reading() for _ in range(5)])
    store.close()
    (tmp_path / "buffer.db").write_bytes(b"this is not a database" * 100)
    store = open_store()
    assert store.moved_aside is not None and store.moved_aside.name.startswith("buffer.db.corrupt-")
    assert store.moved_aside.read_bytes().startswith(b"this is not a database"), "kept for forensics"
    assert store.backlog == 0
    assert store.append([reading()])[0] > 5, "a seq that may have been sent is never reused"


def test_a_deleted_buffer_does_not_restart_the_seq(open_store, tmp_path):
    store = open_store()
    store.append([reading() for _ in range(3)])
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"buffer.db{suffix}").unlink(missing_ok=True)
    store = open_store()
    assert store.append([reading()])[0] > 3


def test_an_unreadable_directory_is_an_error_not_a_move(tmp_path):
    store = Store(
        tmp_path / "missing-dir-is-a-file" / "buffer.db", max_rows=1000, max_bytes=10**8, sync_interval_s=1
    )
    (tmp_path / "missing-dir-is-a-file").write_text("")
    with pytest.raises(BufferPathError, match="missing-dir-is-a-file: cannot hold the buffer"):
        store.open()
    assert not store.is_open


def test_acknowledged_rows_leave_with_the_next_commit(open_store):
    store = open_store()
    store.append([reading() for _ in range(3)])
    store.ack([1, 2])
    assert store.backlog == 1, "acknowledged rows no longer count as waiting"
    assert store.oldest_unsent_wall() == store.fetch(2)[0].wall
    store.append([reading()])
    assert [r.seq for r in store.fetch(0)] == [3, 4]
    assert store.acked_waiting == 0


def test_acked_rows_are_deleted_at_close_and_the_seq_survives_an_empty_buffer(open_store):
    store = open_store()
    store.append([reading() for _ in range(3)])
    store.ack([1, 2, 3])
    store.close()
    store = open_store()
    assert store.backlog == 0 and store.fetch(0) == []
    assert store.append([reading()]) == [4]


def _reservation(tmp_path) -> dict:
    return json.loads((tmp_path / "buffer.db.seq").read_text())


def test_a_clean_stop_lets_the_next_start_continue_without_a_jump(open_store, tmp_path):
    store = open_store()
    store.append([reading() for _ in range(3)])
    store.close()
    assert _reservation(tmp_path)["clean"] is True
    assert open_store().append([reading()]) == [4]


def test_an_unclean_stop_in_an_earlier_boot_never_reuses_a_seq(open_store, tmp_path):
    """A power cut can take commits whose readings were already sent: skip past the reservation."""
    store = open_store()
    store.append([reading() for _ in range(3)])
    store.close()
    record = _reservation(tmp_path)
    (tmp_path / "buffer.db.seq").write_text(
        json.dumps({**record, "reserved": 500, "clean": False, "boot_id": "an-earlier-boot"})
    )
    assert open_store().append([reading()]) == [500]


def test_a_crash_in_this_boot_continues_from_the_buffer(open_store, tmp_path):
    store = open_store()
    store.append([reading() for _ in range(3)])
    store.close()
    record = _reservation(tmp_path)
    (tmp_path / "buffer.db.seq").write_text(json.dumps({**record, "reserved": 500, "clean": False}))
    assert open_store().append([reading()]) == [4], "SIGKILL loses no commit: no gap needed"


def test_an_unreadable_seq_reservation_keeps_the_buffer_closed(tmp_path):
    """Without its reservation a new buffer could reuse seqs: better to wait for the card (the
    daemon samples into memory meanwhile) than to guess."""
    (tmp_path / "buffer.db.seq").mkdir()  # reading it fails as a failing card's read would (an OSError)
    store = Store(tmp_path / "buffer.db", max_rows=1000, max_bytes=10**8, sync_interval_s=1)
    with pytest.raises(StoreError, match=r"buffer\.db\.seq: cannot read"):
        store.open()
    assert not store.is_open


@pytest.mark.parametrize(
    "content", [b"\xff\xfe\x00garbage\n", b"null\n", b"[10001]\n", b'{"reserved": "9"}\n']
)
def test_a_damaged_seq_reservation_is_reported_and_the_buffer_opens(tmp_path, content, caplog):
    (tmp_path / "buffer.db.seq").write_bytes(content)
    store = Store(tmp_path / "buffer.db", max_rows=1000, max_bytes=10**8, sync_interval_s=1)
    store.open()
    try:
        assert store.is_open and store.next_seq == 1
        assert "buffer.db.seq: unreadable" in caplog.text
    finally:
        store.close()


# -- card writes (issue 17) -------------------------------------------------------------------------


def test_a_live_node_appends_one_wal_frame_per_commit(open_store):
    """Steady state of a connected node at the nominal rate (a bme280 reading every 5 s, a host
    reading with every other one): each commit deletes the rows acknowledged since the last, then
    inserts; the few live rows stay in the table's root page, so a commit appends one 536-byte
    frame (a 512-byte page and its header) to the WAL. Inserting first overflowed the page: a new
    leaf, the root, the freelist, four frames a commit."""
    store = open_store()
    wal = store.path.with_name(store.path.name + "-wal")
    boot = "0f0e0d0c-0b0a-0908-0706-050403020100"
    bme = NewReading(
        "bme280", {"temperature": 21.37, "humidity": 55.2, "pressure": 1013.25}, (), 0, 0, boot, True
    )
    host = NewReading(
        "host", {"cpu_temp_c": 51.2, "load1": 0.31, "mem_available_mb": 3012.0, "disk_free_mb": 20417.0},
        (), 0, 0, boot, True,
    )  # fmt: skip
    commits = [[bme], [bme, host]] * 30
    for batch in commits[:6]:  # past the first commits, which create the pages
        store.ack(store.append(batch))
    before = wal.stat().st_size
    for batch in commits[6:]:
        store.ack(store.append(batch))
    assert (wal.stat().st_size - before) / len(commits[6:]) == 512 + 24


def test_sync_is_due_one_interval_after_the_oldest_unsynced_commit(open_store):
    store = open_store(sync_interval_s=10)
    assert store.sync_due_in() is None  # nothing stored: no sync, however long
    store.append([reading()])
    assert 9.5 < store.sync_due_in() <= 10
    time.sleep(0.2)
    store.append([reading()])  # the deadline is the oldest commit's, not the newest
    assert store.sync_due_in() <= 9.8
    store.sync()
    assert store.sync_due_in() is None
    store.ack([1, 2])
    store.flush_acked()  # deleting delivered rows is not worth an fsync: a power cut only resends them
    assert store.sync_due_in() is None


def test_sync_skips_the_fdatasync_when_nothing_was_stored(open_store, monkeypatch):
    import os

    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    store = open_store()
    store.sync()
    assert calls == []
    store.append([reading()])
    store.sync()
    store.sync()
    assert len(calls) == 1


def test_readings_the_broker_acknowledged_in_time_wait_longer_for_their_sync(open_store):
    """A delivered reading is not the buffer's to lose: its commit is synced within
    DELIVERED_SYNC_FACTOR intervals (to notice a failing card), an undelivered one within one."""
    from edge_node.store import DELIVERED_SYNC_FACTOR

    store = open_store(sync_interval_s=10)
    store.ack(store.append([reading()]))
    assert 10 * (DELIVERED_SYNC_FACTOR - 1) < store.sync_due_in() <= 10 * DELIVERED_SYNC_FACTOR
    store.append([reading()])  # not acknowledged: the power-cut window applies
    assert 9.5 < store.sync_due_in() <= 10
    store.sync()
    assert store.sync_due_in() is None
    store.add_dropped(3)  # the dropped count is the buffer's alone: one interval
    assert 9.5 < store.sync_due_in() <= 10
