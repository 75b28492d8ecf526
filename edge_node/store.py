"""The durable buffer: SQLite in WAL mode, the only place a reading lives until PUBACK.

Contract (DESIGN §3):
- a reading is committed as soon as it is read, so SIGKILL loses nothing committed;
- every reading gets a node-wide `seq` that is never reused, even after sent rows are deleted;
- rows are deleted only after the broker acknowledged the message that carried them;
- when full, the oldest unsent rows are dropped, and the number dropped is persisted;
- a power cut loses at most the last `sync_interval_s` of commits.

Why not `synchronous=FULL`: it fsyncs on every commit, which at a street node's rate costs
hundreds of MB of flash writes a day. We run `synchronous=NORMAL` (a commit survives a process
crash, the database stays consistent after a power cut) and fdatasync the WAL ourselves once the
oldest reading not yet on the card and not yet acknowledged by the broker is `sync_interval_s`
old: that bounds what a power cut can take (a reading the broker has is not the buffer's to
lose), with at most one sync per interval, none while nothing was stored, and, while the broker
takes every reading in time, one every DELIVERED_SYNC_FACTOR intervals (the kernel writes those
pages back by itself within ~30 s; the sync is there to notice a card that fails its syncs).
Flash writes are then set by the 4 KiB pages dirtied between syncs (each sync cleans the WAL's
last page, and the next commit dirties it again: one page per interval is the floor), so:
- 512-byte pages: a small commit appends a 536-byte WAL frame, not a 4 KiB one;
- a reading's commit first deletes the rows acknowledged since the last one, then inserts: the
  few live rows stay within the table's one root page, so a commit is one frame (inserting
  first overflowed the page: a new leaf, the root and the freelist, four frames a commit);
- the WAL is checkpointed every `CHECKPOINT_FRAMES` frames (4 MiB), not SQLite's 1000: each
  checkpoint costs two fsyncs, and a small table rewrites the same few pages each time;
- `locking_mode=EXCLUSIVE`: the WAL index lives in our memory, not in a -shm file that would be
  written back too (the daemon is the buffer's only user while it runs).
`bench/run.py` (fig_idle_and_disk) measures the bytes and counts the fsyncs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .clock import boot_id, format_ts

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq     INTEGER PRIMARY KEY,  -- node-wide, never reused
    sensor  TEXT    NOT NULL,
    wall    REAL    NOT NULL,     -- time.time() when read
    mono    REAL    NOT NULL,     -- CLOCK_BOOTTIME when read, to correct `wall` after a clock sync
    boot_id TEXT    NOT NULL,
    synced  INTEGER NOT NULL,     -- was the wall clock synchronised when read
    body    TEXT    NOT NULL      -- the reading as sent: '{"seq":..,"ts":..,"values":{..},"quality":[..]}'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS units (sensor TEXT PRIMARY KEY, units TEXT NOT NULL);
-- readings the broker refused on their own, for good (issue 10): kept, but not sent again
CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY, reason_code INTEGER NOT NULL);
"""

KEEP_QUARANTINED = 3  # corrupt buffers kept for forensics; older ones are deleted (a small card)
SEQ_BLOCK = 10_000  # seqs reserved outside the buffer at a time (one small fsynced write each)
DELIVERED_SYNC_FACTOR = 10  # readings the broker acknowledged in time: synced every 10 intervals at most
CHECKPOINT_FRAMES = 8192  # WAL frames (512 B pages) between checkpoints: 4 MiB, = journal_size_limit

# Per-row bytes besides the body: rowid, reals, boot id, cell headers. Used for `max_bytes`.
ROW_OVERHEAD = 72


class StoreError(Exception):
    """The buffer cannot be opened or written."""


class BufferPathError(StoreError):
    """The buffer's path cannot be used at all (not a directory, no permission): a setup error to
    fix and say so, not a failing card to wait out."""


class CorruptBuffer(StoreError):
    """The buffer file is damaged; it is moved aside rather than crash-looping on it."""


@dataclass(frozen=True, slots=True)
class NewReading:
    """A reading as the sampler hands it to the store, before it has a seq."""

    sensor: str
    values: Mapping[str, float]
    quality: tuple[str, ...]
    wall: float
    mono: float
    boot_id: str
    synced: bool
    meta: Mapping | None = None  # calibration and corrections applied, as sent on the wire


class StoredReading(NamedTuple):  # a tuple: the backlog drain makes millions of these
    seq: int
    sensor: str
    wall: float
    mono: float
    boot_id: str
    synced: bool
    body: str


def encode_body(
    seq: int, wall: float, values: Mapping[str, float], quality: Iterable[str], meta: Mapping | None = None
) -> str:
    """The reading's JSON as it goes on the wire, rendered once, when it is stored: a backlog is
    then sent by joining stored texts, with no per-reading work on the hot path."""
    body: dict = {"seq": seq, "ts": format_ts(wall), "values": values, "quality": list(quality)}
    if meta:
        body["meta"] = meta
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def _runs(seqs: list[int]) -> Iterator[tuple[int, int]]:
    """[1, 2, 3, 7, 8] -> (1, 3), (7, 8): acknowledged seqs come in long runs while draining."""
    start = prev = seqs[0]
    for seq in seqs[1:]:
        if seq != prev + 1:
            yield start, prev
            start = seq
        prev = seq
    yield start, prev


class Store:
    def __init__(self, path: str | os.PathLike, *, max_rows: int, max_bytes: int, sync_interval_s: float):
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.sync_interval_s = sync_interval_s
        self._db: sqlite3.Connection | None = None
        self._wal_fd: int | None = None
        self._rows = 0
        self._bytes = 0
        self._next_seq = 1
        self._dropped = 0
        self._units: dict[str, str] = {}
        self._reserved = 0
        self._acked: set[int] = set()
        self.appended_since_sync = False  # readings stored since the last sync (acks then go with them)
        self._unsynced_since: float | None = None  # monotonic time of the oldest commit not yet synced
        self._must_sync_since: float | None = None  # ... of the oldest that a power cut must not take
        self._undelivered: dict[int, float] = {}  # seq -> commit time, of readings stored since the last
        self._undelivered_lock = threading.Lock()  # sync and not yet acknowledged (sync() runs in a thread)
        self._sync_failed = False
        self.moved_aside: Path | None = None

    # -- life cycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def open(self) -> None:
        """Open (or create) the buffer; a corrupt file is moved aside and a new one started.

        Raises StoreError, leaving the store closed, when the card cannot be read or written:
        the caller keeps sampling into memory and tries again later. May take minutes on a big
        buffer (quick_check): the daemon runs it in a thread. `is_open` turns true only at the
        very end, when `next_seq` is final."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if err.errno in (errno.EIO, errno.EROFS, errno.ENOSPC):  # the card, not the setup
                raise StoreError(f"{self.path}: cannot open buffer: {err}") from err
            raise BufferPathError(f"{self.path.parent}: cannot hold the buffer: {err.strerror}") from err
        db = None
        try:
            try:
                db, fresh = self._open_db()
            except CorruptBuffer as err:
                self._check_readable()  # a card that fails reads is not a corrupt file: keep it
                self.moved_aside = self._move_aside()
                log.error("%s; moved aside to %s, starting a new buffer", err, self.moved_aside)
                db, fresh = self._open_db()
            self._continue_seq(fresh)
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except BaseException as err:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            if isinstance(err, OSError):
                raise StoreError(f"{self.path}: cannot open buffer: {err}") from err
            raise
        self._db = db
        log.info(
            "buffer %s: %d rows waiting, next seq %d, %d dropped so far",
            self.path,
            self._rows,
            self._next_seq,
            self._dropped,
        )

    def _continue_seq(self, fresh: bool) -> None:
        reservation = self._read_reservation()
        reserved = reservation.get("reserved", 0)
        # After a clean stop, or a crash of this process only (the page cache kept every commit),
        # the buffer knows the last seq used. After a lost buffer, or an unclean stop in an
        # earlier boot (a power cut may have taken commits whose readings were already sent),
        # it may not: continue above everything reserved, never reusing a seq.
        power_lost = not reservation.get("clean", True) and reservation.get("boot_id") != boot_id()
        if (fresh or power_lost) and reserved > self._next_seq:
            log.warning(
                "continuing the node's seq at %d (%s)",
                reserved,
                "new buffer" if fresh else "unclean stop in an earlier boot",
            )
            self._next_seq = reserved
        try:
            self._reserve(self._next_seq, force=True)
        except OSError as err:  # e.g. a full disk: appends will retry, and fail as StoreError
            log.error("%s: cannot write: %s", self._reservation_path, err)

    def _check_readable(self) -> None:
        """Read the buffer's files through: EIO means a failing card, which quick_check can report
        as a malformed database; moving the file aside would then abandon readings for nothing."""
        for suffix in ("", "-wal"):
            try:
                with open(f"{self.path}{suffix}", "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
            except FileNotFoundError:
                continue
            except OSError as err:
                raise StoreError(f"{self.path}{suffix}: cannot read: {err}") from err

    def _open_db(self) -> tuple[sqlite3.Connection, bool]:
        """Connect, check, load counters; and whether the buffer is new (no seq ever used)."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as err:
            if not os.access(self.path.parent, os.W_OK | os.X_OK) and not _read_only(self.path.parent):
                raise BufferPathError(f"{self.path}: cannot open buffer: {err}") from err
            raise StoreError(f"{self.path}: cannot open buffer: {err}") from err
        try:
            db.execute("PRAGMA page_size=512")
            db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_FRAMES}")
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # 256 KiB of page cache, not 2 MiB: draining 1M rows reads each page once, and the
            # kernel caches the file anyway; this keeps the daemon's RSS within 5 MB of idle.
            db.execute("PRAGMA cache_size=-256")
            db.execute(f"PRAGMA journal_size_limit={CHECKPOINT_FRAMES * 512}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise CorruptBuffer(f"{self.path}: buffer failed quick_check: {check}")
            db.executescript(SCHEMA)
            hwm = db.execute("SELECT value FROM meta WHERE key='seq_hwm'").fetchone()
            top = db.execute("SELECT max(seq) FROM readings").fetchone()[0]
            dropped = db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
            rows, data = db.execute(
                "SELECT count(*), coalesce(sum(length(body) + length(sensor)), 0) FROM readings"
            ).fetchone()
            units = dict(db.execute("SELECT sensor, units FROM units"))
        except sqlite3.DatabaseError as err:
            db.close()
            if isinstance(err, sqlite3.OperationalError) and "malformed" not in str(err):
                raise StoreError(f"{self.path}: cannot open buffer: {err}") from err
            raise CorruptBuffer(f"{self.path}: buffer is corrupt: {err}") from err
        except CorruptBuffer:
            db.close()
            raise
        self._next_seq = max(hwm[0] if hwm else 0, top or 0) + 1
        self._dropped = dropped[0] if dropped else 0
        self._rows, self._bytes = rows, data + rows * ROW_OVERHEAD
        self._units = units
        return db, hwm is None and top is None

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        self._prune_quarantined()
        return aside

    def _prune_quarantined(self) -> None:
        prefix = f"{self.path.name}.corrupt-"
        stamps = sorted(
            {
                p.name[len(prefix) :].removesuffix("-wal").removesuffix("-shm")
                for p in self.path.parent.iterdir()
                if p.name.startswith(prefix)
            }
        )  # the stamps are %Y%m%dT%H%M%S: sorted is oldest first
        for stamp in stamps[:-KEEP_QUARANTINED]:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (self.path.parent / f"{prefix}{stamp}{suffix}").unlink()

    # The seq high-water mark also lives outside the buffer, reserved a block at a time, so
    # that a lost or corrupt buffer never makes the node reuse a seq (DESIGN §3, Corruption).

    @property
    def _reservation_path(self) -> Path:
        return self.path.with_name(self.path.name + ".seq")

    def _read_reservation(self) -> dict:
        try:
            raw = self._reservation_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:  # a failing card: without it a new buffer could reuse seqs
            raise StoreError(f"{self._reservation_path}: cannot read: {err}") from err
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                data = {"reserved": data}
            if type(data.get("reserved", 0)) is not int:
                raise ValueError(f"reserved is {data.get('reserved')!r}, not an integer")
            return data
        except ValueError as err:  # damaged, not unreadable: the buffer alone still knows its seqs
            log.warning("%s: unreadable (%s); relying on the buffer alone", self._reservation_path, err)
            return {}

    def _reserve(self, upto: int, *, force: bool = False, clean: bool = False) -> None:
        """Record, durably, that seqs below `reserved` may be in use; `clean` at a clean stop."""
        if upto < self._reserved and not force:
            return
        reserved = upto if clean else upto + SEQ_BLOCK
        record = {"reserved": reserved, "boot_id": boot_id(), "clean": clean}
        tmp = self._reservation_path.with_suffix(".seq.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._reservation_path)
        _fsync_dir(self._reservation_path.parent)  # the rename too must survive a power cut
        self._reserved = reserved

    def close(self) -> None:
        """Never raises on a failing card, so that the daemon's own error is not masked: acked rows
        that could not be deleted are sent again after the restart (duplicates, never losses)."""
        if self._db is not None:
            with contextlib.suppress(StoreError):
                self.flush_acked()
            # A stop is clean only if every commit reached the card: else a power cut could still
            # take seqs already sent, and the next start must continue above the reservation.
            clean = not self._sync_failed
            try:
                self.sync()
                self._db.close()
            except (StoreError, sqlite3.Error) as err:
                log.error("%s: closing: %s", self.path, err)
                clean = False
            if clean:
                with contextlib.suppress(OSError):
                    self._reserve(self._next_seq, force=True, clean=True)
            self._db = None
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    # -- figures for health -----------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Rows that still await their PUBACK."""
        return max(0, self._rows - len(self._acked))

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def next_seq(self) -> int:
        """The seq the next appended reading will get; every stored seq is below it."""
        return self._next_seq

    def oldest_unsent_wall(self) -> float | None:
        try:
            cur = self._conn.execute(
                "SELECT seq, wall FROM readings ORDER BY seq LIMIT ?", (len(self._acked) + 1,)
            )
            return next((wall for seq, wall in cur if seq not in self._acked), None)
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot read the buffer: {err}") from err

    def units_json(self, sensor: str) -> str:
        return self._units.get(sensor, "{}")

    # -- writing ----------------------------------------------------------------------------

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: buffer is not open")
        return self._db

    def set_units(self, sensor: str, units: Mapping[str, str]) -> None:
        encoded = json.dumps(dict(units), sort_keys=True, separators=(",", ":"))
        if self._units.get(sensor) != encoded:
            self._units[sensor] = encoded  # what goes on the wire; the stored copy is for after a restart
            try:
                self._conn.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (sensor, encoded))
            except sqlite3.Error as err:  # written again at the next start, which reads the old copy
                log.warning("%s: cannot record %s's units: %s", self.path, sensor, err)

    def append(self, readings: list[NewReading]) -> list[int]:
        """Commit readings in one transaction; returns their seqs."""
        rows = []
        added = 0
        seq = self._next_seq
        for r in readings:
            body = encode_body(seq, r.wall, r.values, r.quality, r.meta)
            rows.append((seq, r.sensor, r.wall, r.mono, r.boot_id, int(r.synced), body))
            added += len(body) + len(r.sensor) + ROW_OVERHEAD
            seq += 1
        db = self._conn
        acked = sorted(self._acked)
        try:
            self._reserve(seq)
            db.execute("BEGIN")
            gone, gone_bytes = self._delete_rows(db, acked)  # first: the page then has room (docstring)
            db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"{self.path}: cannot store readings: {err}") from err
        self._acked.difference_update(acked)
        self._rows -= gone
        self._bytes -= gone_bytes
        self._stored([row[0] for row in rows])
        self._next_seq = seq
        self._rows += len(rows)
        self._bytes += added
        if self._rows > self.max_rows or self._bytes > self.max_bytes:
            self._drop_oldest()
        return [row[0] for row in rows]

    def _drop_oldest(self) -> None:
        """Make room, oldest unsent first. Never raises: the readings just appended are committed."""
        try:
            self.flush_acked()  # what was delivered goes first, and is not counted as dropped
        except StoreError as err:
            log.error("%s", err)
        excess_rows = max(0, self._rows - self.max_rows)
        if self._bytes > self.max_bytes and self._rows:
            mean = self._bytes / self._rows
            excess_rows = max(excess_rows, int((self._bytes - self.max_bytes) / mean) + 1)
        excess_rows = min(excess_rows, self._rows)
        if not excess_rows:
            return
        db = self._conn
        try:
            db.execute("BEGIN")
            top, count, data = db.execute(
                "SELECT max(seq), count(*), sum(length(body) + length(sensor)) FROM "
                "(SELECT seq, body, sensor FROM readings ORDER BY seq LIMIT ?)",
                (excess_rows,),
            ).fetchone()
            db.execute("DELETE FROM readings WHERE seq <= ?", (top,))
            self._bump_meta(db, seq_hwm=top, dropped=count)
            db.execute("COMMIT")
            self._stored()
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.error("%s: buffer full, and dropping the oldest failed: %s", self.path, err)
            return
        self._rows -= count
        self._bytes -= data + count * ROW_OVERHEAD
        self._dropped += count
        log.warning(
            "buffer full: dropped the %d oldest unsent readings (up to seq %d); %d dropped in all",
            count,
            top,
            self._dropped,
        )

    def add_dropped(self, count: int) -> None:
        """Readings lost outside the buffer (held in memory while it could not be written)."""
        try:
            self._bump_meta(self._conn, seq_hwm=0, dropped=count)
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot count dropped readings: {err}") from err
        self._stored()
        self._dropped += count

    @staticmethod
    def _bump_meta(db: sqlite3.Connection, *, seq_hwm: int, dropped: int = 0) -> None:
        db.execute(
            "INSERT INTO meta VALUES ('seq_hwm', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=max(value, excluded.value)",
            (seq_hwm,),
        )
        if dropped:
            db.execute(
                "INSERT INTO meta VALUES ('dropped', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=value + excluded.value",
                (dropped,),
            )

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these rows: they go with the next commit (or `flush_acked`)."""
        seqs = list(seqs)
        self._acked.update(seqs)
        with self._undelivered_lock:
            for seq in seqs:
                self._undelivered.pop(seq, None)

    @property
    def acked_waiting(self) -> int:
        return len(self._acked)

    def flush_acked(self) -> int:
        """Delete the acknowledged rows now, in a transaction of their own. Returns how many went."""
        acked = sorted(self._acked)
        if not acked:
            return 0
        db = self._conn
        try:
            db.execute("BEGIN")
            count, freed = self._delete_rows(db, acked)
            top = db.execute("SELECT max(seq) FROM readings").fetchone()[0]
            if top is None or top < acked[-1]:  # the table no longer shows the highest seq used
                self._bump_meta(db, seq_hwm=acked[-1])
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"{self.path}: cannot delete acknowledged readings: {err}") from err
        self._acked.difference_update(acked)
        self._rows -= count
        self._bytes -= freed
        return count

    @staticmethod
    def _delete_rows(db: sqlite3.Connection, seqs: list[int]) -> tuple[int, int]:
        """Delete these (sorted) seqs, a range statement per run of consecutive ones."""
        count = data = 0
        if not seqs:
            return 0, 0
        for first, last in _runs(seqs):
            # RETURNING: the sizes come from the pages the delete visits anyway (a SELECT of them
            # first read every row twice: 2 us a row of a backlog's drain)
            sizes = db.execute(
                "DELETE FROM readings WHERE seq BETWEEN ? AND ? RETURNING length(body) + length(sensor)",
                (first, last),
            ).fetchall()
            count += len(sizes)
            data += sum(size for (size,) in sizes)
        return count, data + count * ROW_OVERHEAD  # rows, and the bytes they counted for

    def _stored(self, seqs: list[int] | None = None) -> None:
        """Readings (`seqs`) or the dropped count (None) were committed."""
        self.appended_since_sync = True
        now = time.monotonic()
        if self._unsynced_since is None:
            self._unsynced_since = now
        if seqs is None:
            if self._must_sync_since is None:
                self._must_sync_since = now
            return
        with self._undelivered_lock:
            for seq in seqs:
                self._undelivered[seq] = now

    def sync_due_in(self) -> float | None:
        """Seconds until a sync is due; None while nothing was committed since the last.

        Due when the oldest reading committed since the last sync and not yet acknowledged by the
        broker is `sync_interval_s` old (the power-cut window: DESIGN §3). A reading the broker
        has acknowledged is no longer the buffer's to lose, so readings delivered in time need no
        fsync of their own: at least every DELIVERED_SYNC_FACTOR intervals all the same, so that
        a card that fails its syncs is noticed while the broker is up too. Deleting acknowledged
        rows needs none: a power cut that undid it would only make the node send them again."""
        if self._unsynced_since is None:
            return None
        due = self._unsynced_since + DELIVERED_SYNC_FACTOR * self.sync_interval_s
        if self._must_sync_since is not None:
            due = min(due, self._must_sync_since + self.sync_interval_s)
        with self._undelivered_lock:
            oldest = next(iter(self._undelivered.values()), None)  # kept in commit order
        if oldest is not None:
            due = min(due, oldest + self.sync_interval_s)
        return due - time.monotonic()

    def sync(self) -> None:
        """Make every commit so far survive a power cut (see module docstring); no fdatasync when
        nothing was stored since the last. Thread-safe."""
        since, self._unsynced_since = self._unsynced_since, None
        must, self._must_sync_since = self._must_sync_since, None
        with self._undelivered_lock:
            undelivered, self._undelivered = self._undelivered, {}
        self.appended_since_sync = False
        try:
            if self._wal_fd is not None and since is not None:
                os.fdatasync(self._wal_fd)
        except OSError as err:
            self.appended_since_sync = True  # still not on the card
            if self._unsynced_since is None:
                self._unsynced_since = since
            if self._must_sync_since is None:
                self._must_sync_since = must
            with self._undelivered_lock:
                self._undelivered = {**undelivered, **self._undelivered}
            # and maybe never: Linux may drop the pages a failed fsync left, so a later fsync that
            # succeeds proves nothing about them; the stop can no longer be called clean
            self._sync_failed = True
            raise StoreError(f"{self.path}: cannot sync the buffer to the card: {err}") from err

    # -- quarantine (issue 10) ----------------------------------------------------------------

    def quarantine(self, seq: int, reason_code: int) -> None:
        """The broker refused this one reading for good: keep it, and stop sending it."""
        try:
            with self._conn:
                self._conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?)", (seq, reason_code))
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot quarantine seq {seq}: {err}") from err

    def quarantined(self) -> set[int]:
        """The quarantined seqs still in the buffer (the full buffer drops them as any other)."""
        try:
            with self._conn:
                self._conn.execute("DELETE FROM quarantine WHERE seq NOT IN (SELECT seq FROM readings)")
                return {seq for (seq,) in self._conn.execute("SELECT seq FROM quarantine")}
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot read the quarantine: {err}") from err

    # -- reading ----------------------------------------------------------------------------

    def fetch(self, after: int, before: int | None = None, limit: int = 1000) -> list[StoredReading]:
        """Rows with after < seq < before, oldest first."""
        if before is None:
            before = self._next_seq
        try:
            cur = self._conn.execute(
                "SELECT seq, sensor, wall, mono, boot_id, synced, body FROM readings "
                "WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after, before, limit),
            )
            return list(map(StoredReading._make, cur))
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot read the buffer: {err}") from err


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # a file system that cannot sync a directory (vfat, some FUSE)
            raise
    finally:
        os.close(fd)


def _read_only(path: Path) -> bool:
    """A card the kernel remounted read-only after errors: a fault to report, not a setup error."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
