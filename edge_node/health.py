"""What the node says about itself: sensor states, status and heartbeat payloads (DESIGN §4)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import __version__
from .clock import boot_id, format_ts, now_iso


@dataclass
class SensorState:
    state: str = "warming"  # "ok" | "warming" | "fault"
    error: str | None = None
    last_ok: float | None = None
    extra: dict = field(default_factory=dict)  # the driver's own figures, from its status()
    last_values: dict | None = None  # for `edge-node status`, not the heartbeat

    def as_json(self) -> dict:
        out: dict = {**self.extra, "state": self.state}
        if self.error:
            out["error"] = self.error
        if self.last_ok is not None:
            out["last_ok"] = format_ts(self.last_ok)
        return out


@dataclass
class Health:
    """Shared, read by the forwarder for heartbeats; written by samplers. One loop, no locks."""

    config_hash: str
    host_vitals: Callable[[], dict]
    sensors: dict[str, SensorState] = field(default_factory=dict)
    started_mono: float = field(default_factory=time.monotonic)
    started_iso: str = field(default_factory=now_iso)
    boot_id: str = field(default_factory=boot_id)
    # What fails on the buffer (disk full, I/O errors), by whoever saw it: "write" (the store
    # writer), "read" (the forwarder), "sync" (the syncer). Each clears only its own, so that a
    # card that still fails one way is not reported healthy by a success of another kind.
    buffer_faults: dict[str, str] = field(default_factory=dict)
    lost_in_memory: int = 0  # readings dropped from the in-memory overflow meanwhile
    # Where the node stands, for the city's database and map (config [node] site, location).
    site: str = ""
    location: dict | None = None
    config_rolled_back: dict | None = None  # the last remote change undone: {id, reason, at}
    update: dict | None = None  # a software update's state (issue 16, edge_node/updater.py)
    command_counts: Callable[[], dict] = dict  # edge_node.commands.CommandHandler.counts
    # The broker's side (issue 10), kept by the forwarder: the MQTT version in use; while the
    # broker refuses readings, {reason_code, reason, since, count}; readings set aside for good.
    protocol: str = "5"
    refused: dict | None = None
    quarantined: int = 0

    def sensor(self, name: str) -> SensorState:
        return self.sensors.setdefault(name, SensorState())

    def ok(self, name: str, *, warming: bool = False, asleep: bool = False) -> None:
        """A read succeeded; `asleep` (nothing to report by design) keeps `last_ok` as it was."""
        s = self.sensor(name)
        s.state, s.error = ("warming" if warming else "ok"), None
        if not asleep:
            s.last_ok = time.time()

    def fault(self, name: str, error: str) -> None:
        s = self.sensor(name)
        s.state, s.error = "fault", error

    @property
    def buffer_error(self) -> str | None:
        return "; ".join(self.buffer_faults.values()) or None

    def status_online(self) -> bytes:
        return _dump(
            {
                "state": "online",
                "since": self.started_iso,
                "version": __version__,
                "boot_id": self.boot_id,
                "config_hash": self.config_hash,
                **({"site": self.site} if self.site else {}),
                **({"location": self.location} if self.location else {}),
            }
        )

    @staticmethod
    def status_offline(reason: str) -> bytes:
        return _dump({"state": "offline", "reason": reason})

    def heartbeat(
        self, *, seq_sent: int, backlog: int, oldest_unsent_wall: float | None, dropped: int
    ) -> bytes:
        now = time.time()
        oldest_age = 0.0 if oldest_unsent_wall is None else max(0.0, round(now - oldest_unsent_wall, 1))
        beat = {
            "ts": format_ts(now),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "seq_sent": seq_sent,
            "backlog": backlog,
            "oldest_unsent_age_s": oldest_age,
            "dropped": dropped + self.lost_in_memory,
            "sensors": {name: s.as_json() for name, s in self.sensors.items()},
            "host": self.host_vitals(),
            "protocol": self.protocol,
        }
        if self.refused:
            beat["refused"] = dict(self.refused)
        if self.quarantined:
            beat["quarantined"] = self.quarantined
        if error := self.buffer_error:  # edge-node extension: the buffer's own fault
            beat["buffer"] = {"state": "fault", "error": error}
        beat["config_hash"] = self.config_hash  # a remote change shows here (issue 13)
        if self.config_rolled_back:
            beat["config_rolled_back"] = self.config_rolled_back
        if self.update:
            beat["update"] = self.update
        if any((counts := self.command_counts()).values()):  # once something was refused or dropped
            beat["commands"] = counts
        return _dump(beat)


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
