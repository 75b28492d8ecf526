"""The only MQTT publisher: store rows -> broker, deleted only after PUBACK (DESIGN §3, §4).

One connection carries readings, the retained status (with its Last Will) and the retained
heartbeat. Each connection attempt builds a fresh aiomqtt client: paho keeps unacknowledged
messages in memory and may replay them, but here the store alone decides what is resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable

import aiomqtt

from .clock import boot_id, boottime, clock_synced
from .commands import CommandHandler
from .config import BrokerConfig, ForwardConfig
from .health import Health
from .payloads import ClockView, batch_payload, group_batches
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
            try:
                await self._session()
            except* (aiomqtt.MqttError, OSError, ssl.SSLError) as group:
                self._log_session_end(group.exceptions[0])
            except* Exception as group:  # a bug must cost a reconnect, never the daemon
                log.error("broker session failed", exc_info=group.exceptions[0])
            finally:
                self.connected = False
                self.flush_acks_safely()
            if self._stopping.is_set():
                break
            # Back off from the start only after a session that lasted: a broker that accepts and
            # drops at once (a duplicate client id, a broken ACL) must not be hammered.
            if time.monotonic() - started > STABLE_SESSION_S:
                attempt = 0
            delay = random.uniform(0, min(self.reconnect_max_s, RECONNECT_BASE_S * 2**attempt))
            attempt += 1
            await self._sleep(delay)

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

    def _client(self) -> aiomqtt.Client:
        b = self.broker
        tls = None
        if b.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(b.ca_file) if b.ca_file else None,
                certfile=str(b.client_cert) if b.client_cert else None,
                keyfile=str(b.client_key) if b.client_key else None,
            )
        client = aiomqtt.Client(
            b.host,
            b.port,
            identifier=self.node_id,
            username=b.username,
            password=b.password(),
            keepalive=b.keepalive_s,
            will=aiomqtt.Will(f"{self.root}/status", Health.status_offline("lost"), qos=1, retain=True),
            tls_params=tls,
            timeout=publish_timeout(b),
            max_inflight_messages=self.forward.max_inflight,  # paho's own cap (20) must not be tighter
            max_queued_incoming_messages=100,  # a flood of commands must not grow memory
        )
        client.pending_calls_threshold = self.forward.max_inflight + 20
        return client

    async def _session(self) -> None:
        async with self._client() as client:
            self.connected = True
            log.info("broker %s: connected", self.broker.url)
            await client.publish(f"{self.root}/status", self.health.status_online(), qos=1, retain=True)
            await client.subscribe(f"{self.root}/cmd/+", qos=1)
            try:
                async with asyncio.TaskGroup() as tg:
                    listener = tg.create_task(self.commands.serve(client))
                    heart = tg.create_task(self._heartbeats(client))
                    await self._pump(client, tg)
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
            await client.publish(f"{self.root}/status", Health.status_offline("shutdown"), qos=1, retain=True)

    # -- readings -----------------------------------------------------------------------------

    async def _pump(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        store, fwd = self.store, self.forward
        window = asyncio.Semaphore(fwd.max_inflight)
        batches: deque[tuple[list[StoredReading], list[str]]] = deque()
        bucket = TokenBucket(fwd.backfill_rate, fwd.batch_max)
        while not store.is_open and not self._stopping.is_set():  # a failing card at start
            self.beat()
            await self._wait_new_data(IDLE_TICK_S)  # the store writer opens it, then sets new_data
        live_after = store.next_seq - 1  # rows from here on are live; those below, the backlog
        # The backlog, as seq ranges (after, before) still to fetch, oldest first.
        backlog: deque[tuple[int, int]] = deque([(0, live_after + 1)])
        self._held.clear()  # below live_after: the backlog already
        while not self._stopping.is_set():
            self.beat()
            clock = self._clock_view()
            while self._held and self._held[0][0] <= live_after + 1:  # the live rows reached them
                first, last = self._held.popleft()
                backlog.append((first - 1, last + 1))
                live_after = max(live_after, last)
            try:
                before = self._held[0][0] if self._held else None
                live = store.fetch(live_after, before=before, limit=fwd.max_inflight)
                if not live and not batches and backlog:
                    after, until = backlog[0]
                    window_rows = store.fetch(after, before=until, limit=fwd.batch_max * BACKLOG_FETCH)
                    if window_rows:
                        backlog[0] = (window_rows[-1].seq, until)
                    else:
                        backlog.popleft()
                    batches.extend(group_batches(window_rows, clock, fwd.batch_max))
            except StoreError as err:  # a failing card: keep the session, so heartbeats report it
                self._read_failed(err)
                await self._sleep(READ_RETRY_S)
                continue
            if self.health.buffer_faults.pop("read", None) is not None:
                log.info("buffer readable again")
            if live:
                for rows, texts in group_batches(live, clock, 1):
                    await window.acquire()
                    tg.create_task(self._send(client, window, rows, texts, backfill=False))
                    live_after = max(live_after, rows[-1].seq)
                continue
            if batches:
                rows, texts = batches[0]
                wait = bucket.delay_for(len(rows))
                if wait > 0:
                    await self._wait_new_data(wait)
                    continue
                batches.popleft()
                await window.acquire()
                tg.create_task(self._send(client, window, rows, texts, backfill=True))
                continue
            self.new_data.clear()
            if store.next_seq - 1 > live_after or backlog:
                continue
            await self._wait_new_data(IDLE_TICK_S)
        try:  # let what is in flight be acknowledged, so that it is not sent twice
            async with asyncio.timeout(STOP_DRAIN_S):
                for _ in range(fwd.max_inflight):
                    await window.acquire()
        except TimeoutError:
            log.warning("stopping with messages still awaiting PUBACK; they will be sent again")

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
            await client.publish(f"{self.root}/reading/{sensor}", payload, qos=1)
        finally:
            window.release()
        self.store.ack(r.seq for r in rows)
        self.seq_sent = max(self.seq_sent, rows[-1].seq)
        self.last_publish = time.time()
        if self.store.acked_waiting >= ACK_FLUSH_ROWS:
            self.flush_acks_safely()

    def _clock_view(self) -> ClockView:
        return ClockView(self._boot_id, clock_synced(self.clock_root), time.time(), boottime())

    # -- health ------------------------------------------------------------------

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
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
            await client.publish(f"{self.root}/heartbeat", payload, qos=1, retain=True)
            await asyncio.sleep(self.heartbeat_s)
