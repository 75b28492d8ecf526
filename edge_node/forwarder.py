"""The only MQTT publisher: store rows -> broker, deleted only after PUBACK (DESIGN §3, §4).

One connection carries readings, the retained status (with its Last Will) and the retained
heartbeat. Each connection attempt builds a fresh aiomqtt client: paho keeps unacknowledged
messages in memory and may replay them, but here the store alone decides what is resent.

Delivered means accepted (issue 10). Under MQTT 5 (the default) a PUBACK with a reason code of
0x80 or more is a refusal (edge_node/acked_client.py): nothing it carried is deleted. A batch
refused as too large (0x95) or malformed (0x99) is split and sent again, down to one reading; a
single reading refused so is quarantined (kept in the buffer, counted, not sent again). Any other
refusal (0x87 not authorized, 0x97 quota exceeded, ...) pauses the readings: the pump lets what is
in flight settle, backs off with full jitter, and starts again from the buffer, one message at a
time until the broker accepts again. The refusal is in the heartbeat and status.json
(`refused`) and in the log once per episode. A broker that does not speak MQTT 5 (CONNACK 0x84)
gets MQTT 3.1.1 for the rest of the run, which cannot tell a refusal from an acceptance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable

import aiomqtt

from .acked_client import (
    MESSAGE_REFUSALS,
    UNSUPPORTED_PROTOCOL,
    AckedClient,
    PublishRefused,
    is_unsupported_protocol,
    reason_text,
)
from .broker_connection import BrokerConnection
from .clock import boot_id, boottime, clock_synced, format_ts
from .commands import CommandHandler, connect_properties
from .config import BrokerConfig, ForwardConfig
from .health import Health
from .payloads import MAX_PAYLOAD_BYTES, ClockView, batch_payload, group_batches
from .store import Store, StoredReading, StoreError

log = logging.getLogger(__name__)

ACK_FLUSH_ROWS = 2000  # acknowledged rows go with the next commit; on their own past this many
IDLE_TICK_S = 1.0  # the pump proves it is alive at least this often
STOP_DRAIN_S = 3.0  # at shutdown, how long in-flight messages may take to be acknowledged
RECONNECT_BASE_S = 0.5
STABLE_SESSION_S = 30.0
FRESH_BOOT_S = 300.0  # a daemon started this soon after boot spreads its first connect...
FRESH_BOOT_SPREAD_S = 10.0  # ...over this long  # a session this long resets the reconnect backoff
BACKLOG_FETCH = 10  # backlog rows fetched at a time, in batches: enough for every sensor to fill one
READ_RETRY_S = 2.0  # after the buffer could not be read (a failing card)
# A PUBLISH's bytes besides its payload: fixed header (5), topic length (2), packet id (2),
# properties (1 under MQTT 5), the topic `{root}/reading/{sensor}` itself, and a margin for the
# batch head that group_batches estimates.
PUBLISH_OVERHEAD = 64


def publish_timeout(broker: BrokerConfig) -> float:
    """How long a publish may wait for its PUBACK before the connection is given up."""
    return max(10.0, broker.keepalive_s)


class TokenBucket:
    """`rate` readings per second with a burst of `burst`; rate 0 means no cap."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, max(burst, 1)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def delay_for(self, n: int) -> float:
        """0 and the tokens taken if `n` may go now, else how long to wait for them."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        n = min(n, self.burst)
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class Forwarder:
    def __init__(
        self,
        *,
        node_id: str,
        topic_root: str,
        broker: BrokerConfig,
        forward: ForwardConfig,
        store: Store,
        health: Health,
        heartbeat_s: float,
        clock_root: str = "/",
        beat: Callable[[], None] = lambda: None,
        reconnect_max_s: float = 30.0,
        commands: CommandHandler | None = None,
    ):
        self.node_id = node_id
        self.root = topic_root
        self.broker = broker
        self.forward = forward
        self.store = store
        self.health = health
        self.heartbeat_s = heartbeat_s
        self.clock_root = clock_root
        self.beat = beat
        self.reconnect_max_s = reconnect_max_s
        self.commands = commands or CommandHandler(
            node_id=node_id, topic_root=topic_root, ping=lambda: {"backlog": store.backlog}
        )
        self.connected = False
        self.seq_sent = 0
        self.last_publish: float | None = None
        self.new_data = asyncio.Event()
        self._held: deque[tuple[int, int]] = deque()  # seq ranges stored late, from memory: backlog
        self._stopping = asyncio.Event()
        self._boot_id = boot_id()
        # What the broker accepts (issue 10): the protocol (3.1.1 after a fallback), the batch
        # limits it taught us (CONNACK Maximum Packet Size, 0x95 refusals), halves of refused
        # batches to send again, quarantined seqs, and whether a refusal paused the readings.
        self.protocol = broker.protocol
        health.protocol = self.protocol
        self.batch_max = forward.batch_max
        self.max_payload = MAX_PAYLOAD_BYTES  # learned from refusals, for the daemon's life
        self._session_max_payload = MAX_PAYLOAD_BYTES  # that, and the CONNACK's limit
        self._split: deque[tuple[list[StoredReading], list[str]]] = deque()
        self._quarantined: set[int] = set()
        self._paused = False
        self._refusal_attempt = 0
        self._beat_now = asyncio.Event()
        self._own_refused: dict[str, int] = {}  # "status", "heartbeat": the code refusing it

    # -- the daemon's handles -----------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self.new_data.set()

    def held(self, first: int, last: int) -> None:
        """Seqs first..last are readings held in memory while the buffer failed, stored late: they
        go as backlog (batched, `backfill`, at the capped rate), not as live readings."""
        self._held.append((first, last))
        self.new_data.set()

    def flush_acks(self) -> None:
        """Delete acknowledged rows now; until then a restart would send them again (harmless)."""
        self.store.flush_acked()

    # -- connection loop ----------------------------------------------------------------------

    async def run(self) -> None:
        if boottime() < FRESH_BOOT_S:
            # After a city-wide power cut every node boots at once: spread the first connects too.
            await self._sleep(random.uniform(0, min(self.reconnect_max_s, FRESH_BOOT_SPREAD_S)))
        attempt = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            fell_back = False
            try:
                await self._session()
            except* (aiomqtt.MqttError, OSError, ssl.SSLError) as group:
                fell_back = self._fall_back(group.exceptions)
                if not fell_back:
                    self._log_session_end(group.exceptions[0])
            except* Exception as group:  # a bug must cost a reconnect, never the daemon
                log.error("broker session failed", exc_info=group.exceptions[0])
            finally:
                self.connected = False
                self.flush_acks_safely()
            if self._stopping.is_set():
                break
            if fell_back:  # once per run: at once, in the other protocol
                continue
            # Back off from the start only after a session that lasted: a broker that accepts and
            # drops at once (a duplicate client id, a broken ACL) must not be hammered.
            if time.monotonic() - started > STABLE_SESSION_S:
                attempt = 0
            delay = random.uniform(0, min(self.reconnect_max_s, RECONNECT_BASE_S * 2**attempt))
            attempt += 1
            await self._sleep(delay)

    def _fall_back(self, errors: tuple[BaseException, ...]) -> bool:
        """A broker without MQTT 5 (CONNACK 0x84): MQTT 3.1.1 for the rest of the run, at once."""
        if self.protocol != "5" or not any(is_unsupported_protocol(e) for e in errors):
            return False
        log.warning(
            "broker %s does not speak MQTT 5 (CONNACK 0x%02X unsupported protocol version): using "
            "MQTT 3.1.1 for this run, under which a refused reading cannot be told from an accepted one",
            self.broker.url,
            UNSUPPORTED_PROTOCOL,
        )
        self.protocol = self.health.protocol = "3.1.1"
        return True

    def _log_session_end(self, err: BaseException) -> None:
        if self.connected:
            log.warning("broker %s: connection lost: %s", self.broker.url, err)
        else:
            log.warning("broker %s: cannot connect: %s", self.broker.url, err)

    def flush_acks_safely(self) -> None:
        try:
            self.flush_acks()
        except StoreError as err:  # the acks stay in memory and go with a later commit
            log.error("%s", err)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake for a stop, and keep proving liveness to the watchdog meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            self.beat()
            try:
                await asyncio.wait_for(self._stopping.wait(), min(left, IDLE_TICK_S))
            except TimeoutError:
                pass
        self.beat()

    def _client(self) -> AckedClient:
        b = self.broker
        connection = dataclasses.replace(BrokerConnection.of_node(b), protocol=self.protocol)
        client = AckedClient(
            **connection.aiomqtt_options(),
            identifier=self.node_id,
            will=aiomqtt.Will(f"{self.root}/status", Health.status_offline("lost"), qos=1, retain=True),
            timeout=publish_timeout(b),
            max_inflight_messages=self.forward.max_inflight,  # paho's own cap (20) must not be tighter
            max_queued_incoming_messages=100,  # a flood of commands must not grow memory
            properties=connect_properties(self.protocol),  # oversize commands stay at the broker
        )
        client.pending_calls_threshold = self.forward.max_inflight + 20
        return client

    async def _session(self) -> None:
        async with self._client() as client:
            self.connected = True
            log.info("broker %s: connected (MQTT %s)", self.broker.url, self.protocol)
            self._fit_packet_size(client.max_packet_size)
            await self._publish_own(client, "status", self.health.status_online())
            await client.subscribe(f"{self.root}/cmd/+", qos=1)
            try:
                async with asyncio.TaskGroup() as tg:
                    listener = tg.create_task(self.commands.serve(client))
                    heart = tg.create_task(self._heartbeats(client))
                    await self._pump_while_refused(client, tg)
                    listener.cancel()
                    heart.cancel()
            except BaseException:
                # Leaving `async with` sends a clean DISCONNECT, which makes the broker discard the
                # Last Will: say "lost" ourselves (QoS 0: it does not wait), in case the socket lives.
                with contextlib.suppress(Exception):
                    await client.publish(
                        f"{self.root}/status", Health.status_offline("lost"), qos=0, retain=True
                    )
                raise
            await self._publish_own(client, "status", Health.status_offline("shutdown"))

    async def _publish_own(self, client: AckedClient, name: str, payload: bytes) -> None:
        """The node's retained status or heartbeat; a refusal is logged once, not fatal. (The
        heartbeat says why readings are refused; when it is refused itself, the fleet view sees
        the node fall silent after a last heartbeat that, for an ACL change, already said why.)"""
        try:
            await client.publish(f"{self.root}/{name}", payload, qos=1, retain=True)
        except PublishRefused as err:
            if self._own_refused.get(name) != err.reason_code:
                log.error("broker %s refuses the node's %s: %s", self.broker.url, name, err.reason)
            self._own_refused[name] = err.reason_code
        else:
            if self._own_refused.pop(name, None) is not None:
                log.warning("broker %s accepts the node's %s again", self.broker.url, name)

    def _fit_packet_size(self, max_packet_size: int | None) -> None:
        """Batches no larger than the broker's CONNACK says it takes (the 64 KiB cap otherwise)."""
        cap = self.max_payload
        if max_packet_size:
            cap = min(cap, max_packet_size - PUBLISH_OVERHEAD - len(self.root))
            if cap < self._session_max_payload:
                log.info("broker takes packets up to %d bytes: batches up to %d", max_packet_size, cap)
        self._session_max_payload = max(cap, 1)

    # -- refusals (issue 10) ------------------------------------------------------------------

    async def _pump_while_refused(self, client: AckedClient, tg: asyncio.TaskGroup) -> None:
        """The pump, started again from the buffer after a refusal paused it, with full jitter."""
        while True:
            self._paused = False
            await self._pump(client, tg)
            if self._stopping.is_set():
                return
            self.flush_acks_safely()  # what was accepted meanwhile is not sent again
            cap = min(self.reconnect_max_s, RECONNECT_BASE_S * 2**self._refusal_attempt)
            self._refusal_attempt += 1
            await self._sleep(random.uniform(0, cap))

    def _note_refusal(self, code: int) -> None:
        """Count a refusal of readings; the first of an episode (or a new reason) is logged, and
        beaten at once: the heartbeat may still pass where readings do not."""
        refused = self.health.refused
        if refused is None:
            log.error(
                "broker %s refuses readings: %s; nothing refused leaves the buffer, retrying with backoff",
                self.broker.url,
                reason_text(code),
            )
            refused = self.health.refused = {"since": format_ts(time.time()), "count": 0}
            self._beat_now.set()
        elif refused["reason_code"] != code:
            log.error("broker %s now refuses readings: %s", self.broker.url, reason_text(code))
        refused.update(reason_code=code, reason=reason_text(code), count=refused["count"] + 1)

    def _accepted(self) -> None:
        """A reading was accepted: a refusal episode, if any, is over."""
        refused, self.health.refused = self.health.refused, None
        self._refusal_attempt = 0
        if refused is not None:
            log.warning(
                "broker %s accepts readings again (%d messages refused since %s, all kept and sent again)",
                self.broker.url,
                refused["count"],
                refused["since"],
            )
            self._beat_now.set()

    def _refused(self, code: int, rows: list[StoredReading], texts: list[str], size: int) -> None:
        """A message of readings was refused with `code`: split it, quarantine it, or pause."""
        if code not in MESSAGE_REFUSALS:
            self._note_refusal(code)
            self._paused = True
        elif len(rows) > 1:  # too large or malformed as a whole: each half may pass
            half = len(rows) // 2
            self._split.appendleft((rows[half:], texts[half:]))
            self._split.appendleft((rows[:half], texts[:half]))
            if code == 0x95 and (half < self.batch_max or size - 1 < self.max_payload):
                self.batch_max = min(self.batch_max, half)
                self.max_payload = self._session_max_payload = min(self.max_payload, size - 1)
                log.warning(
                    "broker %s refused a batch of %d readings (%d bytes) as %s: batches now up to %d "
                    "readings and %d bytes",
                    self.broker.url,
                    len(rows),
                    size,
                    reason_text(code),
                    self.batch_max,
                    self.max_payload,
                )
        else:  # the only thing ever set aside: one reading the broker will never take
            seq = rows[0].seq
            self._quarantined.add(seq)
            count = self.health.quarantined = len(self._quarantined)
            if count == 1 or math.log10(count).is_integer():  # 1, 10, 100...: not one line each
                log.error(
                    "broker %s refused reading seq %d (%s, %d bytes) on its own: quarantined, kept in "
                    "the buffer and not sent again (%d quarantined)",
                    self.broker.url,
                    seq,
                    reason_text(code),
                    size,
                    count,
                )
            try:
                self.store.quarantine(seq, code)
            except StoreError as err:  # kept in memory; after a restart it is tried once more
                log.error("%s", err)
        self.new_data.set()

    # -- readings -----------------------------------------------------------------------------

    async def _pump(self, client: AckedClient, tg: asyncio.TaskGroup) -> None:
        store, fwd = self.store, self.forward
        inflight = min(fwd.max_inflight, client.receive_maximum or fwd.max_inflight)
        window = asyncio.Semaphore(inflight)
        batches: deque[tuple[list[StoredReading], list[str]]] = deque()
        bucket = TokenBucket(fwd.backfill_rate, fwd.batch_max)
        self._split.clear()  # the buffer still has them: they are fetched again
        while not store.is_open and not self._stopping.is_set():  # a failing card at start
            self.beat()
            await self._wait_new_data(IDLE_TICK_S)  # the store writer opens it, then sets new_data
        try:
            self._quarantined = store.quarantined()
        except StoreError as err:  # those known in memory stay set aside
            log.error("%s", err)
        self.health.quarantined = len(self._quarantined)
        live_after = store.next_seq - 1  # rows from here on are live; those below, the backlog
        # The backlog, as seq ranges (after, before) still to fetch, oldest first.
        backlog: deque[tuple[int, int]] = deque([(0, live_after + 1)])
        self._held.clear()  # below live_after: the backlog already
        while not self._stopping.is_set() and not self._paused:
            self.beat()
            clock = self._clock_view()
            while self._held and self._held[0][0] <= live_after + 1:  # the live rows reached them
                first, last = self._held.popleft()
                backlog.append((first - 1, last + 1))
                live_after = max(live_after, last)
            try:
                before = self._held[0][0] if self._held else None
                live = store.fetch(live_after, before=before, limit=fwd.max_inflight)
                if live and self._quarantined:
                    live_after = live[-1].seq
                    live = self._sendable(live)
                if not live and not batches and not self._split and backlog:
                    after, until = backlog[0]
                    window_rows = store.fetch(after, before=until, limit=fwd.batch_max * BACKLOG_FETCH)
                    if window_rows:
                        backlog[0] = (window_rows[-1].seq, until)
                    else:
                        backlog.popleft()
                    batches.extend(
                        group_batches(
                            self._sendable(window_rows), clock, self.batch_max, self._session_max_payload
                        )
                    )
            except StoreError as err:  # a failing card: keep the session, so heartbeats report it
                self._read_failed(err)
                await self._sleep(READ_RETRY_S)
                continue
            if self.health.buffer_faults.pop("read", None) is not None:
                log.info("buffer readable again")
            if live:
                for rows, texts in group_batches(live, clock, 1):
                    if self._paused:
                        break
                    await self._dispatch(client, tg, window, rows, texts, backfill=False)
                    live_after = max(live_after, rows[-1].seq)
                continue
            if self._split:  # halves of a batch refused as too large: on their way already
                rows, texts = self._split.popleft()
                await self._dispatch(client, tg, window, rows, texts, backfill=True)
                continue
            if batches:
                rows, texts = batches[0]
                wait = bucket.delay_for(len(rows))
                if wait > 0:
                    await self._wait_new_data(wait)
                    continue
                batches.popleft()
                await self._dispatch(client, tg, window, rows, texts, backfill=True)
                continue
            self.new_data.clear()
            if store.next_seq - 1 > live_after or backlog:
                continue
            await self._wait_new_data(IDLE_TICK_S)
        # Let what is in flight be acknowledged, so that it is not sent twice; after a refusal,
        # so that the pump starts again knowing which rows the broker took.
        stopping = self._stopping.is_set()
        try:
            async with asyncio.timeout(STOP_DRAIN_S if stopping else publish_timeout(self.broker)):
                for _ in range(inflight):
                    await window.acquire()
        except TimeoutError:
            if stopping:
                log.warning("stopping with messages still awaiting PUBACK; they will be sent again")

    def _sendable(self, rows: list[StoredReading]) -> list[StoredReading]:
        if not self._quarantined:
            return rows
        return [row for row in rows if row.seq not in self._quarantined]

    async def _dispatch(self, client, tg, window, rows, texts, *, backfill: bool) -> None:
        """Send in the window; while the broker refuses, one message at a time, awaited."""
        await window.acquire()
        send = self._send(client, window, rows, texts, backfill=backfill)
        if self.health.refused is not None:
            await send
        else:
            tg.create_task(send)

    def _read_failed(self, err: StoreError) -> None:
        if "read" not in self.health.buffer_faults:
            log.error("%s; retrying", err)
        self.health.buffer_faults["read"] = str(err)

    async def _wait_new_data(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.new_data.wait(), seconds)
        except TimeoutError:
            pass
        self.new_data.clear()

    async def _send(self, client, window, rows, texts, *, backfill: bool) -> None:
        try:
            sensor = rows[0].sensor
            payload = batch_payload(self.node_id, sensor, self.store.units_json(sensor), backfill, texts)
            limit = client.max_packet_size
            if limit and len(payload) + PUBLISH_OVERHEAD + len(self.root) > limit:
                # a broker disconnects a client that exceeds the limit it announced: not sent
                self._refused(0x95, rows, texts, len(payload))
                return
            await client.publish(f"{self.root}/reading/{sensor}", payload, qos=1)
        except PublishRefused as err:
            self._refused(err.reason_code, rows, texts, len(payload))
            return
        finally:
            window.release()
        self._accepted()
        self.store.ack(r.seq for r in rows)
        self.seq_sent = max(self.seq_sent, rows[-1].seq)
        self.last_publish = time.time()
        if self.store.acked_waiting >= ACK_FLUSH_ROWS:
            self.flush_acks_safely()

    def _clock_view(self) -> ClockView:
        return ClockView(self._boot_id, clock_synced(self.clock_root), time.time(), boottime())

    # -- health ------------------------------------------------------------------

    async def _heartbeats(self, client: AckedClient) -> None:
        while True:
            try:
                oldest = self.store.oldest_unsent_wall() if self.store.is_open else None
            except StoreError as err:  # the heartbeat goes all the same: it carries the fault
                self._read_failed(err)
                oldest = None
            payload = self.health.heartbeat(
                seq_sent=self.seq_sent,
                backlog=self.store.backlog,
                oldest_unsent_wall=oldest,
                dropped=self.store.dropped,
            )
            await self._publish_own(client, "heartbeat", payload)
            # at its pace, and at once when a refusal begins or ends: its last word says why
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.heartbeat_s)
            self._beat_now.clear()
