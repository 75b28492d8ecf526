"""`status.json`, the daemon's word for `edge-node status`: its name, where it is written, how
often, and its shape. The daemon writes it (`edge_node.daemon`); `provisioning/status.py` reads
it through this module alone, without loading the daemon.

Under systemd it lives in the RuntimeDirectory (RAM) and is rewritten every few seconds; else
beside the buffer, at the heartbeat's pace, to spare the card.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

NAME = "status.json"
RUNTIME_DIR = Path("/run/edge-node")  # systemd's RuntimeDirectory=edge-node
RUNTIME_INTERVAL_S = 5.0


class BrokerState(TypedDict):
    url: str
    connected: bool
    last_publish: str | None  # ISO 8601 UTC of the last PUBACK'd publish


class Refusal(TypedDict):
    reason_code: int  # the PUBACK's, >= 0x80
    reason: str  # the code and its name, e.g. "0x87 Not authorized"
    since: str  # ISO 8601 UTC of the first refusal of this episode
    count: int  # messages refused since then


class Status(TypedDict):
    """Its shape: the keys `edge-node status` relies on."""

    ts: str  # when it was written, ISO 8601 UTC
    pid: int  # the daemon's (a reader checks that it still runs)
    node: str
    broker: BrokerState
    seq_sent: int
    backlog: int
    oldest_unsent_age_s: float
    dropped: int
    buffer_fault: str | None  # None while the card is fine
    config: dict[str, Any]  # the config's hash, and the remote layer's state
    protocol: str  # the MQTT version in use: "5", or "3.1.1" (configured, or a broker without 5)
    refused: Refusal | None  # while the broker refuses readings (issue 10), else None
    quarantined: int  # readings the broker refused on their own for good: kept, not sent again
    sensors: dict[str, dict[str, Any]]  # per sensor: its heartbeat entry and last_values


@dataclass(frozen=True)
class Location:
    path: Path
    interval_s: float  # how often the daemon rewrites it there


def written_at(buffer_dir: Path, heartbeat_s: float, runtime_directory: str | None) -> Location:
    """Where the daemon writes it: the first of systemd's $RUNTIME_DIRECTORY, else beside the buffer."""
    if runtime_directory:
        return Location(Path(runtime_directory.split(":")[0]) / NAME, RUNTIME_INTERVAL_S)
    return Location(Path(buffer_dir) / NAME, heartbeat_s)


def read_from(buffer_dir: Path, heartbeat_s: float) -> list[Location]:
    """Where a reader looks for it: under systemd's RuntimeDirectory, and beside the buffer."""
    return [Location(RUNTIME_DIR / NAME, RUNTIME_INTERVAL_S), Location(Path(buffer_dir) / NAME, heartbeat_s)]


def write(path: Path, status: Status) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status, separators=(",", ":")))
    os.replace(tmp, path)
