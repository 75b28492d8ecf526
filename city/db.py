"""The city's database: a DSN, its connection, and the plain SQL migrations the tool applies.

`sqlite:///PATH` (embedded; `sqlite:///city.db` is relative, `sqlite:////var/lib/city.db`
absolute, as in SQLAlchemy) or `postgresql://USER@HOST:PORT/DB` (psycopg 3). Queries are written
once with `%s` placeholders; SQLite's are rewritten to `?`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

MIGRATIONS = "migrations"
DIALECT_WORDS = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"},
    "postgresql": {"id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "blob": "BYTEA"},
}


class DatabaseError(Exception):
    """The database cannot be reached or refused a statement (the driver's error is the cause)."""


class BadDSN(ValueError):
    pass


def sqlite_path(dsn: str) -> Path:
    rest = dsn[len("sqlite:///") :]
    if not rest:
        raise BadDSN(f"--db: sqlite:///PATH needs a path (got {dsn!r})")
    path = Path(rest)
    # sqlite:///tmp/city.db is relative in SQLAlchemy's reading; someone who meant /tmp/city.db
    # gets it when no relative tmp/ exists.
    if not path.is_absolute() and not path.parent.exists() and Path("/", rest).parent.is_dir():
        path = Path("/", rest)
    return path


class Database:
    """One DSN. `connect()` gives a DB-API connection in manual-transaction mode."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        if dsn.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self.path = sqlite_path(dsn)
        elif dsn.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self.path = None
        else:
            raise BadDSN(f"--db must be sqlite:///PATH or postgresql://... (got {dsn!r})")

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """The driver's exceptions that mean the database failed (not our bug)."""
        if self.dialect == "sqlite":
            return (sqlite3.Error,)
        import psycopg

        return (psycopg.Error,)

    @property
    def integrity_errors(self) -> tuple[type[BaseException], ...]:
        """A constraint refused a row (a key stored meanwhile by someone else)."""
        if self.dialect == "sqlite":
            return (sqlite3.IntegrityError,)
        import psycopg

        return (psycopg.IntegrityError,)

    def conflicted(self, err: BaseException) -> bool:
        """Two writers crossed (a deadlock PostgreSQL broke): the transaction may simply run again."""
        if self.dialect == "sqlite":
            return False
        import psycopg

        return isinstance(err, psycopg.errors.TransactionRollback)

    def refused(self, err: BaseException) -> bool:
        """The database answered but refused a statement (a value out of range, a constraint):
        not a database that is away, which every statement would meet again."""
        if self.dialect == "sqlite":
            return isinstance(err, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError))
        import psycopg

        return isinstance(err, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError))

    def sql(self, statement: str) -> str:
        return statement.replace("%s", "?") if self.dialect == "sqlite" else statement

    def connect(self, *, read_only: bool = False):
        try:
            if self.dialect == "sqlite":
                if read_only:
                    conn = sqlite3.connect(
                        f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                    )
                else:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA journal_mode=WAL")
                    # Acknowledged to the broker means gone from it: a commit must outlive a power cut.
                    conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=30000")
                return conn
            import psycopg

            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            if read_only:
                conn.execute("SET default_transaction_read_only = on")
            return conn
        except self.errors as err:
            raise DatabaseError(f"cannot open {self.redacted()}: {err}".strip()) from err
        except OSError as err:
            raise DatabaseError(f"cannot open {self.redacted()}: {err}") from err

    def redacted(self) -> str:
        """The DSN without its password, for messages."""
        if self.dialect == "sqlite":
            return self.dsn
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.dsn)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return self.dsn

    @contextmanager
    def transaction(self, conn, *, immediate: bool = True) -> Iterator[Any]:
        """BEGIN (IMMEDIATE on SQLite: one writer, taken at once) ... COMMIT, or ROLLBACK on error."""
        conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" and immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except self.errors:
                pass  # the connection is gone; the server rolled back for us
            raise
        conn.execute("COMMIT")

    def execute(self, conn, statement: str, params: Sequence = ()):
        return conn.execute(self.sql(statement), params)

    def executemany(self, conn, statement: str, rows: Sequence[Sequence]) -> None:
        if not rows:
            return
        if self.dialect == "sqlite":
            conn.executemany(self.sql(statement), rows)
        else:
            with conn.cursor() as cur:
                cur.executemany(statement, rows)

    def migrate(self, conn) -> list[str]:
        """Apply the migrations not applied yet, each in its own transaction; their names."""
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations").fetchall()}
        done = []
        for name, text in migrations():
            if name in applied:
                continue
            with self.transaction(conn):
                if self.dialect == "postgresql":
                    # Two workers starting at once: the second waits, then sees the first's work.
                    conn.execute("SELECT pg_advisory_xact_lock(14)")
                    if conn.execute("SELECT 1 FROM schema_migrations WHERE name = %s", (name,)).fetchone():
                        continue
                for statement in split_statements(text.format(**DIALECT_WORDS[self.dialect])):
                    conn.execute(statement)
                self.execute(
                    conn,
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)",
                    (name, utc_now()),
                )
            done.append(name)
        return done

    def open(self, *, read_only: bool = False):
        """A connection with the schema up to date (read-only ones only check it is there)."""
        conn = self.connect(read_only=read_only)
        try:
            if read_only:
                try:
                    conn.execute("SELECT 1 FROM readings LIMIT 1").fetchall()
                except self.errors as err:
                    raise DatabaseError(
                        f"{self.redacted()} has no edge-node schema (run `edge-node ingest` first): {err}"
                    ) from err
            else:
                try:
                    self.migrate(conn)
                except self.errors as err:
                    raise DatabaseError(f"{self.redacted()}: cannot apply the schema: {err}") from err
        except BaseException:
            conn.close()
            raise
        return conn


def migrations() -> list[tuple[str, str]]:
    folder = resources.files(__package__) / MIGRATIONS
    found = [(p.name, p.read_text(encoding="utf-8")) for p in folder.iterdir() if p.name.endswith(".sql")]
    return sorted(found)


def split_statements(text: str) -> list[str]:
    """The migration's statements: split on `;` at line ends, comments dropped (no `;` in strings)."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
