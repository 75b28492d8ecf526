"""`edge-node`: one entry point, one subcommand per job (DESIGN §6).

Exit codes: 0 success, 1 a failed check, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
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


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, told the terminal's width: argparse makes a formatter for every argument added
    and, not told, asks shutil, whose import costs the daemon 0.7 MB of RSS (issue 17)."""

    def __init__(self, prog: str, **kwargs) -> None:
        if kwargs.get("width") is None:
            try:
                columns = (
                    int(os.environ.get("COLUMNS", ""))
                    or os.get_terminal_size(sys.__stdout__.fileno()).columns
                )
            except (ValueError, OSError, AttributeError):
                columns = 80
            kwargs["width"] = max(columns - 2, 11)
        super().__init__(prog, **kwargs)


def cmd_run(args: argparse.Namespace) -> int:
    from .deferred import defer_imports

    defer_imports()  # before the daemon's imports load them: ~1.3 MB of the node's RSS
    from .remote import NodeRemote
    from .store import BufferPathError, StoreError

    config = load_config(args.config)
    _setup_logging(args.verbose)

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        remote = NodeRemote(args.config)
        if not _update_state_present(config):
            await remote.run(stop)  # the pipeline, restarted on remote config changes
            return
        from .updater import for_remote  # a software update under way, on trial or rolled back

        async with asyncio.TaskGroup() as tg:
            updates = tg.create_task(for_remote(remote).run(stop))
            await remote.run(stop)
            updates.cancel()

    try:
        asyncio.run(main())
        if (updater := sys.modules.get("edge_node.updater")) is not None and updater.restart_requested:
            return updater.RESTART_EXIT  # systemd restarts the unit into the version now current
    except BufferPathError as err:  # not a failing card: the configured path cannot hold a buffer
        raise ConfigError(config.source, "buffer.path", str(err)) from err
    except (StoreError, OSError) as err:  # the buffer cannot be opened: say so, let systemd retry
        logging.getLogger("edge_node").error("%s", err)
        return 1
    return 0


def _update_state_present(config) -> bool:
    """Anything for edge_node.updater at this start; two stats, so an idle node imports nothing."""
    return (config.update.root / "update.json").exists() or (
        config.buffer.path.parent / "update-job.json"
    ).exists()


def register_run(sub) -> None:
    run = sub.add_parser(
        "run", help="run the daemon (what the systemd unit starts)", formatter_class=HelpFormatter
    )
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)


# Subcommand -> "module:function" that adds it to the subparsers. A module is imported only when
# one of its subcommands is asked for (all of them for --help), so `edge-node run` loads the
# daemon alone and this package imports none of the tools. Adding a subcommand is one line here.
SUBCOMMANDS = {
    "run": "edge_node.cli:register_run",
    "demo": "operations.demo:register",
    "provision": "provisioning.cli:register",
    "detect": "provisioning.cli:register",
    "selftest": "provisioning.cli:register",
    "check-broker": "provisioning.cli:register",
    "install": "provisioning.cli:register",
    "status": "provisioning.cli:register",
    "fleet": "operations.fleet:register",
    "simulate": "operations.simulate:register",
    "keygen": "operations.remote:register",
    "remote": "operations.remote:register",
    "release": "operations.release:register",
    "update": "edge_node.update:register",
    "ingest": "city.cli:register",
    "export": "city.cli:register",
    "serve": "city.cli:register",
    "alerts": "city.alerting:register",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` alone when it is one of SUBCOMMANDS, else for all of them."""
    parser = argparse.ArgumentParser(
        prog="edge-node",
        description="Environmental street node daemon and tools.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    targets = [SUBCOMMANDS[command]] if command in SUBCOMMANDS else dict.fromkeys(SUBCOMMANDS.values())
    for target in targets:
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
