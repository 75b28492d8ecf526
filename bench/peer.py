"""The peer, measured beside ours in the same run: ThingsBoard IoT Gateway 3.8.5 from PyPI.

`make bench-peer` installs it into its own venv, bench/.peer-venv (ignored by git); `make bench`
does that first, and fig_peer is skipped with a note when the venv is missing.

The scenario is ours, for a gateway: its SQLite storage (the durable kind, as our buffer), its MQTT
connector reading a simulated node's readings from one Mosquitto (`sim/<sensor>/reading`, QoS 1,
JSON with `seq`, `sent` and three values) and forwarding them as ThingsBoard telemetry to a second
Mosquitto that stands in for the ThingsBoard server. The gateway sends no telemetry until the
server answers its one RPC, `getSessionLimits`: a stub here answers it with no rate limits (a
server configured without them; ours runs its drain uncapped too). Readings are counted and timed
where the stub receives them, by `seq` and `sent`, as ours are at the broker.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_node.broker_connection import BrokerConnection
from operations.mosquitto import LocalBroker

from .helpers import proc_cpu_s, proc_status_kb

VERSION = "3.8.5"
VENV = Path(__file__).resolve().parent / ".peer-venv"
PYTHON = VENV / "bin" / "python"
SEQ_RE = re.compile(rb'"seq":(\d+)')
SENT_RE = re.compile(rb'"sent":([0-9.]+)')
STARTUP_S = 60  # the gateway loads its connectors for a few seconds before it subscribes


def available() -> str | None:
    """None if the peer can run, else why not."""
    if not PYTHON.exists():
        return f"{VENV} is missing: `make bench-peer` installs thingsboard-gateway=={VERSION} there"
    probe = subprocess.run(
        [str(PYTHON), "-c", "import thingsboard_gateway.version as v; print(v.VERSION)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 or probe.stdout.strip() != VERSION:
        why = (probe.stdout + probe.stderr).strip()[-200:]
        return f"{VENV}: thingsboard-gateway {VERSION} not importable ({why})"
    return None


def gateway_config(work: Path, server_port: int, source_port: int) -> Path:
    config = work / "config"
    (work / "data").mkdir(parents=True, exist_ok=True)
    config.mkdir(parents=True, exist_ok=True)
    main = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": server_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {
                "enable": False,
                "statsSendPeriodInSeconds": 3600,
                "customStatsSendPeriodInSeconds": 3600,
            },
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60,
            "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {
            "type": "sqlite",
            "data_file_path": f"{work / 'data'}/",
            "messages_ttl_check_in_hours": 1,
            "messages_ttl_in_days": 7,
            "max_read_records_count": 100,
        },
        "grpc": {"enabled": False},
        "connectors": [{"type": "mqtt", "name": "sim", "configuration": "mqtt.json"}],
    }
    value = [
        {"type": kind, "key": key, "value": f"${{{key}}}"}
        for kind, key in (("integer", "seq"), ("double", "sent"), ("double", "temperature"),
                          ("double", "humidity"), ("double", "pressure"))
    ]  # fmt: skip
    connector = {
        "broker": {
            "host": "127.0.0.1",
            "port": source_port,
            "clientId": "tb-gateway-bench",
            "version": 5,
            "maxMessageNumberPerWorker": 10,
            "maxNumberOfWorkers": 100,
            "cleanSession": True,
            "cleanStart": True,
            "sessionExpiryInterval": 0,
            "security": {"type": "anonymous"},
        },
        "mapping": [
            {
                "topicFilter": "sim/+/reading",
                "subscriptionQos": 1,
                "converter": {
                    "type": "json",
                    "deviceInfo": {
                        "deviceNameExpressionSource": "topic",
                        "deviceNameExpression": "(?<=sim/)(.*?)(?=/reading)",
                        "deviceProfileExpressionSource": "constant",
                        "deviceProfileExpression": "default",
                    },
                    "sendDataOnlyOnChange": False,
                    "timeout": 60000,
                    "attributes": [],
                    "timeseries": value,
                },
            }
        ],
        "requestsMapping": {},
    }
    (config / "tb_gateway.json").write_text(json.dumps(main, indent=1))
    (config / "mqtt.json").write_text(json.dumps(connector, indent=1))
    site = next(VENV.glob("lib/python3*/site-packages/thingsboard_gateway/config/logs.json"))
    logs = site.read_text().replace("./logs/", f"{work / 'logs'}/")
    (work / "logs").mkdir(exist_ok=True)
    (config / "logs.json").write_text(logs)
    return config


def _local(port: int) -> BrokerConnection:
    """A broker of this benchmark on the loopback, through the one set-up (MQTT 3.1.1 as the peers speak)."""
    return BrokerConnection.of_tool(f"mqtt://127.0.0.1:{port}", protocol="3.1.1")


class Server:
    """The stand-in for ThingsBoard on the server broker: answers getSessionLimits, records the
    telemetry: per `seq` its arrival time, and arrival minus `sent` for each reading."""

    def __init__(self, port: int):
        self.port = port
        self.arrived: dict[int, float] = {}
        self.latencies_ms: list[tuple[float, float]] = []  # (arrival, ms)
        self.first_at: float | None = None
        self.client = _local(port).paho_client(f"tb-stub-{port}")
        self.client.on_connect = lambda c, *a: c.subscribe(
            [("v1/devices/me/rpc/request/+", 1), ("v1/gateway/telemetry", 1)]
        )
        self.client.on_message = self._on_message
        self._stop = threading.Event()

    def _on_message(self, client, _userdata, message) -> None:
        now = time.time()
        if "/rpc/request/" in message.topic:
            limits = {"rateLimits": {}, "maxInflightMessages": 100, "maxPayloadSize": 65536}
            client.publish(message.topic.replace("request", "response"), json.dumps(limits), qos=1)
            return
        if self.first_at is None:
            self.first_at = now
        for raw in SEQ_RE.findall(message.payload):
            self.arrived.setdefault(int(raw), now)
        for raw in SENT_RE.findall(message.payload):
            self.latencies_ms.append((now, (now - float(raw)) * 1000))

    def connect(self, timeout: float = 30) -> Server:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            try:
                self.client.connect("127.0.0.1", self.port, keepalive=900)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        self.client.loop_start()
        return self

    def connect_in_background(self) -> None:
        threading.Thread(target=self.connect, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.client.loop_stop()
        self.client.disconnect()


class Source:
    """The simulated node's side: readings published to the gateway's source broker, QoS 1."""

    def __init__(self, port: int):
        self.client = _local(port).paho_client(f"sim-node-{port}")
        self.client.max_inflight_messages_set(20)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port, keepalive=900)
        self.client.loop_start()
        self.seq = 0
        self._ts_ms = 0

    def publish(self, sensor: str) -> mqtt.MQTTMessageInfo:
        self.seq += 1
        now = time.time()
        # Its own time stamp, as a node's reading has: else the gateway stamps a reading when it
        # converts it, in ms, and merges a device's readings that share one (a backlog loses most)
        self._ts_ms = max(self._ts_ms + 1, int(now * 1000))
        body = {
            "seq": self.seq,
            "ts": self._ts_ms,
            "sent": now,
            "temperature": 21.37,
            "humidity": 55.2,
            "pressure": 1013.25,
        }
        return self.client.publish(f"sim/{sensor}/reading", json.dumps(body), qos=1)

    def run(self, sensors: dict[str, float], seconds: float) -> int:
        """Each sensor every `interval` s for `seconds`; returns how many were published."""
        start = time.monotonic()
        due = dict.fromkeys(sensors, start)
        sent = 0
        while (now := time.monotonic()) < start + seconds:
            for name, at in due.items():
                if at <= now:
                    self.publish(name)
                    sent += 1
                    due[name] = at + sensors[name]
            time.sleep(max(0.0, min(due.values()) - time.monotonic()))
        return sent

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Gateway:
    def __init__(self, work: Path, server_port: int, source_port: int):
        self.work = work
        config = gateway_config(work, server_port, source_port)
        self.log = open(work / "gateway.out", "wb")
        self.proc = subprocess.Popen(
            [str(PYTHON), "-m", "thingsboard_gateway.tb_gateway"],
            cwd=work,
            env={"TB_GW_CONFIG_DIR": str(config), "PATH": "/usr/bin:/bin", "HOME": str(work)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def stored(self) -> int:
        """Readings in its SQLite storage now."""
        try:
            with sqlite3.connect(f"file:{self.work / 'data/data.db'}?mode=ro", uri=True, timeout=1) as db:
                return db.execute("SELECT count(*) FROM messages").fetchone()[0]
        except sqlite3.Error:
            return 0

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = (self.work / "gateway.out").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the gateway exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_for(condition, timeout: float, gateway: Gateway, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        gateway.check_alive()
        time.sleep(step)
    return condition()


def measure(work: Path, *, quick: bool) -> dict:
    """The peer's figures, in our scenario: idle (0.3 readings/s), live latency and CPU per
    reading (20 sensors at 1 s), ingest while the server is down, and the drain of that backlog."""
    backlog = 20_000 if quick else 100_000
    warm, idle_window, live_window = (10, 20, 15) if quick else (20, 60, 30)
    source_broker = LocalBroker(workdir=str(work / "source-broker"))
    server_broker = LocalBroker(workdir=str(work / "server-broker"))
    out: dict = {"name": f"ThingsBoard IoT Gateway {VERSION}", "storage": "sqlite", "backlog": backlog}
    source_broker.start()
    server_broker.start()
    server = Server(server_broker.port).connect()
    gateway = Gateway(work / "gateway", server_broker.port, source_broker.port)
    source = Source(source_broker.port)
    try:
        # Ready once a reading goes through.
        t = time.monotonic()
        while not server.arrived:
            if time.monotonic() - t > STARTUP_S:
                raise RuntimeError(f"the gateway forwarded nothing within {STARTUP_S} s")
            gateway.check_alive()
            source.publish("probe")
            time.sleep(0.5)
        out["start_to_first_forward_s"] = round(time.monotonic() - t, 1)

        # Idle: a node's nominal rate (bme280 every 5 s, host every 10 s).
        source.run({"bme280": 5, "host": 10}, warm)
        cpu0, t0 = gateway.cpu_s(), time.monotonic()
        rss = []
        for _ in range(int(idle_window // 5)):
            source.run({"bme280": 5, "host": 10}, 5)
            rss.append(gateway.rss_kb())
        out["idle_rss_mb"] = round(max(rss) / 1024, 1)
        out["idle_cpu_ms_per_s"] = round(1000 * (gateway.cpu_s() - cpu0) / (time.monotonic() - t0), 2)

        # Live: 20 sensors at 1 s, as ours for its CPU figure (ours measures latency with 8).
        source.run({f"bme{i}": 1 for i in range(20)}, 3)
        cpu0, t0 = gateway.cpu_s(), time.time()
        sent = source.run({f"bme{i}": 1 for i in range(20)}, live_window)
        time.sleep(2)
        cpu = gateway.cpu_s() - cpu0
        lat = sorted(ms for at, ms in server.latencies_ms if at >= t0)
        out["live_readings"] = len(lat)
        out["live_sent"] = sent
        out["latency_p50_ms"] = round(lat[len(lat) // 2], 1) if lat else None
        out["latency_p99_ms"] = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None
        out["cpu_ms_per_reading"] = round(1000 * cpu / max(len(lat), 1), 3)

        # Outage: the server is down; a backlog of readings goes into the gateway's storage.
        server.close()
        server_broker.stop()
        time.sleep(1)
        before = gateway.stored()
        first_seq = source.seq + 1
        t0 = time.monotonic()
        for _ in range(backlog):
            source.publish("bme280")
        # Until all are stored, or its storage stops growing for 15 s (it may not take them all).
        seen, grew_at = 0, time.monotonic()
        while (stored := gateway.stored() - before) < backlog and time.monotonic() - grew_at < 15:
            if stored > seen:
                seen, grew_at = stored, time.monotonic()
            gateway.check_alive()
            time.sleep(0.2)
        stored = gateway.stored() - before
        took = (grew_at if stored < backlog else time.monotonic()) - t0
        out["outage_ingest_readings_s"] = round(stored / took)
        out["outage_stored_of_sent"] = [stored, backlog]
        last_seq = source.seq
        rss_before = gateway.rss_kb()

        # Drain: the server back; from its start to the backlog's last reading.
        server = Server(server_broker.port)
        server.connect_in_background()
        t0 = time.time()
        server_broker.start()
        cpu0 = gateway.cpu_s()
        peak = rss_before

        def drained() -> bool:
            nonlocal peak
            peak = max(peak, gateway.rss_kb())
            return sum(1 for seq in range(first_seq, last_seq + 1) if seq in server.arrived) >= stored

        cap = 120 if quick else 300
        complete = wait_for(drained, cap, gateway, step=0.5)
        got = [server.arrived[s] for s in range(first_seq, last_seq + 1) if s in server.arrived]
        end = max(got) if got else time.time()
        first = server.first_at
        out["drain"] = {
            "complete": complete,
            "delivered": len(got),
            "cap_s": cap,
            "first_delivery_s": None if first is None else round(first - t0, 2),
            "broker_start_to_last_s": round(end - t0, 2),
            "rate_from_broker_start": round(len(got) / max(end - t0, 1e-3)),
            "rate_from_first_delivery": round(len(got) / max(end - first, 1e-3)) if first else None,
            "rss_before_mb": round(rss_before / 1024, 1),
            "rss_peak_draining_mb": round(peak / 1024, 1),
            "cpu_share_of_one_core": round((gateway.cpu_s() - cpu0) / max(time.time() - t0, 1e-3), 2),
        }
        return out
    finally:
        source.close()
        server.close()
        gateway.stop()
        source_broker.close()
        server_broker.close()
