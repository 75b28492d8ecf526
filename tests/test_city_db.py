"""The city's database: migrations applied by the tool itself, the same schema on SQLite and
PostgreSQL, and `edge-node serve` answering on it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from city.db import BadDSN, Database, migrations

TABLES = {"nodes", "readings", "reading_values", "gaps", "quarantine", "schema_migrations"}


def columns(db: Database, conn, table: str) -> list[str]:
    cur = db.execute(conn, f'SELECT * FROM "{table}" WHERE 1 = 0')
    return [d[0] for d in cur.description]


def test_migrations_apply_once_and_give_the_same_tables_on_both_engines(city_dsn, postgres_server, tmp_path):
    db = Database(city_dsn)
    conn = db.connect()
    assert db.migrate(conn) == [name for name, _ in migrations()]
    assert db.migrate(conn) == []  # already applied: nothing to do
    other_engine = Database(
        postgres_server.create_database("t_other") if db.dialect == "sqlite" else f"sqlite:///{tmp_path}/o.db"
    )
    other = other_engine.open()
    for table in TABLES:
        assert columns(db, conn, table) == columns(other_engine, other, table), table


def test_bad_dsn_is_one_line_naming_the_option():
    with pytest.raises(BadDSN, match=r"--db must be sqlite:///PATH or postgresql://"):
        Database("mysql://x")
    out = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "export", "--db", "mysql://x", "--format", "csv"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "edge-node export: --db must be sqlite:///PATH or postgresql://... (got 'mysql://x')"
    ]


def serve(dsn: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_node.cli", "serve", "--db", dsn, "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "serving http://" in line:
            return proc, line.split("serving ")[1].strip().rstrip("/")
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"serve did not start: {proc.stderr.read()}")


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_serve_answers_json_with_an_openapi_description(city_dsn):
    Database(city_dsn).open().close()  # ingest creates the schema; here, an empty one
    proc, base = serve(city_dsn)
    try:
        assert get(f"{base}/api/nodes") == (200, [])
        status, spec = get(f"{base}/api/openapi.json")
        assert spec["openapi"].startswith("3.")
        assert {"/api/nodes", "/api/readings", "/api/latest", "/api/gaps", "/api/quarantine"} <= set(
            spec["paths"]
        )
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"{base}/api/readings?from=yesterday", timeout=10)
        assert bad.value.code == 400
        assert "from: not an RFC 3339 time" in json.loads(bad.value.read())["error"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_serve_on_a_fresh_database_starts_with_an_empty_city(tmp_path):
    proc, base = serve(f"sqlite:///{tmp_path / 'new' / 'city.db'}")
    try:
        assert get(f"{base}/api/nodes") == (200, [])
        assert get(f"{base}/api/gaps") == (200, [])
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_export_of_a_database_without_the_schema_is_one_line_and_exit_1(tmp_path):
    dsn = f"sqlite:///{tmp_path}/none.db"
    out = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "export", "--db", dsn, "--format", "csv"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("edge-node export: cannot open sqlite:///")
