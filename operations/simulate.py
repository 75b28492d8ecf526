"""`edge-node simulate`: a fleet of simulated nodes in one process (DESIGN §6, issue 6 point 3).

Each node is a real `Daemon` (the production code path) with its own config: node id
`{node_prefix}-{i:03d}`, its own seeded simulation, its own buffer under the work dir and its own
MQTT connection. All of them share one event loop. Faults are injected per node as that node's
`[[simulation.faults]]` (`--fault`, `--scenario`); `--offline PCT` points a share of the nodes at
a port nobody listens on, so they buffer as nodes in a dead zone would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import logging
import random
import signal
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from city import terrassa
from edge_node.broker_url import parse_broker_url, refuse_clear_password
from edge_node.config import Config, ConfigError, parse_config
from sensors import components
from sensors.schema import REQUIRED

from . import history
from .mosquitto import free_port

log = logging.getLogger("edge_node.simulate")

DEFAULT_SENSORS = ("bme280", "host")
NODE_CONFIG = "config.toml"  # each node's, beside its buffer


def _simulated_tables() -> dict[str, str]:
    """Sensor name -> its config table on its simulated bus, for every component that needs
    nothing more (a pulse input needs its pin: no GPIO here)."""
    return {
        c.name: f'driver = "{c.driver}"\n{c.bus} = "sim"'
        for c in components().values()
        if all(key.default is not REQUIRED for key in c.options.values())
    }


SENSOR_BLOCKS = _simulated_tables()

# The node a log line comes from: each node's task runs in its own context (and so do the
# threads its samplers use, asyncio.to_thread copies it).
current_node: contextvars.ContextVar[str] = contextvars.ContextVar("edge_node_sim_node", default="-")


class _NodeFilter(logging.Filter):
    """Stamps each record with its node; a dead-zone node's refused connects are said once."""

    def __init__(self, quiet_nodes: set[str] = frozenset()):
        super().__init__()
        self.quiet_nodes = quiet_nodes
        self._said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = node = current_node.get()
        if (
            node in self.quiet_nodes
            and record.name == "edge_node.forwarder"
            and record.levelno < logging.ERROR
        ):
            if node in self._said:
                return False
            self._said.add(node)
            record.msg = str(record.msg) + " (a dead-zone node: said once)"
        return True


def _q(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's for what we write)."""
    return json.dumps(str(value))


@dataclass
class NodeSpec:
    index: int
    node_id: str
    seed: int
    broker_url: str
    offline: bool = False
    faults: list[dict] = field(default_factory=list)


@dataclass
class FleetOptions:
    nodes: int
    broker_url: str
    prefix: str = "city/terrassa/nodes"
    node_prefix: str = "sim"
    seed: int = 42
    interval_s: float = 10.0
    heartbeat_s: float = 60.0
    backfill_rate: float = 500.0  # readings/s each node drains its backlog at; 0 = no cap
    sensors: tuple[str, ...] = DEFAULT_SENSORS
    faults: tuple[str, ...] = ()  # "NODE:SENSOR=FAULT"
    offline_pct: float = 0.0
    scenario: Path | None = None
    stagger_s: float = 2.0
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False  # a password over mqtt:// accepted (broker.allow_insecure)
    history_h: float = 0.0  # hours of past readings put in each buffer before it starts
    place: bool = True  # each node on one of Terrassa's streets (city.terrassa), else no location
    street_offset: int = 0  # a second fleet beside a first of this many nodes takes the next spots
    trusted_keys: tuple[str, ...] = ()  # operators' keys: the nodes take signed remote commands
    confirm_s: float = 120.0


def node_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:03d}"


def parse_fault(text: str) -> tuple[str, dict]:
    """`NODE:SENSOR=FAULT` -> (node, {"sensor", "fault", "at_s": 0}); NODE is an id or a number."""
    node, sep, rest = text.partition(":")
    sensor, sep2, fault = rest.partition("=")
    if not (sep and sep2 and node and sensor and fault):
        raise ConfigError("--fault", None, f"expected NODE:SENSOR=FAULT (got {text!r})")
    return node.strip(), {"sensor": sensor.strip(), "fault": fault.strip(), "at_s": 0.0}


def parse_offline(text: str) -> float:
    """`10%` or `10` -> 10.0 (percent of the nodes)."""
    try:
        pct = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 10% (got {text!r})") from None
    if not 0 <= pct <= 100:
        raise argparse.ArgumentTypeError(f"must be 0..100% (got {text!r})")
    return pct


def load_scenario(path: Path) -> list[tuple[str, dict]]:
    """A TOML file of `[[fault]]` tables: node, sensor, fault, at_s (default 0), for_s (optional)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(str(path), None, str(err)) from None
    unknown = set(data) - {"fault"}
    if unknown:
        raise ConfigError(str(path), sorted(unknown)[0], "unknown table (only [[fault]] entries)")
    out = []
    for i, entry in enumerate(data.get("fault", [])):
        key = f"fault.{i}"
        if not isinstance(entry, dict):
            raise ConfigError(str(path), key, "must be a table")
        extra = set(entry) - {"node", "sensor", "fault", "at_s", "for_s"}
        if extra:
            raise ConfigError(str(path), f"{key}.{sorted(extra)[0]}", "unknown key")
        for name in ("node", "sensor", "fault"):
            if not isinstance(entry.get(name), str | int) or isinstance(entry.get(name), bool):
                raise ConfigError(str(path), f"{key}.{name}", "required")
        fault = {"sensor": str(entry["sensor"]), "fault": str(entry["fault"]), "at_s": entry.get("at_s", 0)}
        if "for_s" in entry:
            fault["for_s"] = entry["for_s"]
        out.append((str(entry["node"]), fault))
    return out


def plan_fleet(opts: FleetOptions) -> list[NodeSpec]:
    """Who is who: ids, seeds, which nodes are offline and which faults each carries."""
    if opts.nodes < 1:
        raise ConfigError("--nodes", None, "must be at least 1")
    specs = [
        NodeSpec(i, node_id(opts.node_prefix, i), opts.seed + i, opts.broker_url)
        for i in range(1, opts.nodes + 1)
    ]
    by_name = {s.node_id: s for s in specs}
    wanted = [parse_fault(f) for f in opts.faults]
    if opts.scenario is not None:
        wanted += load_scenario(opts.scenario)
    for node, fault in wanted:
        spec = by_name.get(node)
        if spec is None and node.isdigit() and 1 <= int(node) <= opts.nodes:
            spec = specs[int(node) - 1]
        if spec is None:
            raise ConfigError("--fault", None, f"no node {node!r} in this fleet ({specs[0].node_id}..)")
        spec.faults.append(fault)
    n_offline = round(opts.nodes * opts.offline_pct / 100)
    if n_offline:
        dead = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there: refused, as in a dead zone
        for spec in random.Random(opts.seed).sample(specs, n_offline):
            spec.offline, spec.broker_url = True, dead
    return specs


def node_config_text(spec: NodeSpec, opts: FleetOptions, buffer: Path) -> str:
    site = f"simulated fleet node {spec.index}"
    location = []
    if opts.place:
        lat, lon, site = terrassa.placement(opts.street_offset + spec.index - 1)
        location = [f"location = {{ lat = {lat}, lon = {lon} }}"]
    lines = [
        "[node]",
        f"id = {_q(spec.node_id)}",
        f"site = {_q(site)}",
        *location,
        "",
        "[broker]",
        f"url = {_q(spec.broker_url)}",
        f"topic_prefix = {_q(opts.prefix)}",
        "keepalive_s = 30",
    ]
    if opts.username:
        lines.append(f"username = {_q(opts.username)}")
    if opts.password_file:
        lines.append(f"password_file = {_q(Path(opts.password_file).resolve())}")
    if opts.insecure:
        lines.append("allow_insecure = true")
    if opts.ca_file:
        lines.append(f"ca_file = {_q(Path(opts.ca_file).resolve())}")
    lines += [
        "",
        "[buffer]",
        f"path = {_q(buffer)}",
        "sync_interval_s = 5",
        "",
        "[forward]",
        "reconnect_max_s = 10",
        f"backfill_rate = {float(opts.backfill_rate)}",
        "",
        "[health]",
        f"heartbeat_s = {float(opts.heartbeat_s)}",
        "",
        "[simulation]",
        f"seed = {spec.seed}",
    ]
    for fault in spec.faults:
        lines += [
            "",
            "[[simulation.faults]]",
            f"sensor = {_q(fault['sensor'])}",
            f"fault = {_q(fault['fault'])}",
        ]
        lines.append(f"at_s = {float(fault.get('at_s', 0))}")
        if fault.get("for_s") is not None:
            lines.append(f"for_s = {float(fault['for_s'])}")
    for name in opts.sensors:
        lines += ["", f"[sensors.{name}]", SENSOR_BLOCKS[name], f"interval_s = {float(opts.interval_s)}"]
    if opts.trusted_keys:
        keys = ", ".join(_q(k) for k in opts.trusted_keys)
        lines += ["", "[remote]", f"trusted_keys = [{keys}]", f"confirm_s = {float(opts.confirm_s)}"]
    return "\n".join(lines) + "\n"


def build_configs(opts: FleetOptions, workdir: Path) -> list[tuple[NodeSpec, Config]]:
    """Every node's Config, parsed and validated as `edge-node run` would parse its file."""
    unknown = [s for s in opts.sensors if s not in SENSOR_BLOCKS]
    if unknown:
        raise ConfigError("--sensors", None, f"unknown {unknown[0]!r} (known: {', '.join(SENSOR_BLOCKS)})")
    driver_of = {c.name: c.driver for c in components().values()}
    out = []
    for spec in plan_fleet(opts):
        base = workdir / spec.node_id
        base.mkdir(parents=True, exist_ok=True)
        text = node_config_text(spec, opts, base / "buffer.db")
        (base / NODE_CONFIG).write_text(text)  # what a remote-managed node reads (edge_node.remote)
        out.append((spec, parse_config(text, source=f"{spec.node_id}.toml", base_dir=base)))
        if opts.history_h > 0 and not (base / "buffer.db").exists():
            end = time.time()
            fog = any(f["fault"] == "fog" and f.get("at_s", 0) == 0 for f in spec.faults)
            drivers = {name: driver_of[name] for name in opts.sensors}
            past = history.node_history(
                spec.seed, drivers, opts.interval_s, end - opts.history_h * 3600, end, fog=fog
            )
            history.prefill(base / "buffer.db", past)
    return out


class Fleet:
    """N Daemons on one loop, started staggered, stopped together by one event."""

    def __init__(self, configs: list[tuple[NodeSpec, Config]], *, stagger_s: float = 2.0):
        from edge_node.daemon import Daemon
        from edge_node.remote import NodeRemote
        from edge_node.sensors import check_faults

        self.specs = [s for s, _ in configs]
        # A node that trusts an operator's key runs as `edge-node run` does, under NodeRemote.
        self.nodes = [
            NodeRemote(c.buffer.path.parent / NODE_CONFIG) if c.remote.trusted_keys else Daemon(c)
            for _, c in configs
        ]
        for _, c in configs:
            check_faults(c)  # now, for the remote-managed ones too (Daemon() checks the others)
        self.stagger_s = stagger_s
        self.failed: dict[str, BaseException] = {}
        self.finished: set[str] = set()
        self._last: dict[int, tuple[int, int]] = {}  # daemon index -> (stored, backlog) last seen

    async def _node(self, spec: NodeSpec, daemon, stop: asyncio.Event, delay: float) -> None:
        current_node.set(spec.node_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            self.finished.add(spec.node_id)
            return
        try:
            await daemon.run(stop)
        except Exception as err:  # one node's failure must not take the fleet down
            log.error("node %s failed: %s", spec.node_id, err, exc_info=err)
            self.failed[spec.node_id] = err
        finally:
            self.finished.add(spec.node_id)

    @property
    def daemons(self) -> list:
        """Each node's running Daemon (a remote-managed node's current one; None before it starts)."""
        return [getattr(n, "daemon", n) for n in self.nodes]

    async def run(self, stop: asyncio.Event) -> None:
        n = len(self.nodes)
        async with asyncio.TaskGroup() as tg:
            for i, (spec, daemon) in enumerate(zip(self.specs, self.nodes, strict=True)):
                delay = self.stagger_s * i / n if n > 1 else 0.0
                tg.create_task(self._node(spec, daemon, stop, delay), name=f"node:{spec.node_id}")

    def totals(self) -> dict:
        connected = running = 0
        for i, d in enumerate(self.daemons):
            fwd = getattr(d, "forwarder", None)
            if fwd is None:  # not started yet
                continue
            if d.store._db is not None:  # else stopped: its figures as it closed the buffer
                running += 1
                connected += fwd.connected
            with contextlib.suppress(Exception):
                self._last[i] = (d.store.next_seq - 1, d.store.backlog)
        stored = sum(v[0] for v in self._last.values())
        backlog = sum(v[1] for v in self._last.values())
        return {
            "nodes": len(self.daemons),
            "running": running,
            "connected": connected,
            "offline_planned": sum(s.offline for s in self.specs),
            "stored": stored,
            "sent": stored - backlog,
            "backlog": backlog,
            "failed": len(self.failed),
        }


def _line(t: dict, elapsed: float) -> str:
    return (
        f"[{elapsed:6.0f}s] nodes {t['running']}/{t['nodes']} running, {t['connected']} connected"
        f" ({t['offline_planned']} in a dead zone); readings stored {t['stored']}, sent {t['sent']},"
        f" backlog {t['backlog']}" + (f"; FAILED {t['failed']}" if t["failed"] else "")
    )


async def run_fleet(
    fleet: Fleet, *, seconds: float | None = None, stop: asyncio.Event | None = None, report_s: float = 1.0
) -> dict:
    """Run until `stop` (Ctrl-C, SIGTERM) or `seconds`; print totals to stderr every `report_s`."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()

    async def reporter() -> None:
        while report_s > 0 and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), report_s)
            if not stop.is_set():
                print(_line(fleet.totals(), time.monotonic() - started), file=sys.stderr, flush=True)

    async def timer() -> None:
        if seconds is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            stop.set()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(reporter())
            tg.create_task(timer())
            tg.create_task(fleet.run(stop))
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return fleet.totals()


def run_simulate(args: argparse.Namespace) -> int:
    try:
        address = parse_broker_url(args.broker)
        refuse_clear_password(address.tls, args.password_file is not None, insecure=args.insecure)
    except ValueError as err:
        print(f"edge-node simulate: --broker: {err}", file=sys.stderr)
        return 2
    level = logging.INFO if args.verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    node_filter = _NodeFilter()
    handler.addFilter(node_filter)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    opts = FleetOptions(
        nodes=args.nodes,
        broker_url=args.broker,
        prefix=args.prefix,
        node_prefix=args.node_prefix,
        seed=args.seed,
        interval_s=args.interval,
        heartbeat_s=args.heartbeat,
        backfill_rate=args.backfill_rate,
        sensors=tuple(s.strip() for s in args.sensors.split(",") if s.strip()),
        faults=tuple(args.fault or ()),
        offline_pct=args.offline,
        scenario=args.scenario,
        stagger_s=args.stagger,
        username=args.username,
        password_file=args.password_file,
        ca_file=args.ca,
        insecure=args.insecure,
        history_h=args.history,
        place=not args.no_location,
        street_offset=args.street_offset,
        trusted_keys=tuple(args.trusted_key or ()),
        confirm_s=args.confirm,
    )
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-node-sim-")))
        try:
            configs = build_configs(opts, workdir)
            fleet = Fleet(configs, stagger_s=opts.stagger_s)
        except ConfigError as err:
            print(f"edge-node simulate: {err}", file=sys.stderr)
            return 2
        if args.inventory_out:  # what the city provisioned, dead-zone nodes included
            from .inventory import InventoryNode, write_inventory

            write_inventory(
                args.inventory_out,
                [InventoryNode(c.node.id, c.node.site, c.node.lat, c.node.lon) for _, c in configs],
            )
        offline = [s.node_id for s in fleet.specs if s.offline]
        if not args.verbose:
            node_filter.quiet_nodes = set(offline)
        faulty = {s.node_id: s.faults for s in fleet.specs if s.faults}
        print(
            f"simulating {opts.nodes} nodes ({fleet.specs[0].node_id}..{fleet.specs[-1].node_id}) -> "
            f"{opts.broker_url} under {opts.prefix}/; buffers in {workdir}"
            + (f"; in a dead zone: {', '.join(offline)}" if offline else "")
            + "".join(
                f"; {n}: " + ", ".join(f"{f['sensor']}={f['fault']}" for f in fs) for n, fs in faulty.items()
            )
            + " (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        totals = asyncio.run(run_fleet(fleet, seconds=args.seconds, report_s=args.report_every))
        print("stopped: " + _line(totals, time.monotonic() - started), file=sys.stderr, flush=True)
        return 1 if fleet.failed else 0


def register(sub) -> argparse.ArgumentParser:
    """Add `simulate` to edge-node's subcommands (`sub` from `add_subparsers`)."""
    p = sub.add_parser(
        "simulate",
        help="a fleet of simulated nodes in one process, faults injectable per node",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--nodes", type=int, required=True, metavar="N", help="how many nodes")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port (or mqtts://)")
    p.add_argument("--prefix", default="city/terrassa/nodes", help="topic prefix (default %(default)s)")
    p.add_argument("--node-prefix", default="sim", help="node ids are PREFIX-001.. (default %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="node i's simulation seed is SEED+i (default 42)")
    p.add_argument("--interval", type=float, default=10.0, metavar="S", help="sampling interval (default 10)")
    p.add_argument(
        "--heartbeat", type=float, default=60.0, metavar="S", help="heartbeat interval (default 60)"
    )
    p.add_argument(
        "--backfill-rate",
        type=float,
        default=500.0,
        metavar="R",
        help="readings/s each node drains a backlog at, behind live readings; 0 = no cap (default 500)",
    )
    p.add_argument(
        "--sensors",
        default=",".join(DEFAULT_SENSORS),
        help=f"simulated sensors per node, from {', '.join(SENSOR_BLOCKS)} (default %(default)s)",
    )
    p.add_argument(
        "--fault",
        action="append",
        metavar="NODE:SENSOR=FAULT",
        help="inject a fault from the start, for good (e.g. sim-007:bme280=nack); repeatable",
    )
    p.add_argument(
        "--offline",
        type=parse_offline,
        default=0.0,
        metavar="PCT",
        help="share of nodes pointed at an unreachable broker, so they buffer (e.g. 10%%)",
    )
    p.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="TOML with [[fault]] node, sensor, fault, at_s, for_s entries",
    )
    p.add_argument(
        "--history",
        type=float,
        default=0.0,
        metavar="HOURS",
        help="fill each buffer with this many hours of past readings first (sent as backfill)",
    )
    p.add_argument(
        "--no-location",
        action="store_true",
        help="no location (by default each node stands on one of Terrassa's streets)",
    )
    p.add_argument(
        "--street-offset",
        type=int,
        default=0,
        metavar="N",
        help="place the nodes after the first N spots (a second fleet beside one of N nodes)",
    )
    p.add_argument("--workdir", metavar="DIR", help="buffers go under DIR/NODE/ (default: a temp dir)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--stagger", type=float, default=2.0, metavar="S", help="spread the starts over S s")
    p.add_argument("--report-every", type=float, default=1.0, metavar="S", help="totals line period; 0: none")
    p.add_argument("--username", help="broker username (all nodes)")
    p.add_argument("--password-file", type=Path, help="broker password file (all nodes)")
    p.add_argument("--ca", type=Path, help="CA file for mqtts://")
    p.add_argument("--insecure", action="store_true", help="accept a password over plain mqtt:// (in clear)")
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="ed25519:BASE64",
        help="an operator's public key (edge-node keygen): the nodes run its signed remote commands",
    )
    p.add_argument("--confirm", type=float, default=120.0, metavar="S", help="the nodes' remote.confirm_s")
    p.add_argument(
        "--inventory-out",
        metavar="FILE",
        help="write the fleet's inventory (CSV node,site,lat,lon) for fleet/remote --inventory",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="the daemons' INFO log too")
    p.set_defaults(func=run_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m operations.simulate ...`: `edge-node simulate ...` without the entry point."""
    parser = argparse.ArgumentParser(prog="edge-node")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
