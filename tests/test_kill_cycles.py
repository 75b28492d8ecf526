"""kill -9 at random moments, many times over: the buffer passes integrity_check after every kill
and, at the end, every seq has arrived (issue 6; 10 cycles in CI, 1,000 with EDGE_NODE_SOAK=1)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from contextlib import closing

import pytest

from .conftest import gaps, start_daemon, write_config

CYCLES = 1000 if os.environ.get("EDGE_NODE_SOAK") else 10


@pytest.mark.soak
@pytest.mark.timeout(120 + CYCLES * 4)
def test_random_sigkills_never_corrupt_the_buffer_or_lose_a_reading(
    tmp_path, persistent_broker, recorder_factory, daemons
):
    rng = random.Random(6)
    rec = recorder_factory(persistent_broker.port)
    config = write_config(tmp_path, persistent_broker.url)
    buffer = tmp_path / "state" / "buffer.db"
    for _ in range(CYCLES):
        proc = start_daemon(config)
        daemons.append(proc)
        time.sleep(rng.uniform(0.2, 2.5))  # anywhere: starting, sampling, sending, deleting
        proc.kill()
        proc.wait()
        with closing(sqlite3.connect(buffer)) as db:  # closed: the daemon locks its buffer exclusively
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    proc = start_daemon(config)
    daemons.append(proc)
    rec.wait_seq(max(rec.seqs(), default=0) + 2, timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    with closing(sqlite3.connect(buffer)) as db:
        last = max(
            db.execute("SELECT value FROM meta WHERE key='seq_hwm'").fetchone()[0],
            db.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0],
        )
    rec.wait_for(lambda: max(rec.seqs()) >= last, timeout=15, what=f"seq {last}")
    seqs = rec.seqs()
    assert min(seqs) == 1 and max(seqs) == last and gaps(seqs) == []
    assert rec.invalid == []
