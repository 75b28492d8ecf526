"""`edge-node keygen` and `edge-node remote`: the operator's side of remote management (issue 13).

    edge-node keygen --out ops.key          # prints ed25519:BASE64 for the nodes' [remote] trusted_keys
    edge-node remote --broker URL --key ops.key --nodes 'trs-*' [--stages 1,10%,100% --soak 60] \\
        set sensors.sds011.interval_s=120

Each targeted node gets its own signed envelope (`edge_node.signing`; the node checks it, see
`edge_node.remote`) on `{prefix}/{node}/cmd/{command}` and answers on `.../reply` with the
envelope's id. A change (`set`, `unset`, `rollback`) is answered twice: `applying`, then
`confirmed` (healthy on the new config) or `rolled_back` (the node went back by itself).

Stages: `--stages 1,10%,100%` changes one node first, then up to 10 % of the online targets,
then all of them; each stage must confirm and then stay online on the new config for `--soak`
seconds before the next starts. The first failure stops the rollout: the nodes changed so far
stay changed (say `rollback` to undo them), the rest are left untouched, and the report says
which is which.

Offline nodes: a node whose retained status says offline gets its envelope as a retained
message (only when every stage succeeded), so the broker hands it over when the node returns;
the node runs it once (its id is remembered) unless it has expired by then (`--valid`, default
one day). The report lists those nodes as `pending`. Only the newest command of each kind waits
for a node: a second `set` for an offline node replaces the first.

Exit status: 0 only when every targeted node confirmed; 1 otherwise; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import math
import re
import sys
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field

from edge_node.config import NODE_ID_PATTERN

from .fleet import add_broker_arguments

# answered twice: applying, then confirmed or rolled_back (update: switching between them)
CHANGES = ("set", "unset", "rollback", "rotate-password", "update")
MAX_MESSAGE_BYTES = 65_536
NODE_ID = re.compile(NODE_ID_PATTERN)
CONFIRM_MARGIN_S = 30.0  # beyond the node's confirm_s, for its restart and the network


# -- what the broker says about the nodes ------------------------------------------------------


class FleetWatch:
    """Statuses and replies as they arrive (paho's thread writes, the rollout reads)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.status: dict[str, dict] = {}
        self.replies: dict[str, list[dict]] = {}  # command id -> replies, for the ids we sent
        self.cond = threading.Condition()

    def topics(self) -> list[str]:
        return [f"{self.prefix}/+/status", f"{self.prefix}/+/cmd/+/reply"]

    def expect(self, command_id: str) -> None:
        with self.cond:
            self.replies.setdefault(command_id, [])

    def ingest(self, topic: str, payload: bytes, retained: bool) -> None:
        if not topic.startswith(self.prefix + "/") or len(payload) > MAX_MESSAGE_BYTES:
            return
        parts = topic[len(self.prefix) + 1 :].split("/")
        if not NODE_ID.fullmatch(parts[0]):
            return
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(data, dict):
            return
        with self.cond:
            if parts[1:] == ["status"]:
                self.status[parts[0]] = data
            elif len(parts) == 4 and parts[1] == "cmd" and parts[3] == "reply":
                got = self.replies.get(data.get("id"))  # only ours: a stranger's cannot grow this
                if got is not None and len(got) < 10:
                    got.append({**data, "_node": parts[0]})
            self.cond.notify_all()

    def wait(self, seconds: float) -> None:
        with self.cond:
            self.cond.wait(seconds)


# -- one node's command and its outcome ----------------------------------------------------------


@dataclass
class NodeRun:
    node: str
    stage: int | None
    command_id: str = ""
    result: str = "untouched"  # confirmed | ok | failed | pending | untouched
    detail: str = ""
    config_hash: str | None = None
    reply: dict | None = None
    deadline: float = 0.0
    soak_until: float | None = None
    replies: list = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.result in ("confirmed", "ok", "failed")

    def as_json(self) -> dict:
        return {
            "node": self.node,
            "stage": self.stage,
            "id": self.command_id or None,
            "result": self.result,
            "config_hash": self.config_hash,
            "detail": self.detail,
            "reply": self.reply,
        }


def envelope(command: str, args: dict, node: str, valid_s: float) -> dict:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "cmd": command,
        "args": args,
        "node": node,
        "id": uuid.uuid4().hex,
        "issued": now.isoformat(timespec="seconds"),
        "expires": (now + datetime.timedelta(seconds=valid_s)).isoformat(timespec="seconds"),
    }


def parse_assignment(text: str) -> tuple[str, object]:
    """`KEY=VALUE`: VALUE is read as a TOML value (5, 2.5, true, "x", [..], {..}), else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(
            f"{text!r}: expected KEY=VALUE (a dotted config key, e.g. sensors.bme280.interval_s=5)"
        )
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if isinstance(value, datetime.date | datetime.time):
        value = raw
    return key.strip(), value


def parse_stages(text: str | None) -> list[tuple[int, bool]]:
    """`1,10%,100%` -> [(1, False), (10, True), (100, True)]: counts or percentages, rising."""
    if not text:
        return [(100, True)]
    stages = []
    for part in text.split(","):
        part = part.strip()
        pct = part.endswith("%")
        try:
            value = int(part.removesuffix("%"))
        except ValueError:
            raise ValueError(f"--stages: {part!r} is not a count or a percentage (e.g. 1,10%,100%)") from None
        if value < 1 or (pct and value > 100):
            raise ValueError(f"--stages: {part!r} out of range")
        stages.append((value, pct))
    return stages


def stage_sizes(stages: list[tuple[int, bool]], total: int) -> list[int]:
    """Cumulative node counts per stage; the last stage always reaches every node."""
    sizes = []
    for value, pct in stages:
        count = math.ceil(total * value / 100) if pct else value
        count = min(total, max(count, sizes[-1] if sizes else 0))
        if not sizes or count > sizes[-1]:
            sizes.append(count)
    if not sizes or sizes[-1] < total:
        sizes.append(total)
    return [s for s in sizes if s > 0]


class Rollout:
    def __init__(
        self, args: argparse.Namespace, watch: FleetWatch, client, signer, command: str, cmd_args: dict, *,
        args_for=None,
    ):  # fmt: skip
        self.args, self.watch, self.client, self.signer = args, watch, client, signer
        self.command, self.cmd_args = command, cmd_args
        self.args_for = args_for  # node -> its own args (a secret sealed to each node's key)
        self.runs: dict[str, NodeRun] = {}
        self.stopped_at: str | None = None  # the node whose failure left later stages unstarted
        self.halted = False

    def send(self, run: NodeRun, *, retain: bool = False) -> None:
        cmd_args = self.args_for(run.node) if self.args_for else self.cmd_args
        doc = envelope(self.command, cmd_args, run.node, self.args.valid)
        run.command_id = doc["id"]
        self.watch.expect(doc["id"])
        sealed = json.dumps(self.signer.seal(doc)).encode()
        info = self.client.publish(
            f"{self.watch.prefix}/{run.node}/cmd/{self.command}", sealed, qos=1, retain=retain
        )
        info.wait_for_publish(10)
        run.deadline = time.monotonic() + self.args.timeout
        run.result = "pending" if retain else "sent"

    def update(self, run: NodeRun) -> None:
        """Move `run` on from what the node said since the last look."""
        with self.watch.cond:
            replies = list(self.watch.replies.get(run.command_id, []))
            status = dict(self.watch.status.get(run.node, {}))
        for reply in replies[len(run.replies) :]:
            run.replies.append(reply)
            run.reply = {k: v for k, v in reply.items() if k != "_node"}
            state = reply.get("state")
            run.config_hash = reply.get("config_hash", run.config_hash)
            if not reply.get("ok"):
                run.result, run.detail = "failed", str(reply.get("error") or _summary(run.reply))[:300]
                return
            if state == "applying":
                run.result = "applying"
                confirm_s = reply.get("confirm_s")
                if isinstance(confirm_s, int | float):
                    run.deadline = time.monotonic() + confirm_s + CONFIRM_MARGIN_S
            elif state in ("confirmed", "unchanged") or self.command not in CHANGES:
                if self.command in CHANGES and self.args.soak > 0 and run.soak_until is None:
                    run.result, run.soak_until = "soaking", time.monotonic() + self.args.soak
                elif run.soak_until is None:
                    run.result = "confirmed" if self.command in CHANGES else "ok"
                    run.detail = run.detail or _summary(run.reply)
        if run.result == "soaking":
            if status.get("state") != "online":
                run.result, run.detail = "failed", f"went {status.get('state', 'silent')} while soaking"
            elif run.config_hash and status.get("config_hash") not in (None, run.config_hash):
                run.result, run.detail = "failed", f"running {status.get('config_hash')} while soaking"
            elif time.monotonic() >= run.soak_until:
                run.result, run.detail = "confirmed", f"healthy for {self.args.soak:g} s"
            return
        if not run.finished and time.monotonic() > run.deadline:
            run.result, run.detail = "failed", f"no answer in time (last state: {run.result})"

    def run(self, online: list[str], offline: list[str], progress) -> None:
        sizes = stage_sizes(parse_stages(self.args.stages), len(online))
        done = 0
        for stage, size in enumerate(sizes, 1):
            batch = [NodeRun(node, stage) for node in online[done:size]]
            for run in batch:
                self.runs[run.node] = run
                self.send(run)
            while not all(r.finished for r in batch):
                self.watch.wait(0.2)
                for run in batch:
                    if not run.finished:
                        self.update(run)
                progress(stage, len(sizes), batch)
            failed = [r for r in batch if r.result == "failed"]
            if failed:
                self.halted = True
                if stage < len(sizes):
                    self.stopped_at = failed[0].node
                break
            done = size
        for node in online:
            self.runs.setdefault(node, NodeRun(node, None))
        for node in offline:
            run = self.runs.setdefault(node, NodeRun(node, None, detail="offline"))
            if not self.halted:
                self.send(run, retain=True)
                run.detail = "offline: the broker holds the command for it until it returns"

    def report(self) -> dict:
        runs = sorted(self.runs.values(), key=lambda r: (r.stage or 10**6, r.node))
        return {
            "command": self.command,
            "args": self.cmd_args,
            "stopped_at": self.stopped_at,
            "changed": [r.node for r in runs if r.result == "confirmed"] if self.command in CHANGES else [],
            "failed": [r.node for r in runs if r.result == "failed"],
            "pending": [r.node for r in runs if r.result == "pending"],
            "untouched": [r.node for r in runs if r.result == "untouched"],
            "never_seen": [r.node for r in runs if r.result == "never seen"],
            "nodes": [r.as_json() for r in runs],
            "ok": all(r.result in ("confirmed", "ok") for r in runs),
        }


def _printable(text: str) -> str:
    """A node's words as plain printable text (no escape sequences reach the terminal)."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:300]


def _summary(reply: dict | None) -> str:
    if not reply:
        return ""
    if "checks" in reply:
        failing = [
            f"{c['name']}: {c.get('detail', '')}" for c in reply["checks"] if c.get("result") != "PASS"
        ]
        return "; ".join(failing) or "all checks PASS"
    if "sensors" in reply and isinstance(reply["sensors"], dict):
        return ", ".join(f"{n} ({s.get('driver')}, {s.get('state')})" for n, s in reply["sensors"].items())
    if "config" in reply and isinstance(reply["config"], dict):
        layer = reply["config"].get("remote_layer") or {}
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in layer.items()) or "base only"
        if rolled := reply["config"].get("rolled_back"):
            text += f"; last change rolled back: {rolled.get('reason')}"
        return text
    return str(reply.get("state", ""))


# -- output ---------------------------------------------------------------------------------------


RESULT_STYLE = {
    "confirmed": "green",
    "ok": "green",
    "failed": "bold red",
    "pending": "yellow",
    "untouched": "dim",
}


def print_table(report: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"edge-node remote {report['command']}", title_justify="left")
    for column in ("node", "stage", "result", "config hash", "detail"):
        table.add_column(column)
    for n in report["nodes"]:  # Text, not markup: a detail comes from a node
        stage = str(n["stage"]) if n["stage"] else "-"
        cells = (n["node"], stage, n["result"], n["config_hash"] or "", _printable(n["detail"]))
        table.add_row(
            *(Text(c) for c in cells[:2]),
            Text(n["result"], style=RESULT_STYLE.get(n["result"], "")),
            *(Text(c) for c in cells[3:]),
        )
    console = Console(file=out, highlight=False)
    console.print(table)
    lines = []
    if report["stopped_at"]:
        lines.append(f"STOPPED: {report['stopped_at']} failed; no later stage was started.")
    for key, label in (
        ("changed", "changed"),
        ("failed", "failed (each kept or went back to its previous config)"),
        ("pending", "pending (offline, receive it when they return)"),
        ("untouched", "untouched"),
        ("never_seen", "never seen (in the inventory, never reported)"),
    ):
        if report[key]:
            lines.append(f"{label}: {', '.join(report[key])}")
    lines.append("ALL CONFIRMED" if report["ok"] else "NOT CONFIRMED everywhere")
    console.print("\n".join(lines), markup=False)


def progress_printer(err):
    """A status line while waiting (rich draws it live on a terminal, once per change elsewhere)."""
    from rich.console import Console

    console = Console(file=err, highlight=False)
    last: list[str] = [""]

    def show(stage: int, stages: int, batch: list[NodeRun]) -> None:
        counts: dict[str, int] = {}
        for run in batch:
            counts[run.result] = counts.get(run.result, 0) + 1
        line = f"stage {stage}/{stages}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        if line != last[0]:
            last[0] = line
            console.print(line, markup=False)

    return show


# -- CLI ------------------------------------------------------------------------------------------


def add_rollout_arguments(p) -> None:
    """The broker, key, targets and stages: `remote`'s, and `release publish`'s (issue 16)."""
    add_broker_arguments(p)
    p.add_argument(
        "--key", required=True, metavar="FILE", help="the operator's private key (edge-node keygen)"
    )
    p.add_argument("--nodes", required=True, metavar="GLOB", help="node ids to target, e.g. 'trs-*'")
    p.add_argument("--stages", metavar="LIST", help="e.g. 1,10%%,100%% (default: all at once)")
    p.add_argument(
        "--soak", type=float, default=0.0, metavar="S", help="healthy this long before the next stage"
    )
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="wait this long for a reply (30)")
    p.add_argument(
        "--valid", type=float, default=86400.0, metavar="S", help="envelopes expire after S (1 day)"
    )
    p.add_argument("--listen", type=float, default=2.0, metavar="S", help="seconds to learn the nodes (2)")
    p.add_argument(
        "--inventory",
        action="append",
        metavar="FILE",
        help="the nodes that should exist (operations.inventory): those never heard are reported",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def register(sub) -> None:
    keygen = sub.add_parser(
        "keygen",
        help="make an operator's Ed25519 key pair for signed remote commands",
        description="Writes the private key (PEM, mode 0600; never overwrites) and prints the public "
        "key as one line ed25519:BASE64 for the nodes' [remote] trusted_keys.",
    )
    keygen.add_argument("--out", required=True, metavar="FILE", help="where to write the private key")
    keygen.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "remote",
        help="signed commands to nodes: set/unset/show config, rollback, selftest, detect, restart",
        description=__doc__.split("\n\n")[2].replace("\n", " "),
    )
    add_rollout_arguments(p)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = actions.add_parser("set", help="set config keys: KEY=VALUE ... (VALUE as in TOML)")
    s.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    u = actions.add_parser("unset", help="drop keys from the remote layer (back to the base file's)")
    u.add_argument("keys", nargs="+", metavar="KEY")
    r = actions.add_parser(
        "rotate-password",
        help="a new broker password for each node, sealed to its key; kept only if the broker accepts it",
    )
    r.add_argument(
        "--secret-file", required=True, metavar="F", help="the new password (register it on the broker first)"
    )
    for name, text in (
        ("show", "the base, the remote layer and the running config hash"),
        ("rollback", "back to the technician's file (an empty remote layer)"),
        ("selftest", "each sensor, the buffer and the broker checked by the node"),
        ("detect", "the sensors the node runs and their state"),
        ("restart", "restart the node's pipeline (nothing is lost)"),
    ):
        actions.add_parser(name, help=text)
    p.set_defaults(func=cmd_remote)


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge_node.signing import generate_key

    try:
        public = generate_key(args.out)
    except FileExistsError:
        print(f"edge-node keygen: {args.out}: exists; not overwritten", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"edge-node keygen: {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(public)
    return 0


def _rotation(args, watch, client, signer, online, offline, progress, inventory) -> Rollout:
    """`show` to learn each online node's key, then the password sealed to each. An offline node
    is left for a later run: its key, and whether it still has the old password, are unknown.
    A node whose provisioning report is in the inventory must answer with the key it records:
    else something other than that node may be answering, and it is sent nothing."""
    with open(args.secret_file, encoding="utf-8") as f:
        secret = f.read().rstrip("\r\n")
    from edge_node.signing import encrypt_secret

    asking = Rollout(
        argparse.Namespace(**{**vars(args), "stages": None, "soak": 0}), watch, client, signer, "show", {}
    )
    asking.run(online, [], progress)
    keys = {n: r.reply.get("node_key") for n, r in asking.runs.items() if r.result == "ok" and r.reply}
    mismatched = {
        n: inventory[n].node_key
        for n, key in keys.items()
        if key and n in inventory and inventory[n].node_key not in (None, key)
    }
    for node in mismatched:
        del keys[node]
    rotation = Rollout(
        args, watch, client, signer, "rotate-password", {},
        args_for=lambda node: {"secret": encrypt_secret(keys[node], secret.encode())},
    )  # fmt: skip
    rotation.run([n for n in online if keys.get(n)], [], progress)
    for node, recorded in mismatched.items():
        rotation.runs[node] = NodeRun(
            node, None, result="failed",
            detail=f"its key differs from its provisioning report's ({recorded[:20]}...): nothing sent",
        )  # fmt: skip
    for node in online:
        if not keys.get(node) and node not in mismatched:
            detail = asking.runs[node].detail if node in asking.runs else ""
            rotation.runs[node] = NodeRun(node, None, result="failed", detail=f"its key is unknown: {detail}")
    for node in offline:
        rotation.runs[node] = NodeRun(node, None, detail="offline: rotate it when it is back")
    return rotation


def _command(args: argparse.Namespace) -> tuple[str, dict]:
    if args.action == "set":
        values = dict(parse_assignment(a) for a in args.assignments)
        return "set", {"values": values}
    if args.action == "unset":
        return "unset", {"keys": list(args.keys)}
    if args.action == "update":  # `edge-node release publish` (operations/release.py)
        return "update", args.update_args
    return args.action, {}


def cmd_remote(args: argparse.Namespace, *, out=None, err=None) -> int:
    from edge_node.signing import load_signer

    from .fleet import BrokerError, connect, read_password
    from .inventory import load_inventory

    out, err = out or sys.stdout, err or sys.stderr
    try:
        command, cmd_args = _command(args)
        if command == "rotate-password":
            with open(args.secret_file, encoding="utf-8") as f:
                if not f.read().strip():
                    raise ValueError(f"--secret-file {args.secret_file}: empty")
        parse_stages(args.stages)
        if min(args.soak, args.timeout, args.listen) < 0 or args.valid <= 0:
            raise ValueError("--soak, --timeout and --listen must be >= 0, --valid > 0")
        signer = load_signer(args.key)
        inventory = load_inventory(args.inventory or [])
    except (ValueError, OSError) as problem:
        print(f"edge-node remote: {problem}", file=err)
        return 2
    try:
        password = read_password(args)
    except OSError as problem:
        print(f"edge-node remote: cannot read --password-file: {problem}", file=err)
        return 2
    watch = FleetWatch(args.topic_prefix)
    try:
        client = connect(
            watch, args.broker, username=args.username, password=password, ca=args.ca, insecure=args.insecure
        )
    except ValueError as problem:
        print(f"edge-node remote: {problem}", file=err)
        return 2
    except BrokerError as problem:
        print(f"edge-node remote: {problem}", file=err)
        return 1
    try:
        time.sleep(args.listen)  # the retained statuses say who exists and who is online
        with watch.cond:
            known = dict(watch.status)
        targets = sorted(n for n in known if fnmatch.fnmatchcase(n, args.nodes))
        never_seen = sorted(n for n in inventory if n not in known and fnmatch.fnmatchcase(n, args.nodes))
        if not targets and not never_seen:
            print(f"edge-node remote: no node matching {args.nodes!r} has ever reported", file=err)
            return 1
        online = [n for n in targets if known[n].get("state") == "online"]
        offline = [n for n in targets if n not in online]
        if command == "rotate-password":
            rollout = _rotation(
                args, watch, client, signer, online, offline, progress_printer(err), inventory
            )
        else:
            rollout = Rollout(args, watch, client, signer, command, cmd_args)
            rollout.run(online, offline, progress_printer(err))
        for node in never_seen:
            where = inventory[node].where
            rollout.runs[node] = NodeRun(
                node, None, result="never seen", detail=f"never reported; it is at {where}"
            )
        for node, run in rollout.runs.items():
            if node in inventory and run.result in ("pending", "untouched") and node in offline:
                run.detail += f" (at {inventory[node].where})"
        report = rollout.report()
    finally:
        client.loop_stop()
        client.disconnect()
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        print_table(report, out)
    return 0 if report["ok"] else 1
