"""Signed remote commands and the remote config layer, on a daemon run as `edge-node run` against
a real Mosquitto (issue 13 points 1, 2 and 6). The operator's side is signed here with the
project's own signing module; tests/test_remote_cli.py drives the real `edge-node remote`."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import uuid

import jsonschema
import paho.mqtt.publish as publish
import pytest

from edge_node import schemas
from edge_node.signing import generate_key, load_signer, node_public_key

from .conftest import PREFIX, gaps, start_daemon, write_config

NODE = "trs-test"
ROOT = f"{PREFIX}/{NODE}"


@pytest.fixture
def ops_key(tmp_path):
    path = tmp_path / "ops.key"
    public = generate_key(path)
    return load_signer(path), public


def remote_config(tmp_path, url, public, *, confirm_s=4, interval_s=1):
    config = write_config(tmp_path, url, interval_s=interval_s)
    with open(config, "a") as file:
        file.write(f'\n[remote]\ntrusted_keys = ["{public}"]\nconfirm_s = {confirm_s}\n')
    return config


def envelope(cmd, args=None, *, node=NODE, valid_s=300, issued=None, command_id=None):
    now = issued or datetime.datetime.now(datetime.UTC)
    return {
        "cmd": cmd,
        "args": args or {},
        "node": node,
        "id": command_id or uuid.uuid4().hex,
        "issued": now.isoformat(),
        "expires": (now + datetime.timedelta(seconds=valid_s)).isoformat(),
    }


def send(broker, cmd, payload, *, retain=False):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    publish.single(f"{ROOT}/cmd/{cmd}", body, qos=1, retain=retain, hostname="127.0.0.1", port=broker.port)


def replies(rec, cmd, command_id):
    return [r for r in rec.payloads(f"/cmd/{cmd}/reply") if r.get("id") == command_id]


def wait_reply(rec, cmd, command_id, state=None, timeout=20):
    def found():
        return [r for r in replies(rec, cmd, command_id) if state is None or r.get("state") == state]

    rec.wait_for(found, timeout=timeout, what=f"reply to cmd/{cmd} {command_id} ({state or 'any'})")
    return found()[-1]


def wait_listening(rec, broker, timeout=15):
    """Until the node answers a ping: it says `online` a moment before it subscribes to commands."""
    for _ in range(int(timeout)):
        answered = len(rec.payloads("/cmd/ping/reply"))
        send(broker, "ping", b"")
        try:
            rec.wait_for(lambda n=answered: len(rec.payloads("/cmd/ping/reply")) > n, timeout=1, what="pong")
            return
        except AssertionError:
            continue
    raise AssertionError("the node never answered a ping")


def last_heartbeat(rec):
    return rec.payloads("/heartbeat")[-1]


def bme_interval(rec, after_seq):
    """The spacing of the bme280's readings taken after `after_seq`, in seconds."""
    stamps = sorted(
        (r["seq"], datetime.datetime.fromisoformat(r["ts"]))
        for r in rec.readings()
        if r["sensor"] == "bme280"
    )
    times = [t for s, t in stamps if s > after_seq]
    return [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]


def test_every_unsafe_command_is_refused_with_a_reason_and_changes_nothing(
    tmp_path, broker, recorder_factory, daemons, ops_key
):
    signer, public = ops_key
    rec = recorder_factory(broker.port)
    config = remote_config(tmp_path, broker.url, public)
    daemons.append(start_daemon(config))
    rec.wait_for(lambda: rec.payloads("/heartbeat"), what="daemon up")
    hash_before = last_heartbeat(rec)["config_hash"]
    change = {"values": {"sensors.bme280.interval_s": 5}}

    # Unsigned: a bare request.
    send(broker, "set", {"values": {"sensors.bme280.interval_s": 5}})
    # Signed by a key the node does not trust.
    other = tmp_path / "other.key"
    generate_key(other)
    untrusted = envelope("set", change)
    send(broker, "set", load_signer(other).seal(untrusted))
    # Altered after signing.
    altered = signer.seal(envelope("set", change))
    altered["body"] = altered["body"].replace('_s":5', '_s":6')
    send(broker, "set", altered)
    # Signed for another command than the topic it came on.
    moved = envelope("show")
    send(broker, "set", signer.seal(moved))
    # Expired.
    old = envelope("set", change, issued=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    send(broker, "set", signer.seal(old))
    # Aimed at another node.
    elsewhere = envelope("set", change, node="trs-other")
    send(broker, "set", signer.seal(elsewhere))

    rec.wait_for(lambda: len(rec.payloads("/cmd/set/reply")) >= 6, what="six refusals")
    errors = [r["error"] for r in rec.payloads("/cmd/set/reply")]
    assert all(not r["ok"] for r in rec.payloads("/cmd/set/reply"))
    assert "unsigned" in errors[0]
    assert "untrusted key" in errors[1]
    assert "bad signature" in errors[2] and "altered" in errors[2]
    assert "signed for cmd/show" in errors[3]
    assert "expired" in errors[4]
    assert "aimed at node trs-other" in errors[5]

    # Replayed: the first run is answered, the same envelope again is refused...
    shown = signer.seal(envelope("show"))
    first_id = json.loads(shown["body"])["id"]
    send(broker, "show", shown)
    reply = wait_reply(rec, "show", first_id)
    assert reply["ok"]
    # No remote.node_key (a node provisioned before provision made the key pair): the fallback
    # pair is made in the state directory, and `show` tells its public key.
    assert reply["node_key"] == node_public_key((tmp_path / "state" / "node-key.pem").read_bytes())
    send(broker, "show", shown)
    rec.wait_for(lambda: len(replies(rec, "show", first_id)) == 2, what="the replay's refusal")
    assert "replayed" in replies(rec, "show", first_id)[1]["error"]
    # ...also after a restart of the daemon (ids seen are kept in the state directory).
    daemons[0].send_signal(signal.SIGTERM)
    assert daemons[0].wait(15) == 0
    daemons.append(start_daemon(config))
    rec.wait_for(lambda: [s for s in rec.payloads("/status") if s["state"] == "online"][1:], what="restart")
    wait_listening(rec, broker)
    send(broker, "show", shown)
    rec.wait_for(
        lambda: len(replies(rec, "show", first_id)) == 3, what="the replay's refusal after a restart"
    )
    assert "replayed" in replies(rec, "show", first_id)[2]["error"]

    rec.wait_for(lambda: len(rec.payloads("/heartbeat")) > 2, what="a heartbeat")
    assert last_heartbeat(rec)["config_hash"] == hash_before
    assert not (tmp_path / "state" / "remote-layer.json").exists()
    assert rec.invalid == []


def test_set_changes_the_sampling_interval_and_a_bad_value_is_refused_with_the_validators_line(
    tmp_path, broker, recorder_factory, daemons, ops_key
):
    signer, public = ops_key
    rec = recorder_factory(broker.port)
    config = remote_config(tmp_path, broker.url, public)
    daemons.append(start_daemon(config))
    rec.wait_seq(4)
    hash_before = last_heartbeat(rec)["config_hash"]

    bad = envelope("set", {"values": {"sensors.bme280.interval_s": 0}})
    send(broker, "set", signer.seal(bad))
    refusal = wait_reply(rec, "set", bad["id"])
    assert not refusal["ok"]
    assert refusal["error"] == f"cmd/set: {config}: sensors.bme280.interval_s: must be >= 1 (got 0)"

    good = envelope("set", {"values": {"sensors.bme280.interval_s": 3}})
    send(broker, "set", signer.seal(good))
    applying = wait_reply(rec, "set", good["id"], "applying")
    new_hash = applying["config_hash"]
    assert new_hash != hash_before
    seq_at_change = max(rec.seqs())
    assert wait_reply(rec, "set", good["id"], "confirmed")["config_hash"] == new_hash
    rec.wait_for(lambda: len(bme_interval(rec, seq_at_change + 2)) >= 2, timeout=30, what="new readings")
    spacing = bme_interval(rec, seq_at_change + 2)
    assert all(2.5 < s < 3.6 for s in spacing), spacing
    rec.wait_for(lambda: last_heartbeat(rec)["config_hash"] == new_hash, what="the new hash in the heartbeat")
    assert [s for s in rec.payloads("/status") if s["state"] == "online"][-1]["config_hash"] == new_hash
    assert gaps(rec.seqs()) == [] and min(rec.seqs()) == 1
    layer_file = tmp_path / "state" / "remote-layer.json"
    layer = json.loads(layer_file.read_text())
    assert layer["values"] == {"sensors.bme280.interval_s": 3} and layer["id"] == good["id"]
    assert "interval_s = 1" in config.read_text()  # the technician's file is the base, untouched
    shown = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    remote = json.loads(shown.stdout)["remote"]
    assert remote["layer"] == {"sensors.bme280.interval_s": 3} and remote["applied_by"] == good["id"]
    assert remote["running_hash"] == new_hash and remote["base_hash"] == hash_before
    text = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "status", "-c", str(config)], capture_output=True, text=True
    ).stdout
    assert "remote layer: sensors.bme280.interval_s=3" in text

    # unset drops the key from the layer, rollback empties it: back to the technician's file.
    extra = envelope("set", {"values": {"health.heartbeat_s": 2}})
    send(broker, "set", signer.seal(extra))
    wait_reply(rec, "set", extra["id"], "confirmed")
    dropped = envelope("unset", {"keys": ["sensors.bme280"]})
    send(broker, "unset", signer.seal(dropped))
    wait_reply(rec, "unset", dropped["id"], "confirmed")
    assert json.loads(layer_file.read_text())["values"] == {"health.heartbeat_s": 2}
    back = envelope("rollback")
    sealed = signer.seal(back)
    jsonschema.validate(sealed, schemas.load("envelope"))
    jsonschema.validate(json.loads(sealed["body"]), schemas.load("envelope")["$defs"]["command"])
    send(broker, "rollback", sealed)
    assert wait_reply(rec, "rollback", back["id"], "confirmed")["config_hash"] == hash_before
    assert json.loads(layer_file.read_text())["values"] == {}
    rec.wait_for(lambda: last_heartbeat(rec)["config_hash"] == hash_before, what="the base's hash again")
    assert rec.invalid == []


def test_a_broker_url_that_cannot_connect_is_rolled_back_and_no_reading_is_lost(
    tmp_path, broker, recorder_factory, daemons, ops_key
):
    signer, public = ops_key
    rec = recorder_factory(broker.port)
    config = remote_config(tmp_path, broker.url, public, confirm_s=4)
    daemons.append(start_daemon(config))
    rec.wait_seq(3)
    hash_before = last_heartbeat(rec)["config_hash"]

    change = envelope("set", {"values": {"broker.url": "mqtt://127.0.0.1:1"}})
    send(broker, "set", signer.seal(change))
    wait_reply(rec, "set", change["id"], "applying")
    rolled = wait_reply(rec, "set", change["id"], "rolled_back", timeout=4 + 15)
    assert not rolled["ok"] and rolled["error"].startswith("config_rolled_back: not healthy within 4 s")
    assert "not connected to the broker mqtt://127.0.0.1:1" in rolled["error"]
    rec.wait_for(lambda: last_heartbeat(rec).get("config_rolled_back"), what="the rollback in the heartbeat")
    beat = last_heartbeat(rec)
    assert beat["config_hash"] == hash_before
    assert beat["config_rolled_back"]["id"] == change["id"]
    assert rec.payloads("/status")[-1]["state"] == "online"
    seq = max(rec.seqs())
    rec.wait_for(lambda: gaps(rec.seqs()) == [] and max(rec.seqs()) > seq + 4, what="every reading")
    assert min(rec.seqs()) == 1
    assert rec.invalid == []


def test_a_node_restarted_in_the_middle_of_a_change_still_confirms_or_rolls_back(
    tmp_path, broker, recorder_factory, daemons, ops_key
):
    signer, public = ops_key
    rec = recorder_factory(broker.port)
    config = remote_config(tmp_path, broker.url, public, confirm_s=5)
    daemons.append(start_daemon(config))
    rec.wait_seq(3)
    change = envelope("set", {"values": {"broker.url": "mqtt://127.0.0.1:1"}})
    send(broker, "set", signer.seal(change))
    wait_reply(rec, "set", change["id"], "applying")
    daemons[0].kill()  # a power cut during the change, before it could be confirmed
    daemons[0].wait()
    daemons.append(start_daemon(config))
    rolled = wait_reply(rec, "set", change["id"], "rolled_back", timeout=30)
    assert "not connected to the broker" in rolled["error"]
    rec.wait_for(lambda: rec.payloads("/status")[-1]["state"] == "online", what="online again")
    seq = max(rec.seqs())
    rec.wait_for(lambda: gaps(rec.seqs()) == [] and max(rec.seqs()) > seq + 2, what="every reading")

    good = envelope("set", {"values": {"health.heartbeat_s": 2}})
    send(broker, "set", signer.seal(good))
    wait_reply(rec, "set", good["id"], "applying")
    daemons[1].send_signal(signal.SIGKILL)
    daemons[1].wait()
    daemons.append(start_daemon(config))
    confirmed = wait_reply(rec, "set", good["id"], "confirmed", timeout=30)
    rec.wait_for(lambda: last_heartbeat(rec)["config_hash"] == confirmed["config_hash"], what="new hash")
    assert rec.invalid == []
