"""``otel-llm-receiver ledger copy``: an SQLite ledger the real receiver wrote, copied into a real PostgreSQL.

What must hold (issue 21): every table arrives whole (series with their ids and start times, so no counter resets;
the ledger id, so ``service.instance.id`` survives), a non-empty target is refused, a copy killed mid-COPY leaves
the target empty and a re-run succeeds, and the source file is never modified.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import schema as sqlite_schema
from otel_llm_receiver.ledger.postgres import schema as pg_schema
from otel_llm_receiver.ledger.postgres.copy import (
    BLOCK_AFTER_ROWS_ENV,
    BLOCKED_LINE,
    COPIED_SQLITE_SCHEMA,
    TABLES,
)
from otel_llm_receiver.scheduler import Receiver
from tests.support.postgres import Database

ROOT = Path(__file__).resolve().parent.parent
V2_DUMP = Path(__file__).parent / "support" / "ledger_v2.sql"


def make_ledger(path: Path, backfill: str = "3d") -> Path:
    """A ledger as the real receiver leaves it: the demo provider's backfill, one poll, closed."""
    config = parse_config({"storage": {"path": str(path)}, "providers": {"demo": {"backfill": backfill, "seed": 1}}})
    receiver = Receiver(config)
    try:
        assert asyncio.run(receiver.run_once()) == 0
    finally:
        asyncio.run(receiver.aclose())
    return path


@pytest.fixture(scope="module")
def demo_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ledger(tmp_path_factory.mktemp("src") / "ledger.db")


def fingerprint(path: Path) -> dict[str, str]:
    """Every file beside the ledger (the database, any -wal/-shm) by name and content hash."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.iterdir())}


def assert_untouched(path: Path, before: dict[str, str]) -> None:
    """The database and any WAL it had are byte for byte the same. A read-only SQLite connection to a WAL
    database may leave an empty -wal and its -shm index beside it (SQLite's own, holding no data)."""
    after = fingerprint(path)
    for name, digest in before.items():
        if not name.endswith("-shm"):
            assert after.get(name) == digest, name
    for name in set(after) - set(before):
        assert name in (f"{path.name}-wal", f"{path.name}-shm"), name
        if name.endswith("-wal"):
            assert (path.parent / name).stat().st_size == 0


def write_config(tmp_path: Path, dsn: str) -> Path:
    config = tmp_path / "new.yaml"
    config.write_text("storage:\n  backend: postgresql\n  dsn: ${env:LEDGER_DSN}\nproviders:\n  demo: {}\n")
    return config


def ledger_command(source: Path, config: Path, dsn: str, **env: str) -> list[str]:
    return [sys.executable, "-m", "otel_llm_receiver", "ledger", "copy", "--from", str(source), "--config", str(config)]


def child_env(dsn: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LEDGER_DSN": dsn, **extra}


def run_copy(source: Path, tmp_path: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, dsn)
    return subprocess.run(ledger_command(source, config, dsn), env=child_env(dsn), capture_output=True, text=True,
                          timeout=300, check=False)


def sqlite_rows(path: Path, table: str, order: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()
    finally:
        conn.close()
    return [tuple(r) for r in rows]


def pg_rows(dsn: str, path: Path, table: str, order: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    conn.close()
    with psycopg.connect(dsn) as pg:
        return [tuple(r) for r in pg.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")]


def pg_table_exists(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn) as pg:
        row = pg.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    assert row is not None
    return bool(row[0])


def test_copy_maps_the_current_sqlite_schema() -> None:
    """A new SQLite migration must revisit the copy's table map (and this pin)."""
    assert sqlite_schema.newest_version() == COPIED_SQLITE_SCHEMA


def test_copy_is_exact_and_leaves_the_source_untouched(demo_ledger: Path, pg_database: Database,
                                                       tmp_path: Path) -> None:
    before = fingerprint(demo_ledger)
    result = run_copy(demo_ledger, tmp_path, pg_database.dsn)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("copied ledger ") and "series 48" in lines[0], lines
    assert lines[1].startswith("verified: row counts of 9 tables"), lines
    assert pg_database.password not in result.stdout + result.stderr
    assert_untouched(demo_ledger, before)
    non_empty = 0
    for table, order in TABLES:
        source = sqlite_rows(demo_ledger, table, order)
        assert pg_rows(pg_database.dsn, demo_ledger, table, order) == source, table
        non_empty += bool(source)
    assert non_empty >= 7  # series, buckets, rollups, pricing, cursors, names, horizons, meta: a real ledger
    with psycopg.connect(pg_database.dsn) as pg:
        assert pg_schema.ledger_id(pg) == dict(sqlite_rows(demo_ledger, "meta", "key"))["service.instance.id"]
        # The id sequence continues after the copied ids: the next series the writer makes gets a new one.
        row = pg.execute("INSERT INTO series (instance, metric, attrs, start_time_ns, updated_ns)"
                         " VALUES ('x', 'm', '{}', 1, 1) RETURNING id").fetchone()
        assert row is not None and row[0] == max(r[0] for r in sqlite_rows(demo_ledger, "series", "id")) + 1
        pg.rollback()
        # Migrated by the copy, to this release's PostgreSQL schema: `run` has nothing to do.
        assert pg_schema.schema_version(pg) == pg_schema.newest_version()


def test_a_non_empty_target_is_refused_in_one_line(demo_ledger: Path, pg_database: Database,
                                                   tmp_path: Path) -> None:
    assert run_copy(demo_ledger, tmp_path, pg_database.dsn).returncode == 0
    series = pg_rows(pg_database.dsn, demo_ledger, "series", "id")
    again = run_copy(demo_ledger, tmp_path, pg_database.dsn)
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.count("\n") == 1 and "is not empty (series 48 rows, buckets " in again.stderr, again.stderr
    assert pg_database.password not in again.stderr
    assert pg_rows(pg_database.dsn, demo_ledger, "series", "id") == series


def test_a_target_with_another_ledger_id_is_refused(demo_ledger: Path, pg_database: Database,
                                                    tmp_path: Path) -> None:
    """A receiver that started on the target gave it an id of its own (maybe exported under it)."""
    with psycopg.connect(pg_database.dsn, autocommit=True) as pg:
        other = pg_schema.migrate(pg).ledger_id  # type: ignore[arg-type]
    result = run_copy(demo_ledger, tmp_path, pg_database.dsn)
    assert result.returncode == 1
    assert f"already has ledger id {other} (a receiver ran on it)" in result.stderr
    with psycopg.connect(pg_database.dsn) as pg:
        assert pg_schema.ledger_id(pg) == other  # type: ignore[arg-type]
        assert pg.execute("SELECT count(*) FROM series").fetchone() == (0,)


def test_a_copy_killed_mid_copy_leaves_the_target_empty_and_a_rerun_succeeds(
        demo_ledger: Path, pg_database: Database, tmp_path: Path) -> None:
    dsn = pg_database.dsn
    config = write_config(tmp_path, dsn)
    before = fingerprint(demo_ledger)
    child = subprocess.Popen(ledger_command(demo_ledger, config, dsn),
                             env=child_env(dsn, **{BLOCK_AFTER_ROWS_ENV: "5000"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stderr is not None
        line = child.stderr.readline()  # the hook's line: the copy is inside COPY, rows handed over
        assert line.strip() == BLOCKED_LINE, line
        with psycopg.connect(dsn) as pg:
            activity = pg.execute(
                "SELECT query, state FROM pg_stat_activity WHERE application_name = 'otel-llm-receiver ledger copy'"
            ).fetchall()
        assert len(activity) == 1 and activity[0][0].startswith("COPY buckets"), activity
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    # The server rolls the transaction back when the connection drops: not even the tables were created.
    assert not pg_table_exists(dsn, "series")
    assert not pg_table_exists(dsn, "schema_migrations")
    rerun = run_copy(demo_ledger, tmp_path, dsn)
    assert rerun.returncode == 0, rerun.stderr
    assert pg_rows(dsn, demo_ledger, "buckets", "series_id, bucket_start, bucket_width") == sqlite_rows(
        demo_ledger, "buckets", "series_id, bucket_start, bucket_width")
    assert_untouched(demo_ledger, before)


def test_a_wal_left_by_a_killed_writer_is_copied_and_not_checkpointed(demo_ledger: Path, pg_database: Database,
                                                                      tmp_path: Path) -> None:
    """A receiver killed with -9 leaves committed polls in ledger.db-wal: the copy must carry them, and must not
    fold them into ledger.db (the last closer of a WAL database does, unless it opened read-only)."""
    source = tmp_path / "crashed" / "ledger.db"
    source.parent.mkdir()
    source.write_bytes(demo_ledger.read_bytes())
    writer = subprocess.run([sys.executable, "-c", (
        "import os, signal, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute(\"UPDATE names SET name = name || ' (renamed)'\")\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"), str(source)], check=False)
    assert writer.returncode == -signal.SIGKILL
    wal = source.parent / "ledger.db-wal"
    assert wal.stat().st_size > 0
    database, log = source.read_bytes(), wal.read_bytes()
    result = run_copy(source, tmp_path, pg_database.dsn)
    assert result.returncode == 0, result.stderr
    assert source.read_bytes() == database and wal.read_bytes() == log  # only SQLite's -shm index is rewritten
    names = pg_rows(pg_database.dsn, source, "names", "instance, kind, id")
    assert names and all(row[3].endswith(" (renamed)") for row in names)


def test_an_older_sqlite_ledger_is_refused_with_what_to_do(pg_database: Database, tmp_path: Path) -> None:
    old = tmp_path / "old" / "ledger.db"
    old.parent.mkdir()
    conn = sqlite3.connect(old)
    conn.executescript(V2_DUMP.read_text("utf-8"))
    conn.close()
    before = fingerprint(old)
    result = run_copy(old, tmp_path, pg_database.dsn)
    assert result.returncode == 1
    assert "has schema version 2, older than this release's (4): run this release's `otel-llm-receiver run`" \
        in result.stderr
    assert_untouched(old, before)
    assert not pg_table_exists(pg_database.dsn, "series")


def test_a_sqlite_config_is_refused(demo_ledger: Path, tmp_path: Path) -> None:
    config = tmp_path / "sqlite.yaml"
    config.write_text(f"storage: {{path: {tmp_path / 'x.db'}}}\nproviders:\n  demo: {{}}\n")
    result = subprocess.run(ledger_command(demo_ledger, config, ""), env=child_env(""), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "storage.backend must be postgresql" in result.stderr
    assert not (tmp_path / "x.db").exists()
