"""What each signed command does on the node (issue 13 points 2 and 3); `HANDLERS` by name.

Each handler takes the node's `NodeRemote`, the envelope's `args` and the envelope, and returns
the reply's fields (`ok`, `state`, ...), or raises `CommandRefused` with a one-line reason.
"""

from __future__ import annotations

import re
import time

from .commands import CommandRefused

DOTTED_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,4}")
MAX_KEYS = 50


def _keys(names) -> list[str]:
    if not isinstance(names, list) or not names or len(names) > MAX_KEYS:
        raise CommandRefused(f"args.keys must be a list of 1..{MAX_KEYS} dotted keys")
    for name in names:
        if not isinstance(name, str) or len(name) > 200 or not DOTTED_KEY.fullmatch(name):
            raise CommandRefused(f"not a dotted config key: {str(name)[:60]!r}")
    return names


def set_values(remote, args: dict, envelope: dict) -> dict:
    values = args.get("values")
    if not isinstance(values, dict):
        raise CommandRefused("args.values must be an object of dotted keys")
    _keys(list(values))
    layer = remote.layer()["values"]
    return remote.change_layer(envelope, {**layer, **values})


def unset_values(remote, args: dict, envelope: dict) -> dict:
    names = _keys(args.get("keys"))
    layer = remote.layer()["values"]
    kept = {k: v for k, v in layer.items() if not any(k == n or k.startswith(n + ".") for n in names)}
    return remote.change_layer(envelope, kept)


def rollback(remote, args: dict, envelope: dict) -> dict:
    """Back to the technician's file: an empty remote layer."""
    return remote.change_layer(envelope, {})


def show(remote, args: dict, envelope: dict) -> dict:
    try:
        node_key = remote.node_key()
    except (ValueError, OSError) as err:
        raise CommandRefused(f"this node's key pair {remote.node_key_path}: {err}") from None
    return {
        "ok": True,
        "state": "done",
        "config_hash": remote.config.config_hash,
        "config": remote.status(),
        "node_key": node_key,  # what an operator seals a new secret to (rotate-password)
    }


def rotate_password(remote, args: dict, envelope: dict) -> dict:
    """A new broker password, sealed to this node's key inside the signed envelope: written to
    the state directory (0600) and tried as a config change, so that it is kept only if the
    broker accepts it (connected within remote.confirm_s), else the old one comes back."""
    from .remote import SECRET_PREFIX, write_secret
    from .signing import decrypt_secret

    if remote.config.broker.username is None:
        raise CommandRefused("broker.username is not set: this node has no password to rotate")
    sealed = args.get("secret")
    if not isinstance(sealed, str) or len(sealed) > 1024:
        raise CommandRefused("args.secret must be the new password sealed to this node's key")
    try:
        secret = decrypt_secret(remote.node_key_path, sealed).decode("utf-8")
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise CommandRefused(f"args.secret: {err}") from None
    if not secret or len(secret) > 256 or not secret.isprintable():
        raise CommandRefused("the new password must be 1..256 printable characters")
    path = remote.state_dir / f"{SECRET_PREFIX}{envelope['id']}"
    write_secret(path, secret)
    layer = remote.layer()["values"]
    return remote.change_layer(
        envelope, {**layer, "broker.password_file": str(path)}, may_set=("broker.password_file",)
    )


def update(remote, args: dict, envelope: dict) -> dict:
    """A software release to fetch, install side by side and switch to (edge_node/updater.py)."""
    from .updater import update_command

    return update_command(remote, args, envelope)


def restart(remote, args: dict, envelope: dict) -> dict:
    remote.restart()
    return {"ok": True, "state": "restarting", "config_hash": remote.config.config_hash}


def selftest(remote, args: dict, envelope: dict) -> dict:
    """Each sensor read recently and without fault, the buffer writable, the broker connected."""
    daemon = remote.daemon
    now = time.time()
    checks = [{"name": "broker", "result": "PASS" if daemon.forwarder.connected else "FAIL"}]
    buffer_error = daemon.health.buffer_error
    checks.append(
        {"name": "buffer", "result": "FAIL" if buffer_error else "PASS", "detail": buffer_error or ""}
    )
    for name, sensor in daemon.health.sensors.items():
        interval = remote.config.sensors[name].interval_s if name in remote.config.sensors else 60
        fresh = sensor.last_ok is not None and now - sensor.last_ok <= 3 * interval + 5
        good = sensor.state != "fault" and (fresh or sensor.state == "ok")
        detail = sensor.error or (
            f"last read {now - sensor.last_ok:.0f} s ago" if sensor.last_ok else "no read yet"
        )
        checks.append({"name": f"sensor.{name}", "result": "PASS" if good else "FAIL", "detail": detail})
    ok = all(c["result"] == "PASS" for c in checks)
    return {"ok": ok, "state": "done", "result": "PASS" if ok else "FAIL", "checks": checks}


def detect(remote, args: dict, envelope: dict) -> dict:
    """The configured sensors as the running node sees them (the buses are held by the drivers,
    so nothing is probed behind their back): driver, where it is attached, state, last values."""
    daemon = remote.daemon
    sensors = {}
    for name, cfg in remote.config.sensors.items():
        state = daemon.health.sensors.get(name)
        where = {k: v for k, v in cfg.options.items() if k in ("bus", "address", "port", "pin", "root")}
        sensors[name] = {
            "driver": cfg.driver,
            **where,
            "state": state.state if state else "unknown",
            "last_values": state.last_values if state else None,
        }
    return {"ok": True, "state": "done", "sensors": sensors}


HANDLERS = {
    "set": set_values,
    "unset": unset_values,
    "rollback": rollback,
    "show": show,
    "restart": restart,
    "selftest": selftest,
    "detect": detect,
    "rotate-password": rotate_password,
    "update": update,
}
