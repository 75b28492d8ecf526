"""`edge-node provision`: the technician's one command (DESIGN §6, issue 5).

In order, one progress line per check as it completes: detect the sensors (`detect.*`), write
the secrets (among them the node's X25519 key pair, made once and kept) and the config
(`config.written`), self-test each sensor (`selftest.*`), prove the
broker round-trip (`broker.*`), install and start the service (`install.*`); then the PASS/FAIL
report, also as JSON with `--report FILE`. The config is written after detect because it lists
the sensors detect found.

Rerunning it on a provisioned node is safe: the buffer and its seq (/var/lib/edge-node) are never
touched, a file is rewritten only when its content changed (the check says "unchanged"), the
settings provision does not manage ([buffer], [forward], [health], [simulation], a sensor's
interval or calibration) are carried over from the config already there, and the service is
restarted only if something changed. On hardware a running service is stopped for the sensor
checks (it holds the same pins and ports) and started again by the install step.

Under `--root DIR` every file is written below DIR as if DIR were `/` (`install.under_root`), while
the config names the node's real paths (/etc/edge-node/secret); the checks that read those files
use `config_view`, the one place that maps them into DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_node.broker_url import parse_broker_url, refuse_clear_password
from edge_node.config import NODE_ID_PATTERN, SECTIONS, Config, ConfigError, parse_config
from edge_node.signing import parse_public_key

from .install import (
    SERVICE,
    install,
    open_no_follow,
    put_file,
    service_ids,
    service_state,
    systemctl,
    systemd_running,
    under_root,
)
from .report import Check, Report, format_check

DEFAULT_CONFIG = Path("/etc/edge-node/config.toml")
ETC = Path("/etc/edge-node")
SECRET = ETC / "secret"
CA_FILE = ETC / "ca.pem"
CLIENT_CERT = ETC / "client.pem"
CLIENT_KEY = ETC / "client.key"
NODE_KEY = ETC / "node.key"  # the node's X25519 key pair: secrets sealed to it (rotate-password)
DEFAULT_BUFFER = SECTIONS["buffer"]["path"].default  # /var/lib/edge-node/buffer.db
DEFAULT_PREFIX = SECTIONS["broker"]["topic_prefix"].default
# Config keys holding the node's files: written as real paths, read under --root through config_view.
PATH_KEYS = (
    ("broker", "password_file"),
    ("broker", "client_cert"),
    ("broker", "client_key"),
    ("broker", "ca_file"),
    ("buffer", "path"),
    ("remote", "node_key"),
)
MANAGED_SECTIONS = ("node", "broker", "buffer", "sensors")  # everything else is carried over as it is

HEADER = """\
# edge-node configuration, written by `edge-node provision`.
# Rerunning provision rewrites [node], [broker] and the sensors it detects; other settings (buffer
# limits, [forward], [health], a sensor's interval_s or calibration) are kept. Every key is
# explained in config.sample.toml, shipped with edge-node.
"""


class UsageError(Exception):
    """Bad arguments: one line for the technician, exit status 2."""


# --- The --root mapping ------------------------------------------------------------------------


def config_view(config_path: Path, root: Path | None, *, text: str | None = None) -> Config:
    """The node's config (at its real path `config_path`) as the checks here must read it.

    Without a root it is simply loaded. Under `root` it is read from DIR/config_path and the
    absolute paths of its files (PATH_KEYS) are mapped the same way, so the broker check reads
    the staged secret; `config_hash` stays the hash of the file's own bytes. `text`: validate
    this content instead of the file's (before writing it).
    """
    staged = under_root(config_path, root)
    if text is None:
        try:
            data = staged.read_bytes()
        except OSError as err:
            raise ConfigError(str(staged), None, f"cannot read: {err.strerror or err}") from err
        text = data.decode("utf-8", errors="replace")
    else:
        data = text.encode("utf-8")
    if root is None:
        config = parse_config(text, source=str(staged), base_dir=staged.parent)
        return dataclasses.replace(config, config_hash=_hash(data))
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(staged), None, f"invalid TOML: {err}") from err
    if isinstance(document.get("buffer", {}), dict):
        document.setdefault("buffer", {}).setdefault("path", DEFAULT_BUFFER)
    for section, key in PATH_KEYS:
        table = document.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            table[key] = str(under_root(table[key], root))
    config = parse_config(dumps_toml(document), source=str(staged), base_dir=staged.parent)
    return dataclasses.replace(config, config_hash=_hash(data))


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]  # as edge_node.config computes config_hash


@contextmanager
def scratch_state(config: Config) -> Iterator[Config]:
    """`config` with its buffer in a scratch directory, for the self-test: drivers keep their
    state (laser hours, rain totals) beside the buffer, and the node's /var/lib/edge-node belongs
    to the daemon alone (provision never touches the buffer, its seq or its state files)."""
    with tempfile.TemporaryDirectory(prefix="edge-node-selftest-") as tmp:
        buffer = dataclasses.replace(config.buffer, path=Path(tmp) / "buffer.db")
        yield dataclasses.replace(config, buffer=buffer)


# --- TOML out ----------------------------------------------------------------------------------


def dumps_toml(document: dict[str, Any]) -> str:
    """A config document as TOML: one table per section, `[sensors.NAME]` per sensor, nested
    tables inline. Round-trips whatever `tomllib` read from a config."""
    out = [f"{_key(k)} = {_value(v, k)}" for k, v in document.items() if not isinstance(v, dict)]
    for name, section in document.items():
        if not isinstance(section, dict):
            continue
        subtables = {k: v for k, v in section.items() if isinstance(v, dict)} if name == "sensors" else {}
        plain = {k: v for k, v in section.items() if k not in subtables}
        if plain or not subtables:
            out += ["", f"[{_key(name)}]", *(f"{_key(k)} = {_value(v, k)}" for k, v in plain.items())]
        for sub, table in subtables.items():
            out += [
                "",
                f"[{_key(name)}.{_key(sub)}]",
                *(f"{_key(k)} = {_value(v, k)}" for k, v in table.items()),
            ]
    return "\n".join(out).lstrip("\n") + "\n"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any, key: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:02x}" if key == "address" and value >= 0 else str(value)  # as datasheets write it
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v, k)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


# --- Arguments ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Validated arguments: what provision will write."""

    node_id: str
    site: str
    location: dict[str, float] | None
    broker_url: str
    username: str | None
    secrets: dict[Path, tuple[bytes, int]]  # real path on the node -> (content, mode)
    topic_prefix: str
    config_path: Path  # real path on the node
    root: Path | None
    simulate: bool
    report_path: Path | None
    yes: bool
    insecure: bool = False  # a password over mqtt://, said so with --insecure
    trusted_keys: tuple[str, ...] = ()  # operators' public keys: [remote] trusted_keys (issue 13)


def _read_source(option: str, path: str, *, marker: str | None = None, one_line: bool = False) -> bytes:
    """A file the technician gave; never echoes its content."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise UsageError(f"{option}: {path} is a directory") from None
    except OSError as err:
        raise UsageError(f"{option}: cannot read {path}: {err.strerror or err}") from None
    if not data.strip():
        raise UsageError(f"{option}: {path} is empty")
    if marker is not None and marker.encode() not in data:
        raise UsageError(f"{option}: {path} has no {marker!r} (is it the right file?)")
    if one_line and b"\n" in data.rstrip(b"\r\n"):
        raise UsageError(f"{option}: {path} must hold one line, the password")
    return data


def _check_url(url: str) -> bool:
    """Whether the URL is TLS; UsageError when it is not a usable broker URL."""
    try:
        return parse_broker_url(url, credentials_hint="--username and --password-file").tls
    except ValueError as err:
        raise UsageError(f"--broker: {err}") from None


def validate(args: argparse.Namespace) -> Plan:
    """Every argument checked before anything is touched; the first problem as a UsageError."""
    if not re.fullmatch(NODE_ID_PATTERN, args.node_id):
        raise UsageError(f"--node-id: must match {NODE_ID_PATTERN} (got {args.node_id!r})")
    if not args.site.strip():
        raise UsageError("--site: must not be empty")
    location = None
    if (args.lat is None) != (args.lon is None):
        raise UsageError("--lat and --lon go together")
    if args.lat is not None:
        for option, value, limit in (("--lat", args.lat, 90), ("--lon", args.lon, 180)):
            if not math.isfinite(value) or not -limit <= value <= limit:
                raise UsageError(f"{option}: must be within -{limit}..{limit} (got {value})")
        location = {"lat": args.lat, "lon": args.lon}
    tls = _check_url(args.broker)

    by_password = args.username is not None or args.password_file is not None
    by_cert = args.client_cert is not None or args.client_key is not None
    if by_password and by_cert:
        raise UsageError(
            "give either --username and --password-file or --client-cert and --client-key, not both"
        )
    if not by_password and not by_cert:
        raise UsageError(
            "credentials needed: --username U --password-file F, or --client-cert F --client-key F"
        )
    secrets: dict[Path, tuple[bytes, int]] = {}
    if by_password:
        if args.username is None or args.password_file is None:
            raise UsageError("--username and --password-file go together")
        if not args.username.strip():
            raise UsageError("--username: must not be empty")
        try:
            refuse_clear_password(tls, True, insecure=getattr(args, "insecure", False))
        except ValueError as err:
            raise UsageError(f"--broker: {err}") from None
        secrets[SECRET] = (_read_source("--password-file", args.password_file, one_line=True), 0o600)
    else:
        if args.client_cert is None or args.client_key is None:
            raise UsageError("--client-cert and --client-key go together")
        if not tls:
            raise UsageError("--client-cert needs TLS: use an mqtts:// --broker")
        secrets[CLIENT_CERT] = (_read_source("--client-cert", args.client_cert, marker="CERTIFICATE"), 0o644)
        secrets[CLIENT_KEY] = (_read_source("--client-key", args.client_key, marker="PRIVATE KEY"), 0o600)
    if args.ca is not None:
        if not tls:
            raise UsageError("--ca needs TLS: use an mqtts:// --broker")
        secrets[CA_FILE] = (_read_source("--ca", args.ca, marker="BEGIN CERTIFICATE"), 0o644)

    prefix = args.topic_prefix if args.topic_prefix is not None else DEFAULT_PREFIX
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise UsageError(f"--topic-prefix: no empty levels, no leading or trailing '/' (got {prefix!r})")
    if "+" in prefix or "#" in prefix:
        raise UsageError(f"--topic-prefix: must not contain the MQTT wildcards '+' or '#' (got {prefix!r})")

    root = Path(os.path.abspath(args.root)) if args.root is not None else None
    if root is not None and root.exists() and not root.is_dir():
        raise UsageError(f"--root: {args.root} is not a directory")
    if root is None and os.geteuid() != 0:
        raise UsageError("must run as root to provision this machine (or stage it with --root DIR)")
    report_path = Path(args.report) if args.report is not None else None
    if report_path is not None and not report_path.absolute().parent.is_dir():
        raise UsageError(f"--report: no directory {report_path.absolute().parent}")
    trusted_keys = tuple(getattr(args, "trusted_key", None) or ())
    for key in trusted_keys:
        try:
            parse_public_key(key)
        except ValueError as err:
            raise UsageError(f"--trusted-key: {err}") from None
    return Plan(
        trusted_keys=trusted_keys,
        node_id=args.node_id,
        site=args.site,
        location=location,
        broker_url=args.broker,
        username=args.username,
        secrets=secrets,
        topic_prefix=prefix,
        config_path=Path(os.path.abspath(args.config)),
        root=root,
        simulate=args.simulate,
        report_path=report_path,
        yes=args.yes,
        insecure=by_password and not tls,
    )


# --- The config --------------------------------------------------------------------------------


def _read_existing(path: Path) -> dict[str, Any] | None:
    """The config already on the node, as a TOML document; None if there is none (or unreadable)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def config_document(plan: Plan, sensors: dict[str, dict], existing: dict[str, Any] | None) -> dict[str, Any]:
    """The config provision writes: identity, broker and sensors from this run, the rest kept."""
    existing = existing or {}
    node: dict[str, Any] = {"id": plan.node_id, "site": plan.site}
    if plan.location is not None:
        node["location"] = dict(plan.location)
    broker: dict[str, Any] = {"url": plan.broker_url}
    if plan.username is not None:
        broker["username"] = plan.username
        broker["password_file"] = str(SECRET)
        if plan.insecure:
            broker["allow_insecure"] = True
    else:
        broker["client_cert"] = str(CLIENT_CERT)
        broker["client_key"] = str(CLIENT_KEY)
    if CA_FILE in plan.secrets:
        broker["ca_file"] = str(CA_FILE)
    broker["topic_prefix"] = plan.topic_prefix
    old_broker = existing.get("broker") if isinstance(existing.get("broker"), dict) else {}
    if "keepalive_s" in old_broker:
        broker["keepalive_s"] = old_broker["keepalive_s"]
    old_buffer = existing.get("buffer") if isinstance(existing.get("buffer"), dict) else {}
    buffer = {"path": DEFAULT_BUFFER, **old_buffer}  # an existing buffer stays where it is
    old_sensors = existing.get("sensors") if isinstance(existing.get("sensors"), dict) else {}
    merged = {}
    for name, table in sensors.items():
        merged[name] = dict(table)
        old = old_sensors.get(name)
        if isinstance(old, dict) and old.get("driver") == table.get("driver"):
            for key, value in old.items():  # interval_s, calibration, duty, ... as the node had them
                merged[name].setdefault(key, value)
    document: dict[str, Any] = {"node": node, "broker": broker, "buffer": buffer}
    for name, value in existing.items():
        if name not in MANAGED_SECTIONS:
            document[name] = value
    old_remote = existing.get("remote") if isinstance(existing.get("remote"), dict) else {}
    document["remote"] = {**old_remote, "node_key": str(NODE_KEY)}
    if plan.trusted_keys:  # the operators who may change this node remotely (edge_node.remote)
        document["remote"]["trusted_keys"] = list(plan.trusted_keys)
    document["sensors"] = merged
    return document


def write_config(plan: Plan, sensors: dict[str, dict], report: Report) -> tuple[Config | None, bool]:
    """The secrets and the config, each written only if it changed (`config.written`).

    Returns the config as the checks read it (None when it could not be written) and whether
    anything changed (so the service must restart).
    """
    written: Config | None = None
    changed = False
    with report.step("config.written") as outcome:
        ids = service_ids()
        secret_owner = ids
        config_owner = (0, ids[1]) if ids else None
        states: dict[str, str] = {}
        etc = under_root(ETC, plan.root)
        if not etc.exists():
            etc.mkdir(mode=0o750, parents=True)
            if config_owner is not None:
                os.chown(etc, *config_owner)
        for path, (data, mode) in plan.secrets.items():
            owner = secret_owner if mode == 0o600 else None
            states[str(path)] = put_file(under_root(path, plan.root), data, mode, owner)
        states[str(NODE_KEY)], report.node_key = _node_key(under_root(NODE_KEY, plan.root), secret_owner)
        staged = under_root(plan.config_path, plan.root)
        text = HEADER + "\n" + dumps_toml(config_document(plan, sensors, _read_existing(staged)))
        view = config_view(plan.config_path, plan.root, text=text)  # invalid: not written, FAIL
        staged.parent.mkdir(parents=True, exist_ok=True)
        states[str(plan.config_path)] = put_file(staged, text.encode("utf-8"), 0o640, config_owner)
        report.config_hash = view.config_hash
        changed = any(state == "written" for state in states.values())
        parts = [f"{Path(path).name} {state}" for path, state in states.items()]
        where = f"{staged.parent}" if plan.root is not None else f"{plan.config_path.parent}"
        outcome.update(
            passed=True,
            detail=f"{where}: {', '.join(parts)}; config hash {view.config_hash}"
            + ("" if changed else " (unchanged)"),
            measured={"config_hash": view.config_hash, "files": states},
        )
        written = view
    return written, changed


def _node_key(path: Path, owner: tuple[int, int] | None) -> tuple[str, str]:
    """The node's key pair for secrets sent to it: kept if there is one (a rerun; operators may
    hold its public key), made otherwise; 0600, owned like the password. (state, public key)"""
    from edge_node.signing import new_node_key, node_public_key

    try:
        with os.fdopen(open_no_follow(path), "rb") as file:
            pem = file.read(65536)
    except FileNotFoundError:
        pem = new_node_key()
    try:
        public = node_public_key(pem)
    except ValueError as err:
        raise ValueError(f"{path}: {err}; move it away to have a new one made") from None
    return put_file(path, pem, 0o600, owner), public


# --- The command -------------------------------------------------------------------------------


def _confirm_identity(plan: Plan, existing: dict[str, Any] | None, ask: Callable[[str], str] | None) -> None:
    """Re-provisioning a node under another id needs --yes (or a yes at the terminal)."""
    old = (existing or {}).get("node", {})
    old_id = old.get("id") if isinstance(old, dict) else None
    if old_id is None or old_id == plan.node_id or plan.yes:
        return
    question = f"{plan.config_path} belongs to node {old_id}; re-provision it as {plan.node_id}? [y/N] "
    if ask is not None and ask(question).strip().lower() in ("y", "yes"):
        return
    raise UsageError(
        f"{plan.config_path} belongs to node {old_id}; rerun with --yes to make it {plan.node_id}"
    )


def _pause_service(plan: Plan, show: Callable[[str], None]) -> bool:
    """On hardware, a running service holds the pins and ports detect and selftest need:
    stop it (the install step starts it again). Returns whether it was stopped."""
    if plan.root is not None or plan.simulate or not systemd_running():
        return False
    if service_state() != "active":
        return False
    systemctl("stop", SERVICE)
    show(f"{SERVICE} stopped for the sensor checks; the install step starts it again")
    return True


def _call(report: Report, name: str, step: Callable[[], Any], default: Any = None) -> Any:
    """Run a step that adds its own checks; if it cannot run at all, one FAIL check says why."""
    try:
        return step()
    except Exception as err:
        report.add(Check(name, "FAIL", f"{type(err).__name__}: {err}"))
        return default


def provision(
    args: argparse.Namespace,
    *,
    show: Callable[[str], None] | None = None,
    ask: Callable[[str], str] | None = None,
    detect_options: dict[str, Any] | None = None,
    selftest_options: dict[str, Any] | None = None,
) -> int:
    """The whole command; returns the exit status. Raises UsageError (exit 2) for bad arguments.

    `detect_options` / `selftest_options` are passed on to those steps (the tests use them to
    simulate a missing sensor, or to read faster).
    """
    show = show or (lambda line: print(line, flush=True))
    if ask is None and sys.stdin.isatty():
        ask = input
    plan = validate(args)
    existing = _read_existing(under_root(plan.config_path, plan.root))
    _confirm_identity(plan, existing, ask)

    report = Report(node=plan.node_id, config_hash="", show=show)
    where = f" under {plan.root}" if plan.root is not None else ""
    show(f"provisioning node {plan.node_id}{where}" + (" (simulated sensors)" if plan.simulate else ""))
    paused = _pause_service(plan, show)

    def detect() -> dict[str, dict]:
        from .detect import detect

        return detect(report, **{"simulate": plan.simulate, **(detect_options or {})})

    def selftest() -> None:
        from .selftest import selftest

        with scratch_state(config) as scratch:
            selftest(scratch, report, **(selftest_options or {}))

    def check_broker() -> None:
        from .broker_check import check_broker

        check_broker(config, report)

    sensors = _call(report, "detect", detect, {})
    config, changed = write_config(plan, sensors or {}, report)
    if config is None:
        for name in ("selftest", "broker", "install"):
            report.add(Check(name, "FAIL", "skipped: no valid config"))
        if paused:  # no new config: the node goes back to what it was doing
            systemctl("start", SERVICE)
            show(f"{SERVICE} started again")
    else:
        _call(report, "selftest", selftest)
        _call(report, "broker", check_broker)
        _call(
            report,
            "install",
            lambda: install(config, report, root=plan.root, config_path=plan.config_path, changed=changed),
        )

    show("")
    show(report.summary())
    for check in report.checks:
        show("  " + format_check(check))
    if plan.report_path is not None:
        try:
            report.write(plan.report_path)
        except OSError as err:
            print(f"edge-node provision: --report: {err.strerror or err}", file=sys.stderr)
            return 1
        show(f"report written to {plan.report_path}")
    return 0 if report.result == "PASS" else 1
