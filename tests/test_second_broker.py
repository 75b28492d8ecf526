"""Broker-agnostic, proven: the node, `fleet` and `ingest` end to end on Mosquitto and on a second,
independent implementation, Aedes (npm; MQTT 3.1.1, in-memory persistence). The same suite on
both: delivery through kill -9 of the node and a restart of the broker, a seq audit with no gap,
the retained status and the Last Will, seen by ingest and by the fleet view.

Aedes keeps sessions and queued messages in memory: after its restart nobody's session is left,
so, as in test_broker_restarts, the node reaches the broker through a proxy that the test uses as
a gate, letting the node back in only once ingest has subscribed again (README: broker table).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from city.db import Database
from edge_node.config import ConfigError, load_config
from operations.mosquitto import LocalBroker
from tests.aedes_broker import LocalAedes, aedes_installed
from tests.city_support import rows, scalar, start_ingest, stop, wait_until
from tests.conftest import start_daemon, write_config
from tests.tcp_proxy import BlackholeProxy

NODE = "trs-e2e1"


@pytest.fixture(params=["mosquitto", "aedes"])
def any_broker(request, tmp_path):
    if request.param == "aedes":
        problem = aedes_installed()
        if problem:
            pytest.fail(f"{problem}: `make test` installs it")
        server = LocalAedes(tmp_path / "aedes.log")
        server.protocol = "3.1.1"
    else:
        server = LocalBroker(workdir=str(tmp_path / "mosquitto"))
        server.protocol = "5"
    with server:
        yield server


def node_config(tmp_path, url: str, protocol: str):
    path = write_config(tmp_path, url, node_id=NODE, interval_s=1, heartbeat_s=1)
    if protocol != "5":  # where the node knows [broker] protocol (issue 10), say 3.1.1
        text = path.read_text()
        path.write_text(text.replace("keepalive_s = 5", f'keepalive_s = 5\nprotocol = "{protocol}"', 1))
        try:
            load_config(path)
        except ConfigError as err:
            if "protocol" not in str(err):
                raise
            path.write_text(text)
    return path


def fleet_row(url: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "fleet", "--broker", url, "--json", "--listen", "1.5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout, out.stderr
    return {r["node"]: r for r in json.loads(out.stdout)}[NODE]


def node_state(dsn: str):
    found = rows(dsn, "SELECT state, state_reason FROM nodes WHERE node = %s", [NODE])
    return found[0] if found else None


def stored_seqs(dsn: str) -> set[int]:
    return {s for (s,) in rows(dsn, "SELECT seq FROM readings WHERE node = %s", [NODE])}


def test_node_fleet_and_ingest_end_to_end(any_broker, tmp_path):
    dsn = f"sqlite:///{tmp_path / 'city.db'}"
    Database(dsn).open().close()
    log = tmp_path / "ingest.log"
    proxy = BlackholeProxy(any_broker.port)
    ingest = start_ingest(
        any_broker.url, dsn, "--protocol", any_broker.protocol, "--client-id", "e2e", log_path=log
    )
    config = node_config(tmp_path, proxy.url, any_broker.protocol)
    daemon = start_daemon(config)
    try:
        wait_until(lambda: len(stored_seqs(dsn)) >= 4, 30, "the node's first readings in the database")
        assert node_state(dsn) == ("online", None)
        assert rows(dsn, "SELECT site FROM nodes") == [("test bench",)]

        # kill -9: the broker publishes the Last Will; ingest and the fleet view both see it
        daemon.kill()
        daemon.wait()
        wait_until(lambda: node_state(dsn) == ("offline", "lost"), 30, "the Last Will in the database")
        row = fleet_row(any_broker.url)
        assert (row["state"], row["reason"]) == ("offline", "lost")
        daemon = start_daemon(config)
        wait_until(lambda: node_state(dsn) == ("online", None), 30, "online again")
        before = max(stored_seqs(dsn))
        wait_until(lambda: max(stored_seqs(dsn)) >= before + 3, 30, "readings after the restart")

        # the broker restarted: the node is held at the gate until ingest has subscribed again
        proxy.refuse()
        proxy.partition()
        time.sleep(1.0)  # what the broker took has reached ingest
        subscribed = log.read_text().count("subscribed")
        any_broker.stop()
        time.sleep(0.5)
        any_broker.start()
        wait_until(lambda: log.read_text().count("subscribed") > subscribed, 30, "ingest subscribed again")
        proxy.heal()
        proxy.admit()
        before = max(stored_seqs(dsn))
        wait_until(lambda: max(stored_seqs(dsn)) >= before + 4, 45, "readings after the broker's restart")
        row = fleet_row(any_broker.url)
        assert row["state"] == "online"

        # the seq audit: every seq from 1 to the highest stored, once; no open gap
        def complete():
            seqs = stored_seqs(dsn)
            return seqs == set(range(1, max(seqs) + 1))

        wait_until(complete, 30, "every seq stored")
        assert scalar(dsn, "SELECT COUNT(*) FROM gaps WHERE closed_at IS NULL") == 0
        assert rows(dsn, "SELECT reason, detail FROM quarantine") == []
        assert row["seq_gaps"] == 0
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(20)
        stop(ingest)
        proxy.close()
