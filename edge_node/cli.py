"""`edge-node`: one entry point, one subcommand per job (DESIGN §6).

Exit codes: 0 success, 1 a failed check, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__
from .config import ConfigError, load_config

DEFAULT_CONFIG = "/etc/edge-node/config.toml"


def _setup_logging(verbose: bool) -> None:
    # Under systemd the journal stamps each line; elsewhere a time helps.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon
    from .store import BufferPathError, StoreError

    config = load_config(args.config)
    _setup_logging(args.verbose)

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await Daemon(config).run(stop)

    try:
        asyncio.run(main())
    except BufferPathError as err:  # not a failing card: the configured path cannot hold a buffer
        raise ConfigError(config.source, "buffer.path", str(err)) from err
    except (StoreError, OSError) as err:  # the buffer cannot be opened: say so, let systemd retry
        logging.getLogger("edge_node").error("%s", err)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from operations.demo import run_demo

    return run_demo(broker_url=args.broker, seconds=args.seconds, as_json=args.json, verbose=args.verbose)


def build_parser(*, daemon_only: bool = False) -> argparse.ArgumentParser:
    """Every subcommand; `daemon_only` leaves out the tools' (fleet, simulate, provisioning), whose
    modules would cost the running daemon ~2 MB of RSS for nothing."""
    parser = argparse.ArgumentParser(
        prog="edge-node", description="Environmental street node daemon and tools."
    )
    parser.add_argument("--version", action="version", version=f"edge-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (what the systemd unit starts)")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="a simulated node against a local broker, printing what arrives there")
    demo.add_argument("--broker", metavar="URL", help="use this broker instead of starting a Mosquitto")
    demo.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)"
    )
    demo.add_argument("--json", action="store_true", help="print each message's payload as JSON")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the daemon's log too")
    demo.set_defaults(func=cmd_demo)
    if daemon_only:
        return parser

    from provisioning.cli import register as register_provisioning

    from operations.fleet import register as register_fleet
    from operations.simulate import register as register_simulate

    register_provisioning(sub)
    register_fleet(sub)
    register_simulate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(daemon_only=argv[:1] == ["run"]).parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
