"""The card under the buffer starts failing with EIO, as a dying SD card does, then heals: sampling
goes on into memory, the heartbeat reports the buffer's fault, nothing is lost or sent twice under
one seq, and everything is stored and delivered once the card answers again (issue 6).

The failure is injected by tests/faults/eio_preload.c (LD_PRELOAD), switched on and off by a file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime

from edge_node.store import NewReading, Store

from .conftest import Card, gaps, start_daemon, write_config

FAULT_S = 10


def test_the_shim_makes_sqlite_see_a_disk_io_error(card):
    """The fault is real to SQLite: its writes go through the interposed calls."""
    c = card()
    script = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute('CREATE TABLE t (x)')\n"
        "open(sys.argv[2], 'w').close()\n"
        "try:\n"
        "    db.execute('INSERT INTO t VALUES (1)')\n"
        "except sqlite3.OperationalError as err:\n"
        "    print(err)\n"
    )
    probe = c.run(script, str(c.state / "probe.db"), str(c.switch))
    assert probe.stdout.strip() == "disk I/O error", probe.stderr


def _ts(reading: dict) -> float:
    return datetime.fromisoformat(reading["ts"].replace("Z", "+00:00")).timestamp()


def _names_io_error(error: str) -> bool:
    return "I/O error" in error or "Input/output error" in error  # SQLite's words, or strerror(EIO)'s


def _buffer_faults(rec) -> list[str]:
    return [h["buffer"]["error"] for h in rec.payloads("/heartbeat") if "buffer" in h]


def _wait_buffer_fault(rec, proc) -> str:
    try:
        rec.wait_for(lambda: _buffer_faults(rec), timeout=30, what="the buffer's fault in a heartbeat")
    except AssertionError as err:
        proc.kill()
        raise AssertionError(f"{err}; the daemon said:\n{_tail(proc)}") from None
    assert proc.poll() is None, f"a failing card never kills the daemon:\n{_tail(proc)}"
    return _buffer_faults(rec)[0]


def _tail(proc) -> str:
    return proc.communicate(timeout=30)[0].decode(errors="replace")[-4000:]


def _wait_recovered(rec) -> None:
    def healthy() -> bool:
        beats = rec.payloads("/heartbeat")
        return bool(beats) and "buffer" not in beats[-1]

    rec.wait_for(healthy, timeout=30, what="the buffer's fault to clear")


def _audit(rec, proc) -> list[dict]:
    """Every seq from 1 arrived, none was given to two readings, nothing dropped, clean stop."""
    top = max(rec.seqs())
    rec.wait_seq(top + 4, timeout=30)  # sampling, storing and sending go on
    rec.wait_for(lambda: min(rec.seqs()) == 1 and gaps(rec.seqs()) == [], timeout=30, what="the backlog")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    readings = rec.readings()
    seqs = rec.seqs()
    assert min(seqs) == 1 and gaps(seqs) == []
    first: dict[int, tuple] = {}
    for r in readings:  # a duplicate (at least once) is fine, a seq reused for another reading is not
        same = (r["sensor"], r["ts"], r["values"])
        assert first.setdefault(r["seq"], same) == same, f"seq {r['seq']} reused"
    assert rec.payloads("/heartbeat")[-1]["dropped"] == 0, "the in-memory overflow held everything"
    assert rec.invalid == []
    return readings


def _fail_for_a_while(tmp_path, broker, recorder_factory, daemons, card: Card) -> list[str]:
    """Fail the card for FAULT_S while the daemon runs; the buffer faults its heartbeats reported."""
    rec = recorder_factory(broker.port)
    proc = start_daemon(write_config(tmp_path, broker.url), env=card.env)
    daemons.append(proc)
    rec.wait_seq(4, timeout=30)
    card.fail()
    failed_at = time.time()
    _wait_buffer_fault(rec, proc)
    time.sleep(max(0.0, failed_at + FAULT_S - time.time()))
    healed_at = time.time()
    faults = _buffer_faults(rec)
    card.heal()
    _wait_recovered(rec)
    readings = _audit(rec, proc)
    during = [r for r in readings if failed_at + 1 < _ts(r) < healed_at - 1]
    assert len(during) >= 4, "readings taken while the card failed were kept in memory and sent later"
    assert all(r["backfill"] for r in during), "held readings go as backlog, not as live ones"
    return faults


def test_write_errors_are_reported_survived_and_recovered_from(
    tmp_path, broker, recorder_factory, daemons, card
):
    faults = _fail_for_a_while(tmp_path, broker, recorder_factory, daemons, card("write,sync"))
    assert all(_names_io_error(e) for e in faults), faults


def test_read_and_write_errors_are_reported_survived_and_recovered_from(
    tmp_path, broker, recorder_factory, daemons, card
):
    faults = _fail_for_a_while(tmp_path, broker, recorder_factory, daemons, card("write,sync,read"))
    # SQLite reports a page it could not read (EIO) as "database disk image is malformed", so not
    # every message says I/O; the failed writes and WAL fsyncs do.
    assert any(_names_io_error(e) for e in faults), faults
    assert any("cannot read the buffer" in e for e in faults), faults


def test_errors_while_a_backlog_drains_lose_nothing(
    tmp_path, persistent_broker, recorder_factory, daemons, card
):
    broker = persistent_broker
    c = card("write,sync,read")
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url, forward="batch_max = 1\nbackfill_rate = 2")
    broker.stop()
    proc = start_daemon(config, env=c.env)
    daemons.append(proc)
    time.sleep(8)  # ~16 readings in the buffer, drained at 2 a second
    broker.start()
    rec.wait_for(lambda: any(r["backfill"] for r in rec.readings()), timeout=30, what="the backlog draining")
    c.fail()
    _wait_buffer_fault(rec, proc)
    time.sleep(FAULT_S / 2)
    c.heal()
    _wait_recovered(rec)
    readings = _audit(rec, proc)
    assert any(r["backfill"] for r in readings) and any(not r["backfill"] for r in readings)


def test_a_failing_wal_fsync_is_reported_and_not_fatal(tmp_path, broker, recorder_factory, daemons, card):
    c = card("sync")
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    proc = start_daemon(config, env=c.env)
    daemons.append(proc)
    rec.wait_seq(4, timeout=30)
    c.fail()
    error = _wait_buffer_fault(rec, proc)
    assert _names_io_error(error) and "sync" in error, error
    deadline = time.monotonic() + 20
    while True:  # what the technician sees on the node, once status.json has caught up
        status = subprocess.run(
            [sys.executable, "-m", "edge_node", "status", "-c", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        problems = json.loads(status.stdout)["problems"]
        if any(p.startswith("buffer in fault:") for p in problems) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status.returncode == 1 and any(p.startswith("buffer in fault:") for p in problems), problems
    seq = max(rec.seqs())
    rec.wait_seq(seq + 4, timeout=30)  # readings are still stored and sent meanwhile
    c.heal()
    _wait_recovered(rec)
    _audit(rec, proc)


RESERVATION_SCRIPT = """
import pathlib, sys
from edge_node.store import SEQ_BLOCK, NewReading, Store, StoreError

state, switch = map(pathlib.Path, sys.argv[1:])
reading = NewReading("t", {"v": 1.0}, (), 0.0, 0.0, "boot", True)

def opened():
    s = Store(state / "buffer.db", max_rows=10**6, max_bytes=10**9, sync_interval_s=1)
    s.open()
    return s

store = opened()
used = store.append([reading] * (SEQ_BLOCK - 1))  # the next append must reserve a new block
switch.touch()
try:
    store.append([reading])
    sys.exit("stored while the card failed")
except StoreError as err:
    print(err)
switch.unlink()
used += store.append([reading])
store.close()
for f in state.glob("buffer.db*"):  # the buffer is lost; its seq reservation is not
    if not f.name.endswith(".seq"):
        f.unlink()
store = opened()
print(max(used), store.append([reading])[0])
"""


def test_a_failed_seq_reservation_never_lets_a_seq_be_reused(card):
    c = card("write,sync")
    probe = c.run(RESERVATION_SCRIPT, str(c.state), str(c.switch))
    assert probe.returncode == 0, probe.stderr
    failure, seqs = probe.stdout.strip().splitlines()
    assert _names_io_error(failure), failure
    last_used, next_after_loss = map(int, seqs.split())
    assert last_used == 10_000, "the failed append took no seq"
    assert next_after_loss > last_used


def test_a_card_failing_at_start_is_waited_out_not_crash_looped(
    tmp_path, broker, recorder_factory, daemons, card
):
    """The buffer cannot even be opened: the daemon still starts, samples into memory, reports the
    fault, opens the buffer once the card answers, and goes on from the seq it had reached."""
    c = card("write,sync,read")
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    first = start_daemon(config, env=c.env)
    daemons.append(first)
    rec.wait_seq(4, timeout=30)
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    before = max(rec.seqs())

    c.fail()
    proc = start_daemon(config, env=c.env)
    daemons.append(proc)
    error = _wait_buffer_fault(rec, proc)
    assert "cannot open buffer" in error and _names_io_error(error), error
    time.sleep(4)  # readings taken meanwhile are held in memory
    assert proc.poll() is None
    c.heal()
    _wait_recovered(rec)
    _audit(rec, proc)
    assert max(rec.seqs()) > before + 4
    assert not list(c.state.glob("*corrupt*")), "a failing card is not a corrupt buffer"


CORRUPT_BUT_UNREADABLE_SCRIPT = """
import pathlib, sys
from edge_node.store import NewReading, Store, StoreError

state, switch = map(pathlib.Path, sys.argv[1:])
db = state / "buffer.db"
def store():
    return Store(db, max_rows=10**6, max_bytes=10**9, sync_interval_s=1)
s = store()
s.open()
s.append([NewReading("t", {"v": float(i)}, (), 0.0, 0.0, "boot", True) for i in range(2000)])
s.close()
with open(db, "r+b") as f:  # damage the middle of the table, keep the header
    f.seek(db.stat().st_size // 2)
    f.write(b"\\xa5" * 2048)
switch.touch()  # and the card fails reads that do not go through SQLite
s = store()
try:
    s.open()
    sys.exit("opened a corrupt buffer")
except StoreError as err:
    print(err)
print(sorted(p.name for p in state.iterdir()))
switch.unlink()
s = store()
s.open()
print(s.moved_aside is not None)
s.close()
"""


def test_a_corrupt_looking_buffer_on_an_unreadable_card_is_not_moved_aside(card):
    """quick_check can call a card's read errors corruption: the file is moved aside only when it
    reads back whole, so a failing card's readings are not abandoned for nothing."""
    c = card("plainread")
    probe = c.run(CORRUPT_BUT_UNREADABLE_SCRIPT, str(c.state), str(c.switch))
    assert probe.returncode == 0, probe.stderr
    error, files, moved_when_readable = probe.stdout.strip().splitlines()
    assert "cannot read" in error and _names_io_error(error), error
    assert "corrupt" not in files, files
    assert moved_when_readable == "True", "a readable corrupt buffer is still moved aside"


def test_the_buffer_is_opened_when_the_card_heals_even_with_no_reading_to_store(
    tmp_path, broker, recorder_factory, daemons, card
):
    """Its only sensor is in fault too, so nothing arrives to be stored: the open is still retried,
    and the backlog an earlier run left is delivered."""
    c = card("write,sync,read")
    store = Store(c.state / "buffer.db", max_rows=10**6, max_bytes=10**9, sync_interval_s=1)
    store.open()
    store.append([NewReading("bme280", {"temperature": 20.0}, (), time.time(), 1.0, "b", True)] * 20)
    store.close()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[node]\nid = "trs-nor"\n[broker]\nurl = "{broker.url}"\nkeepalive_s = 5\n'
        f'[buffer]\npath = "{c.state / "buffer.db"}"\nsync_interval_s = 1\n[health]\nheartbeat_s = 1\n'
        '[simulation]\nseed = 7\n[[simulation.faults]]\nsensor = "bme280"\nfault = "nack"\nat_s = 0\n'
        '[sensors.bme280]\ndriver = "bme280"\nbus = "sim"\ninterval_s = 1\n'
    )
    rec = recorder_factory(broker.port)
    c.fail()
    proc = start_daemon(config, env=c.env)
    daemons.append(proc)
    assert "cannot open buffer" in _wait_buffer_fault(rec, proc)
    c.heal()
    rec.wait_for(lambda: rec.seqs() >= set(range(1, 21)), timeout=30, what="the 20 waiting readings")
    _wait_recovered(rec)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


CLOSE_AFTER_FAILED_SYNC_SCRIPT = """
import json, pathlib, sys
from edge_node.store import NewReading, Store, StoreError

state, switch = map(pathlib.Path, sys.argv[1:])
s = Store(state / "buffer.db", max_rows=10**6, max_bytes=10**9, sync_interval_s=1)
s.open()
s.append([NewReading("t", {"v": 1.0}, (), 0.0, 0.0, "boot", True)] * 5)
switch.touch()
try:
    s.sync()
    sys.exit("synced on a failing card")
except StoreError:
    pass
switch.unlink()  # the card answers again, but what the failed fsync held may never reach it
s.close()
print(json.loads((state / "buffer.db.seq").read_text())["clean"])
"""


def test_a_stop_after_a_failed_fsync_is_not_recorded_as_clean(card):
    """Else, after a power cut that took commits already sent, the next start would reuse seqs."""
    c = card("sync")
    probe = c.run(CLOSE_AFTER_FAILED_SYNC_SCRIPT, str(c.state), str(c.switch))
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"
