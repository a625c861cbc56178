"""``ledger copy``: move an existing SQLite ledger into an empty PostgreSQL ledger, without a counter reset.

Why a copy and not a fresh start: a single-replica user moving to HA must keep every series' id, totals and
start time, the cursors, rollups, priced state and the ledger id (the exported ``service.instance.id``).
A fresh PostgreSQL ledger would start new series at zero with a new resource, which every Prometheus
``increase()`` and every budget would read as a reset (DESIGN.md invariant 3).

How it stays safe:

* **The source is never modified.** It is opened read-only at the SQLite level (``mode=ro``, ``query_only``;
  the readers' checks that it is an existing ledger) and read in one read transaction, so a receiver still
  running on it cannot make the copy see half a poll, and a WAL left by a killed writer is read, never
  checkpointed into the file (see ``_source``).
* **All or nothing.** Migrating the target, the ledger id, every table (``COPY ... FROM STDIN`` through psycopg's
  ``cursor.copy()``), the id sequence's reset and the verification run in ONE PostgreSQL transaction, under the
  migration advisory lock (so a replica starting meanwhile waits rather than migrating beside it). A crash,
  kill -9 or lost connection anywhere leaves the target as it was (empty), and re-running is safe.
* **Only into an empty ledger.** A target with any data row, or with a ledger id of its own that differs from the
  source's (a receiver already ran on it and may have exported under that id), is refused in one line: a copy
  never merges two ledgers.
* **Verified before it commits.** Row counts of every table, every series' totals and start time, and the sum of
  every value column are compared between source and target inside the transaction; a difference rolls it back.

The SQLite source must be at the schema version this release writes: an older one is refused with the advice to
run this release's receiver on it once (it migrates at start), so the copy maps exactly one known shape.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ...errors import LedgerError
from .. import schema as sqlite_schema
from ..engine import _check_ledger_file
from . import schema as pg_schema
from .connect import PgConnection, Timeouts, connect, target

__all__ = [
    "COPIED_SQLITE_SCHEMA",
    "TABLES",
    "CopyError",
    "CopyResult",
    "copy_ledger",
    "pending_migrations",
]

#: The SQLite schema version whose tables this copy maps (a new SQLite migration must revisit this module:
#: tests/test_ledger_copy.py pins it to ``ledger.schema.newest_version()``).
COPIED_SQLITE_SCHEMA: Final = 4
#: Copied tables in order, with the key they are read in (so COPY writes in primary-key order, which keeps the
#: target's indexes compact). ``schema_migrations`` is not copied: each engine numbers its own migrations.
TABLES: Final[tuple[tuple[str, str], ...]] = (
    ("meta", "key"),
    ("series", "id"),
    ("buckets", "series_id, bucket_start, bucket_width"),
    ("refined", "series_id, bucket_start, bucket_width"),
    ("rollups", "series_id, hour_start"),
    ("pricing", "series_id, valid_from"),
    ("cursors", "instance, source"),
    ("horizons", "instance"),
    ("names", "instance, kind, id"),
)
#: Integer columns whose sums are compared after the copy (besides every series row, compared whole).
SUMMED: Final[dict[str, tuple[str, ...]]] = {
    "buckets": ("value",),
    "refined": ("value",),
    "rollups": ("value",),
    "pricing": ("price",),
}
SERIES_COMPARED: Final = ("id", "instance", "metric", "attrs", "total", "adjustments", "start_time_ns",
                          "sub_total", "sub_adjustments", "bucket_width")
#: Test hook (tests/test_ledger_copy.py's crash test): after this many rows are handed to COPY, print one line to
#: stderr and block until killed, so a test can kill -9 the copy at a known point without sleeping.
BLOCK_AFTER_ROWS_ENV: Final = "OTEL_LLM_RECEIVER_COPY_BLOCK_AFTER_ROWS"
BLOCKED_LINE: Final = "ledger copy: blocked for a test"
APPLICATION_NAME: Final = "otel-llm-receiver ledger copy"
SQL_TARGET_COLUMNS = (
    "SELECT column_name FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position"
)
SQL_RESET_SERIES_ID = (
    "SELECT setval(pg_get_serial_sequence('series', 'id'), coalesce(max(id), 1), max(id) IS NOT NULL) FROM series"
)


class CopyError(LedgerError):
    """The copy was refused or failed; nothing was written to the target. One line, no password."""


@dataclass(frozen=True)
class CopyResult:
    """What was copied: rows per table, the ledger id, the series' summed totals, and the wall time."""

    ledger_id: str
    rows: dict[str, int]
    totals: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    migrated: tuple[int, ...] = ()

    def summary(self) -> list[str]:
        """A few lines for the terminal: counts per table, totals, verification and time."""
        tables = ", ".join(f"{name} {count}" for name, count in self.rows.items())
        totals = ", ".join(f"{name} {value}" for name, value in self.totals.items())
        return [
            f"copied ledger {self.ledger_id} in {self.seconds:.2f}s: {tables}",
            f"verified: row counts of {len(self.rows)} tables, every series' totals and start time equal ({totals})",
        ]


def pending_migrations(applied: list[int]) -> list[tuple[int, str, pg_schema.MigrationStep]]:
    """The PostgreSQL migrations not yet in ``applied``, in order (run inside the copy's own transaction)."""
    return [m for m in pg_schema.MIGRATIONS if m[0] not in applied]


@contextmanager
def _source(path: Path) -> Iterator[sqlite3.Connection]:
    """The SQLite ledger, opened read-only at the SQLite level, inside one read transaction.

    Why ``mode=ro`` and not only the readers' ``query_only`` (``LedgerEngine(readonly=True)``): a ledger whose
    writer was killed keeps its WAL beside it, and the last connection to close a WAL database checkpoints it
    into the main file, rewriting the source's bytes. A ``mode=ro`` connection reads the WAL (so the copy sees
    every committed poll) but never checkpoints: the source's files stay byte for byte as they were.
    """
    _check_ledger_file(path)
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30.0)
    except sqlite3.Error as e:
        raise CopyError(f"cannot open ledger {path} read-only: {e}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA query_only = ON")
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if found is None:
            raise CopyError(f"{path} is an SQLite database but not a receiver ledger")
        version = int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])
        if version < COPIED_SQLITE_SCHEMA:
            raise CopyError(
                f"ledger {path} has schema version {version}, older than this release's "
                f"({COPIED_SQLITE_SCHEMA}): run this release's `otel-llm-receiver run` on it once (it migrates "
                "at start), stop it, then copy"
            )
        if version > COPIED_SQLITE_SCHEMA:
            raise CopyError(f"ledger {path} has schema version {version}, newer than this release understands "
                            f"({COPIED_SQLITE_SCHEMA}); upgrade otel-llm-receiver")
        conn.execute("BEGIN")  # one snapshot of every table, even with a receiver still writing
        try:
            yield conn
        finally:
            conn.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            raise CopyError(f"{path} is not a receiver ledger (not an SQLite database)") from None
        raise CopyError(f"cannot read ledger {path}: {e}") from None
    finally:
        conn.close()


def _columns_sqlite(src: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in src.execute(f"PRAGMA table_info({table})")]


def _counts(execute: Callable[[str], Any], tables: list[str]) -> dict[str, int]:
    return {table: int(execute(f"SELECT count(*) FROM {table}").fetchone()[0]) for table in tables}


def _refuse_unless_empty(pg: PgConnection, where: str, source_id: str) -> None:
    """One line when the target holds data or another ledger's id (a receiver ran on it)."""
    non_empty = {t: n for t, n in _counts(pg.execute, [t for t, _ in TABLES if t != "meta"]).items() if n}
    if non_empty:
        rows = ", ".join(f"{t} {n} rows" for t, n in non_empty.items())
        raise CopyError(f"PostgreSQL ledger at {where} is not empty ({rows}): copy only into a new, empty "
                        "database (a copy never merges two ledgers)")
    row = pg.execute(pg_schema.SQL_GET_META, (pg_schema.LEDGER_ID_KEY,)).fetchone()
    if row is not None and str(row[0]) != source_id:
        raise CopyError(f"PostgreSQL ledger at {where} already has ledger id {row[0]} (a receiver ran on it), "
                        f"the source's is {source_id}: copy into a new, empty database")


def _block_for_test(written: int) -> None:
    limit = os.environ.get(BLOCK_AFTER_ROWS_ENV)
    if limit and written >= int(limit):
        print(BLOCKED_LINE, file=sys.stderr, flush=True)
        while True:  # until the test kills this process
            signal.pause()


def _copy_table(src: sqlite3.Connection, pg: PgConnection, table: str, order: str, written: int) -> int:
    """COPY one table in primary-key order, by column name; the rows handed over so far in all tables."""
    columns = _columns_sqlite(src, table)
    on_target = [str(r[0]) for r in pg.execute(SQL_TARGET_COLUMNS, (table,))]
    if sorted(columns) != sorted(on_target):
        raise CopyError(f"table {table}: the source's columns {columns} do not match the target's {on_target}")
    names = ", ".join(columns)
    block = os.environ.get(BLOCK_AFTER_ROWS_ENV)
    with pg.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in src.execute(f"SELECT {names} FROM {table} ORDER BY {order}"):
            copy.write_row(row)
            written += 1
            if block:
                _block_for_test(written)
    return written


def _verify(src: sqlite3.Connection, pg: PgConnection, rows: dict[str, int]) -> dict[str, int]:
    """Compare what the transaction holds with the source; raise (and so roll back) on any difference."""
    copied = _counts(pg.execute, list(rows))
    source_counts = _counts(src.execute, list(rows))
    if copied != rows or source_counts != rows:
        diff = ", ".join(f"{t} {rows[t]}->{copied[t]}" for t in rows if rows[t] != copied[t])
        raise CopyError(f"verification failed, nothing committed: row counts differ ({diff})")
    columns = ", ".join(SERIES_COMPARED)
    source_series = src.execute(f"SELECT {columns} FROM series ORDER BY id").fetchall()
    target_series = pg.execute(f"SELECT {columns} FROM series ORDER BY id").fetchall()
    if [tuple(r) for r in source_series] != [tuple(r) for r in target_series]:
        raise CopyError("verification failed, nothing committed: a series' totals or start time differ")
    for table, summed in SUMMED.items():
        sums = ", ".join(f"coalesce(sum({c}), 0)" for c in summed)
        a = tuple(int(v) for v in src.execute(f"SELECT {sums} FROM {table}").fetchone())
        pg_row = pg.execute(f"SELECT {sums} FROM {table}").fetchone()
        assert pg_row is not None
        if a != tuple(int(v) for v in pg_row):
            raise CopyError(f"verification failed, nothing committed: sums of {table} differ")
    totals = src.execute(
        "SELECT coalesce(sum(total), 0), coalesce(sum(adjustments), 0) FROM series"
    ).fetchone()
    return {"series totals": int(totals[0]), "adjustments": int(totals[1])}


def copy_ledger(source: str | os.PathLike[str], dsn: str) -> CopyResult:
    """Copy the SQLite ledger at ``source`` into the empty PostgreSQL ledger ``dsn`` in one transaction.

    Raises ``CopyError`` (refused or verification failed) or ``LedgerError`` (cannot open either side); in every
    failure the target is left as it was.
    """
    started = time.perf_counter()
    path = Path(source)
    if sqlite_schema.newest_version() != COPIED_SQLITE_SCHEMA:  # pragma: no cover - pinned by a test
        raise CopyError(f"this copy maps SQLite schema {COPIED_SQLITE_SCHEMA}, the ledger writes "
                        f"{sqlite_schema.newest_version()}")
    where = target(dsn)
    with _source(path) as src:
        meta = dict(src.execute("SELECT key, value FROM meta").fetchall())
        source_id = meta.get(pg_schema.LEDGER_ID_KEY)
        if not source_id:
            raise CopyError(f"ledger {path} has no ledger id in its meta table: not a complete ledger")
        # No statement timeout: a large ledger's COPY may take longer than an apply's 30s.
        pg = connect(dsn, application_name=APPLICATION_NAME, timeouts=Timeouts(statement=0.0))
        try:
            with pg.transaction():
                pg.execute(pg_schema.SQL_LOCK, (pg_schema.MIGRATION_LOCK_KEY,))
                pg.execute(pg_schema.SQL_CREATE_MIGRATIONS)
                applied = [int(r[0]) for r in pg.execute(pg_schema.SQL_APPLIED_VERSIONS)]
                if applied and max(applied) > pg_schema.newest_version():
                    raise CopyError(f"PostgreSQL ledger at {where} has schema version {max(applied)}, newer than "
                                    f"this release understands ({pg_schema.newest_version()})")
                if applied:
                    _refuse_unless_empty(pg, where, source_id)
                migrated = []
                for version, name, step in pending_migrations(applied):
                    if callable(step):
                        step(pg)
                    else:
                        for statement in pg_schema.split_sql(step):
                            pg.execute(statement.encode("utf-8"))
                    pg.execute(pg_schema.SQL_RECORD_MIGRATION, (version, name, time.time_ns()))
                    migrated.append(version)
                pg.execute("DELETE FROM meta")  # at most the same ledger id (refused otherwise)
                rows: dict[str, int] = {}
                written = 0
                for table, order in TABLES:
                    before = written
                    written = _copy_table(src, pg, table, order, written)
                    rows[table] = written - before
                pg.execute(SQL_RESET_SERIES_ID)
                totals = _verify(src, pg, rows)
        except LedgerError:
            raise
        except Exception as e:  # psycopg's errors: one line, the transaction is rolled back already
            raise CopyError(f"copy into PostgreSQL ledger at {where} failed, nothing committed: "
                            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                            ) from None
        finally:
            pg.close()
    return CopyResult(ledger_id=source_id, rows=rows, totals=totals, seconds=time.perf_counter() - started,
                      migrated=tuple(migrated))
