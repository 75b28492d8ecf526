"""`edge-node ingest`: every reading, status and heartbeat under the topic prefix, stored exactly
once (DESIGN §3: at least once on the wire, deduplicated here by (node, seq)).

Exactly once, in order of what can fail:
- the MQTT session is persistent (MQTT 5 clean_start=False with a session expiry; 3.1.1
  clean_session=False) under a stable client id, and messages are acknowledged by hand
  (paho's manual_ack): a PUBACK leaves only after the transaction holding the message's rows
  has committed. Killed before the commit, nothing was acknowledged and the broker sends it all
  again; killed between the commit and the PUBACK, the redelivery finds (node, seq) stored and
  is a no-op.
- a PUBACK is sent only on the connection that received the message: after a reconnect the
  broker redelivers what was not acknowledged, and a packet id of the old connection may name
  a different message on the new one.
- the database going away (PostgreSQL restarted, a locked SQLite) fails the transaction: the
  batch is kept, nothing is acknowledged, and it is retried with backoff. The broker stops
  sending once `receive maximum` messages await our PUBACK, so consumption pauses by itself.

Readings are taken through `$share/GROUP/...` with `--share`, so several workers split them;
statuses and heartbeats are not shared (a shared subscription gets no retained messages), every
worker stores them (an idempotent upsert). Writers of one node serialise on its `nodes` row
(SELECT ... FOR UPDATE; SQLite has one writer anyway), which keeps the gaps exact.

Bad input never stops the consumer and is never dropped silently: it goes to the quarantine
table with a reason (malformed, schema, topic, no_status, absurd_ts, seq_conflict,
seq_backwards, rejected) and is counted in the log. A batch the database refuses (or that ingest
fails on) is stored message by message, the one at fault quarantined as `rejected`.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edge_node.broker_connection import BrokerConnection

from .db import Database, DatabaseError, utc_now
from .gaps import Gap, SeqRange
from .validate import NODE_ID, Invalid, check, epoch, parse, ts_problem

log = logging.getLogger("city.ingest")

RECEIVE_MAXIMUM = 2000  # messages the broker may send before our PUBACKs (MQTT 5)
SESSION_EXPIRY_S = 7 * 86400  # the broker keeps our session (and queues for us) a week
RESET_MARGIN_S = 300.0  # a seq below all stored, read this much after the newest: a buffer reset
STATS_EVERY_S = 30.0
# A transaction holds its nodes' rows locked: some ten thousand readings at most, so that workers
# sharing the load take turns on a node rather than queue behind one huge commit.
TRANSACTION_BYTES = 2 * 1024 * 1024


@dataclass
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    generation: int  # which connection delivered it
    received: float = field(default_factory=time.time)


@dataclass
class Counts:
    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    heartbeats: int = 0
    quarantined: Counter = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.statuses += other.statuses
        self.heartbeats += other.heartbeats
        self.quarantined.update(other.quarantined)


@dataclass
class Reading:
    node: str
    seq: int
    sensor: str
    ts: str
    body: dict
    units: dict
    backfill: bool
    message: Message


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _epoch(ts: str) -> float:
    return epoch(ts)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


FLAGS_THAT_DO_NOT_FLAG = {"clock_corrected"}
READING_INSERT_COLUMNS = (
    "node", "seq", "sensor", "ts", "values", "units", "quality", "flagged", "clock", "backfill", "meta",
    "received_at",
)  # fmt: skip
VALUE_INSERT_COLUMNS = ("node", "seq", "quantity", "value", "unit", "ts", "flagged")


class Storage:
    """Turns a batch of messages into rows, in one transaction of the caller's."""

    def __init__(self, db: Database, prefix: str):
        self.db = db
        self.prefix = prefix.rstrip("/")

    # -- parsing (no database) --------------------------------------------------------------------

    def _classify(self, message: Message, quarantine: list, statuses: list, heartbeats: list, readings: list):
        rest = message.topic[len(self.prefix) + 1 :] if message.topic.startswith(self.prefix + "/") else ""
        parts = rest.split("/")
        node = parts[0] if parts and NODE_ID.fullmatch(parts[0]) else None
        kind = parts[1] if len(parts) >= 2 else None
        shape_ok = (kind in ("status", "heartbeat") and len(parts) == 2) or (
            kind == "reading" and len(parts) == 3
        )
        if node is None or not shape_ok:
            quarantine.append((message, node, "topic", f"not a node topic under {self.prefix}/"))
            return
        if not message.payload:
            return  # a retained message cleared by an operator: nothing to store
        try:
            data = parse(message.payload)
            check(kind, data)
        except Invalid as err:
            quarantine.append((message, node, err.reason, str(err)))
            return
        if kind == "status":
            statuses.append((node, data, message))
        elif kind == "heartbeat":
            heartbeats.append((node, data, message))
        else:
            if data["node"] != node or data["sensor"] != parts[2]:
                detail = f"topic names {node}/{parts[2]}, payload {data['node']}/{data['sensor']}"
                quarantine.append((message, node, "schema", detail))
                return
            for body in data["readings"]:
                problem = ts_problem(body["ts"], message.received)
                if problem:
                    quarantine.append(
                        (message, node, "absurd_ts", f"seq {body['seq']}: {problem}", body, data)
                    )
                    continue
                readings.append(
                    Reading(node, int(body["seq"]), data["sensor"], body["ts"], body, data["units"],
                            data["backfill"], message)
                )  # fmt: skip

    # -- the transaction ---------------------------------------------------------------------------

    def store(self, conn, messages: list[Message]) -> Counts:
        """Everything in `messages` into the database (the caller commits)."""
        counts = Counts()
        quarantine: list[tuple] = []
        statuses: list = []
        heartbeats: list = []
        readings: list[Reading] = []
        for message in messages:
            self._classify(message, quarantine, statuses, heartbeats, readings)
        now = utc_now()
        for node, data, message in sorted(statuses, key=lambda s: s[0]):  # rows locked in node order
            self._status(conn, node, data, message, now)
            counts.statuses += 1
            if data["state"] == "online":
                for released in self._release(conn, node):
                    self._classify(released, quarantine, statuses, heartbeats, readings)
        self._heartbeats(conn, heartbeats, now)
        counts.heartbeats += len(heartbeats)
        by_node: dict[str, list[Reading]] = defaultdict(list)
        for r in readings:
            by_node[r.node].append(r)
        if by_node:
            self._store_readings(conn, by_node, now, counts, quarantine)
        self._quarantine(conn, quarantine, now, counts)
        return counts

    def _status(self, conn, node: str, data: dict, message: Message, now: str) -> None:
        location = data.get("location") or {}
        if data["state"] == "online":
            self.db.execute(
                conn,
                "INSERT INTO nodes (node, site, lat, lon, state, state_reason, since, version, boot_id,"
                " config_hash, status_at) VALUES (%s, %s, %s, %s, 'online', NULL, %s, %s, %s, %s, %s)"
                " ON CONFLICT (node) DO UPDATE SET site = excluded.site, lat = excluded.lat,"
                " lon = excluded.lon, state = 'online', state_reason = NULL, since = excluded.since,"
                " version = excluded.version, boot_id = excluded.boot_id, config_hash = excluded.config_hash,"
                " status_at = excluded.status_at",
                (node, data.get("site"), location.get("lat"), location.get("lon"), data["since"],
                 data["version"], data["boot_id"], data["config_hash"], now),
            )  # fmt: skip
        else:
            self.db.execute(
                conn,
                "INSERT INTO nodes (node, state, state_reason, status_at) VALUES (%s, 'offline', %s, %s)"
                " ON CONFLICT (node) DO UPDATE SET state = 'offline', state_reason = excluded.state_reason,"
                " status_at = excluded.status_at",
                (node, data["reason"], now),
            )

    def _release(self, conn, node: str) -> list[Message]:
        """Readings quarantined because their node had no status yet, taken back now it has one."""
        rows = self.db.execute(
            conn,
            "SELECT id, received_at, topic, payload FROM quarantine WHERE node = %s AND reason = 'no_status'"
            " ORDER BY id",
            [node],
        ).fetchall()
        if rows:
            self.db.execute(conn, "DELETE FROM quarantine WHERE node = %s AND reason = 'no_status'", [node])
            log.info("%s: %d readings quarantined before its status are taken back", node, len(rows))
        return [
            Message(topic, bytes(payload), mid=0, qos=0, retain=False, generation=-1, received=_epoch(at))
            for _, at, topic, payload in rows
        ]

    def _heartbeats(self, conn, heartbeats: list, now: str) -> None:
        # Only a newer heartbeat replaces the stored one (workers and redeliveries race).
        self.db.executemany(
            conn,
            "INSERT INTO nodes (node, heartbeat, heartbeat_ts, heartbeat_at, backlog, dropped)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (node) DO UPDATE SET heartbeat = excluded.heartbeat,"
            " heartbeat_ts = excluded.heartbeat_ts, heartbeat_at = excluded.heartbeat_at,"
            " backlog = excluded.backlog, dropped = excluded.dropped"
            " WHERE nodes.heartbeat_ts IS NULL OR nodes.heartbeat_ts <= excluded.heartbeat_ts",
            [
                (node, _dump(data), data["ts"], now, int(data["backlog"]), int(data["dropped"]))
                for node, data, _ in sorted(heartbeats, key=lambda h: (h[0], h[1]["ts"]))
            ],
        )

    def _lock_nodes(self, conn, nodes: list[str]) -> dict[str, tuple]:
        """The nodes' rows, locked for this transaction (in node order: no deadlock)."""
        found = {}
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        for start in range(0, len(nodes), 500):
            chunk = nodes[start : start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            rows = self.db.execute(
                conn,
                f"SELECT node, state, first_seq, last_seq, last_reading_ts FROM nodes WHERE node IN ({marks})"
                f" ORDER BY node{lock}",
                chunk,
            ).fetchall()
            found.update({row[0]: row[1:] for row in rows})
        return found

    def _existing(self, conn, pairs: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
        """Which of these (node, seq) are stored already, and as what (sensor, ts)."""
        found = {}
        for start in range(0, len(pairs), 400):
            chunk = pairs[start : start + 400]
            marks = ", ".join(["(%s, %s)"] * len(chunk))
            rows = self.db.execute(
                conn,
                f"SELECT node, seq, sensor, ts FROM readings WHERE (node, seq) IN (VALUES {marks})",
                [v for pair in chunk for v in pair],
            ).fetchall()
            found.update({(node, seq): (sensor, ts) for node, seq, sensor, ts in rows})
        return found

    def _store_readings(
        self, conn, by_node: dict[str, list[Reading]], now: str, counts: Counts, quarantine: list
    ):
        nodes = sorted(by_node)
        known = self._lock_nodes(conn, nodes)
        for node in nodes:
            if node not in known or known[node][0] is None:
                for r in by_node.pop(node):
                    quarantine.append(
                        (r.message, node, "no_status", f"seq {r.seq}: no status from {node} yet", r)
                    )
        # Every stored seq of a node lies in first_seq..last_seq: only those can be duplicates.
        existing = self._existing(
            conn,
            [
                (r.node, r.seq)
                for node, rs in by_node.items()
                if known[node][1] is not None
                for r in rs
                if known[node][1] <= r.seq <= known[node][2]
            ],
        )
        reading_rows: list[tuple] = []
        value_rows: list[tuple] = []
        units_text: dict[int, str] = {}  # a batch's units, dumped once (readings share the object)
        ranges: dict[str, tuple] = {}  # node -> (first, last, fresh seqs, newest ts)
        for node in sorted(by_node):
            _, first, last, newest_ts = known[node]
            fresh = self._fresh(node, by_node[node], first, newest_ts, existing, counts, quarantine)
            if not fresh:
                continue
            for r in fresh:
                body = r.body
                quality = body["quality"]
                flagged = bool(set(quality) - FLAGS_THAT_DO_NOT_FLAG) or body.get("clock") == "unsynced"
                meta = _dump(body["meta"]) if "meta" in body else None
                values = _dump(body["values"])
                units = units_text.get(id(r.units))
                if units is None:
                    units = units_text[id(r.units)] = _dump(r.units)
                flags = _dump(quality) if quality else "[]"
                clock = body.get("clock")
                reading_rows.append(
                    (node, r.seq, r.sensor, r.ts, values, units, flags, flagged, clock, r.backfill, meta, now)
                )
                for quantity, value in body["values"].items():
                    value_rows.append(
                        (node, r.seq, quantity, float(value), r.units.get(quantity), r.ts, flagged)
                    )
            newest = max(r.ts for r in fresh)
            ranges[node] = (first, last, [r.seq for r in fresh], max(newest, newest_ts or newest))
        if not reading_rows:
            return
        self._insert(conn, "readings", READING_INSERT_COLUMNS, reading_rows)
        self._insert(conn, "reading_values", VALUE_INSERT_COLUMNS, value_rows)
        counts.stored += len(reading_rows)
        self._gaps(conn, ranges, now)

    def _fresh(
        self, node, readings: list[Reading], first, newest_ts, existing, counts, quarantine
    ) -> list[Reading]:
        """The readings of one node to store: not stored before, not a reset in disguise."""
        unique: dict[int, Reading] = {}
        for r in readings:
            twin = unique.get(r.seq)
            if twin is None:
                unique[r.seq] = r
            elif (twin.sensor, twin.ts) == (r.sensor, r.ts):
                counts.duplicates += 1  # the same reading twice in one batch (a redelivery)
            else:
                detail = (
                    f"seq {r.seq} is {twin.sensor} at {twin.ts} in the same batch, now {r.sensor} at {r.ts}"
                )
                quarantine.append((r.message, node, "seq_conflict", detail + " (buffer reset?)", r))
        fresh: list[Reading] = []
        lowest, newest_epoch = first, None if newest_ts is None else _epoch(newest_ts)
        for seq in sorted(unique, reverse=True):  # from the top: what lies below must be older
            r = unique[seq]
            stored = existing.get((node, seq))
            if stored is not None:
                if stored == (r.sensor, r.ts):
                    counts.duplicates += 1
                else:
                    detail = f"seq {seq} is stored as {stored[0]} at {stored[1]}, now {r.sensor} at {r.ts}"
                    quarantine.append((r.message, node, "seq_conflict", detail + " (buffer reset?)", r))
                continue
            read_at = _epoch(r.ts)
            if (
                lowest is not None
                and seq < lowest
                and newest_epoch is not None
                and r.body.get("clock") != "unsynced"
                and read_at > newest_epoch + RESET_MARGIN_S
            ):
                detail = f"seq {seq} is below every stored seq ({lowest}) but was read after them, at {r.ts}"
                quarantine.append((r.message, node, "seq_backwards", detail, r))
                continue
            fresh.append(r)
            lowest = seq if lowest is None else min(lowest, seq)
            newest_epoch = read_at if newest_epoch is None else max(newest_epoch, read_at)
        return fresh

    def _insert(self, conn, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Rows known to be new (checked above, under the nodes' locks)."""
        names = ", ".join(f'"{c}"' for c in columns)
        if self.db.dialect == "postgresql":
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(columns))
            self.db.executemany(conn, f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)

    def _gaps(self, conn, ranges: dict[str, tuple], now: str) -> None:
        """Open, shrink, split and close gap rows for the newly stored seqs; each node's new range.
        Only seqs inside a node's stored range fill a gap: for those nodes alone the open gap rows
        are read."""
        filling = [n for n, (first, last, seqs, _) in ranges.items() if first is not None and
                   any(first < s < last for s in seqs)]  # fmt: skip
        open_rows: dict[str, list[Gap]] = defaultdict(list)
        for start in range(0, len(filling), 500):
            chunk = filling[start : start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            for gap_id, node, a, b, opened in self.db.execute(
                conn,
                "SELECT id, node, first_missing, last_missing, opened_at FROM gaps"
                f" WHERE closed_at IS NULL AND node IN ({marks}) ORDER BY node, first_missing",
                chunk,
            ).fetchall():
                open_rows[node].append(Gap(a, b, gap_id, opened))
        closes, updates, inserts, node_rows = [], [], [], []
        for node, (first, last, seqs, newest) in ranges.items():
            before = {g.id: (g.first, g.last) for g in open_rows.get(node, [])}
            stored = SeqRange(first, last, open_rows.get(node, []))
            stored.add(seqs)
            after = {g.id: g for g in stored.gaps if g.id is not None}
            for gap_id, span in before.items():
                if gap_id not in after:
                    closes.append((now, gap_id))
                elif (after[gap_id].first, after[gap_id].last) != span:
                    updates.append((after[gap_id].first, after[gap_id].last, gap_id))
            inserts.extend((node, g.first, g.last, g.opened_at or now) for g in stored.gaps if g.id is None)
            node_rows.append((stored.first, stored.last, newest, node))
        self.db.executemany(conn, "UPDATE gaps SET closed_at = %s WHERE id = %s", closes)
        self.db.executemany(
            conn, "UPDATE gaps SET first_missing = %s, last_missing = %s WHERE id = %s", updates
        )
        self.db.executemany(
            conn,
            "INSERT INTO gaps (node, first_missing, last_missing, opened_at) VALUES (%s, %s, %s, %s)",
            inserts,
        )
        self.db.executemany(
            conn,
            "UPDATE nodes SET first_seq = %s, last_seq = %s, last_reading_ts = %s WHERE node = %s",
            node_rows,
        )

    def quarantine_one(self, conn, message: Message, reason: str, detail: str) -> None:
        self._quarantine(
            conn, [(message, self._topic_node(message.topic), reason, detail)], utc_now(), Counts()
        )

    def _topic_node(self, topic: str) -> str | None:
        rest = topic[len(self.prefix) + 1 :] if topic.startswith(self.prefix + "/") else ""
        node = rest.split("/")[0]
        return node if NODE_ID.match(node) else None

    def _quarantine(self, conn, entries: list[tuple], now: str, counts: Counts) -> None:
        rows = []
        for message, node, reason, detail, *item in entries:
            payload = message.payload
            if item:  # one reading of a batch: keep it as a batch of its own
                body = item[0].body if isinstance(item[0], Reading) else item[0]
                batch = item[1] if len(item) > 1 else None
                if batch is None and isinstance(item[0], Reading):
                    r = item[0]
                    batch = {"node": r.node, "sensor": r.sensor, "units": r.units, "backfill": r.backfill}
                payload = _dump(
                    {**{k: v for k, v in batch.items() if k != "readings"}, "readings": [body]}
                ).encode()
            rows.append((_iso(message.received), message.topic[:1000], node, reason, detail[:1000], payload))
            counts.quarantined[reason] += 1
        self.db.executemany(
            conn,
            "INSERT INTO quarantine (received_at, topic, node, reason, detail, payload)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            rows,
        )


# -- the MQTT side --------------------------------------------------------------------------------


class BrokerSettings:
    def __init__(self, args: argparse.Namespace):
        password = None
        if args.password_file:
            try:
                with open(args.password_file, encoding="utf-8") as f:
                    password = f.read().rstrip("\r\n")
            except OSError as err:
                raise ValueError(f"cannot read --password-file: {err}") from None
        try:  # the one set-up of every tool: URL (no credentials in it), TLS, protocol
            self.connection = BrokerConnection.of_tool(
                args.broker,
                username=args.username or None,
                password=password,
                ca_file=args.ca,
                client_cert=args.client_cert,
                client_key=args.client_key,
                insecure=getattr(args, "insecure", False),
                protocol=args.protocol,
            )
        except ValueError as err:
            raise ValueError(f"--broker: {err}") from None
        if bool(args.client_cert) != bool(args.client_key):
            raise ValueError("--client-cert and --client-key go together")
        self.url = args.broker
        self.v5 = args.protocol == "5"
        self.share = args.share
        if self.share is not None and (not self.share or any(c in self.share for c in "/+#")):
            raise ValueError(f"--share: a group name without / + # (got {self.share!r})")
        self.prefix = args.topic_prefix.rstrip("/")
        self.client_id = args.client_id or (
            f"edge-node-ingest-{self.share}" if self.share else "edge-node-ingest"
        )

    def topics(self) -> list[str]:
        readings = f"{self.prefix}/+/reading/+"
        if self.share:
            readings = f"$share/{self.share}/{readings}"
        return [f"{self.prefix}/+/status", f"{self.prefix}/+/heartbeat", readings]


class Consumer:
    """paho in its own thread: messages into a bounded queue, acknowledgements on request."""

    def __init__(self, settings: BrokerSettings, inbox: queue.Queue):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.settings = settings
        self.inbox = inbox
        self.generation = 0
        self.connected = threading.Event()
        self.refused: str | None = None
        self._lock = threading.Lock()
        session = {} if settings.v5 else {"clean_session": False}  # MQTT 5: clean_start at connect
        self.client = settings.connection.paho_client(settings.client_id, manual_ack=True, **session)
        self.client.reconnect_delay_set(0.5, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._properties = None
        if settings.v5:
            self._properties = Properties(PacketTypes.CONNECT)
            self._properties.SessionExpiryInterval = SESSION_EXPIRY_S
            self._properties.ReceiveMaximum = RECEIVE_MAXIMUM

    def start(self) -> None:
        kwargs = {"clean_start": False, "properties": self._properties} if self.settings.v5 else {}
        self.settings.connection.connect_async(self.client, **kwargs)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.error("broker %s refused the connection: %s", self.settings.url, reason_code)
            return
        with self._lock:
            self.generation += 1
        client.subscribe([(topic, 1) for topic in self.settings.topics()])
        log.info(
            "connected to %s as %s (session %s)",
            self.settings.url,
            self.settings.client_id,
            "resumed" if flags.session_present else "new",
        )
        self.refused = None
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("the broker refused a subscription: %s", ", ".join(refused))
        else:
            log.info("subscribed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._lock:
            self.generation += 1
        self.connected.clear()
        log.warning("disconnected from %s (%s); reconnecting", self.settings.url, reason_code)

    def _on_message(self, client, userdata, msg):
        item = Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain), self.generation)
        # Blocks when full (MQTT 3.1.1 has no receive maximum): TCP pushes back on the broker.
        self.inbox.put(item)

    def ack(self, messages: list[Message]) -> int:
        """PUBACK what this connection delivered; the rest the broker will send again. How many."""
        sent = 0
        with self._lock:
            for m in messages:
                if m.qos > 0 and m.generation == self.generation:
                    self.client.ack(m.mid, m.qos)
                    sent += 1
        return sent


def _take(inbox: queue.Queue, limit: int, wait: float, max_bytes: int = TRANSACTION_BYTES) -> list[Message]:
    """Up to `limit` messages or about `max_bytes` of payload: one transaction's worth."""
    try:
        batch = [inbox.get(timeout=wait)]
    except queue.Empty:
        return []
    size = len(batch[0].payload)
    deadline = time.monotonic() + 0.02  # let a burst fill the transaction
    while len(batch) < limit and size < max_bytes:
        try:
            batch.append(inbox.get_nowait())
            size += len(batch[-1].payload)
        except queue.Empty:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.002)
    return batch


class Writer:
    """The one owner of the database connection: batches in, commits, then acknowledgements."""

    def __init__(self, db: Database, storage: Storage):
        self.db = db
        self.storage = storage
        self.conn = None
        self.totals = Counts()
        self.down_since: float | None = None

    def _connection(self):
        if self.conn is None:
            self.conn = self.db.open()
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except self.db.errors:
                pass
        self.conn = None

    def commit(self, batch: list[Message], stop: threading.Event) -> bool:
        """Store `batch` in one transaction, retrying while the database is away. False only when
        asked to stop before it could be stored (then nothing of it is acknowledged)."""
        delay = 0.2
        races = 0
        while True:
            try:
                conn = self._connection()
                with self.db.transaction(conn):
                    counts = self.storage.store(conn, batch)
            except (DatabaseError, *self.db.errors) as err:
                if (isinstance(err, self.db.integrity_errors) or self.db.conflicted(err)) and races < 3:
                    # Another worker stored some of these readings between our check and our insert
                    # (a node resent them, the broker gave the copy to the other), or our locks
                    # crossed its: run the batch again.
                    races += 1
                    log.info("another worker wrote the same nodes meanwhile (%s); again", _first_line(err))
                    continue
                if self.db.refused(err):
                    # The database is there but refuses something in this batch: find which
                    # message, quarantine it, store the rest; a poison message must not stall all.
                    return self._isolate(batch, stop)
                self._drop_connection()
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    log.error(
                        "database %s unavailable (%s): holding %d messages unacknowledged, retrying",
                        self.db.redacted(),
                        str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__,
                        len(batch),
                    )
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            except Exception:  # our bug on some message of the batch: find it
                log.exception("storing a batch of %d messages failed", len(batch))
                return self._isolate(batch, stop)
            if self.down_since is not None:
                log.info("database back after %.1f s", time.monotonic() - self.down_since)
                self.down_since = None
            self.totals.add(counts)
            return True

    def _isolate(self, batch: list[Message], stop: threading.Event) -> bool:
        counts = self._one_by_one(batch, stop)
        if counts is None:
            return False
        self.totals.add(counts)
        return True

    def _one_by_one(self, batch: list[Message], stop: threading.Event) -> Counts | None:
        """Each message in its own transaction; one the database refuses (or that our code cannot
        handle) is quarantined. None when the database went away meanwhile and we were asked to
        stop; then nothing of the batch is acknowledged (what was stored is a no-op again)."""
        counts = Counts()
        for message in batch:
            try:
                conn = self._connection()
                with self.db.transaction(conn):
                    counts.add(self.storage.store(conn, [message]))
                continue
            except (DatabaseError, *self.db.errors) as err:
                if not self.db.refused(err):
                    return Counts() if self.commit(batch, stop) else None  # away after all
                problem = f"the database refused it: {_first_line(err)}"
            except Exception as err:  # our bug, met on this message: never a crash loop
                log.exception("cannot store %s", message.topic)
                problem = f"ingest failed on it: {type(err).__name__}: {_first_line(err)}"
            log.warning("%s: %s; quarantined", message.topic, problem)
            try:
                conn = self._connection()
                with self.db.transaction(conn):
                    self.storage.quarantine_one(conn, message, "rejected", problem)
            except (DatabaseError, *self.db.errors):
                return Counts() if self.commit(batch, stop) else None
            counts.quarantined["rejected"] += 1
        return counts

    def close(self) -> None:
        self._drop_connection()


def run_ingest(args: argparse.Namespace, db: Database) -> int:
    try:
        settings = BrokerSettings(args)
    except ValueError as err:
        print(f"edge-node ingest: {err}", file=sys.stderr)
        return 2
    if args.batch_max < 1:
        print("edge-node ingest: --batch-max must be >= 1", file=sys.stderr)
        return 2
    try:
        db.open().close()  # the schema, before anything is received
    except DatabaseError as err:
        print(f"edge-node ingest: {err}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    inbox: queue.Queue = queue.Queue(maxsize=RECEIVE_MAXIMUM * 2)
    consumer = Consumer(settings, inbox)
    writer = Writer(db, Storage(db, settings.prefix))
    try:
        consumer.start()
    except (OSError, socket.gaierror) as err:
        print(f"edge-node ingest: cannot reach broker {settings.url}: {err}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 10
    while not consumer.connected.wait(0.1) and time.monotonic() < deadline:
        if consumer.refused:  # wrong credentials or protocol: retrying will not help
            consumer.stop()
            print(
                f"edge-node ingest: broker {settings.url} refused the connection: {consumer.refused}",
                file=sys.stderr,
            )
            return 1
    if not consumer.connected.is_set():
        log.warning("no connection to %s yet; still trying", settings.url)
    last_stats = time.monotonic()
    reported = Counts()
    try:
        while not stop.is_set():
            batch = _take(inbox, args.batch_max, 0.2)
            if batch:
                if not writer.commit(batch, stop):
                    break
                consumer.ack(batch)
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                last_stats = time.monotonic()
                t = writer.totals
                if t != reported:
                    log.info(
                        "stored %d readings (%d duplicates), %d statuses, %d heartbeats; quarantined %s",
                        t.stored, t.duplicates, t.statuses, t.heartbeats,
                        dict(t.quarantined) or "none",
                    )  # fmt: skip
                    reported = Counts(
                        t.stored, t.duplicates, t.statuses, t.heartbeats, Counter(t.quarantined)
                    )
    finally:
        consumer.stop()
        writer.close()
    t = writer.totals
    log.info(
        "stopped: stored %d readings (%d duplicates); quarantined %s",
        t.stored, t.duplicates, dict(t.quarantined) or "none",
    )  # fmt: skip
    return 0
