"""The operator's `edge-node keygen` and `edge-node remote` against a real Mosquitto and simulated
nodes (issue 13 points 1, 3, 4, 6): a staged rollout over 20 nodes that stops at the node made to
fail, remote actions answered per node, and an offline node that receives its change when it
returns."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import jsonschema
import pytest

from edge_node import schemas

from .conftest import PREFIX, gaps, start_daemon, write_config

FLEET = 20
FAILING = "sim-005"  # its BME280 never answers: a change there cannot prove healthy


def edge_node(*argv, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "edge_node.cli", *argv], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def operator_key(tmp_path):
    key = tmp_path / "ops.key"
    made = edge_node("keygen", "--out", str(key))
    assert made.returncode == 0, made.stderr
    return key, made.stdout.strip()


def test_keygen_writes_a_private_key_0600_prints_the_public_key_and_never_overwrites(operator_key):
    key, public = operator_key
    assert public.startswith("ed25519:") and len(public) == len("ed25519:") + 44
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    before = key.read_bytes()
    again = edge_node("keygen", "--out", str(key))
    assert again.returncode == 2 and "exists; not overwritten" in again.stderr
    assert key.read_bytes() == before


def remote(broker, key, *argv, nodes="sim-*"):
    return edge_node(
        "remote", "--broker", broker.url, "--key", str(key), "--nodes", nodes, "--listen", "1", *argv
    )


def test_a_staged_rollout_over_20_nodes_stops_at_the_first_failure(
    tmp_path, broker, recorder_factory, operator_key
):
    key, public = operator_key
    rec = recorder_factory(broker.port, topic=f"{PREFIX}/+/status")
    fleet = subprocess.Popen(
        [
            sys.executable, "-m", "edge_node.cli", "simulate", "--nodes", str(FLEET), "--broker", broker.url,
            "--interval", "2", "--heartbeat", "2", "--stagger", "1", "--report-every", "0",
            "--workdir", str(tmp_path / "fleet"), "--trusted-key", public, "--confirm", "6",
            "--fault", f"{FAILING}:bme280=nack",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        online = lambda: {t.split("/")[-2] for t, p, _ in rec.messages if b'"online"' in p}  # noqa: E731
        rec.wait_for(lambda: len(online()) == FLEET, timeout=60, what="20 nodes online")

        shown = remote(broker, key, "--json", "show")
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert len(report["nodes"]) == FLEET and report["ok"]
        assert all(n["reply"]["config"]["remote_layer"] == {} for n in report["nodes"])

        # 1 node, then 25 % (5 nodes: sim-002..sim-005), then all: sim-005 fails in stage 2.
        done = remote(
            broker, key, "--stages", "1,25%,100%", "--soak", "1", "--json", "set", "sensors.host.interval_s=4"
        )
        assert done.returncode == 1, done.stderr
        report = json.loads(done.stdout)
        by_node = {n["node"]: n for n in report["nodes"]}
        assert report["stopped_at"] == FAILING
        assert report["changed"] == ["sim-001", "sim-002", "sim-003", "sim-004"]
        assert report["failed"] == [FAILING]
        assert by_node[FAILING]["detail"].startswith(
            "config_rolled_back: not healthy within 6 s: sensor bme280"
        )
        assert report["untouched"] == [f"sim-{i:03d}" for i in range(6, FLEET + 1)]
        assert by_node["sim-001"]["stage"] == 1 and by_node["sim-002"]["stage"] == 2
        assert "stage 2/3" in done.stderr and "stage 3/3" not in done.stderr  # the progress shown
        hashes = {n: by_node[n]["config_hash"] for n in report["changed"]}
        for node, new_hash in hashes.items():  # the changed nodes run the new config...
            rec.wait_for(
                lambda n=node, h=new_hash: (
                    [json.loads(p) for t, p, _ in rec.messages if t == f"{PREFIX}/{n}/status"][-1].get(
                        "config_hash"
                    )
                    == h
                ),
                what=f"{node} online on its new config",
            )
        layer = tmp_path / "fleet" / "sim-006" / "remote-layer.json"
        assert not layer.exists()  # ...and the untouched ones were never sent anything

        table = remote(broker, key, "selftest", nodes="sim-00[45]")
        assert table.returncode == 1, table.stderr  # sim-005's sensor fails its self-test
        assert "sim-004" in table.stdout and "sim-005" in table.stdout
        assert "sensor.bme280" in table.stdout and "failed" in table.stdout
    finally:
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(30)


def test_an_offline_node_receives_the_change_when_it_returns(
    tmp_path, persistent_broker, recorder_factory, daemons, operator_key
):
    broker = persistent_broker
    key, public = operator_key
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url, node_id="sim-late")
    with open(config, "a") as file:
        file.write(f'\n[remote]\ntrusted_keys = ["{public}"]\nconfirm_s = 5\n')
    proc = start_daemon(config)
    rec.wait_seq(2)
    proc.send_signal(signal.SIGTERM)  # gone: its retained status says offline
    assert proc.wait(15) == 0

    sent = remote(broker, key, "--json", "set", "sensors.bme280.interval_s=2", nodes="sim-late")
    assert sent.returncode == 1, sent.stderr  # not confirmed (yet)
    report = json.loads(sent.stdout)
    assert report["pending"] == ["sim-late"] and report["changed"] == []
    command_id = report["nodes"][0]["id"]

    daemons.append(start_daemon(config))
    replies = lambda: [r for r in rec.payloads("/cmd/set/reply") if r.get("id") == command_id]  # noqa: E731
    rec.wait_for(lambda: any(r["state"] == "confirmed" for r in replies()), timeout=30, what="confirmed")
    assert [r["state"] for r in replies()] == ["applying", "confirmed"]  # once, not at every reconnect
    rec.wait_for(lambda: gaps(rec.seqs()) == [] and max(rec.seqs()) > 6, what="readings")
    for reply in replies():
        jsonschema.validate(reply, schemas.load("reply"))


def test_rotate_password_keeps_the_new_password_only_if_the_broker_accepts_it(
    tmp_path, recorder_factory, daemons, operator_key
):
    from operations.mosquitto import LocalBroker
    from provisioning.provision import _node_key

    key, public = operator_key
    node_key = tmp_path / "node.key"  # as `edge-node provision` makes it (/etc/edge-node/node.key)
    _, node_public = _node_key(node_key, None)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "sim-rot", "old-secret"], check=True)
    conf = f"password_file {passwd}\nallow_anonymous true\n"  # the operator's tool connects anonymously
    with LocalBroker(extra_conf=conf, workdir=str(tmp_path / "broker")) as broker:
        rec = recorder_factory(broker.port)
        secret = tmp_path / "node-secret"
        secret.write_text("old-secret\n")
        config = write_config(tmp_path, broker.url, node_id="sim-rot")
        config.write_text(
            config.read_text().replace(
                "keepalive_s = 5",
                f'keepalive_s = 5\nusername = "sim-rot"\npassword_file = "{secret}"\nallow_insecure = true',
            )
            + f'\n[remote]\ntrusted_keys = ["{public}"]\nconfirm_s = 6\nnode_key = "{node_key}"\n'
        )
        daemons.append(start_daemon(config))
        rec.wait_seq(2)
        state = tmp_path / "state"

        # The provisioning report records the node's key: a node answering with another one is
        # sent nothing (something else may be answering in its name).
        wrong = tmp_path / "wrong"
        wrong.write_text("not-registered-on-the-broker\n")

        def rotate_to_wrong(recorded_key: str) -> dict:
            report = tmp_path / "report.json"  # as `edge-node provision --report` writes it
            report.write_text(json.dumps({"node": "sim-rot", "result": "PASS", "node_key": recorded_key}))
            done = remote(
                broker, key, "--inventory", str(report), "--json",
                "rotate-password", "--secret-file", str(wrong), nodes="sim-rot",
            )  # fmt: skip
            assert done.returncode == 1, done.stderr
            [node] = json.loads(done.stdout)["nodes"]
            return node

        node = rotate_to_wrong(_node_key(tmp_path / "k2", None)[1])
        assert node["result"] == "failed" and "differs from its provisioning report" in node["detail"]
        assert not list(state.glob("broker-secret-*")) and not rec.payloads("/cmd/rotate-password/reply")
        moved = remote(broker, key, "--json", "set", f"remote.node_key={tmp_path / 'k2'}", nodes="sim-rot")
        assert moved.returncode == 1 and "cannot be changed remotely" in moved.stdout, moved.stdout

        node = rotate_to_wrong(node_public)
        assert node["result"] == "failed" and "config_rolled_back" in node["detail"]
        rec.wait_for(
            lambda: rec.payloads("/status")[-1]["state"] == "online", what="back on the old password"
        )

        # Mosquitto keeps one password per user: the node is sent the new one first, and the
        # broker's is switched while the node tries it (within its confirm_s).
        new = tmp_path / "new"
        new.write_text("new-secret\n")
        rotating = subprocess.Popen(
            [sys.executable, "-m", "edge_node.cli", "remote", "--broker", broker.url, "--key", str(key),
             "--nodes", "sim-rot", "--listen", "1", "--json", "rotate-password", "--secret-file", str(new)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        rec.wait_for(
            lambda: [r for r in rec.payloads("/cmd/rotate-password/reply") if r.get("state") == "applying"][
                1:
            ],
            what="the second rotation applying",
        )
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), "sim-rot", "new-secret"], check=True)
        broker.proc.send_signal(signal.SIGHUP)
        out, err = rotating.communicate(timeout=60)
        assert rotating.returncode == 0, out + err
        assert not (state / "node-key.pem").exists()  # the provisioned key pair, not the fallback
        layer = json.loads((state / "remote-layer.json").read_text())
        kept = layer["values"]["broker.password_file"]
        assert open(kept).read() == "new-secret\n" and stat.S_IMODE(os.stat(kept).st_mode) == 0o600
        assert [p.name for p in state.glob("broker-secret-*")] == [
            os.path.basename(kept)
        ]  # the wrong one went
        assert secret.read_text() == "old-secret\n"  # the technician's file is untouched
        assert "new-secret" not in out and b"new-secret" not in (state / "remote-layer.json").read_bytes()
        seq = max(rec.seqs())
        rec.wait_for(
            lambda: gaps(rec.seqs()) == [] and max(rec.seqs()) > seq + 2, what="readings on the new password"
        )


def test_provision_writes_the_operators_keys_and_refuses_a_bad_one(tmp_path, operator_key):
    from edge_node.cli import build_parser
    from provisioning.provision import UsageError, config_document, dumps_toml, validate

    _, public = operator_key
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    argv = [
        "provision", "--node-id", "trs-0042", "--site", "Rambla 12", "--broker", "mqtts://broker.example:8883",
        "--username", "trs-0042", "--password-file", str(secret), "--root", str(tmp_path / "root"),
        "--simulate",
    ]  # fmt: skip
    plan = validate(build_parser("provision").parse_args([*argv, "--trusted-key", public]))
    document = config_document(plan, {}, {"remote": {"confirm_s": 60}})
    assert document["remote"] == {
        "confirm_s": 60,
        "node_key": "/etc/edge-node/node.key",
        "trusted_keys": [public],
    }
    assert f'trusted_keys = ["{public}"]' in dumps_toml(document)
    with pytest.raises(UsageError, match="--trusted-key: must be ed25519:BASE64"):
        validate(build_parser("provision").parse_args([*argv, "--trusted-key", "ssh-ed25519 AAAA"]))


def test_provision_makes_the_nodes_key_pair_once_and_the_config_checks_it(tmp_path):
    from edge_node.config import ConfigError, parse_config
    from provisioning.provision import _node_key

    path = tmp_path / "node.key"
    state, public = _node_key(path, None)
    assert state == "written" and public.startswith("x25519:") and stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    path.chmod(0o644)
    assert _node_key(path, None) == ("mode fixed", public) and path.read_bytes() == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    with pytest.raises(ValueError, match="garbage.key: not a PEM private key"):
        _node_key(garbage, None)

    base = '[node]\nid = "trs-0042"\n[broker]\nurl = "mqtt://localhost"\n[remote]\n'
    assert parse_config(base + f'node_key = "{path}"\n', source="c.toml").remote.node_key == path
    for value, problem in ((garbage, "is not a PEM private key"), (tmp_path / "none", "cannot read")):
        with pytest.raises(ConfigError, match=f"^c.toml: remote.node_key: .*{problem}"):
            parse_config(base + f'node_key = "{value}"\n', source="c.toml")
