"""Software updates on the node (issue 16): a signed release verified, installed side by side,
switched to atomically, and confirmed or rolled back by the node itself.

A release (made by `edge-node release build`, operations/release.py) is a directory of wheels
and `manifest.json`, the manifest sealed with an operator key (edge_node.signing, the same
keys and checks as signed commands): `{"format": 1, "name": "edge-node", "version", "created",
"buffer_schema", "files": [{"name", "size", "sha256"}]}`.

The installation root (`update.root`, /opt/edge-node; a temporary directory in the tests):

    versions/<version>/venv/     one virtualenv per version, never touched once installed
    versions/<version>/installed.json   written last: the version is whole
    current -> versions/<v>      the running version; switched by renaming a new symlink over it
    update.json                  {"good": version, "trial": {...} | absent, "rolled_back": {...}}
    update-check.py              a copy of this file, run by the unit's ExecStartPre (below)

A switched-to version is on trial until it confirms (healthy within `update.confirm_s`). The
unit's `ExecStartPre=-/usr/bin/python3 -I /opt/edge-node/update-check.py check /opt/edge-node`
counts the starts of a version on trial (this file runs there with the system's Python and the
standard library alone, so a broken venv cannot stop it) and switches back to the good version
when a trial has started MAX_TRIAL_STARTS times (a crash loop, a watchdog kill) or has outlived
its deadline, recording `update_rolled_back` and the reason.

The buffer: a release states its buffer schema (a fingerprint of edge_node.store.SCHEMA); a
release whose schema differs from the running one's is refused, both ways, so that neither an
update nor a switch back can meet a buffer it cannot read. A schema change is a visit.

Nothing here is imported by an idle daemon: only by the `update` command and `edge-node update`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

MANIFEST = "manifest.json"
STATE = "update.json"
CHECK_SCRIPT = "update-check.py"
INSTALLED = "installed.json"  # in versions/<v>/: written last, when the venv is whole
MAX_TRIAL_STARTS = 3  # the third unconfirmed start of a new version is its last
TRIAL_GRACE_S = 120.0  # beyond confirm_s: a start, a restart
VERSION = re.compile(r"\d+(\.\d+){0,3}")
WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,200}\.whl")
MAX_FILES = 200


class UpdateRefused(Exception):
    """A release the node will not install or switch to; `str()` is the one-line reason."""


# -- the state file and the symlink: standard library only (ExecStartPre runs this file alone) ----


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        json.dump(data, file, separators=(",", ":"))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict:
    """The JSON object in `path`; {} when there is none or it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_state(root: Path) -> dict:
    return read_json(Path(root) / STATE)


def current_version(root: Path) -> str | None:
    """The version `current` points at, or None when there is no link (yet)."""
    try:
        return Path(os.readlink(Path(root) / "current")).name
    except OSError:
        return None


def switch(root: Path, version: str) -> None:
    """`current` -> versions/<version>, atomically: a new link renamed over the old one."""
    root = Path(root)
    if not (root / "versions" / version / INSTALLED).exists():
        raise UpdateRefused(f"{root}/versions/{version}: not installed")
    tmp = root / f".current.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, root / "current")
    _fsync_dir(root)


def roll_back(root: Path, reason: str) -> str | None:
    """Switch back from the version on trial to the good one; the version now current, or None
    when there was no trial to end."""
    root = Path(root)
    state = read_state(root)
    trial = state.get("trial")
    if not isinstance(trial, dict):
        return None
    previous = trial.get("previous") or state.get("good")
    if previous and current_version(root) != previous:
        switch(root, previous)
    state.pop("trial", None)
    state.pop("confirmed", None)  # the last verdict is this one
    state["rolled_back"] = {
        "version": trial.get("version"),
        "to": previous,
        "id": trial.get("id"),
        "reason": f"update_rolled_back: {reason}"[:300],
        "at": _now_iso(),
    }
    _write_json(root / STATE, state)
    print(f"update_rolled_back: {trial.get('version')} -> {previous}: {reason}", file=sys.stderr)
    return previous


def check_start(root: Path, now: float | None = None) -> str:
    """What ExecStartPre does before each start: count a start of the version on trial and switch
    back when it has crash-looped or outlived its deadline. Returns what it did, one line."""
    root = Path(root)
    state = read_state(root)
    trial = state.get("trial")
    if not isinstance(trial, dict):
        return "no update on trial"
    if current_version(root) != trial.get("version"):  # killed mid-switch, before the link moved
        state.pop("trial", None)
        _write_json(root / STATE, state)
        return f"trial of {trial.get('version')} abandoned: current is {current_version(root)}"
    trial["starts"] = int(trial.get("starts", 0)) + 1
    now = time.time() if now is None else now
    if trial["starts"] > MAX_TRIAL_STARTS:
        roll_back(root, f"{trial['starts'] - 1} starts without confirming (crash loop or watchdog)")
        return "rolled back: crash loop"
    if now > float(trial.get("deadline", now)):
        roll_back(root, "not confirmed before its deadline")
        return "rolled back: deadline"
    state["trial"] = trial
    _write_json(root / STATE, state)
    return f"{trial['version']} on trial, start {trial['starts']} of {MAX_TRIAL_STARTS}"


def main(argv: list[str] | None = None) -> int:
    """`python3 update-check.py check ROOT` (the unit's ExecStartPre). Never fails the start."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "check":
        print("usage: update-check.py check ROOT", file=sys.stderr)
        return 2
    try:
        print(check_start(Path(argv[1])))
    except Exception as err:  # the daemon must still start: this is a safety net, not a gate
        print(f"update check: {type(err).__name__}: {err}", file=sys.stderr)
    return 0


# -- verifying a release -------------------------------------------------------------------------


def parse_version(text) -> tuple[int, ...]:
    if not isinstance(text, str) or not VERSION.fullmatch(text):
        raise UpdateRefused(f"malformed manifest: version must be N[.N[.N[.N]]] (got {str(text)[:40]!r})")
    return tuple(int(part) for part in text.split("."))


def buffer_schema() -> str:
    """The running version's buffer schema: a fingerprint of the store's CREATE statements."""
    from .store import SCHEMA

    return schema_fingerprint(SCHEMA)


def schema_fingerprint(schema_sql: str) -> str:
    return hashlib.sha256(" ".join(schema_sql.split()).encode()).hexdigest()[:16]


def read_manifest(release_dir: Path, trusted_keys) -> dict:
    """The signed manifest of the release in `release_dir`, or UpdateRefused saying why not."""
    from .signing import SignatureError, unseal

    path = Path(release_dir) / MANIFEST
    try:
        sealed = json.loads(path.read_text())
    except FileNotFoundError:
        raise UpdateRefused(f"{path}: no manifest") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UpdateRefused(f"{path}: unsigned: not a signed manifest ({type(err).__name__})") from None
    if not trusted_keys:
        raise UpdateRefused("no trusted keys: this node installs no release ([remote] trusted_keys)")
    try:
        manifest = unseal(sealed, trusted_keys)
    except SignatureError as err:
        raise UpdateRefused(f"{path}: {err}") from None
    return check_manifest(manifest)


def check_manifest(manifest: dict) -> dict:
    if manifest.get("format") != 1 or manifest.get("name") != "edge-node":
        raise UpdateRefused("malformed manifest: not an edge-node release (format 1)")
    parse_version(manifest.get("version"))
    files = manifest.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise UpdateRefused(f"malformed manifest: files must list 1..{MAX_FILES} wheels")
    for entry in files:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not WHEEL_NAME.fullmatch(entry["name"])
            or entry["name"].startswith(".")
            or not isinstance(entry.get("size"), int)
            or entry["size"] < 0
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        ):
            raise UpdateRefused(f"malformed manifest: bad file entry {str(entry)[:80]}")
    if not isinstance(manifest.get("buffer_schema"), str):
        raise UpdateRefused("malformed manifest: no buffer_schema")
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(manifest: dict, release_dir: Path) -> None:
    """Every file the manifest lists is there, whole, with its SHA-256; UpdateRefused otherwise."""
    for entry in manifest["files"]:
        path = Path(release_dir) / entry["name"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UpdateRefused(f"truncated: {entry['name']} is missing") from None
        if size != entry["size"]:
            raise UpdateRefused(f"truncated: {entry['name']} is {size} of {entry['size']} bytes")
        if sha256_file(path) != entry["sha256"]:
            raise UpdateRefused(f"tampered: {entry['name']} does not match its SHA-256 in the manifest")


def check_upgrade(manifest: dict, running: str, *, rollback: bool = False, schema: str | None = None) -> None:
    """Refuse a release older than (or the same as) `running` unless a rollback is asked for, and
    any release whose buffer schema is not the running one's."""
    new, old = parse_version(manifest["version"]), parse_version(running)
    if new == old:
        raise UpdateRefused(f"version {manifest['version']} is already running")
    if new < old and not rollback:
        raise UpdateRefused(
            f"older than what runs: {manifest['version']} < {running} (ask for a rollback to go back)"
        )
    if schema is not None and manifest["buffer_schema"] != schema:
        raise UpdateRefused(
            f"buffer schema {manifest['buffer_schema']} is not this node's {schema}: "
            "the buffer could not be read after the switch (a schema change needs a visit)"
        )


def verify_release(release_dir: Path, trusted_keys, running: str, *, rollback: bool = False) -> dict:
    """Signature, then version and schema, then every file's size and hash: the manifest."""
    manifest = read_manifest(release_dir, trusted_keys)
    check_upgrade(manifest, running, rollback=rollback, schema=buffer_schema())
    verify_files(manifest, release_dir)
    return manifest


# -- installing side by side ---------------------------------------------------------------------


def install(root: Path, release_dir: Path, manifest: dict, *, python: str | None = None) -> Path:
    """versions/<version>/venv with the release's wheels (from the release alone, no index). A
    venv cannot be moved (its scripts name their interpreter), so it is built in place and marked
    whole (INSTALLED) last: a version without the mark is an install cut short, redone here. The
    running version is not touched. Returns the version's directory."""
    root = Path(root)
    version = manifest["version"]
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    target = versions / version
    if (target / INSTALLED).exists():
        return target  # installed before (a retried update): its wheels were verified then
    if current_version(root) == version:
        raise UpdateRefused(f"{target}: current but not whole: will not rebuild what runs")
    shutil.rmtree(target, ignore_errors=True)  # a previous install cut short
    target.mkdir()
    python = python or getattr(sys, "_base_executable", None) or sys.executable
    project = [
        str(Path(release_dir) / e["name"]) for e in manifest["files"] if e["name"].startswith("edge_node-")
    ]
    if not project:
        raise UpdateRefused("malformed manifest: no edge_node wheel in the release")
    try:
        _run([python, "-m", "venv", str(target / "venv")])
        _run(
            [str(target / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
             "--disable-pip-version-check", "--find-links", str(release_dir), *project]
        )  # fmt: skip
    except UpdateRefused:
        shutil.rmtree(target, ignore_errors=True)
        raise
    subprocess.run(["sync"], check=False)  # the venv's files on the card before it counts as whole
    _write_json(target / INSTALLED, {"version": version, "at": _now_iso(), "files": manifest["files"]})
    tmp = root / f".{CHECK_SCRIPT}.{os.urandom(4).hex()}"
    shutil.copyfile(__file__, tmp)
    os.replace(tmp, root / CHECK_SCRIPT)
    return target


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "failed").splitlines()[-1]
        raise UpdateRefused(f"install failed: {Path(argv[0]).name} {argv[1:3]}: {last[:200]}")


def begin_trial(root: Path, version: str, *, confirm_s: float, command_id: str | None = None) -> None:
    """Record the trial, then move `current` (in that order: a kill between the two leaves a
    trial whose version is not current, which check_start abandons)."""
    root = Path(root)
    state = read_state(root)
    previous = current_version(root)
    state.setdefault("good", previous)
    state["trial"] = {
        "version": version,
        "previous": previous,
        "id": command_id,
        "starts": 0,
        "confirm_s": confirm_s,
        "switched_at": _now_iso(),
        "deadline": time.time() + confirm_s + TRIAL_GRACE_S,
    }
    _write_json(root / STATE, state)
    switch(root, version)


def confirm(root: Path, version: str) -> bool:
    """Mark `version` good, if it is the one on trial; whether it was."""
    root = Path(root)
    state = read_state(root)
    trial = state.get("trial")
    if not isinstance(trial, dict) or trial.get("version") != version:
        return False
    state.pop("trial")
    state.pop("rolled_back", None)  # the last verdict is this one
    state["good"] = version
    state["confirmed"] = {"version": version, "id": trial.get("id"), "at": _now_iso()}
    _write_json(root / STATE, state)
    return True


def status(root: Path) -> dict:
    """For status and heartbeat: the versions installed, current, good, trial, last rollback."""
    root = Path(root)
    state = read_state(root)
    trial = state.get("trial") if isinstance(state.get("trial"), dict) else None
    try:
        installed = sorted(
            (p.name for p in (root / "versions").iterdir() if (p / INSTALLED).exists()),
            key=lambda v: parse_version(v) if VERSION.fullmatch(v) else (),
        )
    except OSError:
        installed = []
    return {
        "current": current_version(root),
        "good": state.get("good"),
        "trial": trial.get("version") if trial else None,
        "installed": installed,
        "rolled_back": state.get("rolled_back"),
    }


# -- `edge-node update`: the node's own commands (a technician's, or the unit's) ------------------


def register(sub) -> None:
    from .cli import DEFAULT_CONFIG, HelpFormatter

    parser = sub.add_parser(
        "update",
        help="install a signed release side by side, switch, confirm or roll back (on the node)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--root", help="installation root (default: the config's update.root)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    install_ = actions.add_parser("install", help="verify a release directory, install it, switch to it")
    install_.add_argument("release", help="a directory made by `edge-node release build`")
    install_.add_argument("--rollback", action="store_true", help="allow an older version")
    install_.add_argument("--no-switch", action="store_true", help="install only")
    actions.add_parser("check", help="ExecStartPre: count a trial's starts, switch back after a crash loop")
    actions.add_parser("status", help="versions installed, current, good, on trial, last rollback")
    actions.add_parser("confirm", help="mark the version on trial good (the daemon does this itself)")
    rollback_ = actions.add_parser("rollback", help="switch back from the version on trial")
    rollback_.add_argument("--reason", default="asked for by hand")
    parser.set_defaults(func=cmd_update)


def cmd_update(args) -> int:
    from . import __version__
    from .config import load_config

    if args.action == "check" and args.root:  # no config needed: the unit's ExecStartPre
        return main(["check", args.root])
    config = load_config(args.config)
    root = Path(args.root) if args.root else config.update.root
    if args.action == "check":
        return main(["check", str(root)])
    if args.action == "status":
        print(json.dumps({"running": __version__, **status(root)}, indent=2))
        return 0
    if args.action == "confirm":
        version = current_version(root) or __version__
        print(f"{version} confirmed" if confirm(root, version) else f"{version} is not on trial")
        return 0
    if args.action == "rollback":
        back = roll_back(root, args.reason)
        print(f"switched back to {back}" if back else "no update on trial")
        return 0 if back else 1
    first = current_version(root) is None  # a node's first install under the root: no trial
    try:
        running = "0" if first else current_version(root)
        manifest = verify_release(
            Path(args.release), config.remote.trusted_keys, running, rollback=args.rollback
        )
        install(root, Path(args.release), manifest)
        if first and not args.no_switch:  # the technician is there: nothing to fall back to
            switch(root, manifest["version"])
            _write_json(root / STATE, {"good": manifest["version"]})
        elif not args.no_switch:
            begin_trial(root, manifest["version"], confirm_s=config.update.confirm_s)
    except UpdateRefused as err:
        print(f"edge-node update: refused: {err}", file=sys.stderr)
        return 1
    verb = (
        "installed"
        if args.no_switch
        else f"installed as the first version under {root} (good; point the unit at {root}/current)"
        if first
        else "installed and switched to (on trial: restart the service)"
    )
    print(f"{manifest['version']} {verb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
