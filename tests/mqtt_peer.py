"""A scripted MQTT server for the tests, in the spirit of Mosquitto's test/lib peers: it speaks
just enough MQTT 3.1.1 and 5 (CONNECT, PUBLISH QoS 0/1, SUBSCRIBE, PINGREQ, DISCONNECT) to play
a broker whose every answer the test decides, which no real broker can be made to do on cue.

`verdict(publish)` decides each QoS 1 PUBLISH: a PUBACK reason code (0 accepts; >= 0x80 refuses,
which an MQTT 3.1.1 PUBACK cannot say, so there it is a plain PUBACK), or `DROP`: no PUBACK, and
the connection is closed. `v5_connack` answers an MQTT 5 CONNECT with that code and closes (0x84
in MQTT 5's form; 0x01 in MQTT 3.1.1's, as a 3.1.1-only broker does), while 3.1.1 is accepted.
`max_packet_size` goes in an MQTT 5 CONNACK. `closed` makes it hang up on every new connection.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

DROP = "drop"


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    protocol: int  # 4 (3.1.1) or 5
    connection: int  # the how-manyth connection carried it, from 1
    verdict: int | str | None  # what the peer answered: a reason code, DROP, or None (QoS 0)

    def json(self) -> dict:
        return json.loads(self.payload)

    @property
    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.json()["readings"]] if "/reading/" in self.topic else []


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


def _skip_properties(body: bytes, at: int) -> int:
    length, shift = 0, 0
    while True:
        byte = body[at]
        at += 1
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return at + length


class ScriptedPeer:
    def __init__(
        self,
        *,
        verdict: Callable[[Publish], int | str] = lambda publish: 0,
        v5_connack: int | None = None,
        max_packet_size: int | None = None,
    ):
        self.verdict = verdict
        self.v5_connack = v5_connack
        self.max_packet_size = max_packet_size
        self.closed = False
        self.publishes: list[Publish] = []
        self.connects: list[int] = []  # the protocol level of each CONNECT, in order
        self.cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(5), "scripted peer did not start"
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        started.set()
        self._loop.run_forever()

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- views, for the test's thread ------------------------------------------------------------

    def readings(self, *, accepted: bool | None = None) -> list[Publish]:
        with self.cond:
            return [
                p
                for p in self.publishes
                if "/reading/" in p.topic and (accepted is None or (p.verdict == 0) == accepted)
            ]

    def accepted_seqs(self) -> set[int]:
        return {seq for p in self.readings(accepted=True) for seq in p.seqs}

    def last(self, suffix: str) -> dict | None:
        with self.cond:
            found = [p for p in self.publishes if p.topic.endswith(suffix)]
        return found[-1].json() if found else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    # -- the server ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._session(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.closed:
            return
        kind, body = await _read_packet(reader)
        assert kind >> 4 == 1, f"expected CONNECT, got packet type {kind >> 4}"
        name_len = struct.unpack("!H", body[:2])[0]
        level = body[2 + name_len]
        with self.cond:
            self.connects.append(level)
            connection = len(self.connects)
            self.cond.notify_all()
        v5 = level == 5
        if v5 and self.v5_connack is not None:
            # 0x01 is a 3.1.1 broker's CONNACK (no properties); 0x84 is MQTT 5's
            body = bytes([0, self.v5_connack]) + (b"" if self.v5_connack == 1 else b"\x00")
            writer.write(_packet(0x20, body))
            await writer.drain()
            return
        if v5:
            props = b""
            if self.max_packet_size:
                props = b"\x27" + struct.pack("!I", self.max_packet_size)
            writer.write(_packet(0x20, b"\x00\x00" + _varint(len(props)) + props))
        else:
            writer.write(_packet(0x20, b"\x00\x00"))
        await writer.drain()
        while True:
            kind, body = await _read_packet(reader)
            match kind >> 4:
                case 3:  # PUBLISH
                    if not await self._publish(kind, body, level, connection, writer):
                        return
                case 8:  # SUBSCRIBE: grant QoS 1 to each filter
                    pid, at = body[:2], 2
                    if v5:
                        at = _skip_properties(body, at)
                    granted = b""
                    while at < len(body):
                        at += 2 + struct.unpack("!H", body[at : at + 2])[0] + 1
                        granted += b"\x01"
                    writer.write(_packet(0x90, pid + (b"\x00" if v5 else b"") + granted))
                case 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                case 14:  # DISCONNECT
                    return
            await writer.drain()

    async def _publish(self, kind: int, body: bytes, level: int, connection: int, writer) -> bool:
        """Record and answer one PUBLISH; False when the script drops the connection."""
        qos = (kind >> 1) & 3
        topic_len = struct.unpack("!H", body[:2])[0]
        topic = body[2 : 2 + topic_len].decode()
        at = 2 + topic_len
        pid = body[at : at + 2] if qos else b""
        at += len(pid)
        if level == 5:
            at = _skip_properties(body, at)
        publish = Publish(topic, bytes(body[at:]), qos, level, connection, None)
        verdict = self.verdict(publish) if qos else None
        if level != 5 and verdict not in (None, DROP):
            verdict = 0  # MQTT 3.1.1 has no way to say no: what goes on the wire is a plain PUBACK
        with self.cond:
            self.publishes.append(Publish(topic, publish.payload, qos, level, connection, verdict))
            self.cond.notify_all()
        if verdict == DROP:
            return False
        if qos == 1:
            writer.write(_packet(0x40, pid + (bytes([verdict]) if verdict else b"")))
        return True
