"""`edge-node check-broker`: prove, with the node's own credentials, that the broker works for it
and that it cannot speak for another node (DESIGN §4, §6).

`check_broker(config, report)` adds four checks to the report, always all four:

- ``broker.connect``: connect as the daemon does (same TLS verification against ``ca_file``, same
  username/password from ``password_file`` or client certificate and key, MQTT 3.1.1), with the
  client id ``{node_id}-check`` so a running daemon is not kicked off. measured ``connect_ms``.
- ``broker.roundtrip``: subscribe to ``{topic_root}/check/<nonce>``, publish a QoS 1 message there
  and receive it back. measured ``rtt_ms``.
- ``broker.acl``: publish (QoS 1) under another node's topic,
  ``{topic_prefix}/acl-probe-<nonce>/check/<nonce>``, while a listener of this node is subscribed
  there, and show that nothing arrives within ``ACL_LISTEN_S``.
- ``broker.client_id``: whether the broker binds the client id to the username (see
  `_client_id_bound`); a broker that does not gets a warning in the detail, not a FAIL.
  On a broker that binds them (the recommended one), every connection of the node's user has
  the node's id, so the check takes a running daemon's session over: run it with the service
  stopped (provision stops it on a node).

If the connection fails, the other three are reported as FAIL "skipped: no connection".

How broker.acl decides. MQTT 3.1.1 acknowledges a refused publish exactly like an accepted one, so
a PUBACK proves nothing; only a listener can show that a message did not arrive, and silence
proves something only if the listener could have heard it. But a granted SUBACK does not show
read access either: Mosquitto's ``acl_file`` grants every subscription and filters at delivery
(seen with 2.0.11), and nobody but the other node may write where the probe publishes, so read
access to another node's topic cannot be shown positively from here. The probe therefore
publishes from a second connection of the node (client id ``{node_id}-check-probe``) that speaks
MQTT 5, whose PUBACK carries the broker's verdict ("Not authorized"); that connection is the
listener too (on a binding broker it has taken the first one over), and the check:

- FAILs if the probe message reached the listener (a leak seen), or if the broker accepted it
  (MQTT 5 PUBACK "Success": a leak by the broker's own word, even where the listener may not read);
- FAILs "could not be proven" if the listener's subscription was refused (SUBACK 0x80: no read
  access to verify), if the listener did not even hear the node's own control message published
  after the probe (so its silence means nothing), or if the broker speaks only MQTT 3.1.1;
- PASSes only when the broker refused the publish, the listener was subscribed there (granted)
  and heard the node's own control message, and nothing arrived on the probe topic for
  ``ACL_LISTEN_S`` seconds after the publish.

The recommended city ACL (Mosquitto ``acl_file``; ``%u`` is the username, which is the node id)::

    pattern write {topic_prefix}/%u/#
    pattern read {topic_prefix}/%u/#
    pattern read {topic_prefix}/+/check/#

The last line lets any node read every node's ``check/`` topics (random nonces, no data): with it
a leak is seen by the listener itself, and brokers that check subscriptions (Mosquitto's dynamic
security plugin, EMQX, ...) grant the listener's subscription; without it they refuse it and the
check fails with "no read access to verify". In a Mosquitto ``acl_file`` it must be a
``pattern`` line even though it has no ``%u``: ``topic`` lines before the first ``user`` line
apply to anonymous clients only, and after ``user X`` to X only (a ``topic read`` line there
silently gives the nodes nothing; the tests caught exactly that).

Secrets: the password is read from its file when connecting and never printed or logged; no
message of this module contains it. Check messages are not retained, so nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge_node.acked_client import UNSUPPORTED_PROTOCOL, reason_text
from edge_node.broker_connection import BrokerConnection
from edge_node.config import BrokerConfig, Config

from .report import Report

__all__ = ["ACL_LISTEN_S", "CHECKS", "acl_verdict", "check_broker"]

ACL_LISTEN_S = 1.5  # how long the listener must hear nothing on the probe topic
CHECKS = ("broker.connect", "broker.roundtrip", "broker.acl", "broker.client_id")
TAKEOVER_WAIT_S = 1.0  # how long the first of two sessions may take to be closed by the second

# CONNACK refusals as paho reports them (MQTT 3.1.1 return codes mapped to MQTT 5 reason codes).
_CONNACK_REFUSED = {
    132: "the broker does not speak this MQTT version",
    133: "the broker rejected the client id {client_id}",
    134: "broker refused the credentials of {who} (bad user name or password)",
    135: "broker refused the credentials of {who} (not authorised)",
    136: "the broker at {where} is unavailable (server unavailable)",
    138: "the broker banned {who}",
}
_PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64


class CheckFailed(Exception):
    """A step failed; ``str(err)`` is the one line for the technician."""


def check_broker(
    config: Config, report: Report, *, timeout_s: float = 10.0, acl_listen_s: float = ACL_LISTEN_S
) -> None:
    """Add broker.connect, broker.roundtrip and broker.acl to `report` (see the module doc).

    Blocking; each network wait is bounded by `timeout_s`. Never raises for a broker problem:
    each check is a PASS or a FAIL with one line of detail.
    """
    nonce = secrets.token_hex(4)
    node = config.node.id
    own_topic = f"{config.topic_root}/check/{nonce}"
    probe_topic = f"{config.broker.topic_prefix}/acl-probe-{nonce}/check/{nonce}"
    main = _Session(config.broker, f"{node}-check", timeout_s, protocol=_PROTOCOLS[config.broker.protocol])
    try:
        with report.step("broker.connect") as outcome:
            try:
                try:
                    connect_ms = main.connect()
                except CheckFailed:
                    if not main.unsupported_protocol():
                        raise
                    # as the daemon does (edge_node/forwarder.py): MQTT 3.1.1 for a broker without 5
                    main.close()
                    main = _Session(config.broker, f"{node}-check", timeout_s)
                    connect_ms = main.connect()
            except CheckFailed as err:
                outcome["detail"] = str(err)
            else:
                protocol = _protocol_name(main.protocol)
                note = f"MQTT {protocol}"
                if protocol != config.broker.protocol:
                    note += " (the broker does not speak MQTT 5)"
                if protocol == "3.1.1":
                    note += ", under which a refused reading cannot be told from an accepted one"
                outcome.update(
                    passed=True,
                    detail=f"connected to {_where(config.broker)} as {_who(config.broker)}, "
                    f"{_tls_note(config.broker)}, {note}, in {connect_ms:.0f} ms",
                    measured={"connect_ms": round(connect_ms, 1), "protocol": protocol},
                )
        if not main.connected:
            for name in CHECKS[1:]:
                with report.step(name) as outcome:
                    outcome["detail"] = "skipped: no connection"
            return
        with report.step("broker.roundtrip") as outcome:
            _roundtrip(main, node, own_topic, nonce, outcome)
        with report.step("broker.acl") as outcome:
            _acl(config, main, own_topic, probe_topic, nonce, outcome, timeout_s, acl_listen_s)
        main.close()
        with report.step("broker.client_id") as outcome:
            _client_id_bound(config, outcome, timeout_s)
    finally:
        main.close()


def _client_id_bound(config: Config, outcome: dict, timeout_s: float) -> None:
    """Whether the broker binds the client id to the user (Mosquitto's `use_username_as_clientid`),
    so that nobody else can take the node's id and kick it off. Two sessions of the node, asking
    for two different client ids: if the broker gives both the node's one identity, the second
    takes the first over; if both stay up, any user can take the node's id. Not binding is a
    warning (the check passes: the node works), since it is the broker's configuration."""
    node = config.node.id
    first = _Session(config.broker, f"{node}-check-first", timeout_s)
    second = _Session(config.broker, f"{node}-check-second", timeout_s)
    try:
        first.connect()
        second.connect()
        taken_over = first._wait(lambda s: s.lost is not None, TAKEOVER_WAIT_S)
        if not taken_over and second.state.lost is not None:
            raise CheckFailed(f"the second session was closed by the broker: {second.state.lost}")
    except CheckFailed as err:
        outcome["detail"] = f"could not probe the client id binding: {err}"
        return
    finally:
        second.close()
        first.close()
    outcome["passed"] = True
    outcome["measured"] = {"bound": taken_over}
    if taken_over:
        outcome["detail"] = f"the broker binds client ids to users: no other user can take {node}'s id"
    else:
        outcome["detail"] = (
            f"warning: the broker does not bind client ids to users, so any user connecting with the "
            f"client id {node} kicks this node off; set `use_username_as_clientid true` (Mosquitto)"
        )


def _roundtrip(main: _Session, node: str, topic: str, nonce: str, outcome: dict) -> None:
    try:
        if main.subscribe(topic) >= 0x80:
            outcome["detail"] = f"broker refused {node} a subscription to its own topic {topic}"
            return
        payload = json.dumps({"node": node, "check": "roundtrip", "nonce": nonce}).encode()
        started = time.monotonic()
        main.publish(topic, payload)
        arrived = main.wait_message(lambda m: m.topic == topic and m.payload == payload)
    except CheckFailed as err:
        outcome["detail"] = str(err)
        return
    if arrived is None:
        outcome["detail"] = (
            f"published on {topic} (PUBACK received) but it did not come back within {main.timeout_s:g} s: "
            f"the broker's ACL must let {node} write and read {topic.rsplit('/check/', 1)[0]}/#"
        )
        return
    rtt_ms = (arrived.at - started) * 1000
    outcome.update(
        passed=True,
        detail=f"QoS 1 message on {topic} came back in {rtt_ms:.0f} ms",
        measured={"rtt_ms": round(rtt_ms, 1)},
    )


def _acl(
    config: Config,
    main: _Session,
    own_topic: str,
    probe_topic: str,
    nonce: str,
    outcome: dict,
    timeout_s: float,
    listen_s: float,
) -> None:
    node = config.node.id
    probe: _Session | None = None
    try:
        probe = _Session(config.broker, f"{node}-check-probe", timeout_s, protocol=mqtt.MQTTv5)
        try:
            probe.connect()
        except CheckFailed:
            if not probe.unsupported_protocol():
                raise
            # a broker without MQTT 5: the same, without a verdict in the PUBACK
            probe.close()
            probe = _Session(config.broker, f"{node}-check-probe", timeout_s)
            probe.connect()
        # The probe listens too: where the broker binds the client id to the username, `main`
        # (the same user) has just been taken over by it.
        granted = probe.subscribe(probe_topic) < 0x80
        if probe.subscribe(own_topic) >= 0x80:
            raise CheckFailed(f"broker refused {node} a subscription to its own topic {own_topic}")
        payload = json.dumps({"node": node, "check": "acl-probe", "nonce": nonce}).encode()
        sent = time.monotonic()
        try:
            reason = probe.publish(probe_topic, payload)
            answer = None if reason is None else ("refused" if reason.is_failure else "accepted")
            puback = None if reason is None else reason_text(reason)
        except CheckFailed:
            if probe.state.lost is None:
                raise
            # some brokers close the connection of a client that publishes where it may not
            answer, puback = "refused", "connection closed by the broker"
        control = json.dumps({"node": node, "check": "acl-control", "nonce": nonce}).encode()
        probe.publish(own_topic, control)
        heard_own = probe.wait_message(lambda m: m.topic == own_topic and m.payload == control) is not None
        probe.wait_message(lambda m: m.topic == probe_topic, until=sent + listen_s)
    except CheckFailed as err:
        outcome["detail"] = f"ACL could not be proven: {err}"
        return
    finally:
        if probe is not None:
            probe.close()
    listened_ms = (time.monotonic() - sent) * 1000
    received = sum(1 for m in probe.messages() if m.topic == probe_topic)
    outcome["measured"] = {
        "listened_ms": round(listened_ms),
        "received": received,
        "subscription": "granted" if granted else "refused",
        "puback": puback,
    }
    outcome["passed"], outcome["detail"] = acl_verdict(
        node=node,
        prefix=config.broker.topic_prefix,
        probe_topic=probe_topic,
        received=received > 0,
        answer=answer,
        puback=puback,
        granted=granted,
        heard_own=heard_own,
        listen_s=listen_s,
    )


def acl_verdict(
    *,
    node: str,
    prefix: str,
    probe_topic: str,
    received: bool,
    answer: str | None,
    puback: str | None,
    granted: bool,
    heard_own: bool,
    listen_s: float,
) -> tuple[bool, str]:
    """(passed, detail) of broker.acl from what was observed (the rules of the module doc).

    `answer` is the broker's verdict on the probe publish: "refused", "accepted", or None when
    the broker speaks only MQTT 3.1.1 (no verdict in its PUBACK).
    """
    if received:
        return False, (
            f"ACL leak: {node} published under another node's topic {probe_topic} and it arrived: "
            f"each node must write only under {prefix}/<its id>/#"
        )
    if answer == "accepted":
        return False, (
            f"ACL leak: the broker accepted {node}'s publish under another node's topic {probe_topic} "
            f"(PUBACK {puback}): each node must write only under {prefix}/<its id>/#"
        )
    if not granted:
        return False, (
            f"ACL could not be proven: no read access to verify (the broker refused {node} a subscription "
            f"to {probe_topic}; the city ACL needs `pattern read {prefix}/+/check/#`)"
        )
    if not heard_own:
        return False, (
            "ACL could not be proven: the listener did not hear the node's own control message "
            "after the probe, so its silence shows nothing"
        )
    if answer is None:
        return False, (
            "ACL could not be proven: the broker speaks only MQTT 3.1.1, which acknowledges a refused "
            "publish like an accepted one, and its listener's silence may be a read refusal"
        )
    return True, (
        f"{node} cannot publish under another node's topic: the broker refused it ({puback}) and "
        f"nothing arrived on {probe_topic} in {listen_s:g} s"
    )


# --- one MQTT connection of the node, blocking calls with timeouts ------------------------------


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    at: float  # time.monotonic() of arrival


@dataclass
class _State:
    connack: ReasonCode | None = None
    lost: str | None = None  # why the connection ended, once it has
    last_error: str | None = None  # paho's first error log line (e.g. a TLS alert): the cause
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    messages: list[_Message] = field(default_factory=list)


class _Session:
    """A paho client with the node's credentials, set up as the daemon's (edge_node.broker_connection)."""

    def __init__(self, broker: BrokerConfig, client_id: str, timeout_s: float, protocol=mqtt.MQTTv311):
        self.broker = broker
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.protocol = protocol
        self.state = _State()
        self.cond = threading.Condition()
        self.connected = False
        self.client: mqtt.Client | None = None

    def connect(self) -> float:
        """Connect; the milliseconds until CONNACK. Raises CheckFailed with the reason in one line."""
        b = self.broker
        version = "5" if self.protocol == mqtt.MQTTv5 else "3.1.1"
        try:  # the daemon's set-up: its credentials, TLS with the certificate and host name checked
            connection = dataclasses.replace(BrokerConnection.of_node(b), protocol=version)
            # one shot: a lost connection is a finding, never retried
            client = connection.paho_client(self.client_id, reconnect_on_failure=False)
        except (OSError, ValueError) as err:
            raise CheckFailed(_explain_setup(err, b)) from None
        client.connect_timeout = self.timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        self.client = client
        started = time.monotonic()
        try:
            connection.connect(client)  # DNS, TCP and TLS: raise here
        except (OSError, ValueError) as err:
            raise CheckFailed(_explain_connect(err, b, self.timeout_s)) from None
        client.loop_start()
        if not self._wait(lambda s: s.connack is not None or s.lost is not None):
            raise CheckFailed(f"no answer (CONNACK) from {_where(b)} within {self.timeout_s:g} s")
        elapsed_ms = (time.monotonic() - started) * 1000
        rc = self.state.connack
        if rc is None or rc.is_failure:
            raise CheckFailed(self._explain_refusal(rc))
        self.connected = True
        return elapsed_ms

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; the SUBACK code (0..2 granted, >= 0x80 refused)."""
        rc, mid = self._live().subscribe(topic, qos=1)
        self._check_sent(rc, f"subscribe to {topic}")
        if not self._wait(lambda s: mid in s.subacks or s.lost is not None):
            raise CheckFailed(f"no SUBACK for {topic} within {self.timeout_s:g} s")
        if mid not in self.state.subacks:
            raise self._lost()
        return self.state.subacks[mid][0].value

    def publish(self, topic: str, payload: bytes) -> ReasonCode | None:
        """Publish at QoS 1 and wait for the PUBACK: its reason code in MQTT 5, None in 3.1.1."""
        info = self._live().publish(topic, payload, qos=1)
        self._check_sent(info.rc, f"publish on {topic}")
        if not self._wait(lambda s: info.mid in s.pubacks or s.lost is not None):
            raise CheckFailed(f"no PUBACK for a QoS 1 publish on {topic} within {self.timeout_s:g} s")
        if info.mid not in self.state.pubacks:
            raise self._lost()
        return self.state.pubacks[info.mid] if self.protocol == mqtt.MQTTv5 else None

    def wait_message(
        self, match: Callable[[_Message], bool], *, until: float | None = None
    ) -> _Message | None:
        """The first message (received so far or until the deadline) that `match`es, or None.

        Raises CheckFailed if the connection is lost before such a message arrived.
        """

        def found(state: _State) -> _Message | None:
            return next((m for m in state.messages if match(m)), None)

        deadline = until if until is not None else time.monotonic() + self.timeout_s
        self._wait(lambda s: found(s) is not None or s.lost is not None, deadline - time.monotonic())
        with self.cond:
            message = found(self.state)
        if message is None and self.state.lost is not None:
            raise self._lost()
        return message

    def messages(self) -> list[_Message]:
        with self.cond:
            return list(self.state.messages)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    # -- internals ---------------------------------------------------------------------------------

    def unsupported_protocol(self) -> bool:
        """Whether the CONNACK said the broker does not speak this MQTT version (0x84, or a 3.1.1
        broker's 0x01, which paho reports as 0x84)."""
        return self.state.connack is not None and self.state.connack.value == UNSUPPORTED_PROTOCOL

    def _live(self) -> mqtt.Client:
        if self.client is None or self.state.lost is not None:
            raise self._lost()
        return self.client

    def _check_sent(self, rc: int, what: str) -> None:
        if rc == mqtt.MQTT_ERR_NO_CONN:
            raise self._lost()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise CheckFailed(f"could not {what}: {mqtt.error_string(rc)}")

    def _lost(self) -> CheckFailed:
        return CheckFailed(f"lost the connection to {_where(self.broker)}: {self.state.lost or 'closed'}")

    def _wait(self, predicate: Callable[[_State], bool], timeout: float | None = None) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: predicate(self.state), self.timeout_s if timeout is None else timeout
            )

    def _explain_refusal(self, rc: ReasonCode | None) -> str:
        b = self.broker
        if rc is None:  # closed before any CONNACK
            why = self.state.last_error or self.state.lost or "no reason given"
            hint = ""
            if b.tls and ("EOF" in why or "alert" in why.lower()):
                hint = (
                    ": does the broker require a client certificate, or refuse ours?"
                    if b.client_cert is None
                    else f": does the broker refuse the client certificate {b.client_cert}?"
                )
            return f"{_where(b)} closed the connection before accepting it ({why}){hint}"
        template = _CONNACK_REFUSED.get(rc.value, "the broker refused the connection ({rc})")
        return template.format(client_id=self.client_id, who=_who(b), where=_where(b), rc=rc)

    # -- paho callbacks, on its network thread -----------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self.cond:
            if self.state.connack is None:
                self.state.connack = reason_code
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self.cond:
            self.state.lost = self.state.last_error or str(reason_code)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self.cond:
            self.state.subacks[mid] = list(reason_codes)
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.cond:
            self.state.pubacks[mid] = reason_code
            self.cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self.cond:
            self.state.messages.append(_Message(message.topic, message.payload, time.monotonic()))
            self.cond.notify_all()

    def _on_log(self, client, userdata, level, text) -> None:
        # paho's error lines name sockets and TLS alerts, never secrets; the first one is the cause
        if level == mqtt.MQTT_LOG_ERR and self.state.last_error is None:
            with self.cond:
                self.state.last_error = text.removeprefix("failed to receive on socket: ")


def _protocol_name(version: int) -> str:
    return next(name for name, v in _PROTOCOLS.items() if v == version)


# --- errors as one line for the technician --------------------------------------------------------


def _where(b: BrokerConfig) -> str:
    return f"{b.host}:{b.port}"


def _who(b: BrokerConfig) -> str:
    if b.username is not None:
        return b.username
    if b.client_cert is not None:
        return f"the client certificate {b.client_cert}"
    return "an anonymous client"


def _tls_note(b: BrokerConfig) -> str:
    if not b.tls:
        return "WITHOUT TLS (mqtt://)"
    return f"TLS certificate verified against {b.ca_file or 'the system CA store'}"


def _explain_setup(err: OSError | ValueError, b: BrokerConfig) -> str:
    """Errors of reading the password file or loading the CA, certificate and key."""
    if isinstance(err, OSError) and getattr(err, "filename", None):
        return f"cannot read {err.filename}: {err.strerror}"
    reason = getattr(err, "reason", None) or str(err)
    if "KEY_VALUES_MISMATCH" in reason:
        return f"the client certificate {b.client_cert} and key {b.client_key} do not match"
    if isinstance(err, ssl.SSLError):
        return (
            f"cannot load the TLS files (CA {b.ca_file}, certificate {b.client_cert}, "
            f"key {b.client_key}): {reason}"
        )
    return f"cannot set up the connection: {reason}"


def _explain_connect(err: OSError | ValueError, b: BrokerConfig, timeout_s: float) -> str:
    """Errors of the name lookup, the TCP connection and the TLS handshake."""
    where = _where(b)
    if isinstance(err, ssl.SSLCertVerificationError):
        why = err.verify_message or err.reason or str(err)
        if err.verify_code in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            return f"TLS certificate of {b.host} is not valid for that name: {why}"
        return f"TLS certificate of {b.host} not trusted by {b.ca_file or 'the system CA store'}: {why}"
    if isinstance(err, ssl.SSLError):
        reason = err.reason or str(err)
        hint = ""
        if reason == "WRONG_VERSION_NUMBER":
            hint = f" (is {b.port} the broker's TLS port? mqtts:// needs a TLS listener)"
        elif "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
            hint = " (the broker refused the client certificate, or requires one)"
        return f"TLS handshake with {where} failed: {reason}{hint}"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the broker host {b.host}: {err.strerror}"
    if isinstance(err, ConnectionRefusedError):
        return f"{where} refused the connection: no broker listens there (wrong port, or broker down)"
    if isinstance(err, ConnectionResetError):
        hint = f" during the TLS handshake: is {b.port} the broker's TLS port?" if b.tls else ""
        return f"{where} reset the connection{hint}"
    if isinstance(err, TimeoutError):
        return f"no answer from {where} within {timeout_s:g} s (wrong host or port, or a firewall)"
    if isinstance(err, OSError):
        return f"cannot reach {where}: {err.strerror or err}"
    return f"cannot connect to {where}: {err}"
