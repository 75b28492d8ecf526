"""Issue 6 faults, first part: a wrong clock at start, and a corrupt buffer at start."""

from __future__ import annotations

import time

from .conftest import gaps, start_daemon, write_config

UNSYNCED_FOR_4_S = """
[[simulation.faults]]
sensor = "host"
fault = "clock_unsynced"
at_s = 0
for_s = 4
"""

NEVER_SYNCED = """
[[simulation.faults]]
sensor = "host"
fault = "clock_unsynced"
at_s = 0
"""


def test_readings_taken_before_the_clock_synced_are_sent_corrected(
    tmp_path, persistent_broker, recorder_factory, daemons
):
    broker = persistent_broker
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text() + UNSYNCED_FOR_4_S)
    broker.stop()  # the readings taken while unsynced wait in the buffer until after the sync
    daemons.append(start_daemon(config))
    time.sleep(7)
    broker.start()
    rec.wait_for(lambda: len(rec.seqs()) >= 14 and gaps(rec.seqs()) == [], timeout=30, what="the backlog")
    early = [r for r in rec.readings() if r["seq"] <= 4]
    assert early and all("clock_corrected" in r["quality"] for r in early)
    assert not any(r.get("clock") == "unsynced" for r in rec.readings())
    assert rec.invalid == []


def test_a_node_that_never_syncs_marks_its_readings_unsynced(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    config.write_text(config.read_text() + NEVER_SYNCED)
    daemons.append(start_daemon(config))
    rec.wait_seq(6)
    late = [r for r in rec.readings() if r["seq"] >= 3]
    assert late and all(r["clock"] == "unsynced" for r in late)
    assert rec.invalid == []


def test_a_corrupt_buffer_is_moved_aside_and_the_node_goes_on_with_new_seqs(
    tmp_path, broker, recorder_factory, daemons
):
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url)
    proc = start_daemon(config)
    daemons.append(proc)
    rec.wait_seq(4)
    proc.terminate()
    assert proc.wait(15) == 0
    last = max(rec.seqs())
    buffer = tmp_path / "state" / "buffer.db"
    buffer.write_bytes(b"\x00garbage from a dying card" * 1000)
    proc = start_daemon(config)
    daemons.append(proc)
    rec.wait_for(lambda: max(rec.seqs()) > last + 2, timeout=20, what="readings from the new buffer")
    assert min(s for s in rec.seqs() if s > last) > last, "no seq reused"
    assert list((tmp_path / "state").glob("buffer.db.corrupt-*")), "kept for forensics"
    proc.terminate()
    out = proc.communicate(timeout=15)[0].decode()
    assert "moved aside" in out
