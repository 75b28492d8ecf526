"""`edge-node alerts`: the city's alert rules evaluated on the stored readings, listed, and
published retained over MQTT, one topic per area and alert (`{topic_prefix}/{area}/{alert id}`).

    edge-node alerts --db DSN --rules FILE [--broker URL [--username U --password-file F]
                     [--ca FILE]] [--watch S] [--json]

A retained message holds the alert's latest state (`active`, or `ended` with `ended_at`), so a
resilience team's dashboard or phone app that subscribes later still gets it. Exit status 0 when
no alert is active, 1 when one is (for cron and monitoring, like `edge-node fleet`), 2 for a
bad argument or rules file.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from edge_node.broker_connection import BrokerConnection

from .alerts import Alert, Rules, RulesError, load_rules


def _fail(message: str, code: int) -> int:
    print(f"edge-node alerts: {message}", file=sys.stderr)
    return code


class Publisher:
    """A small QoS 1 publisher (paho-mqtt): each message retained, each waited for."""

    def __init__(
        self,
        url: str,
        *,
        username=None,
        password_file=None,
        ca=None,
        insecure=False,
        client_id="edge-node-alerts",
    ):
        password = None
        if username and password_file:
            try:
                with open(password_file) as f:
                    password = f.read().rstrip("\n")
            except OSError as err:
                raise ValueError(f"--password-file: cannot read {password_file}: {err.strerror}") from None
        try:  # the one set-up of every tool: URL (no credentials in it), TLS, protocol
            connection = BrokerConnection.of_tool(
                url,
                username=username or None,
                password=password,
                ca_file=ca,
                insecure=insecure,
                protocol="3.1.1",
            )
        except ValueError as err:
            raise ValueError(f"--broker: {err}") from None
        self.client = connection.paho_client(client_id)
        connection.connect(self.client)
        self.client.loop_start()
        self.sent: dict[str, str] = {}

    def publish(self, topic: str, payload: dict) -> bool:
        """Publish when the alert's state changed; True when something was sent."""
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True)
        key = json.dumps({k: v for k, v in payload.items() if k != "published_at"}, sort_keys=True)
        if self.sent.get(topic) == key:
            return False
        info = self.client.publish(topic, body, qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            raise TimeoutError(f"{topic}: no PUBACK within 10 s")
        self.sent[topic] = key
        return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def evaluate_db(dsn: str, rules: Rules, now: float) -> list[Alert]:
    from .db import Database
    from .webmap import evaluate_stored

    db = Database(dsn)
    conn = db.open(read_only=True)
    try:
        return evaluate_stored(db, conn, rules, now)
    finally:
        conn.close()


def latest_per_topic(alerts: list[Alert]) -> list[Alert]:
    """One alert per area and rule: the newest (an active one after an ended one)."""
    out: dict[str, Alert] = {}
    for alert in sorted(alerts, key=lambda a: a.raised_at):
        out[alert.topic] = alert
    return sorted(out.values(), key=lambda a: (a.state != "active", a.area, a.rule.id))


def table(alerts: list[Alert]) -> str:
    if not alerts:
        return "no alerts"
    lines = []
    for alert in alerts:
        d = alert.as_dict()
        when = f"since {d['since']}" + (f", ended {d['ended_at']}" if d["ended_at"] else "")
        lines.append(f"{d['state'].upper():<7} {d['area']}: {d['title']} ({d['summary']}) {when}")
        lines.append(f"        nodes: {', '.join(d['nodes'])}; ends when {d['ends_when']}")
        for reading in d["readings"]:
            figures = ", ".join(f"{k} {v}" for k, v in reading.items() if k not in ("node", "at"))
            lines.append(f"        {reading['node']} at {reading['at']}: {figures}")
    return "\n".join(lines)


def cmd_alerts(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.rules)
    except RulesError as err:
        return _fail(str(err), 2)
    if args.watch is not None and args.watch < 1:
        return _fail(f"--watch: must be >= 1 second (got {args.watch:g})", 2)
    from .db import BadDSN, DatabaseError

    publisher = None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.broker:
            try:
                publisher = Publisher(
                    args.broker,
                    username=args.username,
                    password_file=args.password_file,
                    ca=args.ca,
                    insecure=args.insecure,
                )
            except (ValueError, OSError) as err:
                return _fail(str(err), 2 if isinstance(err, ValueError) else 1)
        while True:
            try:
                found = latest_per_topic(evaluate_db(args.db, rules, time.time()))
            except BadDSN as err:
                return _fail(str(err), 2)
            except DatabaseError as err:
                if args.watch is None:
                    return _fail(str(err), 1)
                print(f"edge-node alerts: {err} (retrying)", file=sys.stderr, flush=True)
                found = None
            if found is not None:
                if publisher is not None:
                    for alert in found:
                        publisher.publish(alert.topic, {**alert.as_dict(), "published_at": time.time()})
                if args.json:
                    print(json.dumps([a.as_dict() for a in found], ensure_ascii=False), flush=True)
                else:
                    print(table(found), flush=True)
            if args.watch is None or stop.wait(args.watch):
                break
        return 1 if found and any(a.state == "active" for a in found) else 0
    finally:
        if publisher is not None:
            publisher.close()


def register(sub) -> None:
    p = sub.add_parser(
        "alerts",
        help="the city's alert rules on the stored readings: listed, and published retained over MQTT",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    p.add_argument("--db", metavar="DSN", required=True, help="sqlite:///PATH or postgresql://...")
    p.add_argument("--rules", metavar="FILE", required=True, help="the city's alert rules (TOML)")
    p.add_argument(
        "--broker", metavar="URL", help="publish each alert retained: mqtt://HOST[:PORT] or mqtts://"
    )
    p.add_argument("--username", metavar="U")
    p.add_argument("--password-file", metavar="F")
    p.add_argument("--ca", metavar="FILE", help="CA bundle to verify the broker (implies TLS)")
    p.add_argument("--insecure", action="store_true", help="accept a password over plain mqtt:// (in clear)")
    p.add_argument("--watch", type=float, metavar="S", help="evaluate again every S seconds until stopped")
    p.add_argument("--json", action="store_true", help="one JSON array per evaluation")
    p.set_defaults(func=cmd_alerts)
