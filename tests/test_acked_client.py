"""What edge_node/acked_client.py relies on in aiomqtt 2.5, pinned: against the scripted peer, a
PUBACK's reason code reaches the caller (0x87 raises PublishRefused, 0 returns), a withheld
PUBACK is never taken for an acceptance, the CONNACK's Maximum Packet Size is read, and under
MQTT 3.1.1 a refusal cannot be seen (what the README says 3.1.1 cannot detect). If an aiomqtt
release changes the internals the subclass uses, these fail."""

from __future__ import annotations

import asyncio
import inspect

import aiomqtt
import pytest

from edge_node.acked_client import (
    PROTOCOLS,
    AckedClient,
    PublishRefused,
    is_unsupported_protocol,
    reason_text,
)

from .mqtt_peer import DROP, ScriptedPeer


@pytest.fixture
def peer_factory():
    made: list[ScriptedPeer] = []

    def make(**kw) -> ScriptedPeer:
        made.append(ScriptedPeer(**kw))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def client(peer: ScriptedPeer, protocol: str = "5", **kw) -> AckedClient:
    return AckedClient("127.0.0.1", peer.port, protocol=PROTOCOLS[protocol], identifier="trs-pin", **kw)


def by_topic(publish) -> int | str:
    return {"t/refused": 0x87, "t/quota": 0x97, "t/large": 0x95, "t/drop": DROP}.get(publish.topic, 0)


def test_the_aiomqtt_internals_the_subclass_uses_are_there():
    params = list(inspect.signature(aiomqtt.Client._on_publish).parameters)
    assert params == ["self", "client", "userdata", "mid", "reason_code", "properties"]
    assert "properties" in inspect.signature(aiomqtt.Client._on_connect).parameters
    for name in ("_pending_call", "_wait_for"):
        assert callable(getattr(aiomqtt.Client, name)), name


async def test_a_refusing_puback_raises_with_its_reason_code_and_an_accepting_one_returns(peer_factory):
    peer = peer_factory(verdict=by_topic)
    async with client(peer) as c:
        await c.publish("t/ok", b"1", qos=1)
        with pytest.raises(PublishRefused) as refused:
            await c.publish("t/refused", b"2", qos=1)
        assert refused.value.reason_code == 0x87
        assert refused.value.reason == "0x87 Not authorized"
        with pytest.raises(PublishRefused) as quota:
            await c.publish("t/quota", b"3", qos=1)
        assert quota.value.reason == "0x97 Quota exceeded"
        # Mosquitto's answer to a message over message_size_limit, off the MQTT 5 list for a
        # PUBACK: paho 2.2 alone would call it malformed and drop the connection
        with pytest.raises(PublishRefused) as too_large:
            await c.publish("t/large", b"5", qos=1)
        assert too_large.value.reason == "0x95 Packet too large"
        await c.publish("t/ok", b"4", qos=1)  # the connection goes on after a refusal
    assert [p.verdict for p in peer.publishes] == [0, 0x87, 0x97, 0x95, 0]


async def test_many_publishes_in_flight_each_get_their_own_verdict(peer_factory):
    peer = peer_factory(verdict=lambda p: 0x87 if int(p.payload) % 3 == 0 else 0)
    async with client(peer, max_inflight_messages=50) as c:
        c.pending_calls_threshold = 100
        results = await asyncio.gather(
            *(c.publish("t/x", str(i).encode(), qos=1) for i in range(40)), return_exceptions=True
        )
    refused = [i for i, r in enumerate(results) if isinstance(r, PublishRefused)]
    assert refused == [i for i in range(40) if i % 3 == 0]
    assert all(r is None for i, r in enumerate(results) if i % 3)


async def test_a_withheld_puback_is_never_an_acceptance(peer_factory):
    peer = peer_factory(verdict=by_topic)
    with pytest.raises(aiomqtt.MqttError) as lost:  # the connection dropped, or the wait timed out
        async with client(peer, timeout=3) as c:
            await c.publish("t/drop", b"x", qos=1)
    assert not isinstance(lost.value, PublishRefused)


async def test_the_connack_maximum_packet_size_is_read(peer_factory):
    peer = peer_factory(max_packet_size=4096)
    async with client(peer) as c:
        assert c.max_packet_size == 4096


@pytest.mark.parametrize("code", [0x84, 0x01], ids=["mqtt5-form", "mqtt311-form"])
async def test_a_broker_without_mqtt5_is_recognised_and_311_then_connects(peer_factory, code):
    peer = peer_factory(v5_connack=code)
    with pytest.raises(aiomqtt.MqttError) as refused:
        async with client(peer):
            pass
    assert is_unsupported_protocol(refused.value)
    async with client(peer, "3.1.1") as c:
        await c.publish("t/ok", b"1", qos=1)
    assert peer.connects == [5, 4]


async def test_under_mqtt311_a_refusal_cannot_be_seen(peer_factory):
    """The broker means 0x87, but MQTT 3.1.1's PUBACK cannot say it: the publish 'succeeds'."""
    peer = peer_factory(verdict=by_topic)
    async with client(peer, "3.1.1") as c:
        await c.publish("t/refused", b"2", qos=1)


def test_reason_codes_read_in_words():
    assert reason_text(0x95) == "0x95 Packet too large"
    assert reason_text(0x99) == "0x99 Payload format invalid"
    assert reason_text(0xA0) == "0xA0"  # not a PUBACK code paho names: the number alone
