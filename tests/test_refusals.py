"""Delivered means accepted (issue 10): a reading leaves the buffer only after a PUBACK that
accepted it. Proven deterministically against the scripted peer (tests/mqtt_peer.py), which
withholds a PUBACK and drops the connection, refuses with 0x87, or speaks only MQTT 3.1.1; and
against the real Mosquitto, whose ACL is revoked and restored by SIGHUP mid-run and whose size
limits refuse the backfill batches."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from contextlib import closing

import jsonschema
import pytest

from edge_node import schemas
from edge_node.config import load_config, parse_config
from operations import fleet
from operations.mosquitto import LocalBroker
from provisioning.broker_check import check_broker
from provisioning.report import Report
from provisioning.status import node_status, render

from .conftest import PREFIX, write_config
from .mqtt_peer import DROP, ScriptedPeer
from .test_broker_restarts import Daemon, audit

WAIT_S = 60  # generous: the machine is shared
REFUSED_S = 20 if os.environ.get("EDGE_NODE_SOAK") else 5  # the issue's own reproduction: 20 s
HEARTBEAT = schemas.load("heartbeat")


@pytest.fixture
def make_daemon():
    made: list[Daemon] = []

    def make(config) -> Daemon:
        made.append(Daemon(config))
        return made[-1]

    yield make
    for d in made:
        d.kill()


@pytest.fixture
def peer_factory():
    made: list[ScriptedPeer] = []

    def make(**kw) -> ScriptedPeer:
        made.append(ScriptedPeer(**kw))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def buffered_seqs(tmp_path) -> set[int]:
    with closing(sqlite3.connect(tmp_path / "state" / "buffer.db")) as db:
        return {seq for (seq,) in db.execute("SELECT seq FROM readings")}


def last_seq(tmp_path) -> int:
    with closing(sqlite3.connect(tmp_path / "state" / "buffer.db")) as db:
        hwm = db.execute("SELECT value FROM meta WHERE key='seq_hwm'").fetchone()
        top = db.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0]
    return max(hwm[0] if hwm else 0, top)


def log_lines(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.lines if text in line]


def status_file(tmp_path) -> dict:
    return json.loads((tmp_path / "state" / "status.json").read_text())


def wait_status(tmp_path, predicate, what: str) -> dict:
    """The daemon's status.json (rewritten every heartbeat_s) once `predicate` holds for it."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            status = status_file(tmp_path)
            if predicate(status):
                return status
        except (OSError, ValueError):
            pass  # not written yet, or being replaced
        assert time.monotonic() < deadline, f"status.json never showed {what}"
        time.sleep(0.1)


# -- the scripted peer ----------------------------------------------------------------------------


def test_a_withheld_puback_then_a_dropped_connection_keeps_the_reading_until_it_is_accepted(
    tmp_path, peer_factory, make_daemon
):
    withheld: list[int] = []

    def verdict(publish):
        if "/reading/" in publish.topic and not withheld:
            withheld.extend(publish.seqs)
            peer.closed = True  # and the broker stays away: the node must keep the reading
            return DROP
        return 0

    peer = peer_factory(verdict=verdict)
    config = write_config(tmp_path, peer.url)
    daemon = make_daemon(config)
    peer.wait_for(lambda: bool(withheld), WAIT_S, "the first reading")
    time.sleep(1.5)  # the node notices, and tries to reconnect in vain
    assert daemon.terminate() == 0, daemon.tail()
    assert set(withheld) <= buffered_seqs(tmp_path), "a reading without PUBACK left the buffer"
    assert peer.accepted_seqs() == set()

    peer.closed = False
    daemon = make_daemon(config)
    peer.wait_for(lambda: set(withheld) <= peer.accepted_seqs(), WAIT_S, f"seqs {withheld} accepted")
    assert daemon.terminate() == 0, daemon.tail()
    resent = [p for p in peer.readings(accepted=True) if set(withheld) & set(p.seqs)]
    assert resent and all(p.connection > 1 for p in resent)
    last = last_seq(tmp_path)
    assert peer.accepted_seqs() >= set(range(1, last + 1)) - buffered_seqs(tmp_path)
    assert buffered_seqs(tmp_path) == set(), "a clean stop after every PUBACK leaves nothing"


def test_readings_refused_with_0x87_stay_in_the_buffer_and_the_refusal_is_reported_once(
    tmp_path, peer_factory, make_daemon
):
    peer = peer_factory(verdict=lambda p: 0x87 if "/reading/" in p.topic else 0)
    config = write_config(tmp_path, peer.url)
    daemon = make_daemon(config)

    def refused_beat() -> bool:
        beat = peer.last("/heartbeat")
        return bool(beat and beat.get("refused", {}).get("count", 0) >= 2)

    peer.wait_for(refused_beat, WAIT_S, "a heartbeat saying the readings are refused")
    started, refused_before = time.monotonic(), len(peer.readings())
    time.sleep(6)  # refusals go on: the node backs off, it does not hammer
    refused_during = len(peer.readings()) - refused_before
    elapsed = time.monotonic() - started
    beat = peer.last("/heartbeat")
    jsonschema.validate(beat, HEARTBEAT)
    assert beat["protocol"] == "5"
    assert beat["refused"]["reason_code"] == 0x87 and beat["refused"]["reason"] == "0x87 Not authorized"
    assert beat["refused"]["count"] >= 2
    status = wait_status(tmp_path, lambda s: s["refused"] is not None, "the refusal")
    assert status["refused"]["reason_code"] == 0x87 and status["protocol"] == "5"
    # Two readings a second arrive; unpaused the node would send them all, and its window of 20
    # again at each retry. Backing off (full jitter, capped at reconnect_max_s = 2 s here) and
    # probing one message at a time, it sends a few a second at most.
    assert refused_during <= 3 * elapsed, f"{refused_during} refused messages in {elapsed:.1f} s"
    # `edge-node status` says it in words, and makes the node not healthy
    report = node_status(load_config(config))
    assert not report["healthy"] and report["broker"]["refused"]["reason_code"] == 0x87
    words = [p for p in report["problems"] if "refuses" in p]
    assert words and words[0].startswith("the broker refuses this node's readings since "), report["problems"]
    assert "0x87 Not authorized: the broker's ACL does not let trs-test write under" in words[0]
    assert "REFUSED   0x87 Not authorized since" in render(report)
    # the fleet view: a visit; and when the node then falls silent, its last heartbeat says why
    view = fleet.Fleet(PREFIX, fleet.Rules(), window_s=60)
    view.ingest(f"{PREFIX}/trs-test/heartbeat", json.dumps(beat).encode(), True, time.time())
    (online,) = view.rows(time.time())
    (silent,) = view.rows(time.time() + 3600)
    for row in (online, silent):
        assert (
            f"broker refuses its readings: 0x87 Not authorized since {beat['refused']['since']}"
            in (row["needs_visit"])
        )
    assert (silent["state"], silent["reason"]) == ("offline", "silent")
    assert daemon.terminate() == 0, daemon.tail()
    assert len(log_lines(daemon, "refuses readings")) == 1, daemon.tail()
    last = last_seq(tmp_path)
    assert buffered_seqs(tmp_path) == set(range(1, last + 1)), "a refused reading left the buffer"
    assert peer.accepted_seqs() == set()

    peer.verdict = lambda p: 0  # the broker accepts again: everything kept arrives
    daemon = make_daemon(config)
    peer.wait_for(lambda: set(range(1, last + 1)) <= peer.accepted_seqs(), WAIT_S, f"seqs 1..{last}")
    peer.wait_for(lambda: "refused" not in peer.last("/heartbeat"), WAIT_S, "a heartbeat without refused")
    assert daemon.terminate() == 0, daemon.tail()
    assert buffered_seqs(tmp_path) == set()


@pytest.mark.parametrize("code", [0x84, 0x01], ids=["connack-0x84", "mqtt311-connack-0x01"])
def test_a_broker_without_mqtt5_gets_311_once_per_run_and_the_heartbeat_says_so(
    tmp_path, peer_factory, make_daemon, code
):
    dropped: list[int] = []

    def verdict(publish):
        if "/reading/" in publish.topic and not dropped:  # one reconnect: it must stay on 3.1.1
            dropped.extend(publish.seqs)  # and the reading without PUBACK is sent again then
            return DROP
        return 0

    peer = peer_factory(v5_connack=code, verdict=verdict)
    daemon = make_daemon(write_config(tmp_path, peer.url))
    peer.wait_for(lambda: len(peer.accepted_seqs()) >= 3 and len(peer.connects) >= 3, WAIT_S, "readings")
    peer.wait_for(lambda: set(dropped) <= peer.accepted_seqs(), WAIT_S, f"seqs {dropped} sent again")
    beat = peer.last("/heartbeat")
    assert beat["protocol"] == "3.1.1"
    jsonschema.validate(beat, HEARTBEAT)
    wait_status(tmp_path, lambda s: s["protocol"] == "3.1.1", "protocol 3.1.1")
    assert daemon.terminate() == 0, daemon.tail()
    assert peer.connects[:2] == [5, 4] and set(peer.connects[2:]) == {4}, peer.connects
    assert len(log_lines(daemon, "does not speak MQTT 5")) == 1, daemon.tail()


# -- the real Mosquitto ---------------------------------------------------------------------------

NODE = "trs-acl"
ACL = """\
topic read city/#
pattern {access} {prefix}/%u/#
"""


def test_acl_revoked_and_restored_by_sighup_mid_run_loses_nothing(tmp_path, recorder_factory, make_daemon):
    """The issue's own reproduction: the node's rule changed to `read` and Mosquitto sent SIGHUP
    for a while, then restored. Every seq arrives, no gaps, nothing deleted while refused."""
    acl = tmp_path / "acl"
    acl.write_text(ACL.format(access="readwrite", prefix=PREFIX))
    with LocalBroker(workdir=str(tmp_path / "broker"), extra_conf=f"acl_file {acl}\n") as broker:
        rec = recorder_factory(broker.port)
        config = write_config(tmp_path, broker.url, node_id=NODE, heartbeat_s=1)
        text = config.read_text().replace("keepalive_s = 5", f'keepalive_s = 5\nusername = "{NODE}"')
        config.write_text(text)
        started = time.time()
        daemon = make_daemon(config)
        rec.wait_seq(4, timeout=WAIT_S)

        acl.write_text(ACL.format(access="read", prefix=PREFIX))
        os.kill(broker.proc.pid, signal.SIGHUP)
        wait_status(tmp_path, lambda s: (s["refused"] or {}).get("reason_code") == 0x87, "0x87")
        arrived_when_refused = max(rec.seqs())
        time.sleep(REFUSED_S)
        assert max(rec.seqs()) <= arrived_when_refused + 4, "readings arrived while the ACL denied them"

        acl.write_text(ACL.format(access="readwrite", prefix=PREFIX))
        os.kill(broker.proc.pid, signal.SIGHUP)
        rec.wait_for(
            lambda: max(rec.seqs()) > arrived_when_refused + 10, timeout=WAIT_S, what="readings again"
        )
        why = f"ACL revoked for {REFUSED_S} s"
        figures = audit(rec, daemon, tmp_path / "state" / "buffer.db", started, why)
    assert len(log_lines(daemon, "refuses readings")) == 1, daemon.tail()
    assert len(log_lines(daemon, "accepts readings again")) == 1, daemon.tail()
    assert len(log_lines(daemon, "refuses the node's heartbeat")) <= 1, daemon.tail()
    print(figures)


def backlog_then_broker(tmp_path, broker: LocalBroker, make_daemon, *, forward: str = ""):
    """A node that sampled for a while without its broker: its readings are a backlog."""
    config = write_config(tmp_path, broker.url, forward=forward)
    broker.stop()
    daemon = make_daemon(config)
    # ~5 s of two sensors, so that the backlog travels in batches of several readings (the buffer
    # is the daemon's alone while it runs: its status file says how much is waiting)
    wait_status(tmp_path, lambda s: s["backlog"] >= 10, "a backlog of 10 readings")
    broker.start()
    return daemon


def wait_for_the_backlog_behind_a_live_reading(rec, daemon) -> None:
    """Live readings go first: once one has arrived, every seq before it must follow (a refused
    batch waits out a back-off first, so no fixed delay is enough on a loaded box)."""
    rec.wait_for(lambda: any(not r["backfill"] for r in rec.readings()), WAIT_S, "a live reading")
    first_live = min(r["seq"] for r in rec.readings() if not r["backfill"])
    try:
        rec.wait_for(lambda: set(range(1, first_live)) <= rec.seqs(), WAIT_S, "the backlog behind it")
    except AssertionError as err:
        missing = sorted(set(range(1, first_live)) - rec.seqs())
        raise AssertionError(f"{err}: seqs {missing} missing\n{daemon.tail()}") from None


def test_a_message_size_limit_splits_the_backfill_batches_until_they_pass(
    tmp_path, recorder_factory, make_daemon
):
    """Mosquitto refuses a message over `message_size_limit` with PUBACK 0x95: the node splits
    its batches and learns the size that passes; every reading arrives, none is set aside."""
    limit = 900  # three bme280 readings to a message pass, six do not
    with LocalBroker(workdir=str(tmp_path / "broker"), extra_conf=f"message_size_limit {limit}\n") as broker:
        rec = recorder_factory(broker.port)
        daemon = backlog_then_broker(tmp_path, broker, make_daemon, forward="backfill_rate = 0")
        wait_for_the_backlog_behind_a_live_reading(rec, daemon)
        assert daemon.terminate() == 0, daemon.tail()
    last = last_seq(tmp_path)
    assert rec.seqs() == set(range(1, last + 1)) and buffered_seqs(tmp_path) == set()
    assert max(len(p) for t, p, _ in rec.messages if "/reading/" in t) <= limit
    assert any(len(b["readings"]) > 1 for b in rec.payloads("/reading/bme280") if b["backfill"])
    assert log_lines(daemon, "as 0x95 Packet too large: batches now up to"), daemon.tail()
    assert not log_lines(daemon, "quarantined") and not log_lines(daemon, "connection lost"), daemon.tail()


def test_one_reading_the_broker_never_takes_is_quarantined_kept_and_reported_alone(
    tmp_path, peer_factory, make_daemon
):
    """The peer refuses (0x99) any message that carries seq 3: its backfill batch is split down
    to seq 3 alone, which is set aside in the buffer; every other reading is accepted."""
    bad = 3
    peer = peer_factory(verdict=lambda p: 0x99 if bad in p.seqs else 0)
    peer.closed = True  # a backlog first, so that seq 3 travels in a batch
    config = write_config(tmp_path, peer.url, forward="backfill_rate = 0")
    daemon = make_daemon(config)
    time.sleep(4)
    peer.closed = False
    peer.wait_for(lambda: set(range(1, 12)) - {bad} <= peer.accepted_seqs(), WAIT_S, "the backlog")
    peer.wait_for(lambda: peer.last("/heartbeat").get("quarantined") == 1, WAIT_S, "quarantined: 1")
    refused = [p.seqs for p in peer.readings(accepted=False)]
    assert refused[-1] == [bad] and len(refused[0]) > 2, refused  # split down to the one reading
    assert "refused" not in peer.last("/heartbeat")  # not a refusal of the node: nothing paused
    wait_status(tmp_path, lambda s: s["quarantined"] == 1, "quarantined: 1")
    assert daemon.terminate() == 0, daemon.tail()
    assert buffered_seqs(tmp_path) == {bad}
    assert len(log_lines(daemon, "quarantined")) == 1, daemon.tail()

    sent_before = len(peer.readings())
    daemon = make_daemon(config)  # the quarantine outlives a restart: seq 3 is not sent again
    peer.wait_for(lambda: len(peer.readings()) >= sent_before + 4, WAIT_S, "new readings")
    peer.wait_for(lambda: peer.last("/heartbeat").get("quarantined") == 1, WAIT_S, "quarantined: 1")
    assert daemon.terminate() == 0, daemon.tail()
    assert all(bad not in p.seqs for p in peer.readings()[sent_before:])
    assert buffered_seqs(tmp_path) == {bad}


@pytest.mark.xfail(
    strict=False,
    reason="known defect, under investigation: now and then (twice in five full runs on a loaded "
    "box) the backlog stored before the broker came up is not sent within 60 s once CONNACK's "
    "Maximum Packet Size caps the batches, although live readings flow and nothing is logged",
)
def test_the_connack_maximum_packet_size_caps_the_batches(tmp_path, recorder_factory, make_daemon):
    limit = 2000
    with LocalBroker(workdir=str(tmp_path / "broker"), extra_conf=f"max_packet_size {limit}\n") as broker:
        rec = recorder_factory(broker.port)
        daemon = backlog_then_broker(tmp_path, broker, make_daemon, forward="backfill_rate = 0")
        wait_for_the_backlog_behind_a_live_reading(rec, daemon)
        assert daemon.terminate() == 0, daemon.tail()
        last = last_seq(tmp_path)
    assert rec.seqs() == set(range(1, last + 1))
    assert max(len(p) for t, p, _ in rec.messages if "/reading/" in t) <= limit - 100
    assert any(len(b["readings"]) > 1 for b in rec.payloads("/reading/bme280") if b["backfill"])
    assert log_lines(daemon, "broker takes packets up to 2000 bytes"), daemon.tail()
    assert not log_lines(daemon, "connection lost"), daemon.tail()


def test_check_broker_reports_the_protocol_and_falls_back_to_311_as_the_daemon_does(tmp_path, peer_factory):
    peer = peer_factory(v5_connack=0x01)  # what an MQTT 3.1.1-only broker answers an MQTT 5 CONNECT
    text = f'[node]\nid = "trs-test"\n\n[broker]\nurl = "{peer.url}"\n'
    config = parse_config(text, source="config.toml", base_dir=tmp_path)
    report = Report(node=config.node.id, config_hash=config.config_hash, show=lambda line: None)
    check_broker(config, report, timeout_s=1, acl_listen_s=0.2)
    connect = report.checks[0]
    assert connect.name == "broker.connect" and connect.result == "PASS", connect.detail
    assert connect.measured["protocol"] == "3.1.1"
    assert "MQTT 3.1.1 (the broker does not speak MQTT 5), under which a refused" in connect.detail
    assert peer.connects[:2] == [5, 4]
