"""`edge-node status`: this node's state, for the technician on site (DESIGN §6, issue 5).

Three sources, each read-only, so it works whether the daemon is up or not:
- the service: `systemctl is-active edge-node` ("unknown" where systemd is not running);
- the daemon's `status.json` (edge_node.status_file): in /run/edge-node under systemd, else
  beside the buffer; its age and whether its process still runs tell whether it is current;
- the buffer itself (SQLite, opened read-only): backlog, oldest unsent age, dropped, and the
  newest unsent reading of each sensor.

Healthy (exit 0) means: the service is not known to be down, status.json is fresh and its daemon
running, the broker connected, and no sensor in fault. Anything else exits 1, with the reasons.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edge_node import status_file
from edge_node.config import Config

from .install import service_state

STALE_AFTER = 3  # status.json is stale after this many missed writes (plus a margin)
STALE_MARGIN_S = 10.0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _process_running(pid: Any) -> bool:
    """Whether `pid` is an edge-node process (a pid reused by something else does not count)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # hidden from us (hidepid): it exists
        return True
    return b"edge" in cmdline


def read_status_file(config: Config, now: float) -> dict[str, Any]:
    """The newest of the daemon's status files, with its age and whether it is current."""
    found = []
    for where in status_file.read_from(config.buffer.path.parent, config.health.heartbeat_s):
        try:
            found.append((where.path.stat().st_mtime, where.path, where.interval_s))
        except OSError:
            continue
    if not found:
        return {"path": None, "error": "no status.json: the daemon has not run here"}
    mtime, path, interval = max(found)
    out: dict[str, Any] = {"path": str(path), "age_s": round(now - mtime, 1)}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        out["error"] = f"cannot read {path}: {err}"
        return out
    if not isinstance(data, dict):
        out["error"] = f"{path}: not a JSON object"
        return out
    out["data"] = data
    out["running"] = _process_running(data.get("pid"))
    out["fresh"] = out["age_s"] <= STALE_AFTER * interval + STALE_MARGIN_S
    return out


def _body_values(body: str) -> dict | None:
    """The values of a stored reading: its JSON as sent (or, in older buffers, the inside of it)."""
    for text in (body, "{" + body + "}"):
        try:
            data = json.loads(text)
        except ValueError:
            continue
        return data.get("values") if isinstance(data, dict) else None
    return None


def read_buffer(path: Path, now: float) -> dict[str, Any]:
    """Backlog, oldest unsent age, dropped and the newest unsent reading per sensor, read-only."""
    out: dict[str, Any] = {"path": str(path)}
    if not path.exists():
        out["error"] = f"no buffer at {path} (the daemon has not stored anything yet)"
        return out
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=0.5)
        # as root, on a file the service user controls: its views and triggers run no unsafe SQL
        db.execute("PRAGMA trusted_schema=OFF")
    except sqlite3.Error as err:
        out["error"] = f"cannot open {path}: {err}"
        return out
    try:
        backlog = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        oldest = db.execute("SELECT wall FROM readings ORDER BY seq LIMIT 1").fetchone()
        meta = dict(db.execute("SELECT key, value FROM meta"))
        top = db.execute("SELECT max(seq) FROM readings").fetchone()[0]
        newest = {}
        for sensor, seq in db.execute("SELECT sensor, max(seq) FROM readings GROUP BY sensor").fetchall():
            wall, body = db.execute("SELECT wall, body FROM readings WHERE seq = ?", (seq,)).fetchone()
            values = _body_values(body)
            newest[sensor] = {"seq": seq, "age_s": round(now - wall, 1), "values": values}
    except sqlite3.Error as err:
        if "locked" in str(err):  # the running daemon holds the buffer exclusively
            out["in_use"] = True
            out["error"] = f"{path} is in use by the running daemon: figures from its status.json"
            return out
        hint = " (run as root or as edge-node)" if "unable to open" in str(err) else ""
        out["error"] = f"cannot read {path}: {err}{hint}"
        return out
    finally:
        db.close()
    out.update(
        backlog=backlog,
        oldest_unsent_age_s=round(now - oldest[0], 1) if oldest else 0.0,
        dropped=meta.get("dropped", 0),
        last_seq=max(meta.get("seq_hwm", 0), top or 0),
        newest_unsent=newest,
    )
    return out


def node_status(config: Config, *, now: float | None = None) -> dict[str, Any]:
    """Everything `edge-node status` shows, as JSON-ready data; `healthy` and `problems` judge it."""
    now = time.time() if now is None else now
    service = service_state()
    daemon = read_status_file(config, now)
    buffer = read_buffer(config.buffer.path, now)
    data = daemon.get("data", {})
    current = bool(daemon.get("fresh") and daemon.get("running"))
    problems = []
    if service not in ("active", "unknown"):
        problems.append(f"service edge-node is {service}")
    if "error" in daemon:
        problems.append(daemon["error"])
    elif not daemon["running"]:
        problems.append(f"the daemon (pid {data.get('pid')}) is not running; status.json is its last word")
    elif not daemon["fresh"]:
        problems.append(f"status.json is stale ({daemon['age_s']:.0f} s old)")

    broker = data.get("broker") or {}
    connected = bool(broker.get("connected")) and current
    if current and not connected:
        problems.append(f"broker {broker.get('url', config.broker.url)} not connected")

    if current and data.get("buffer_fault"):
        problems.append(f"buffer in fault: {data['buffer_fault']}")

    refused = data.get("refused") if current else None
    if refused:
        problems.append(refusal_in_words(refused, config))

    sensors: dict[str, dict[str, Any]] = {}
    reported = data.get("sensors") or {}
    for name in dict.fromkeys([*config.sensors, *reported]):
        entry: dict[str, Any] = dict(reported.get(name) or {})
        entry.setdefault("state", "unknown")
        if not current and entry["state"] != "unknown":
            entry["stale"] = True
        if (unsent := buffer.get("newest_unsent", {}).get(name)) is not None:
            entry["newest_unsent"] = unsent
        sensors[name] = entry
        if current and entry["state"] == "fault":
            problems.append(f"sensor {name} in fault: {entry.get('error', 'no detail')}")

    counts = data if "error" in buffer else buffer  # the buffer is the truth when it can be read
    return {
        "node": config.node.id,
        "config": config.source,
        "remote": remote_layer_status(config, data),
        "healthy": not problems,
        "problems": problems,
        "service": service,
        "daemon": {
            "status_file": daemon.get("path"),
            "age_s": daemon.get("age_s"),
            "pid": data.get("pid"),
            "running": daemon.get("running", False),
            "fresh": daemon.get("fresh", False),
        },
        "broker": {
            "url": broker.get("url", config.broker.url),
            "connected": connected,
            "last_publish": broker.get("last_publish"),
            "protocol": data.get("protocol"),
            "refused": refused,
            "quarantined": data.get("quarantined") or 0,
        },
        "seq_sent": data.get("seq_sent"),
        "backlog": counts.get("backlog"),
        "oldest_unsent_age_s": counts.get("oldest_unsent_age_s"),
        "dropped": counts.get("dropped"),
        "buffer": {k: v for k, v in buffer.items() if k != "newest_unsent"},
        "sensors": sensors,
    }


_REFUSAL_HINTS = {
    0x87: "the broker's ACL does not let {who} write under {root}/ (a changed or mistyped rule?)",
    0x97: "the broker's quota for {who} is exhausted",
    0x95: "the broker takes smaller messages than the node sends",
    0x99: "the broker does not accept the payloads as they are",
}


def refusal_in_words(refused: dict[str, Any], config: Config) -> str:
    """`broker refuses this node's readings since ...: 0x87 Not authorized, ...`, for a technician."""
    who = config.broker.username or config.node.id
    hint = _REFUSAL_HINTS.get(refused.get("reason_code"), "")
    hint = hint.format(who=who, root=config.topic_root)
    return (
        f"the broker refuses this node's readings since {refused.get('since')}: {refused.get('reason')}"
        + (f": {hint}" if hint else "")
        + f"; {refused.get('count')} messages refused, every reading kept in the buffer and retried"
    )


def remote_layer_status(config: Config, data: dict[str, Any]) -> dict[str, Any]:
    """The base file, the remote layer over it (from the state directory) and the running hash."""
    from edge_node.remote import LAYER_FILE, PENDING_FILE

    def read(name: str) -> dict:
        try:
            found = json.loads((config.buffer.path.parent / name).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    layer, pending = read(LAYER_FILE), read(PENDING_FILE)
    running = (data.get("config") or {}).get("hash")
    return {
        "base": config.source,
        "base_hash": config.config_hash,
        "running_hash": running,
        "layer": layer.get("values") or {},
        "applied": layer.get("applied"),
        "applied_by": layer.get("id"),
        "pending": pending.get("id"),
        "rolled_back": layer.get("rolled_back"),
    }


def _values(values: dict | None) -> str:
    if not values:
        return ""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _remote_lines(remote: dict[str, Any]) -> list[str]:
    running = remote["running_hash"] or "not running"
    if not remote["layer"]:
        lines = [f"config    base only ({remote['base_hash']}); running {running}"]
    else:
        changes = " ".join(f"{k}={json.dumps(v)}" for k, v in remote["layer"].items())
        lines = [
            f"config    base {remote['base']} ({remote['base_hash']}) + remote layer: {changes}",
            f"          applied {remote['applied']} by command {remote['applied_by']}; running {running}",
        ]
    if remote["pending"]:
        lines.append(f"          change {remote['pending']} not confirmed yet")
    if rolled := remote["rolled_back"]:
        lines.append(
            f"          rolled back {rolled.get('at')}: {rolled.get('reason')} (command {rolled.get('id')})"
        )
    return lines


def render(status: dict[str, Any]) -> str:
    """The technician's table."""
    daemon, broker, buf = status["daemon"], status["broker"], status["buffer"]
    lines = [f"node      {status['node']}  (config {status['config']})", f"service   {status['service']}"]
    lines += _remote_lines(status["remote"])
    if daemon["status_file"] is None:
        lines.append("daemon    no status.json (not run here yet)")
    else:
        running = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
        lines.append(
            f"daemon    {running}; status.json {daemon['age_s']:.0f} s old ({daemon['status_file']})"
        )
    link = "connected" if broker["connected"] else "NOT connected"
    lines.append(f"broker    {link} to {broker['url']}; last publish {broker['last_publish'] or 'none seen'}")
    if broker.get("protocol") == "3.1.1":
        lines.append("          MQTT 3.1.1: a reading the broker refuses cannot be told from one it accepts")
    elif broker.get("protocol"):
        lines.append(f"          MQTT {broker['protocol']}")
    if refused := broker.get("refused"):
        count = refused["count"]
        lines.append(f"REFUSED   {refused['reason']} since {refused['since']}, {count} messages refused")
    if broker.get("quarantined"):
        lines.append(
            f"          {broker['quarantined']} readings quarantined: the broker refused each on its own for "
            "good; kept in the buffer, not sent again"
        )
    if "error" in buf:
        lines.append(f"buffer    {buf['error']}")
    if status["backlog"] is not None:
        oldest = status["oldest_unsent_age_s"] or 0
        lines.append(
            f"backlog   {status['backlog']} readings unsent"
            + (f", oldest {_age(oldest).removesuffix(' ago')} old" if status["backlog"] else "")
            + f"; {status['dropped'] or 0} dropped"
        )
    lines.append("")
    lines.append(f"{'sensor':<12} {'state':<9} {'last ok':<26} last values")
    for name, s in status["sensors"].items():
        state = s["state"] + ("?" if s.get("stale") else "")
        values = s.get("last_values")
        if not values and (unsent := s.get("newest_unsent")):
            values = unsent.get("values")
        detail = _values(values)
        if s.get("error"):
            detail = f"{detail}  error: {s['error']}".strip()
        lines.append(f"{name:<12} {state:<9} {s.get('last_ok') or '-':<26} {detail}")
    if any(s.get("stale") for s in status["sensors"].values()):
        lines.append("(? = as the daemon last reported it; it is not running now)")
    lines.append("")
    if status["healthy"]:
        lines.append("HEALTHY")
    else:
        lines.append("NOT HEALTHY: " + "; ".join(status["problems"]))
    return "\n".join(lines)
