"""Identity (issue 11): on the recommended broker (README: `use_username_as_clientid true`) no
other user can take a node's client id and kick it off; check-broker says whether a broker binds
them, and passes on the recommended one."""

from __future__ import annotations

import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from .pki import AUDITOR, PREFIX, SecureBroker
from .test_check_broker import NODE, OTHER, node_config, run_check

KICK_WAIT_S = 1.5


@pytest.fixture(scope="module")
def bound_broker(tmp_path_factory):
    with SecureBroker(tmp_path_factory.mktemp("bound-broker"), bind_client_id=True) as broker:
        yield broker


@pytest.fixture(scope="module")
def unbound_broker(tmp_path_factory):
    with SecureBroker(tmp_path_factory.mktemp("unbound-broker")) as broker:
        yield broker


def _connect(broker: SecureBroker, user: str, client_id: str, *, will: bool = False):
    gone, up = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=False)
    client.username_pw_set(user, broker.users[user])
    client.tls_set(ca_certs=str(broker.ca), cert_reqs=ssl.CERT_REQUIRED)
    if will:
        client.will_set(
            f"{PREFIX}/{user}/status", b'{"state":"offline","reason":"lost"}', qos=1, retain=False
        )
    client.on_connect = lambda c, u, f, rc, p: up.set() if not rc.is_failure else gone.set()
    client.on_disconnect = lambda *a: gone.set()
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    assert up.wait(5) or gone.is_set()
    return client, gone


def _another_user_takes_the_nodes_id(broker: SecureBroker) -> tuple[bool, list[str]]:
    """(was the node kicked off, the Last Wills an auditor heard)."""
    with broker.subscriber(f"{PREFIX}/{NODE}/status", user=AUDITOR) as auditor:
        node, node_gone = _connect(broker, NODE, NODE, will=True)
        intruder, _ = _connect(broker, OTHER, NODE)  # another user, the node's client id
        kicked = node_gone.wait(KICK_WAIT_S)
        time.sleep(0.2)  # a Last Will reaches a subscriber within milliseconds
        wills = auditor.topics()
        for client in (intruder, node):
            client.disconnect()
            client.loop_stop()
    return kicked, wills


def test_without_the_binding_another_user_kicks_the_node_off(unbound_broker):
    kicked, wills = _another_user_takes_the_nodes_id(unbound_broker)
    assert kicked and wills == [f"{PREFIX}/{NODE}/status"]  # what issue 11 found


def test_with_the_recommended_binding_another_user_cannot_take_the_nodes_id(bound_broker):
    kicked, wills = _another_user_takes_the_nodes_id(bound_broker)
    assert not kicked and wills == []


def test_check_broker_passes_on_the_recommended_broker_and_sees_the_binding(tmp_path, bound_broker):
    report, checks, shown = run_check(node_config(tmp_path, bound_broker))
    assert report.result == "PASS", shown
    client_id = checks["broker.client_id"]
    assert client_id.measured == {"bound": True} and not client_id.detail.startswith("warning")
    assert checks["broker.acl"].measured["puback"] == "0x87 Not authorized"


def test_check_broker_warns_when_the_broker_does_not_bind(tmp_path, unbound_broker):
    report, checks, shown = run_check(node_config(tmp_path, unbound_broker))
    assert report.result == "PASS", shown  # the node works; the broker's configuration is at fault
    assert checks["broker.client_id"].detail.startswith("warning: the broker does not bind client ids")
    assert any("use_username_as_clientid" in line for line in shown)
