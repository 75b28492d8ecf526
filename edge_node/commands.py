"""The node's command handler: `{root}/cmd/{name}` in, `{root}/cmd/{name}/reply` out (DESIGN §4).

Whatever arrives on the command topics is hostile until proven otherwise: the topic and the size
are checked before anything else is done with a message, a reply never raises out of the
handler (a 65 kB topic makes the reply's topic unpublishable), replies go out at a bounded rate,
and refusals are counted and logged at a bounded rate, so a flood costs neither the session, nor
memory, nor the SD card holding the journal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable

import aiomqtt

from .clock import format_ts

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 8192  # a signed envelope with a few config keys fits in a quarter of this
MAX_INCOMING_PACKET = 256 * 1024  # MQTT 5: larger never reaches the node; up to it, refused with a reply
MAX_NAME_CHARS = 32
COMMAND_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
REPLIES_PER_WINDOW = 20  # a flood gets this many replies per window; the rest are counted as dropped
REPLY_WINDOW_S = 2.0
LOG_INTERVAL_S = 60.0  # at most one log line per kind of refusal per this long


def connect_properties(protocol: str):
    """CONNECT properties that bound what the node receives: under MQTT 5 a Maximum Packet Size,
    so a 16 MiB command is dropped by the broker instead of being read whole into the node's
    memory (paho reads a packet entirely before anyone can look at it). None under MQTT 3.1.1,
    which has no such thing: there the size check in `handle` comes after the allocation."""
    if protocol != "5":
        return None
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)
    properties.MaximumPacketSize = MAX_INCOMING_PACKET
    return properties


class RateLimitedLog:
    """One line per `interval_s` per kind; the next line says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S):
        self.logger = logger
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, level: int, message: str, *args) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._next[kind] = now + self.interval_s
        if suppressed := self._suppressed.pop(kind, 0):
            message += f" (and {suppressed} more like it in the last {self.interval_s:.0f} s)"
        self.logger.log(level, message, *args)


class _QueueFullFilter(logging.Filter):
    """aiomqtt logs one warning per incoming message it discards from its full queue (a flood of
    20,000 commands: 1.6 MB of log on the card). Count them and let one line through a minute."""

    def __init__(self) -> None:
        super().__init__()
        self.discarded = 0
        self._limit = RateLimitedLog(log)

    def filter(self, record: logging.LogRecord) -> bool:
        if "queue is full" not in record.getMessage():
            return True
        self.discarded += 1
        self._limit("queue-full", logging.WARNING, "command flood: incoming messages discarded (queue full)")
        return False


_queue_full = _QueueFullFilter()
logging.getLogger("mqtt").addFilter(_queue_full)  # aiomqtt's default logger


class ReplyBudget:
    """At most `count` replies per `window_s`: a flood is answered at a bounded rate."""

    def __init__(self, count: int, window_s: float):
        self.count, self.window_s = count, window_s
        self._window_start = time.monotonic()
        self._used = 0

    def take(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self._window_start, self._used = now, 0
        self._used += 1
        return self._used <= self.count


class CommandRefused(Exception):
    """A command the node will not run; `str()` is the reply's one-line error."""


class CommandHandler:
    """Answers `ping` itself; every other command goes to `dispatch` (the signed commands)."""

    def __init__(
        self,
        *,
        node_id: str,
        topic_root: str,
        ping: Callable[[], dict] = dict,
        dispatch: Callable[[str, bytes, bool], dict | None] | None = None,
        outbox: deque[tuple[str, dict]] | None = None,
        outbox_ready: asyncio.Event | None = None,
    ):
        self.node_id = node_id
        self.root = topic_root
        self.ping = ping
        self.dispatch = dispatch
        self.outbox = outbox  # replies that come later (a change confirmed or rolled back)
        self.outbox_ready = outbox_ready
        self.refused = 0  # commands answered with an error, or not answered at all
        self.replies_dropped = 0  # replies not sent because of the reply rate
        self._replies = ReplyBudget(REPLIES_PER_WINDOW, REPLY_WINDOW_S)
        self._log = RateLimitedLog(log)
        self._cmd_prefix = f"{topic_root}/cmd/"

    @property
    def counts(self) -> dict:
        """Since this pipeline started (`discarded`: since the process did); in the heartbeat."""
        return {
            "refused": self.refused,
            "replies_dropped": self.replies_dropped,
            "discarded": _queue_full.discarded,
        }

    async def serve(self, client: aiomqtt.Client) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.outbox is not None and self.outbox_ready is not None:
                tg.create_task(self._send_outbox(client))
            async for message in client.messages:
                name, reply = self.handle(message.topic.value, message.payload, message.retain)
                if reply is not None:
                    await self.publish_reply(client, name, reply)

    async def _send_outbox(self, client: aiomqtt.Client) -> None:
        while True:
            await self.outbox_ready.wait()
            while self.outbox:
                name, reply = self.outbox[0]
                if not await self.publish_reply(client, name, reply, limited=False):
                    return  # the session is ending; the next one sends it
                self.outbox.popleft()
            self.outbox_ready.clear()

    def handle(self, topic: str, payload, retained: bool) -> tuple[str, dict | None]:
        """(command name, reply or None for no reply). Never raises."""
        # The topic first: it decides whether a reply can be published at all.
        if len(topic) > len(self._cmd_prefix) + MAX_NAME_CHARS or not topic.startswith(self._cmd_prefix):
            return self._refuse_silently(
                "bad-topic", "command on an unusable topic (%d chars) ignored", len(topic)
            )
        name = topic[len(self._cmd_prefix) :]
        if not COMMAND_NAME.fullmatch(name):
            return self._refuse_silently("bad-topic", "command with an invalid name ignored")
        size = len(payload) if isinstance(payload, bytes | bytearray) else len(str(payload))
        if size > MAX_COMMAND_BYTES:
            if retained:
                return self._refuse_silently("retained", "oversize retained command ignored")
            return name, self._refusal(name, f"request larger than {MAX_COMMAND_BYTES} bytes ({size})")
        try:
            if name == "ping":
                if retained:  # a ping left retained would replay at every start
                    return self._refuse_silently("retained", "retained cmd/ping ignored")
                _parse_request(payload)
                return name, {"ok": True, "ts": format_ts(time.time()), "node": self.node_id, **self.ping()}
            if self.dispatch is None:
                if retained:
                    return self._refuse_silently("retained", "retained command ignored")
                raise CommandRefused("unknown command (known: ping)")
            reply = self.dispatch(name, payload, retained)
            if reply is not None and not reply.get("ok", True):
                self._count_refusal(name, reply.get("error", ""))
            return name, reply
        except CommandRefused as err:
            if retained:  # answered, it would be answered again at every reconnect
                return self._refuse_silently("retained", "retained cmd/%s refused: %s", name, err)
            return name, self._refusal(name, str(err))
        except Exception as err:  # a bug must cost one error reply, never the session
            log.exception("cmd/%s failed", name)
            return name, self._refusal(name, f"internal error: {type(err).__name__}")

    def _refusal(self, name: str, problem: str) -> dict:
        error = f"cmd/{name}: {problem}"[:300]
        self._count_refusal(name, error)
        return {"ok": False, "error": error}

    def _count_refusal(self, name: str, error: str) -> None:
        self.refused += 1
        self._log("refused", logging.WARNING, "command refused: %s", error)

    def _refuse_silently(self, kind: str, message: str, *args) -> tuple[str, None]:
        self.refused += 1
        self._log(kind, logging.WARNING, message, *args)
        return "", None

    async def publish_reply(self, client: aiomqtt.Client, name: str, reply: dict, *, limited=True) -> bool:
        """Publish a reply; whether it went. Never raises (but lets cancellation through)."""
        if limited and not self._replies.take():
            self.replies_dropped += 1
            self._log(
                "reply-rate",
                logging.WARNING,
                "command flood: replies over %d per %.0f s dropped",
                REPLIES_PER_WINDOW,
                REPLY_WINDOW_S,
            )
            return False
        try:
            body = json.dumps(reply, separators=(",", ":"), allow_nan=False)
            await client.publish(f"{self.root}/cmd/{name}/reply", body, qos=1)
        except (aiomqtt.MqttError, ValueError, TypeError, OSError) as err:
            # A lost connection ends the session through the message iterator; nothing to do here.
            self._log("reply-failed", logging.WARNING, "cmd/%s: reply not sent: %s", name, err)
            return False
        return True


def _parse_request(payload) -> dict:
    """An optional JSON object; CommandRefused naming what is wrong with it otherwise."""
    if not payload:
        return {}
    try:
        request = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CommandRefused(f"malformed request: {type(err).__name__}: {err}"[:200]) from None
    if not isinstance(request, dict):
        raise CommandRefused("malformed request: ValueError: not a JSON object")
    return request
