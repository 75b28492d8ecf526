"""`check_broker` against a real Mosquitto with TLS, passwords and a `%u` ACL (tests/pki.py)."""

from __future__ import annotations

import json
import logging
import threading

import paho.mqtt.client as mqtt
import pytest

from edge_node.config import Config, parse_config
from provisioning.broker_check import CHECKS, acl_verdict, check_broker
from provisioning.report import Report

from . import pki
from .pki import PREFIX, SecureBroker

secure_broker = pki.secure_broker  # the fixture: one broker for this module

NODE, OTHER = "trs-0042", "trs-0043"


def node_config(
    tmp_path, broker: SecureBroker, node: str = NODE, *, url=None, ca=None, password=None, cert=False
) -> Config:
    """The node's config as provisioning writes it: password in a 0600 file, or a client certificate."""
    if cert:
        cert_file, key_file = broker.client_cert(node)
        credentials = f'client_cert = "{cert_file}"\nclient_key = "{key_file}"'
    else:
        secret = broker.password_file(node, tmp_path, password=password)
        credentials = f'username = "{node}"\npassword_file = "{secret}"'
    text = (
        f'[node]\nid = "{node}"\n\n[broker]\nurl = "{url or broker.url}"\n{credentials}\n'
        f'ca_file = "{ca or broker.ca}"\ntopic_prefix = "{broker.prefix}"\n'
    )
    return parse_config(text, source="config.toml", base_dir=tmp_path)


def run_check(config: Config, **kw) -> tuple[Report, dict, list[str]]:
    shown: list[str] = []
    report = Report(node=config.node.id, config_hash=config.config_hash, show=shown.append)
    check_broker(config, report, **kw)
    assert [c.name for c in report.checks] == list(CHECKS), "every check is listed, in order"
    return report, {c.name: c for c in report.checks}, shown


def assert_no_secret(broker: SecureBroker, report: Report, shown: list[str], caplog, *extra: str) -> None:
    """No password in the report, its progress lines or any log record (the tests log at DEBUG)."""
    text = json.dumps(report.as_json()) + "\n".join(shown) + caplog.text
    for secret in (*broker.users.values(), *extra):
        assert secret not in text, "a password was printed or logged"


def test_all_three_pass_with_the_nodes_own_credentials(tmp_path, secure_broker, caplog):
    caplog.set_level(logging.DEBUG)
    b = secure_broker
    daemon_gone = threading.Event()  # the node's daemon, connected with the node id as client id
    daemon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=NODE)
    daemon.username_pw_set(NODE, b.users[NODE])
    daemon.tls_set(ca_certs=str(b.ca))
    daemon.on_disconnect = lambda *a: daemon_gone.set()
    daemon.connect(b.host, b.port)
    daemon.loop_start()
    try:
        # Witnesses: the auditor reads everything; another node reads every node's check/ topics
        # (the recommended `pattern read {prefix}/+/check/#`), so it would hear a leaked probe too.
        with b.subscriber(f"{PREFIX}/#") as auditor, b.subscriber(f"{PREFIX}/+/check/#", user=OTHER) as other:
            report, checks, shown = run_check(node_config(tmp_path, b))
            assert report.result == "PASS", shown
            assert daemon_gone.wait(0.2) is False, "the check must not kick the node's daemon off"
    finally:
        daemon.disconnect()
        daemon.loop_stop()

    connect, roundtrip, acl, client_id = checks.values()
    assert client_id.measured == {"bound": False} and client_id.detail.startswith("warning: ")
    assert "use_username_as_clientid true" in client_id.detail
    assert connect.detail.startswith(
        f"connected to localhost:{b.port} as {NODE}, TLS certificate verified against"
    )
    assert connect.measured["protocol"] == "5" and ", MQTT 5, in " in connect.detail  # issue 10
    assert 0 < connect.measured["connect_ms"] < 5000
    assert 0 <= roundtrip.measured["rtt_ms"] < 5000
    assert acl.measured.pop("listened_ms") >= 1500
    assert acl.measured == {"received": 0, "subscription": "granted", "puback": "0x87 Not authorized"}
    assert f"{NODE} cannot publish under another node's topic" in acl.detail, acl.detail
    assert "the broker refused it (0x87 Not authorized)" in acl.detail, acl.detail
    assert acl.seconds >= 1.5

    own = [t for t in auditor.topics() if t.startswith(f"{PREFIX}/{NODE}/check/")]
    assert len(own) == 2, auditor.topics()  # the round trip and the ACL check's control message
    assert not [t for t in auditor.topics() if "/acl-probe-" in t], "the probe never reached anyone"
    assert sorted(other.topics()) == sorted(own), "any node can read the check/ topics of others"
    assert_no_secret(b, report, shown, caplog)


def test_client_certificate_passes(tmp_path, secure_broker):
    report, checks, shown = run_check(
        node_config(tmp_path, secure_broker, cert=True, url=secure_broker.cert_url)
    )
    assert report.result == "PASS", shown
    assert "as the client certificate" in checks["broker.connect"].detail


def test_wrong_password_fails_on_connect_with_a_clear_line(tmp_path, secure_broker, caplog):
    caplog.set_level(logging.DEBUG)
    report, checks, shown = run_check(node_config(tmp_path, secure_broker, password="Wr0ng-pa55word"))
    assert report.result == "FAIL"
    assert [(c.result, c.detail) for c in checks.values()] == [
        ("FAIL", f"broker refused the credentials of {NODE} (not authorised)"),
        ("FAIL", "skipped: no connection"),
        ("FAIL", "skipped: no connection"),
        ("FAIL", "skipped: no connection"),
    ]
    assert_no_secret(secure_broker, report, shown, caplog, "Wr0ng-pa55word")


def test_untrusted_ca_fails_on_connect_naming_the_certificate_problem(tmp_path, secure_broker):
    b = secure_broker
    report, checks, shown = run_check(node_config(tmp_path, b, ca=b.rogue_ca))
    assert checks["broker.connect"].detail == (
        f"TLS certificate of localhost not trusted by {b.rogue_ca}: "
        "self-signed certificate in certificate chain"
    )
    assert [c.detail for c in report.checks[1:]] == ["skipped: no connection"] * 3


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtts://localhost:1", "localhost:1 refused the connection: no broker listens there"),
        ("mqtts://no-such-broker.invalid:8883", "cannot resolve the broker host no-such-broker.invalid"),
        (
            "mqtts://localhost:{plain}",
            "reset the connection during the TLS handshake: is {plain} the broker's TLS",
        ),
        # The TLS 1.3 alert or a bare EOF, whichever the client reads first: both name the cause.
        ("mqtts://localhost:{cert}", "does the broker require a client certificate"),
    ],
    ids=["refused", "dns", "plain-port", "needs-client-cert"],
)
def test_unreachable_broker_fails_on_connect(tmp_path, secure_broker, url, expected):
    ports = {"plain": secure_broker.plain_port, "cert": secure_broker.cert_port}
    config = node_config(tmp_path, secure_broker, url=url.format(**ports))
    report, checks, shown = run_check(config, timeout_s=3)
    assert expected.format(**ports) in checks["broker.connect"].detail, shown
    assert report.result == "FAIL"


def test_unreadable_password_file_is_named(tmp_path, secure_broker):
    config = node_config(tmp_path, secure_broker)
    config.broker.password_file.unlink()  # gone after the config was validated
    report, checks, shown = run_check(config)
    assert checks["broker.connect"].detail == (
        f"cannot read {config.broker.password_file}: No such file or directory"
    )
    assert report.result == "FAIL"


def test_a_nodes_credentials_cannot_publish_under_another_nodes_topic(secure_broker):
    """Against the broker itself, with an independent witness (the auditor reads everything)."""
    b = secure_broker
    foreign, own = f"{PREFIX}/{OTHER}/reading/bme280", f"{PREFIX}/{NODE}/reading/bme280"
    with b.subscriber(f"{PREFIX}/#") as auditor:
        assert auditor.granted == [1]
        b.publish(own, "from A, own", user=NODE)
        b.publish(foreign, "from A, as B", user=NODE)  # PUBACKed all the same: 3.1.1 refuses silently
        b.publish(foreign, "from B, own", user=OTHER)  # the topic itself is alive and readable
        auditor.wait_for(lambda: len(auditor.messages) >= 2, what="the two allowed messages")
        b.publish(own, "from A, marker", user=NODE)  # published after: once it is in, so is all before
        auditor.wait_for(lambda: len(auditor.messages) >= 3, what="the marker")
    assert auditor.messages == [
        (own, b"from A, own"),
        (foreign, b"from B, own"),
        (own, b"from A, marker"),
    ]


LEAKY_ACL = """\
# A broker misconfigured so that any node may write under any node's topic.
pattern write {prefix}/#
pattern read {prefix}/%u/#
pattern read {prefix}/+/check/#
user {auditor}
topic read #
"""
# The same leak, and nodes may not read others' topics: the listener cannot hear the leak, but
# the broker's MQTT 5 PUBACK says it accepted the publish.
LEAKY_DEAF_ACL = LEAKY_ACL.replace("pattern read {prefix}/+/check/#\n", "")


@pytest.mark.parametrize(
    ("acl", "detail", "received"),
    [
        (LEAKY_ACL, f"ACL leak: {NODE} published under another node's topic", 1),
        (LEAKY_DEAF_ACL, f"ACL leak: the broker accepted {NODE}'s publish under another node's topic", 0),
    ],
    ids=["seen-by-the-listener", "accepted-by-the-broker"],
)
def test_a_leaky_acl_fails(tmp_path, acl, detail, received):
    with SecureBroker(tmp_path / "leaky", acl=acl) as b:
        report, checks, shown = run_check(node_config(tmp_path, b))
    assert [c.result for c in report.checks] == ["PASS", "PASS", "FAIL", "PASS"], shown
    assert checks["broker.acl"].detail.startswith(detail), shown
    assert checks["broker.acl"].measured["received"] == received


# Nodes may not read even their own topics: nothing comes back, and the ACL check cannot trust
# a listener that does not hear the node's own control message.
WRITE_ONLY_ACL = "pattern write {prefix}/%u/#\nuser {auditor}\ntopic read #\n"
# Without the check/ read rule: Mosquitto's acl_file grants every SUBACK and filters at delivery,
# so the listener is "granted" all the same, and the PASS rests on the MQTT 5 PUBACK refusal.
OWN_ONLY_ACL = "pattern write {prefix}/%u/#\npattern read {prefix}/%u/#\nuser {auditor}\ntopic read #\n"


def test_a_node_that_cannot_read_its_own_topic_fails_the_roundtrip_and_proves_nothing(tmp_path):
    with SecureBroker(tmp_path / "write-only", acl=WRITE_ONLY_ACL) as b:
        report, checks, shown = run_check(node_config(tmp_path, b), timeout_s=1)
    assert [c.result for c in report.checks] == ["PASS", "FAIL", "FAIL", "PASS"], shown
    assert "(PUBACK received) but it did not come back within 1 s" in checks["broker.roundtrip"].detail
    assert checks["broker.acl"].detail.startswith("ACL could not be proven: the listener did not hear"), shown


def test_mosquitto_grants_the_listener_without_the_check_read_rule(tmp_path):
    """Pins the broker behaviour the module doc relies on: were Mosquitto to start checking
    subscriptions against read rules, this would turn into "no read access to verify"."""
    with SecureBroker(tmp_path / "own-only", acl=OWN_ONLY_ACL) as b:
        report, checks, shown = run_check(node_config(tmp_path, b))
    assert report.result == "PASS", shown
    assert checks["broker.acl"].measured["subscription"] == "granted"


VERDICT = dict(node=NODE, prefix=PREFIX, probe_topic=f"{PREFIX}/acl-probe-x/check/x", listen_s=1.5)


@pytest.mark.parametrize(
    ("observed", "passed", "detail"),
    [
        (dict(received=False, answer="refused", granted=True, heard_own=True), True, "cannot publish under"),
        (dict(received=True, answer="refused", granted=True, heard_own=True), False, "ACL leak"),
        (dict(received=False, answer="accepted", granted=True, heard_own=True), False, "ACL leak"),
        (
            dict(received=False, answer="refused", granted=False, heard_own=True),
            False,
            "no read access to verify",
        ),
        (dict(received=False, answer="refused", granted=True, heard_own=False), False, "did not hear"),
        (dict(received=False, answer=None, granted=True, heard_own=True), False, "only MQTT 3.1.1"),
    ],
    ids=["pass", "seen", "accepted", "no-read-access", "deaf-listener", "mqtt311-only"],
)
def test_acl_verdict(observed, passed, detail):
    """The cases a Mosquitto acl_file cannot produce: it grants every SUBACK and speaks MQTT 5."""
    ok, text = acl_verdict(**VERDICT, puback="Not authorized" if observed["answer"] else None, **observed)
    assert ok is passed
    assert detail in text
