"""A simulated node, run as `edge-node run`, delivers every reading to a real Mosquitto."""

from __future__ import annotations

import json
import signal
import time

import paho.mqtt.publish as publish

from .conftest import PREFIX, by_sensor, gaps, start_daemon, write_config

ROOT = f"{PREFIX}/trs-test"


def test_readings_arrive_with_contiguous_seq_across_sensors_and_validate(
    tmp_path, broker, recorder_factory, daemons
):
    rec = recorder_factory(broker.port)
    daemons.append(start_daemon(write_config(tmp_path, broker.url)))
    rec.wait_seq(12)

    readings = rec.readings()
    seqs = rec.seqs()
    assert min(seqs) == 1 and gaps(seqs) == []
    assert set(by_sensor(readings)) == {"bme280", "host"}
    assert rec.invalid == []
    bme = by_sensor(readings)["bme280"][-1]
    assert set(bme["values"]) == {"temperature", "humidity", "pressure"}
    assert -20 < bme["values"]["temperature"] < 50 and 900 < bme["values"]["pressure"] < 1100
    batch = rec.payloads("/reading/bme280")[-1]
    assert batch["node"] == "trs-test" and batch["units"]["temperature"] == "Cel"
    assert batch["units"] == {"temperature": "Cel", "humidity": "%RH", "pressure": "hPa"}


def test_status_is_retained_online_then_offline_on_sigterm_with_exit_0(
    tmp_path, broker, recorder_factory, daemons
):
    rec = recorder_factory(broker.port)
    proc = start_daemon(write_config(tmp_path, broker.url))
    daemons.append(proc)
    rec.wait_for(lambda: rec.payloads("/heartbeat"), what="a heartbeat")
    assert rec.payloads("/status")[0]["state"] == "online"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, proc.stdout.read().decode()
    rec.wait_for(lambda: rec.payloads("/status")[-1]["state"] == "offline", what="offline status")
    assert rec.payloads("/status")[-1] == {"state": "offline", "reason": "shutdown"}

    late = recorder_factory(broker.port)  # a dashboard that connects later sees the retained state
    late.wait_for(lambda: late.payloads("/status") and late.payloads("/heartbeat"), what="retained messages")
    assert late.payloads("/status")[-1]["reason"] == "shutdown"
    assert all(retained for topic, _, retained in late.messages if topic.endswith(("/status", "/heartbeat")))
    assert rec.invalid == [] and late.invalid == []


def test_last_will_says_lost_when_the_daemon_is_killed(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    proc = start_daemon(write_config(tmp_path, broker.url))
    daemons.append(proc)
    rec.wait_for(lambda: rec.payloads("/status"), what="online status")
    proc.kill()
    rec.wait_for(lambda: rec.payloads("/status")[-1]["state"] == "offline", timeout=5, what="Last Will")
    assert rec.payloads("/status")[-1] == {"state": "offline", "reason": "lost"}


def test_heartbeat_reports_sensors_backlog_and_host(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    daemons.append(start_daemon(write_config(tmp_path, broker.url)))
    rec.wait_for(lambda: any(h["seq_sent"] >= 4 for h in rec.payloads("/heartbeat")), what="heartbeat")
    beat = [h for h in rec.payloads("/heartbeat") if h["seq_sent"] >= 4][-1]
    assert beat["sensors"]["bme280"]["state"] == "ok"
    assert beat["dropped"] == 0 and beat["backlog"] <= 4
    assert beat["host"]["cpu_temp_c"] > 0 and isinstance(beat["host"]["clock_synced"], bool)
    assert rec.invalid == []


def test_commands_get_replies_and_garbage_never_crashes(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    # A command someone left retained would replay at every start: it must be ignored.
    publish.single(
        f"{ROOT}/cmd/ping", b"[" * 3000, qos=1, retain=True, hostname="127.0.0.1", port=broker.port
    )
    proc = start_daemon(write_config(tmp_path, broker.url))
    daemons.append(proc)
    rec.wait_for(lambda: rec.payloads("/heartbeat"), what="daemon up")
    for topic, payload in [
        ("cmd/ping", b""),
        ("cmd/reboot", b"{}"),
        ("cmd/ping", b"\xff\xfe not json"),
        ("cmd/ping", b"[1, 2]"),
        ("cmd/ping", b"[" * 3000),  # deep enough to blow the JSON parser's recursion
        ("cmd/ping", b"{" * 200_000),
    ]:
        publish.single(f"{ROOT}/{topic}", payload, qos=1, hostname="127.0.0.1", port=broker.port)
    rec.wait_for(lambda: len(rec.payloads("/reply")) >= 6, what="six replies")
    replies = rec.payloads("/reply")
    assert len(replies) == 6, "the retained command got no reply"
    assert replies[0]["ok"] is True and replies[0]["node"] == "trs-test"
    assert not replies[1]["ok"] and "unknown command" in replies[1]["error"]
    assert not replies[2]["ok"] and "malformed" in replies[2]["error"]
    assert not any(r["ok"] for r in replies[3:])
    seq = max(rec.seqs())
    rec.wait_seq(seq + 2)  # still sampling and sending
    assert proc.poll() is None


def test_backlog_is_sent_as_backfill_behind_live_readings(
    tmp_path, persistent_broker, recorder_factory, daemons
):
    """Readings stored while the broker was away go as `backfill` batches; live ones keep flowing."""
    broker = persistent_broker
    rec = recorder_factory(broker.port)
    config = write_config(tmp_path, broker.url, forward="batch_max = 50\nbackfill_rate = 100")
    broker.stop()
    proc = start_daemon(config)
    daemons.append(proc)
    time.sleep(6)  # ~12 readings in the buffer
    broker.start()
    rec.wait_for(lambda: any(not r["backfill"] for r in rec.readings()), timeout=20, what="a live reading")
    rec.wait_for(lambda: gaps(rec.seqs()) == [] and min(rec.seqs()) == 1, timeout=20, what="the backlog")
    backfill = [r for r in rec.readings() if r["backfill"]]
    live = [r for r in rec.readings() if not r["backfill"]]
    assert backfill and live
    assert max(r["seq"] for r in backfill) < min(r["seq"] for r in live)
    for batch in rec.payloads("/reading/bme280") + rec.payloads("/reading/host"):
        if batch["backfill"]:
            assert 1 <= len(batch["readings"]) <= 50
            seqs = [r["seq"] for r in batch["readings"]]
            assert seqs == sorted(seqs)
        else:
            assert len(batch["readings"]) == 1
    assert rec.invalid == []


def test_reading_payloads_are_compact_utf8_json_without_nan(tmp_path, broker, recorder_factory, daemons):
    rec = recorder_factory(broker.port)
    daemons.append(start_daemon(write_config(tmp_path, broker.url)))
    rec.wait_seq(4)
    for topic, payload, _ in rec.messages:
        text = payload.decode("utf-8")
        assert isinstance(json.loads(text), dict), topic
        assert "NaN" not in text and "Infinity" not in text, topic
