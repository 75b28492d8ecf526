"""Remote management on the node (issue 13): signed commands, the remote config layer, rollback.

`edge-node run` runs the pipeline (edge_node.daemon) under `NodeRemote.run`, which restarts it
on a new configuration and takes it back to the previous one by itself when the new one does
not prove healthy (broker connected, every sensor reading) within `remote.confirm_s`.

What lives in the state directory (the buffer's, `/var/lib/edge-node`; `/etc` stays read-only
and the technician's file stays the base):
- `remote-layer.json`: `{"values": {dotted key: value}, "applied", "id", "rolled_back"?}`, laid
  over the base file (config.load_layered);
- `remote-pending.json`: a change not yet confirmed: the previous layer, the command's id, how
  many starts it has seen (a change that crashes the daemon twice is rolled back at the next);
- `commands-seen.json`: ids of signed commands already run, until they expire (no replays,
  across restarts).

A signed command's payload is `signing.Signer.seal(envelope)`; the envelope is
`{"cmd", "args", "node", "id", "issued", "expires"}` (RFC 3339 times). A command left retained
on the broker (how an offline node receives a change when it returns) runs once, like any other;
a retained one that is refused is not answered (it would be at every reconnect), only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

from .clock import format_ts
from .commands import CommandHandler, CommandRefused
from .config import Config, ConfigError, load_config, load_layered

log = logging.getLogger(__name__)

LAYER_FILE = "remote-layer.json"
PENDING_FILE = "remote-pending.json"
SEEN_FILE = "commands-seen.json"
# The node's X25519 key pair for secrets sent to it (edge_node.signing): `remote.node_key`, made by
# `edge-node provision`; this file in the state directory, made on first use, for nodes
# provisioned before provisioning made it (their config has no remote.node_key).
NODE_KEY_FILE = "node-key.pem"
SECRET_PREFIX = "broker-secret-"  # a rotated broker password, named by the command that sent it
MAX_VALIDITY_S = 7 * 86400  # an envelope may not be valid longer: bounds what is remembered
MAX_SEEN = 10_000
COMMAND_ID = re.compile(r"[A-Za-z0-9_.-]{8,64}")
LOCKED_KEYS = {  # what a remote change may not touch, and why
    "node.id": "the node's identity is set at provisioning",
    "buffer.path": "moving the buffer would strand its backlog",
    "broker.password_file": "a password is changed by rotate-password, sealed to the node",
    "remote.node_key": "the node's key pair is made at provisioning",
}
RESTART_DELAY_S = 0.5  # lets the reply go out before the pipeline stops
MAX_STARTS_PENDING = 2  # a change that has seen this many starts unconfirmed is rolled back
CONFIRM_POLL_S = 0.25


def write_json_durably(path: Path, data: dict) -> None:
    """Atomic and on the card before it counts: a power cut leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        json.dump(data, file, separators=(",", ":"))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
        file.flush()
        os.fsync(file.fileno())


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # the latter: a buffer path that cannot exist
        return None
    except (OSError, ValueError) as err:
        log.error("%s unreadable (%s): ignored", path, err)
        return None
    return data if isinstance(data, dict) else None


def _parse_time(value: Any, what: str) -> float:
    if not isinstance(value, str) or len(value) > 40:
        raise CommandRefused(f"malformed envelope: {what} must be an RFC 3339 time")
    try:
        stamp = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise CommandRefused(f"malformed envelope: {what} must be an RFC 3339 time (got {value!r})") from None
    if stamp.tzinfo is None:
        raise CommandRefused(f"malformed envelope: {what} needs a time zone (got {value!r})")
    return stamp.timestamp()


def _claimed_id(payload) -> str | None:
    """The id an envelope claims, before it is verified: only so that a refusal names it."""
    try:
        claimed = json.loads(json.loads(payload)["body"])["id"]
    except (ValueError, TypeError, KeyError, RecursionError, UnicodeDecodeError):
        return None
    return claimed if isinstance(claimed, str) and COMMAND_ID.fullmatch(claimed) else None


class SeenIds:
    """Ids of commands run, each kept until its envelope expires; persisted before a command runs."""

    def __init__(self, path: Path):
        self.path = path
        data = _read_json(path) or {}
        now = time.time()
        ids = data.get("ids", {})
        self.ids: dict[str, float] = (
            {k: v for k, v in ids.items() if isinstance(v, int | float) and v > now}
            if isinstance(ids, dict)
            else {}
        )

    def __contains__(self, command_id: str) -> bool:
        return command_id in self.ids

    def add(self, command_id: str, expires: float) -> None:
        now = time.time()
        self.ids = {k: v for k, v in self.ids.items() if v > now}
        if len(self.ids) >= MAX_SEEN:
            raise CommandRefused(f"too many commands within their validity ({MAX_SEEN}); try later")
        self.ids[command_id] = expires
        write_json_durably(self.path, {"ids": self.ids})


class _PipelineNotifier:
    """The process's notifier lent to one run of the pipeline: a restart is not a stop to systemd."""

    def __init__(self, notifier, stop: asyncio.Event):
        self._notifier, self._stop = notifier, stop

    def __getattr__(self, name: str):
        return getattr(self._notifier, name)

    def stopping(self, status: str = "stopping") -> None:
        if self._stop.is_set():
            self._notifier.stopping(status)
        else:
            self._notifier.status("restarting the pipeline")

    def close(self) -> None:
        pass


class NodeRemote:
    """Owns the pipeline's runs: the current config, the remote layer, pending changes, replies."""

    def __init__(self, config_path: str | os.PathLike[str], notifier=None):
        from .notify import Notifier

        self.config_path = os.fspath(config_path)
        self.base = load_config(self.config_path)  # a bad base file: exit 2, as always
        self.state_dir = self.base.buffer.path.parent
        self.notifier = notifier or Notifier()
        self.outbox: deque[tuple[str, dict]] = deque(maxlen=50)  # replies that wait for a session
        self.outbox_ready = asyncio.Event()
        self.config: Config = self.base
        self.daemon = None
        self._stop: asyncio.Event | None = None
        self._run_stop: asyncio.Event | None = None
        self._seen: SeenIds | None = None  # loaded with the first signed command

    # -- files ----------------------------------------------------------------------------------

    @property
    def layer_path(self) -> Path:
        return self.state_dir / LAYER_FILE

    @property
    def pending_path(self) -> Path:
        return self.state_dir / PENDING_FILE

    def layer(self) -> dict:
        data = _read_json(self.layer_path) or {}
        values = data.get("values")
        return {**data, "values": values if isinstance(values, dict) else {}}

    def pending(self) -> dict | None:
        return _read_json(self.pending_path)

    @property
    def node_key_path(self) -> Path:
        """This node's key pair for secrets: the provisioned one, else the state directory's."""
        return self.base.remote.node_key or self.state_dir / NODE_KEY_FILE

    def node_key(self) -> str:
        """This node's public key for secrets (`x25519:...`); the state directory's fallback
        pair is made on first use, a provisioned one never replaced."""
        from .signing import node_key

        return node_key(self.node_key_path, create=self.base.remote.node_key is None)

    def _prune_secrets(self) -> None:
        """Rotated passwords no layer points at any more: a rolled-back one, or the one before."""
        in_use = self.layer()["values"].get("broker.password_file")
        for path in self.state_dir.glob(SECRET_PREFIX + "*"):
            if str(path) != in_use:
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- the pipeline's runs --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        from .daemon import Daemon

        self._stop = stop
        try:
            while not stop.is_set():
                pending = self._count_start()
                self.config = config = self._load()
                self._run_stop = run_stop = asyncio.Event()
                # Helpers owned here and ended with the run; not a TaskGroup, so that the
                # pipeline's own errors reach `edge-node run` as they are (exit codes).
                helpers = [asyncio.create_task(self._relay(stop, run_stop))]
                try:
                    self.daemon = Daemon(config, notifier=_PipelineNotifier(self.notifier, stop), remote=self)
                    if pending:
                        helpers.append(asyncio.create_task(self._confirm(pending, run_stop)))
                    await self.daemon.run(run_stop)
                except Exception as err:
                    if not pending or self.pending() is None:
                        raise
                    log.error("the new configuration failed: %s", err)
                    self._rollback(pending, f"the pipeline failed on it: {err}")
                finally:
                    for task in helpers:
                        task.cancel()
                    await asyncio.gather(*helpers, return_exceptions=True)
        finally:
            self.notifier.close()

    @staticmethod
    async def _relay(stop: asyncio.Event, run_stop: asyncio.Event) -> None:
        await stop.wait()
        run_stop.set()

    def _load(self) -> Config:
        layer = self.layer()
        if not layer["values"]:
            return load_config(self.config_path)
        try:
            return load_layered(self.config_path, layer["values"])
        except ConfigError as err:  # e.g. the technician changed the base under it: never strand
            log.error("remote layer ignored: %s", err)
            pending = self.pending()
            self._rollback(pending or {"id": layer.get("id"), "previous": {}}, f"invalid: {err}")
            return load_config(self.config_path)

    def _count_start(self) -> dict | None:
        pending = self.pending()
        if pending is None:
            return None
        pending["starts"] = int(pending.get("starts", 0)) + 1
        if pending["starts"] > MAX_STARTS_PENDING:
            self._rollback(pending, f"the daemon restarted {pending['starts'] - 1} times before it confirmed")
            return None
        write_json_durably(self.pending_path, pending)
        return pending

    def restart(self, delay: float = RESTART_DELAY_S) -> None:
        run_stop = self._run_stop
        if run_stop is not None:
            asyncio.get_running_loop().call_later(delay, run_stop.set)

    async def _confirm(self, pending: dict, run_stop: asyncio.Event) -> None:
        deadline = time.monotonic() + float(pending.get("confirm_s", self.config.remote.confirm_s))
        while time.monotonic() < deadline:
            await asyncio.sleep(CONFIRM_POLL_S)
            if self._problem() is None:
                self._confirmed(pending)
                return
        reason = self._problem() or "not healthy in time"
        log.error(
            "configuration %s not healthy within %.0f s: %s; rolling back",
            self.config.config_hash,
            float(pending.get("confirm_s", 0)),
            reason,
        )
        self._rollback(pending, f"not healthy within {float(pending.get('confirm_s', 0)):g} s: {reason}")
        run_stop.set()

    def _problem(self) -> str | None:
        """Why the running pipeline is not healthy yet, or None."""
        daemon = self.daemon
        if daemon is None or not daemon.ready.is_set():
            return "the pipeline has not started"
        if not daemon.forwarder.connected:
            return f"not connected to the broker {self.config.broker.url}"
        for name, sensor in daemon.health.sensors.items():
            if sensor.state == "fault":
                return f"sensor {name}: {sensor.error}"
            if sensor.last_ok is None and sensor.state != "ok":
                return f"sensor {name}: no reading yet"
        return None

    def _confirmed(self, pending: dict) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pending_path.unlink()
        log.info("configuration %s confirmed (command %s)", self.config.config_hash, pending.get("id"))
        self._prune_secrets()
        self._reply(pending, {"ok": True, "state": "confirmed", "config_hash": self.config.config_hash})

    def _rollback(self, pending: dict, reason: str) -> None:
        previous = pending.get("previous") if isinstance(pending.get("previous"), dict) else {}
        layer = {
            **previous,
            "values": previous.get("values", {}) if isinstance(previous.get("values"), dict) else {},
            "rolled_back": {"id": pending.get("id"), "reason": reason[:300], "at": format_ts(time.time())},
        }
        write_json_durably(self.layer_path, layer)
        with contextlib.suppress(FileNotFoundError):
            self.pending_path.unlink()
        self._prune_secrets()
        log.error("config_rolled_back: %s", reason)
        reply = {"ok": False, "state": "rolled_back", "error": f"config_rolled_back: {reason}"[:400]}
        if pending.get("previous_hash"):
            reply["config_hash"] = pending["previous_hash"]  # what it runs again
        self._reply(pending, reply)

    def _reply(self, pending: dict, reply: dict) -> None:
        name = pending.get("cmd") or "set"
        self.outbox.append(
            (name, {"id": pending.get("id"), "node": self.base.node.id, "command": name, **reply})
        )
        self.outbox_ready.set()

    # -- what the pipeline asks of us -----------------------------------------------------------

    def command_handler(self, daemon) -> CommandHandler:
        return CommandHandler(
            node_id=self.config.node.id,
            topic_root=self.config.topic_root,
            ping=lambda: {"backlog": daemon.store.backlog, "config_hash": self.config.config_hash},
            dispatch=self.dispatch,
            outbox=self.outbox,
            outbox_ready=self.outbox_ready,
        )

    def rolled_back(self) -> dict | None:
        return self.layer().get("rolled_back")

    def status(self) -> dict:
        """For status.json and `edge-node status`: base, remote layer, applied, rollback."""
        layer = self.layer()
        pending = self.pending()
        return {
            "hash": self.config.config_hash,
            "base": self.config_path,
            "base_hash": self.base.config_hash,
            "remote_layer": layer["values"],
            "applied": layer.get("applied"),
            "applied_by": layer.get("id"),
            "pending": pending.get("id") if pending else None,
            "rolled_back": layer.get("rolled_back"),
        }

    # -- signed commands ------------------------------------------------------------------------

    def dispatch(self, name: str, payload, retained: bool) -> dict | None:
        if not payload:  # how an operator clears a retained command: not addressed to us
            return None
        from . import actions

        if name not in actions.HANDLERS:
            known = ", ".join(["ping", *sorted(actions.HANDLERS)])
            raise CommandRefused(f"unknown command (known: {known})")
        base = {"id": _claimed_id(payload), "node": self.base.node.id, "command": name}
        try:
            envelope = self._open(name, payload)
            base["id"] = envelope["id"]
            result = actions.HANDLERS[name](self, envelope["args"], envelope)
        except CommandRefused as err:
            if retained:
                log.warning("retained cmd/%s refused, not answered: %s", name, err)
                return None
            return {**base, "ok": False, "state": "refused", "error": f"cmd/{name}: {err}"[:400]}
        return {**base, **result}

    def _open(self, name: str, payload) -> dict:
        from .signing import SignatureError, unseal

        try:
            sealed = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise CommandRefused("unsigned: not a signed envelope (malformed JSON)") from None
        trusted = self.config.remote.trusted_keys
        if not trusted:
            raise CommandRefused("no trusted keys: this node runs no signed commands ([remote] trusted_keys)")
        try:
            envelope = unseal(sealed, trusted)
        except SignatureError as err:
            raise CommandRefused(str(err)) from None
        for key in ("cmd", "args", "node", "id", "issued", "expires"):
            if key not in envelope:
                raise CommandRefused(f"malformed envelope: no {key!r}")
        if envelope["cmd"] != name:
            raise CommandRefused(f"altered: the envelope was signed for cmd/{envelope['cmd']!s:.32}")
        if envelope["node"] != self.base.node.id:
            raise CommandRefused(f"aimed at node {envelope['node']!s:.40}, not {self.base.node.id}")
        command_id = envelope["id"]
        if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
            raise CommandRefused("malformed envelope: id must be 8-64 characters [A-Za-z0-9_.-]")
        if not isinstance(envelope["args"], dict):
            raise CommandRefused("malformed envelope: args must be an object")
        issued = _parse_time(envelope["issued"], "issued")
        expires = _parse_time(envelope["expires"], "expires")
        now = time.time()
        if expires < now:
            raise CommandRefused(f"expired at {envelope['expires']}")
        if expires - issued > MAX_VALIDITY_S:
            raise CommandRefused(f"valid for longer than {MAX_VALIDITY_S // 86400} days: refused")
        if self._seen is None:
            self._seen = SeenIds(self.state_dir / SEEN_FILE)
        if command_id in self._seen:
            raise CommandRefused(f"replayed: command {command_id} was already run")
        self._seen.add(command_id, expires)  # before it runs: a crash must not make it replayable
        return envelope

    # -- changing the layer (used by the actions) -----------------------------------------------

    def change_layer(self, envelope: dict, values: dict, *, may_set: tuple[str, ...] = ()) -> dict:
        """Validate `values` as the new remote layer and apply it; the reply's fields. Keys in
        LOCKED_KEYS may not be given a new value, except those in `may_set`."""
        if (pending := self.pending()) is not None:
            raise CommandRefused(f"change {pending.get('id')} is still being confirmed: try again later")
        current = self.layer()
        changed = [k for k, v in values.items() if k not in current["values"] or current["values"][k] != v]
        for key in changed:
            for locked, why in LOCKED_KEYS.items():
                if (key == locked or key.startswith(locked + ".")) and locked not in may_set:
                    raise CommandRefused(f"{key}: cannot be changed remotely ({why})")
        try:
            new = load_layered(self.config_path, values) if values else load_config(self.config_path)
        except ConfigError as err:
            raise CommandRefused(str(err)) from None
        if not new.remote.trusted_keys:
            raise CommandRefused("remote.trusted_keys: must not be empty (no operator could reach the node)")
        if new.config_hash == self.config.config_hash:
            return {"ok": True, "state": "unchanged", "config_hash": new.config_hash}
        write_json_durably(
            self.pending_path,
            {
                "id": envelope["id"],
                "cmd": envelope["cmd"],
                "previous": {k: v for k, v in current.items() if k != "rolled_back"},
                "previous_hash": self.config.config_hash,
                "confirm_s": self.config.remote.confirm_s,  # the old one: a change cannot lengthen its own
                "starts": 0,
            },
        )
        write_json_durably(
            self.layer_path, {"values": values, "applied": format_ts(time.time()), "id": envelope["id"]}
        )
        log.info(
            "remote change %s: config %s -> %s; restarting the pipeline",
            envelope["id"],
            self.config.config_hash,
            new.config_hash,
        )
        self.restart()
        return {
            "ok": True,
            "state": "applying",
            "config_hash": new.config_hash,
            "previous_hash": self.config.config_hash,
            "confirm_s": self.config.remote.confirm_s,
        }
