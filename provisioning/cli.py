"""The provisioning subcommands of `edge-node` (DESIGN §6): provision, detect, selftest,
check-broker, install, status.

Exit status: 0 every check passed (status: healthy), 1 a check failed (status: not healthy),
2 bad usage or bad config, always as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import types
from collections.abc import Callable
from pathlib import Path

from edge_node.config import load_config
from sensors import components

from .report import Report

DEFAULT_CONFIG = "/etc/edge-node/config.toml"


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """argparse prints the whole usage before a usage error; a technician needs the one line."""

    def error(self: argparse.ArgumentParser, message: str) -> None:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")

    parser.error = types.MethodType(error, parser)  # type: ignore[method-assign]
    return parser


def _add(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return _one_line_errors(sub.add_parser(name, help=help, description=description))


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="CONFIG",
        help=f"config file (default {DEFAULT_CONFIG})",
    )


def _root_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--root",
        metavar="DIR",
        help=f"the node's files are under DIR, as if DIR were / ({what})",
    )


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of lines")


def register(sub) -> None:
    """Add the provisioning subcommands to `edge-node`'s subparsers."""
    p = _add(
        sub,
        "provision",
        "the technician's one command: config, secrets, detect, selftest, broker, service",
        "Write the node's identity, credentials and config (secrets 0600), detect the sensors, "
        "self-test each, prove the broker round-trip, install and start the service, and print a "
        "PASS/FAIL report. Exit 0 only when every check passed, 1 otherwise, 2 for bad arguments. "
        "Safe to rerun: the buffer is kept and only what changed is rewritten.",
    )
    p.add_argument("--node-id", required=True, metavar="ID", help="the node's id: ^[a-z0-9][a-z0-9-]{0,31}$")
    p.add_argument("--site", required=True, metavar="TEXT", help="where the node is, for technicians")
    p.add_argument("--lat", type=float, metavar="F", help="latitude in decimal degrees (with --lon)")
    p.add_argument("--lon", type=float, metavar="F", help="longitude in decimal degrees (with --lat)")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host[:port] or mqtts://host[:port]")
    creds = p.add_argument_group(
        "credentials", "either --username and --password-file, or --client-cert and --client-key (mqtts://)"
    )
    creds.add_argument("--username", metavar="U", help="the node's broker username")
    creds.add_argument(
        "--password-file",
        metavar="F",
        help="file holding the password (copied to /etc/edge-node/secret, 0600)",
    )
    creds.add_argument(
        "--client-cert", metavar="F", help="TLS client certificate (copied to /etc/edge-node/client.pem)"
    )
    creds.add_argument(
        "--client-key", metavar="F", help="its private key (copied to /etc/edge-node/client.key, 0600)"
    )
    p.add_argument(
        "--ca", metavar="FILE", help="CA that signed the broker's certificate (to /etc/edge-node/ca.pem)"
    )
    p.add_argument("--topic-prefix", metavar="P", help="topic prefix (default city/terrassa/nodes)")
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="ed25519:BASE64",
        help="an operator's public key (edge-node keygen) for signed remote commands; repeatable",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="accept a password over plain mqtt:// (it travels in clear; writes broker.allow_insecure)",
    )
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, metavar="PATH", help=f"config to write (default {DEFAULT_CONFIG})"
    )
    _root_option(p, "write everything there and run no systemctl")
    p.add_argument("--simulate", action="store_true", help="detect and self-test on the simulated buses")
    p.add_argument("--report", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--yes", action="store_true", help="do not ask: re-provision a config of another node id")
    p.set_defaults(func=cmd_provision)

    p = _add(
        sub,
        "detect",
        "find the node's sensors on its I2C buses, serial ports and pulse inputs, and the host",
        "Scan for the node's sensors and print the config tables for those found: "
        + "; ".join(c.summary for c in components().values() if c.detect is not None)
        + ". Pulse inputs listen for a hand-turned anemometer or a tipped bucket.",
    )
    _config_option(p)
    p.add_argument("--simulate", action="store_true", help="detect on a simulated node")
    _output_options(p)
    p.set_defaults(func=cmd_detect)

    p = _add(
        sub,
        "selftest",
        "read each configured sensor several times: plausible, not stuck, not a fault",
        "Read each configured sensor several times and judge it. Stop the service first on hardware.",
    )
    _config_option(p)
    _root_option(p, "a config staged by provision --root")
    p.add_argument("--reads", type=int, default=5, metavar="N", help="reads per sensor (default 5)")
    _output_options(p)
    p.set_defaults(func=cmd_selftest)

    p = _add(
        sub,
        "check-broker",
        "connect with the node's credentials, round-trip on its topic, prove the ACL",
        "Connect with the node's own credentials (TLS verified), publish on its own topic and receive "
        "it back, and show that a message under another node's topic never arrives.",
    )
    _config_option(p)
    _root_option(p, "a config staged by provision --root")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds per step (default 10)")
    _output_options(p)
    p.set_defaults(func=cmd_check_broker)

    p = _add(
        sub,
        "install",
        "install the systemd unit for this config, the service user, and start the service",
        "Render the systemd unit for this config (ExecStart, DeviceAllow for its devices), create the "
        "service user, enable and start the service.",
    )
    _config_option(p)
    _root_option(p, "write the unit there and run no useradd or systemctl")
    _output_options(p)
    p.set_defaults(func=cmd_install)

    p = _add(
        sub,
        "status",
        "this node's state: service, sensors, backlog, last publish, broker connection",
        "This node's state from the service, the daemon's status file and the buffer (read-only). "
        "Exit 0 when healthy, 1 otherwise.",
    )
    _config_option(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)


# --- The commands ------------------------------------------------------------------------------


def cmd_provision(args: argparse.Namespace) -> int:
    from .provision import UsageError, provision

    try:
        return provision(args)
    except UsageError as err:
        print(f"edge-node provision: {err}", file=sys.stderr)
        return 2


def _root(args: argparse.Namespace) -> Path | None:
    return Path(args.root).absolute() if getattr(args, "root", None) else None


def _load(args: argparse.Namespace):
    from .provision import config_view

    root = _root(args)
    return load_config(args.config) if root is None else config_view(Path(args.config).absolute(), root)


def _report(node: str, config_hash: str, args: argparse.Namespace) -> Report:
    # With --json stdout is the JSON alone; the progress lines go to stderr.
    stream = sys.stderr if args.json else sys.stdout
    return Report(node=node, config_hash=config_hash, show=lambda line: print(line, file=stream, flush=True))


def _finish(report: Report, args: argparse.Namespace, extra: dict | None = None) -> int:
    if args.report:
        try:
            report.write(args.report)
        except OSError as err:
            print(f"edge-node {args.command}: --report: {err.strerror or err}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({**report.as_json(), **(extra or {})}, indent=2))
    else:
        print(report.summary())
    return 0 if report.result == "PASS" else 1


def _run_step(report: Report, name: str, step: Callable[[], object]) -> object:
    from .provision import _call

    return _call(report, name, step)


def cmd_detect(args: argparse.Namespace) -> int:
    from .provision import dumps_toml

    def detect() -> dict:
        from .detect import detect

        return detect(report, simulate=args.simulate)

    node, config_hash = socket.gethostname(), ""
    if args.config != DEFAULT_CONFIG or Path(args.config).exists():  # the node's id, when it has one
        config = load_config(args.config)
        node, config_hash = config.node.id, config.config_hash
    report = _report(node, config_hash, args)
    found = _run_step(report, "detect", detect) or {}
    if not args.json and found:
        print("\n# for config.toml:")
        print(dumps_toml({"sensors": found}))
    return _finish(report, args, {"sensors": found})


def cmd_selftest(args: argparse.Namespace) -> int:
    def selftest() -> None:
        from .provision import scratch_state
        from .selftest import selftest

        with scratch_state(config) as scratch:
            selftest(scratch, report, reads=args.reads)

    if args.reads < 1:
        print("edge-node selftest: --reads: must be >= 1", file=sys.stderr)
        return 2
    config = _load(args)
    report = _report(config.node.id, config.config_hash, args)
    _run_step(report, "selftest", selftest)
    return _finish(report, args)


def cmd_check_broker(args: argparse.Namespace) -> int:
    def check_broker() -> None:
        from .broker_check import check_broker

        check_broker(config, report, timeout_s=args.timeout)

    if not args.timeout > 0:
        print("edge-node check-broker: --timeout: must be > 0", file=sys.stderr)
        return 2
    config = _load(args)
    report = _report(config.node.id, config.config_hash, args)
    _run_step(report, "broker", check_broker)
    return _finish(report, args)


def cmd_install(args: argparse.Namespace) -> int:
    from .install import install

    config = _load(args)
    report = _report(config.node.id, config.config_hash, args)
    config_path = Path(args.config).absolute()
    _run_step(report, "install", lambda: install(config, report, root=_root(args), config_path=config_path))
    return _finish(report, args)


def cmd_status(args: argparse.Namespace) -> int:
    from .status import node_status, render

    status = node_status(load_config(args.config))
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0 if status["healthy"] else 1
