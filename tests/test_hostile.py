"""The hostile node: crafted messages against a real Mosquitto, the fleet view in every mode.

Each case is one file in `tests/hostile/` (a bug report becomes a file): `about`, the
`messages` to publish (`topic`, `payload` or `payload_hex`, `retained`, optional `repeat`),
optional `args` for the fleet view and `tz`, and what to `expect` beyond what every case
holds. In the topic and payload, `<prefix>` is the case's own topic prefix, `<now>` the time,
`<i>` / `<2i>` the repeat index (or twice it), `<repeat N>TEXT</repeat>` N copies of TEXT
joined by commas and `<times N>TEXT</times>` N copies end to end.

Every case holds, in the table, `--json`, `--watch --json` and `--watch --prometheus` modes alike: the tool
keeps working (exit 0 or 1, never a traceback), two healthy nodes stay visible and correct,
`--json` is strict JSON, `/metrics` answers, and no control character reaches any output
(the plain table, the live table, the JSON, the exposition).
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from rich.console import Console

from operations import fleet
from operations.mosquitto import LocalBroker, free_port

from .test_fleet import _parse, heartbeat

CASES = sorted((Path(__file__).parent / "hostile").glob("*.json"))
HEALTHY = ("healthy-a", "healthy-b")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
LIVE_MESSAGES_AFTER_S = 0.2
LISTEN_S = 1.2


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory):
    """One Mosquitto for every case (each case has its own topic prefix)."""
    with LocalBroker(workdir=str(tmp_path_factory.mktemp("hostile-broker"))) as b:
        yield b


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _expand(text: str, prefix: str, i: int = 0) -> str:
    def repeat(match: re.Match, sep: str) -> str:
        return sep.join(_expand(match[2], prefix, k) for k in range(int(match[1])))

    text = re.sub(r"<repeat (\d+)>(.*?)</repeat>", lambda m: repeat(m, ","), text, flags=re.S)
    text = re.sub(r"<times (\d+)>(.*?)</times>", lambda m: repeat(m, ""), text, flags=re.S)
    return (
        text.replace("<prefix>", prefix)
        .replace("<now>", _now())
        .replace("<2i>", str(2 * i))
        .replace("<i>", str(i))
    )


def _messages(case: dict, prefix: str) -> list[tuple[str, bytes, bool]]:
    out = []
    for m in case["messages"]:
        for i in range(m.get("repeat", 1)):
            topic = _expand(m["topic"], prefix, i)
            if m.get("payload_hex") is not None:
                payload = bytes.fromhex(m["payload_hex"])
            else:
                payload = _expand(m["payload"], prefix, i).encode("utf-8", "surrogatepass")
            out.append((topic, payload, m["retained"]))
    return out


def _healthy(prefix: str) -> tuple[list, list]:
    retained, live = [], []
    for node in HEALTHY:
        retained.append((f"{prefix}/{node}/status", json.dumps({"state": "online", "version": "1.0"}), True))
        retained.append((f"{prefix}/{node}/heartbeat", json.dumps(heartbeat()), True))
        live.append(
            (f"{prefix}/{node}/reading/bme280", json.dumps({"readings": [{"seq": 1}, {"seq": 2}]}), False)
        )
        live.append((f"{prefix}/{node}/reading/host", json.dumps({"readings": [{"seq": 3}]}), False))
    return retained, live


def _publish(port: int, messages) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()  # before loop_stop: the network thread then ends at once
        client.loop_stop()


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"--json printed {constant}")

    return json.loads(text, parse_constant=refuse)


def _no_control(what: str, text: str) -> None:
    found = CONTROL.search(text)
    assert found is None, f"{what}: control character {found[0]!r} at {found.start()}"


def _scrape(port: int, want: str, timeout: float = 10) -> str:
    deadline, body = time.monotonic() + timeout, ""
    while want not in body and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                assert resp.status == 200
                body = resp.read().decode()
        except OSError:
            time.sleep(0.1)
    return body


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_hostile_message_does_not_blind_the_fleet_view(path, shared_broker, monkeypatch, capsys):
    case = json.loads(path.read_text())
    expect = case.get("expect", {})
    if case.get("tz"):
        monkeypatch.setenv("TZ", case["tz"])
        time.tzset()
    prefix = f"hostile/{path.stem}"
    retained, live = _healthy(prefix)
    crafted = _messages(case, prefix)
    _publish(shared_broker.port, retained + [m for m in crafted if m[2]])

    base = ["--broker", shared_broker.url, "--topic-prefix", prefix, *case.get("args", [])]
    port = free_port()
    runs = {
        "table": (_parse(*base, "--listen", str(LISTEN_S)), io.StringIO()),
        "json": (_parse(*base, "--listen", str(LISTEN_S), "--json"), io.StringIO()),
        "watch": (_parse(*base, "--watch", "--prometheus", str(port)), io.StringIO()),
        "watch_json": (_parse(*base, "--watch", "--json"), io.StringIO()),
    }
    stop, rcs = threading.Event(), {}

    def run(mode):
        args, out = runs[mode]
        rcs[mode] = fleet.cmd_fleet(args, stop=stop if mode.startswith("watch") else None, out=out)

    threads = {mode: threading.Thread(target=run, args=(mode,)) for mode in runs}
    try:
        for t in threads.values():
            t.start()
        _scrape(port, f'edge_node_up{{node="{HEALTHY[0]}"}}')  # the watching view has subscribed,
        time.sleep(LIVE_MESSAGES_AFTER_S)  # and the two listening ones, started with it, too
        _publish(shared_broker.port, live + [m for m in crafted if not m[2]])
        threads["table"].join(30)
        threads["json"].join(30)
        metrics = _scrape(port, f'edge_node_up{{node="{HEALTHY[-1]}"}} 1')
    finally:
        stop.set()
        threads["watch"].join(30)
        threads["watch_json"].join(30)
        _publish(shared_broker.port, [(t, b"", True) for t, _, r in retained + crafted if r])
        if case.get("tz"):
            monkeypatch.undo()
            time.tzset()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert set(rcs) == set(runs) and all(rc in (0, 1) for rc in rcs.values()), (rcs, err)

    outputs = {mode: out.getvalue() for mode, (_, out) in runs.items()}
    rows = {r["node"]: r for r in _strict(outputs["json"])}
    streamed = [_strict(line) for line in outputs["watch_json"].splitlines()]
    assert streamed and {r["node"] for r in streamed[-1]} >= set(HEALTHY)
    for node in HEALTHY:  # visible and correct
        row = rows[node]
        assert (row["state"], row["needs_visit"], row["seq_gaps"]) == ("online", [], 0), row
        assert (row["seqs_seen"], row["backlog"], row["cpu_temp_c"], row["malformed"]) == (3, 0, 50.0, 0), row
        assert f'edge_node_up{{node="{node}"}} 1' in metrics
        for mode in ("table", "watch"):
            line = next(line for line in outputs[mode].splitlines() if line.startswith(node))
            assert line.split()[1] == "online" and line.rstrip().endswith("-"), line
    live_console = Console(file=io.StringIO(), width=160, height=60, force_terminal=True, record=True)
    live_console.print(fleet.live_table(list(rows.values()), live_console, "broker  12:00:00"))
    outputs["live"] = live_console.export_text()
    outputs["metrics"] = metrics
    for mode, text in outputs.items():
        _no_control(mode, text)

    for node, least in expect.get("malformed_at_least", {}).items():
        assert rows[node]["malformed"] >= least, rows[node]
    for node, fields in expect.get("row", {}).items():
        assert {k: rows[node][k] for k in fields} == fields, rows[node]
    for node, text in expect.get("visit_contains", {}).items():
        assert any(text in reason for reason in rows[node]["needs_visit"]), rows[node]["needs_visit"]
    for node in expect.get("absent", []):
        assert node not in rows
    if "rows_at_most" in expect:
        assert len(rows) <= expect["rows_at_most"] + len(HEALTHY)
    if "visit_max_len" in expect:
        assert all(
            len(reason) <= expect["visit_max_len"] for r in rows.values() for reason in r["needs_visit"]
        )
    if "prometheus_series_at_most" in expect:
        assert (
            sum(1 for line in metrics.splitlines() if not line.startswith("#"))
            <= expect["prometheus_series_at_most"]
        )
    if "summary_contains" in expect:
        assert expect["summary_contains"] in outputs["table"].splitlines()[-1]
