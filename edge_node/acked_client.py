"""aiomqtt's client, with the broker's verdict on each publish (DESIGN §3, §10; issue 10).

Why a subclass. Under MQTT 5 a PUBACK carries a reason code, and a code of 0x80 or more means
the broker refused the message (0x87 not authorized, 0x97 quota exceeded, 0x95 packet too large,
...): it was NOT accepted, and a node that deletes the rows it carried loses them. aiomqtt 2.5
resolves `publish()` on any PUBACK: its `_on_publish` ignores the reason code that paho 2.x
hands it (callback API version 2). No aiomqtt 2.x release exposes it (3.0 is another, MQTT 5
only API), and replacing the client would cost a rewrite of a path that the fault suite has
proven. So `AckedClient.publish` does what aiomqtt's does, with a future in place of its event,
and `_on_publish` resolves that future with the reason code: a refusal raises `PublishRefused`.

What it relies on from aiomqtt 2.5 (pinned by tests/test_acked_client.py, which fails if any of
it changes): the paho client in `_client`, the `_pending_publishes` dict that `_on_publish`
pops by message id, `_pending_call` and `_wait_for`, and `_on_connect` receiving the CONNACK's
properties. Everything else (connect, TLS, Last Will, subscriptions) is aiomqtt's own.
"""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def _read_puback_0x95() -> None:
    """Mosquitto 2.0 answers a PUBLISH over its `message_size_limit` with PUBACK 0x95 "Packet too
    large", a code MQTT 5 lists for CONNACK and DISCONNECT only. paho 2.2 then calls the PUBACK
    malformed and drops the connection, so the refusal would never be seen and the batch never
    split: resent whole after every reconnect. Add PUBACK to what 0x95 may answer, in paho's own
    table (a class attribute that each ReasonCode copies). Pinned by tests/test_acked_client.py."""
    names = dict(ReasonCode.names)
    too_large = {name: list(kinds) for name, kinds in names[0x95].items()}
    kinds = too_large.setdefault("Packet too large", [])
    if PacketTypes.PUBACK not in kinds:
        kinds.append(PacketTypes.PUBACK)
        names[0x95] = too_large
        ReasonCode.names = MappingProxyType(names)


_read_puback_0x95()

PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK: "Unsupported protocol version" (an MQTT 3.1.1 broker's 0x01)
# Refusals that are about the message itself, not the node's rights or the broker's state: a
# smaller message may pass (split the batch), and one reading refused so will always be.
MESSAGE_REFUSALS = {0x95: "packet too large", 0x99: "payload format invalid"}


class PublishRefused(aiomqtt.MqttCodeError):
    """The broker answered a QoS 1 PUBLISH with a PUBACK reason code >= 0x80."""

    def __init__(self, rc: ReasonCode, topic: str):
        super().__init__(rc, f"broker refused the publish on {topic}")
        self.topic = topic

    @property
    def reason_code(self) -> int:
        return self.rc.value

    @property
    def reason(self) -> str:
        return reason_text(self.rc)


def reason_text(rc: ReasonCode | int) -> str:
    """`0x87 Not authorized`: the code a technician can look up, and its name in words."""
    value = rc if isinstance(rc, int) else rc.value
    name = ""
    try:
        name = ReasonCode(PacketTypes.PUBACK, identifier=value).getName()
    except (KeyError, ValueError):  # a code paho does not name for a PUBACK
        pass
    name = name or MESSAGE_REFUSALS.get(value, "")
    return f"0x{value:02X} {name}".strip()


class AckedClient(aiomqtt.Client):
    """`publish()` returns only when the broker accepted the message; raises `PublishRefused` when
    its PUBACK refused it. `max_packet_size` and `receive_maximum` are what the CONNACK said
    (None: the broker set no limit, or speaks MQTT 3.1.1)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_packet_size: int | None = None
        self.receive_maximum: int | None = None

    async def publish(  # type: ignore[override]
        self,
        topic: str,
        payload: bytes | str | None = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (aiomqtt's own signature)
    ) -> None:
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            lost = self._disconnected.exception() if self._disconnected.done() else None
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message") from lost
        if info.is_published():  # QoS 0: gone, no PUBACK to wait for
            return
        verdict: asyncio.Future[ReasonCode] = self._loop.create_future()
        with self._pending_call(info.mid, verdict, self._pending_publishes):
            rc = await self._wait_for(verdict, timeout=timeout)
        if rc.is_failure:
            raise PublishRefused(rc, topic)

    def _on_publish(self, client, userdata, mid: int, reason_code: ReasonCode, properties) -> None:
        verdict = self._pending_publishes.pop(mid, None)
        if verdict is None:  # not ours to wait for any more (timed out)
            return
        if isinstance(verdict, asyncio.Future):
            if not verdict.done():
                verdict.set_result(reason_code)
        else:  # aiomqtt's own event, should anything call its publish
            verdict.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if properties is not None and not reason_code.is_failure:
            self.max_packet_size = getattr(properties, "MaximumPacketSize", None)
            self.receive_maximum = getattr(properties, "ReceiveMaximum", None)
        super()._on_connect(client, userdata, flags, reason_code, properties)


def is_unsupported_protocol(err: BaseException) -> bool:
    """A CONNACK saying the broker does not speak this MQTT version (an MQTT 3.1.1 broker's
    "unacceptable protocol version", which paho reports as 0x84 under MQTT 5)."""
    rc = getattr(err, "rc", None)
    value = rc.value if isinstance(rc, ReasonCode) else rc
    return isinstance(err, MqttConnectError) and value == UNSUPPORTED_PROTOCOL
