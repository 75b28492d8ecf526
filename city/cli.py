"""`edge-node ingest | export | serve`: the city's commands (registered by edge_node/cli.py;
this package is imported only when one of them runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

DEFAULT_PREFIX = "city/terrassa/nodes"  # DESIGN §4


def _fail(command: str, message: str, code: int) -> int:
    print(f"edge-node {command}: {message}", file=sys.stderr)
    return code


def _database(command: str, dsn: str):
    from .db import BadDSN, Database

    try:
        return Database(dsn)
    except BadDSN as err:
        raise SystemExit(_fail(command, str(err), 2)) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# -- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .alerts import RulesError
    from .api import serve
    from .db import DatabaseError
    from .mapconfig import serve_options

    db = _database("serve", args.db)
    try:
        options = serve_options(args)
    except RulesError as err:
        return _fail("serve", str(err), 2)
    try:
        # A fresh database gets the schema (an empty city until ingest fills it); where the
        # service may only read, it must find the schema there.
        db.open().close()
    except DatabaseError:
        try:
            db.open(read_only=True).close()
        except DatabaseError as err:
            return _fail("serve", str(err), 1)
    _logging(args.verbose)
    log = logging.getLogger("city.serve")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            db,
            args.host,
            args.port,
            stop,
            ready=lambda port: log.info("serving http://%s:%d/", args.host, port),
            options=options,
        )

    try:
        asyncio.run(main())
    except OSError as err:
        return _fail("serve", f"cannot listen on {args.host}:{args.port}: {err}", 1)
    return 0


# -- export -----------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from .db import DatabaseError
    from .export import export
    from .queries import normalise_time

    db = _database("export", args.db)
    try:
        time_from = normalise_time(args.time_from) if args.time_from else None
        time_to = normalise_time(args.time_to) if args.time_to else None
    except ValueError as err:
        return _fail("export", f"--from/--to: {err}", 2)
    try:
        out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout  # noqa: SIM115
    except OSError as err:
        return _fail("export", f"cannot write --out {args.out}: {err}", 2)
    try:
        export(
            db, args.format, out, time_from=time_from, time_to=time_to, exclude_flagged=args.exclude_flagged
        )
    except DatabaseError as err:
        return _fail("export", str(err), 1)
    except db.errors as err:
        return _fail("export", f"{db.redacted()}: {err}", 1)
    except BrokenPipeError:
        return 0
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            sys.stdout.flush()
    return 0


# -- ingest -----------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    if getattr(args, "ingest_command", None) == "gaps":
        return cmd_gaps(args)
    if getattr(args, "ingest_command", None) == "quarantine":
        return cmd_quarantine(args)
    if not args.broker or not args.db:
        return _fail("ingest", "--broker URL and --db DSN are required", 2)
    from .ingest import run_ingest

    db = _database("ingest", args.db)
    _logging(args.verbose)
    return run_ingest(args, db)


def _read_db(command: str, args: argparse.Namespace, read):
    """`read(db, conn)` on a read-only connection to the subcommand's --db; an exit code when
    that cannot be done."""
    from .db import DatabaseError

    if not (args.gaps_db or args.db):
        return _fail(command, "--db DSN is required", 2)
    db = _database(command, args.gaps_db or args.db)
    try:
        conn = db.open(read_only=True)
        try:
            return read(db, conn)
        finally:
            conn.close()
    except DatabaseError as err:
        return _fail(command, str(err), 1)


def cmd_gaps(args: argparse.Namespace) -> int:
    import json

    from . import queries

    def read(db, conn):
        return queries.open_gaps(db, conn, args.node), {
            n["node"]: n for n in queries.nodes(db, conn, args.node)
        }

    found = _read_db("ingest gaps", args, read)
    if isinstance(found, int):
        return found
    gaps, nodes = found
    if args.json:
        summary = [
            {
                k: n[k]
                for k in ("node", "first_seq", "last_seq", "open_gaps", "missing", "backlog", "seq_gaps")
            }
            for n in nodes.values()
        ]
        print(json.dumps({"gaps": gaps, "nodes": summary}, indent=2))
        return 0
    if not gaps:
        print("no open gaps")
        return 0
    print(f"{'NODE':<20} {'MISSING SEQS':<24} {'COUNT':>7}  OPENED")
    for g in gaps:
        span = str(g["first_missing"]) if g["missing"] == 1 else f"{g['first_missing']}-{g['last_missing']}"
        print(f"{g['node']:<20} {span:<24} {g['missing']:>7}  {g['opened_at']}")
    print()
    print(
        f"{'NODE':<20} {'MISSING':>8} {'BACKLOG':>8} {'GAPS':>6}"
        "  (GAPS: missing less the node's backlog, as the fleet view counts)"
    )
    for n in nodes.values():
        if n["missing"]:
            backlog = "?" if n["backlog"] is None else str(n["backlog"])
            print(f"{n['node']:<20} {n['missing']:>8} {backlog:>8} {n['seq_gaps']:>6}")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    import json

    from . import queries

    found = _read_db(
        "ingest quarantine",
        args,
        lambda db, conn: (queries.quarantine_counts(db, conn), queries.quarantined(db, conn, args.limit)),
    )
    if isinstance(found, int):
        return found
    counts, latest = found
    if args.json:
        print(json.dumps({"counts": counts, "latest": latest}, indent=2))
        return 0
    for reason, count in counts.items():
        print(f"{reason:<16} {count}")
    for row in latest:
        print(f"{row['received_at']}  {row['reason']:<14} {row['topic']}: {row['detail']}")
    return 0


def register(sub) -> None:
    """Add `ingest`, `export` and `serve` to `edge-node`'s subparsers."""
    ingest = sub.add_parser(
        "ingest",
        help="the city's consumer: store every reading, status and heartbeat exactly once",
        description=(
            "Subscribe to every node's readings, statuses and heartbeats and store them in --db, "
            "acknowledging each message to the broker only after its rows are committed."
        ),
    )
    ingest.add_argument("--broker", metavar="URL", help="mqtt://HOST[:PORT] or mqtts://... (no credentials)")
    ingest.add_argument("--db", metavar="DSN", help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    ingest.add_argument("--username", metavar="U")
    ingest.add_argument("--password-file", metavar="F", help="file holding the password")
    ingest.add_argument("--ca", metavar="FILE", help="CA bundle to verify the broker (implies TLS)")
    ingest.add_argument(
        "--insecure", action="store_true", help="accept a password over plain mqtt:// (in clear)"
    )
    ingest.add_argument("--client-cert", metavar="FILE", help="client certificate (with --client-key)")
    ingest.add_argument("--client-key", metavar="FILE")
    ingest.add_argument(
        "--topic-prefix", metavar="P", default=DEFAULT_PREFIX, help=f"default {DEFAULT_PREFIX}"
    )
    ingest.add_argument(
        "--share", metavar="GROUP",
        help="take readings through the MQTT 5 shared subscription $share/GROUP/...: run several workers",
    )  # fmt: skip
    ingest.add_argument(
        "--client-id", metavar="ID",
        help="the persistent session's id (default edge-node-ingest[-GROUP]); every worker needs its own, "
        "kept across restarts, so that what it had not acknowledged comes back to it",
    )  # fmt: skip
    ingest.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version (default 5; 3.1.1 for brokers without 5)",
    )
    ingest.add_argument(
        "--batch-max", metavar="N", type=int, default=1000, help="messages per transaction (1000)"
    )
    ingest.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ingest.set_defaults(func=cmd_ingest)
    ingest_sub = ingest.add_subparsers(dest="ingest_command", metavar="{gaps,quarantine}")
    gaps = ingest_sub.add_parser("gaps", help="list the open gaps: seqs nodes sent that are not stored")
    gaps.add_argument("--db", dest="gaps_db", metavar="DSN", help="(or ingest's own --db)")
    gaps.add_argument("--node", metavar="ID", help="only this node")
    gaps.add_argument("--json", action="store_true")
    quarantine = ingest_sub.add_parser(
        "quarantine", help="what was quarantined, counted by reason, and the latest"
    )
    quarantine.add_argument("--db", dest="gaps_db", metavar="DSN", help="(or ingest's own --db)")
    quarantine.add_argument("--limit", type=int, default=20, metavar="N", help="latest rows to show (20)")
    quarantine.add_argument("--json", action="store_true")

    export = sub.add_parser(
        "export",
        help="readings out as csv, geojson or jsonl (streamed)",
        description="csv: a row per reading and value; geojson: the latest per node; "
        "jsonl: a line per reading as sent (pydoc city.export)",
    )
    export.add_argument("--db", metavar="DSN", required=True)
    export.add_argument(
        "--from", dest="time_from", metavar="T", help="from this time (RFC 3339 or date; UTC)"
    )
    export.add_argument("--to", dest="time_to", metavar="T", help="up to (not including) this time")
    export.add_argument("--format", choices=("csv", "geojson", "jsonl"), required=True)
    export.add_argument("--exclude-flagged", action="store_true", help="leave out readings with QC flags")
    export.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="the read-only JSON API (OpenAPI at /api/openapi.json) and the map")
    serve.add_argument("--db", metavar="DSN", required=True)
    serve.add_argument("--port", metavar="P", type=int, required=True, help="TCP port (0: any free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from .mapconfig import add_serve_arguments

    add_serve_arguments(serve)  # the map's: --tiles, --alerts
    serve.set_defaults(func=cmd_serve)
