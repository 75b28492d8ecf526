"""The node's command handler against hostile input on a real Mosquitto (issue 11 point 3,
issue 13 point 5): a topic too long to answer on, payloads over the cap, a flood of commands.
The node keeps its session (no `lost` status, no reconnect), keeps sending readings, answers
what it can at a bounded rate and logs refusals at a bounded rate."""

from __future__ import annotations

import subprocess
import sys
import time

import paho.mqtt.client as mqtt

from .conftest import PREFIX, gaps, write_config

ROOT = f"{PREFIX}/trs-test"


def start_logged_daemon(config, log_path):
    """`edge-node run` with its log in a file: a flood must not fill a pipe and block it."""
    log = open(log_path, "wb")  # the process holds it; the `daemons` fixture ends the process
    return subprocess.Popen(
        [sys.executable, "-m", "edge_node.cli", "run", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hostile")
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_hostile_commands_cost_neither_the_session_nor_memory_nor_the_log(
    tmp_path, broker, recorder_factory, daemons
):
    rec = recorder_factory(broker.port)
    log_path = tmp_path / "daemon.log"
    proc = start_logged_daemon(write_config(tmp_path, broker.url), log_path)
    daemons.append(proc)
    rec.wait_for(lambda: rec.payloads("/heartbeat"), what="daemon up")
    rss_before = rss_mb(proc.pid)
    hostile = publisher(broker.port)
    try:
        # A topic so long that the reply's topic could not be published (the session used to drop).
        hostile.publish(f"{ROOT}/cmd/" + "x" * 65_400, b"{}", qos=1).wait_for_publish(10)
        hostile.publish(f"{ROOT}/cmd/Bad Name", b"{}", qos=1).wait_for_publish(10)
        # 16 MiB: over the node's MQTT 5 Maximum Packet Size, the broker never delivers it.
        hostile.publish(f"{ROOT}/cmd/ping", b"{" + b" " * (16 << 20), qos=1).wait_for_publish(10)
        hostile.publish(f"{ROOT}/cmd/ping", b"{" + b" " * 9000, qos=1).wait_for_publish(10)  # over 8 KiB
        hostile.publish(f"{ROOT}/cmd/ping", b"{}", qos=1).wait_for_publish(10)
        rec.wait_for(lambda: len(rec.payloads("/cmd/ping/reply")) >= 2, what="replies to the pings")
        big, ping = rec.payloads("/cmd/ping/reply")[:2]
        assert not big["ok"] and "larger than 8192 bytes (9001)" in big["error"]
        assert ping["ok"] and ping["node"] == "trs-test"
        assert rss_mb(proc.pid) - rss_before < 5  # the 16 MiB one was never held
        for i in range(20_000):  # a flood: unknown commands, garbage and pings
            hostile.publish(
                f"{ROOT}/cmd/{('ping', 'reboot', 'set')[i % 3]}", b"\xff garbage" * (i % 2), qos=0
            )
        time.sleep(3)
    finally:
        hostile.loop_stop()
        hostile.disconnect()
    seq = max(rec.seqs())
    rec.wait_seq(seq + 4)  # still sampling and sending
    assert proc.poll() is None
    statuses = [s["state"] for s in rec.payloads("/status")]
    assert statuses == ["online"], f"the session dropped: {statuses}"
    assert gaps(rec.seqs()) == []
    counts = rec.payloads("/heartbeat")[-1]["commands"]  # every refusal counted where the fleet sees it
    assert counts["refused"] + counts["discarded"] > 19_000, counts  # of 20,000 (a few pings answered)
    assert rec.invalid == []
    replies = rec.payloads("/reply")
    assert 3 <= len(replies) <= 2 + 20 * 8, len(replies)  # answered at a bounded rate
    assert rss_mb(proc.pid) - rss_before < 15
    log_lines = [line for line in log_path.read_text(errors="replace").splitlines() if "comm" in line]
    assert len(log_lines) < 20, log_lines[:30]
    assert "Traceback" not in log_path.read_text(errors="replace")
