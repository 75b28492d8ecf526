"""A network partition that blackholes traffic (no RST, no FIN): the half-open connection is
detected within two keepalives, readings pile up in the buffer, and after the link heals every
seq arrives (issue 6)."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import gaps, start_daemon, write_config
from .tcp_proxy import BlackholeProxy

KEEPALIVE_S = 5  # write_config's broker.keepalive_s


@pytest.fixture
def proxy(persistent_broker):
    p = BlackholeProxy(persistent_broker.port)
    yield p
    p.close()


def _connected(status_file) -> bool | None:
    try:
        return json.loads(status_file.read_text())["broker"]["connected"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_blackholed_link_is_detected_within_two_keepalives_and_nothing_is_lost(
    tmp_path, persistent_broker, proxy, recorder_factory, daemons
):
    rec = recorder_factory(persistent_broker.port)  # the recorder talks to the broker directly
    daemons.append(start_daemon(write_config(tmp_path, proxy.url)))
    status_file = tmp_path / "state" / "status.json"
    rec.wait_seq(4)
    deadline = time.monotonic() + 10
    while _connected(status_file) is not True and time.monotonic() < deadline:
        time.sleep(0.1)

    proxy.partition()
    cut = time.monotonic()
    while _connected(status_file) is not False:
        assert time.monotonic() - cut < 2 * KEEPALIVE_S + 2, "half-open connection not detected"
        time.sleep(0.1)
    detected_s = time.monotonic() - cut
    time.sleep(2)
    proxy.heal()
    last = max(rec.seqs())
    rec.wait_for(lambda: max(rec.seqs()) > last + 4 and gaps(rec.seqs()) == [], timeout=40, what="recovery")
    assert min(rec.seqs()) == 1 and gaps(rec.seqs()) == []
    assert detected_s <= 2 * KEEPALIVE_S + 2
    assert rec.invalid == []
