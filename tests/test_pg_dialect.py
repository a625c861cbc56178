"""One source of SQL (issue 21): every statement of the ledger's writer and reader, translated by
``ledger/postgres/dialect.py``, is planned by a real PostgreSQL. A SQLite-only construct added later fails here,
naming its statement, before any accounting test runs it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from otel_llm_receiver.ledger import reader, schema, writer
from otel_llm_receiver.ledger.postgres import connect as pg_connect
from otel_llm_receiver.ledger.postgres import schema as pg_schema
from otel_llm_receiver.ledger.postgres.dialect import UnsupportedSQL, translate
from otel_llm_receiver.ledger.postgres.engine import SQL_SORT_STAGE_IN, SQL_STAGE_IN, SQL_SUM_STAGE_IN
from tests.support.postgres import Database

# reader.py's templates, filled as the reader fills them (placeholders for the metric names and hours).
_TEMPLATE_VALUES = {
    "metrics": "?,?", "hours": "?,?", "attrs": "s.attrs", "ids": "?,?", "last": "(SELECT max(hour_start) FROM rollups WHERE series_id = s.id)",
    "segments": "(SELECT coalesce(sum(value), 0) FROM rollups WHERE series_id = s.id AND hour_start >= 0 "
                "AND hour_start < 3600)",
}


def ledger_statements() -> Iterator[tuple[str, str]]:
    """(name, SQLite statement) of every SQL constant the writer and reader run on the ledger's tables."""
    for module in (writer, reader, schema):
        for name, value in vars(module).items():
            if not name.startswith("SQL_"):
                continue
            values = value if isinstance(value, tuple) else (value,)
            for i, sql in enumerate(values):
                assert isinstance(sql, str), name
                if name == "SQL_STAGE_UPSERT":
                    continue  # a suffix, tested inside the staging statements below
                label = f"{module.__name__.rsplit('.', 1)[1]}.{name}" + (f"[{i}]" if len(values) > 1 else "")
                yield label, sql.format(**_TEMPLATE_VALUES) if "{" in sql else sql
    yield "writer._stage_sql(1)", writer._stage_sql(1)
    yield f"writer._stage_sql({writer.STAGE_ROWS})", writer._stage_sql(writer.STAGE_ROWS)
    yield "reader.rollup_range", "SELECT min(hour_start), max(hour_start) FROM rollups"
    yield "writer.set_pricer", "DELETE FROM pricing"


def _dummy(sql: str) -> tuple[Any, ...] | dict[str, Any]:
    named = re.findall(r"%\((\w+)\)s", sql)
    if named:
        return {name: None for name in named}
    return (None,) * len(re.findall(r"(?<!%)%s", sql))


@pytest.fixture
def pg_conn(pg_database: Database) -> Iterator[pg_connect.PgConnection]:
    with pg_connect.connect(pg_database.dsn, autocommit=True) as conn:
        pg_schema.migrate(conn)
        yield conn


def test_every_ledger_statement_translates_and_postgresql_plans_it(pg_conn: pg_connect.PgConnection) -> None:
    statements = list(ledger_statements())
    assert len(statements) > 80
    creates = [(n, s) for n, s in statements if s.lstrip().upper().startswith("CREATE")]
    others = [(n, s) for n, s in statements if not s.lstrip().upper().startswith("CREATE")]
    failures = []
    for name, sql in [*creates, ("engine.SQL_STAGE_IN", SQL_STAGE_IN)]:
        try:
            pg_conn.execute(translate(sql))
        except (psycopg.Error, UnsupportedSQL) as exc:
            failures.append(f"{name}: {' '.join(str(exc).split())}")
    for name, sql in [*others, ("engine.SQL_SUM_STAGE_IN", SQL_SUM_STAGE_IN),
                      ("engine.SQL_SORT_STAGE_IN", SQL_SORT_STAGE_IN)]:
        try:
            translated = translate(sql)
            pg_conn.execute("EXPLAIN " + translated, _dummy(translated))  # planned, never run
        except (psycopg.Error, UnsupportedSQL) as exc:
            failures.append(f"{name}: {' '.join(str(exc).split())}")
    assert failures == []


@pytest.mark.parametrize("sql", [
    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
    "SELECT value FROM pragma_table_info('series')",
    "SELECT name FROM sqlite_master",
])
def test_sqlite_only_constructs_are_refused_by_name(sql: str) -> None:
    with pytest.raises(UnsupportedSQL, match="SQLite-only"):
        translate(sql)


def test_a_construct_the_translator_does_not_know_fails_the_plan_naming_it(pg_conn: pg_connect.PgConnection) -> None:
    """``ifnull`` is SQLite's; the translator leaves it, and PostgreSQL's planner names it."""
    with pytest.raises(psycopg.errors.UndefinedFunction, match="ifnull"):
        pg_conn.execute("EXPLAIN " + translate("SELECT ifnull(max(id), 0) FROM series"))


@pytest.mark.parametrize(("sqlite", "postgresql"), [
    ("SELECT max(a, b), max(c) FROM t WHERE x = ?", "SELECT GREATEST(a, b), max(c) FROM t WHERE x = %s"),
    ("SELECT min(max(a - coalesce(b, 0), 0), 5)", "SELECT LEAST(GREATEST(a - coalesce(b, 0), 0), 5)"),
    ("SELECT sum(a IS NULL), sum(b) FROM t", "SELECT CAST(sum(CASE WHEN a IS NULL THEN 1 ELSE 0 END) AS BIGINT), "
                                             "CAST(sum(b) AS BIGINT) FROM t"),
    ("SELECT 1 WHERE a IS NOT b AND c IS NOT NULL", "SELECT 1 WHERE a IS DISTINCT FROM b AND c IS NOT NULL"),
    ("SELECT a % 3600 FROM t WHERE b = :lo AND c LIKE '%x?:y'", "SELECT a %% 3600 FROM t WHERE b = %(lo)s "
                                                                "AND c LIKE '%%x?:y'"),
    ("CREATE TABLE t (a INTEGER PRIMARY KEY) WITHOUT ROWID", "CREATE TABLE t (a BIGINT PRIMARY KEY) "),
])
def test_translations(sqlite: str, postgresql: str) -> None:
    assert translate(sqlite) == postgresql


def test_an_additive_upsert_sums_repeated_keys_first(pg_conn: pg_connect.PgConnection) -> None:
    """SQLite adds repeated keys of one statement one after the other; PostgreSQL would refuse to update one
    row twice in a statement: the translation sums per key first, with the same result."""
    sql = writer.SQL_APPLY_ROLLUPS
    pg_conn.execute(translate(writer.SQL_CREATE_DELTAS))
    pg_conn.execute("INSERT INTO rollups VALUES (1, 0, 5)")
    pg_conn.execute("INSERT INTO deltas VALUES (1, 0, 0, 0, 3, 0, 0, 0, 0, 0), (1, 0, 0, 0, 4, 0, 0, 0, 0, 0),"
                    " (2, 3600, 0, 0, 9, 0, 0, 0, 0, 0), (2, 3600, 0, 0, -9, 0, 0, 0, 0, 0)")
    pg_conn.execute(translate(sql))
    assert pg_conn.execute("SELECT series_id, hour_start, value FROM rollups ORDER BY 1").fetchall() == [
        (1, 0, 12), (2, 3600, 0)]
