"""`edge-node demo`: a simulated node, a broker, and what arrives at the broker, printed.

The printing side is a plain MQTT subscriber, not the daemon's log: what you see is what the
city's systems would receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from edge_node.broker_connection import BrokerConnection
from edge_node.config import parse_config

from .mosquitto import BrokerUnavailable, LocalBroker

NODE_ID = "demo-0001"
PREFIX = "city/terrassa/nodes"

DEMO_CONFIG = """
[node]
id = "{node_id}"
site = "edge-node demo (simulated sensors)"
location = {{ lat = 41.5630, lon = 2.0089 }}

[broker]
url = "{url}"
topic_prefix = "{prefix}"
keepalive_s = 10

[buffer]
path = "{buffer}"
sync_interval_s = 5

[forward]
reconnect_max_s = 5

[health]
heartbeat_s = 10

[simulation]
seed = 42

[sensors.bme280]
driver = "bme280"
bus = "sim"
address = 0x76
interval_s = 2

[sensors.sds011]
driver = "sds011"
port = "sim"
interval_s = 5

[sensors.rain]
driver = "rain_gauge"
pin = 6
pin_factory = "sim"
interval_s = 10

[sensors.wind]
driver = "anemometer"
pin = 5
pin_factory = "sim"
interval_s = 5

[sensors.host]
driver = "pi_health"
root = "sim"
interval_s = 5
"""


def _describe(topic: str, payload: bytes, as_json: bool) -> str:
    if as_json:
        return f"{topic} {payload.decode(errors='replace')}"
    parts = topic.split("/")
    node, kind = parts[-3] if parts[-2] == "reading" else parts[-2], parts[-2]
    stamp = time.strftime("%H:%M:%S")
    try:
        msg = json.loads(payload)
    except ValueError:
        return f"{stamp} {topic} (not JSON: {payload[:60]!r})"
    if kind == "reading":
        units = msg.get("units", {})
        lines = []
        for r in msg.get("readings", []):
            values = "  ".join(f"{k}={v} {units.get(k, '')}".rstrip() for k, v in r["values"].items())
            flags = f"  [{', '.join(r['quality'])}]" if r.get("quality") else ""
            lines.append(f"{stamp} {node} {msg['sensor']:<7} seq={r['seq']:<5} {values}{flags}")
        return "\n".join(lines)
    if parts[-1] == "status":
        return f"{stamp} {parts[-2]} status: {msg.get('state')} {msg.get('reason', '')}".rstrip()
    if parts[-1] == "heartbeat":
        sensors = ", ".join(f"{n}:{s['state']}" for n, s in msg.get("sensors", {}).items())
        return (
            f"{stamp} {parts[-2]} heartbeat: backlog={msg.get('backlog')}"
            f" sent up to seq {msg.get('seq_sent')} dropped={msg.get('dropped')} sensors {sensors}"
        )
    return f"{stamp} {topic} {payload.decode(errors='replace')}"


async def _subscribe_and_print(broker: BrokerConnection, as_json: bool, ready: asyncio.Event) -> None:
    identifier = f"edge-node-demo-viewer-{time.time_ns()}"
    async with aiomqtt.Client(**broker.aiomqtt_options(), identifier=identifier) as client:
        await client.subscribe(f"{PREFIX}/+/#", qos=1)
        ready.set()
        async for message in client.messages:
            print(_describe(str(message.topic), message.payload, as_json), flush=True)


async def _demo(url: str, workdir: Path, seconds: float | None, as_json: bool) -> None:
    from edge_node.daemon import Daemon

    text = DEMO_CONFIG.format(node_id=NODE_ID, url=url, prefix=PREFIX, buffer=workdir / "buffer.db")
    config = parse_config(text, source="demo.toml", base_dir=workdir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    viewer_ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        viewer = tg.create_task(
            _subscribe_and_print(BrokerConnection.of_node(config.broker), as_json, viewer_ready)
        )
        await viewer_ready.wait()
        daemon = tg.create_task(Daemon(config).run(stop))
        if seconds is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            stop.set()
        await daemon
        await asyncio.sleep(0.3)  # let the viewer print the node's goodbye
        viewer.cancel()


def run_demo(*, broker_url: str | None, seconds: float | None, as_json: bool, verbose: bool) -> int:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    broker = None
    with tempfile.TemporaryDirectory(prefix="edge-node-demo-") as tmp:
        try:
            if broker_url is None:
                try:
                    broker = LocalBroker().start()
                except BrokerUnavailable as err:
                    print(f"edge-node demo: {err}; or give --broker URL", file=sys.stderr)
                    return 2
                broker_url = broker.url
                print(f"started mosquitto on {broker_url}", file=sys.stderr)
            print(
                f"node {NODE_ID} on simulated sensors -> {broker_url}; what arrives at the broker "
                f"under {PREFIX}/# is printed below (Ctrl-C stops)",
                file=sys.stderr,
            )
            failure = None
            try:
                asyncio.run(_demo(broker_url, Path(tmp), seconds, as_json))
            except* aiomqtt.MqttError as group:
                failure = group.exceptions[0]
        finally:
            if broker is not None:
                broker.close()
    if failure is not None:
        print(f"edge-node demo: broker {broker_url}: {failure}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    """Add `demo` to edge-node's subcommands."""
    demo = sub.add_parser("demo", help="a simulated node against a local broker, printing what arrives there")
    demo.add_argument("--broker", metavar="URL", help="use this broker instead of starting a Mosquitto")
    demo.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)"
    )
    demo.add_argument("--json", action="store_true", help="print each message's payload as JSON")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the daemon's log too")
    demo.set_defaults(
        func=lambda args: run_demo(
            broker_url=args.broker, seconds=args.seconds, as_json=args.json, verbose=args.verbose
        )
    )
