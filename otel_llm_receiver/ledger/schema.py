"""The ledger's schema: numbered migrations, each run in one transaction with the row that records it.

Tables (DESIGN.md): ``series`` (identity, cumulative totals, start times), ``buckets`` (the last value of every
bucket still revisable), ``refined`` (coarse buckets finer ones replaced), ``rollups`` (hourly sums kept for
``storage.retention``), ``cursors``, ``horizons``, ``names``, ``pricing`` and ``meta``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

from ..errors import LedgerError
from ..names import CURRENCY_ATTR
from ..series import canonical_attrs

if TYPE_CHECKING:
    from .engine import Connection

SCHEMA_VERSION: Final = 4
#: ``CURRENCY_ATTR`` (names.py) was ``currency`` before schema version 3.
LEGACY_CURRENCY_ATTR: Final = "currency"

# Migrations are numbered; each runs in one transaction together with the row that records it. A step is an
# SQL script, or a function given the connection (inside that transaction) for what SQL cannot say portably.
MigrationStep: TypeAlias = "str | Callable[[Connection], None]"
SQL_SERIES_WITH_LEGACY_CURRENCY = "SELECT id, attrs FROM series WHERE attrs LIKE '%\"currency\":%'"
SQL_SET_SERIES_ATTRS = "UPDATE series SET attrs = ? WHERE id = ?"


def _rename_currency_attribute(conn: Connection) -> None:
    """Schema 3: the bare ``currency`` attribute becomes ``llm.currency`` in every stored series, in place.

    The series keep their ids, totals and start times (the rename must not start new counters); the new attrs
    are the canonical JSON a new record with ``llm.currency`` produces, so later polls find the same series.
    """
    for sid, attrs in conn.execute(SQL_SERIES_WITH_LEGACY_CURRENCY).fetchall():
        values = json.loads(attrs)
        if LEGACY_CURRENCY_ATTR not in values:
            continue  # "currency": inside some other value
        values[CURRENCY_ATTR] = values.pop(LEGACY_CURRENCY_ATTR)
        conn.execute(SQL_SET_SERIES_ATTRS, (canonical_attrs(values), sid))


MIGRATIONS: Final[tuple[tuple[int, str, MigrationStep], ...]] = (
    (
        1,
        "initial schema",
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        -- One row per series: a metric with a fixed attribute set, fed by one provider instance.
        CREATE TABLE series (
            id            INTEGER PRIMARY KEY,
            instance      TEXT NOT NULL,
            metric        TEXT NOT NULL,
            attrs         TEXT NOT NULL,             -- canonical JSON object, sorted keys
            total         INTEGER NOT NULL DEFAULT 0, -- cumulative growth (tokens, requests, or nano-units)
            adjustments   INTEGER NOT NULL DEFAULT 0, -- cumulative shrink
            start_time_ns INTEGER NOT NULL,           -- first seen: the counter's OTLP start time forever
            updated_ns    INTEGER NOT NULL,
            bucket_width  INTEGER,                    -- width of all its buckets, 0 once widths were mixed
            UNIQUE (instance, metric, attrs)
        );
        -- The last value seen for every (series, bucket) still inside the provider's revision horizon.
        CREATE TABLE buckets (
            series_id    INTEGER NOT NULL,
            bucket_start INTEGER NOT NULL,
            bucket_width INTEGER NOT NULL,
            value        INTEGER NOT NULL,
            PRIMARY KEY (series_id, bucket_start, bucket_width)
        ) WITHOUT ROWID;
        -- Coarser buckets that finer ones have since refined (a bucket-width change): the region they cover
        -- counts max(coarse value, sum of the finer buckets inside it).
        CREATE TABLE refined (
            series_id    INTEGER NOT NULL,
            bucket_start INTEGER NOT NULL,
            bucket_width INTEGER NOT NULL,
            value        INTEGER NOT NULL,
            PRIMARY KEY (series_id, bucket_start, bucket_width)
        ) WITHOUT ROWID;
        -- Per-hour sums of the latest bucket values, kept for storage.retention (budgets, baselines).
        CREATE TABLE rollups (
            series_id  INTEGER NOT NULL,
            hour_start INTEGER NOT NULL,
            value      INTEGER NOT NULL,
            PRIMARY KEY (series_id, hour_start)
        ) WITHOUT ROWID;
        CREATE TABLE cursors (
            instance   TEXT NOT NULL,
            source     TEXT NOT NULL,
            value      TEXT NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (instance, source)
        );
        -- Buckets starting before pruned_before were dropped: records for them are rejected, never re-counted.
        CREATE TABLE horizons (
            instance      TEXT PRIMARY KEY,
            pruned_before INTEGER NOT NULL
        );
        CREATE TABLE names (
            instance   TEXT NOT NULL,
            kind       TEXT NOT NULL,
            id         TEXT NOT NULL,
            name       TEXT NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (instance, kind, id)
        );
        """,
    ),
    (
        2,
        "pricing: schedules of priced series and sub-unit remainders",
        """
        -- Sub-unit remainders of priced totals (pico-units of estimated cost below one nano-unit).
        ALTER TABLE series ADD COLUMN sub_total INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE series ADD COLUMN sub_adjustments INTEGER NOT NULL DEFAULT 0;
        -- Which series a usage series' deltas price into, at which price, for buckets in [valid_from, valid_until).
        -- price: target sub-units per usage unit (pico-USD per token), scale: sub-units per target unit.
        CREATE TABLE pricing (
            series_id   INTEGER NOT NULL,
            valid_from  INTEGER NOT NULL,
            valid_until INTEGER NOT NULL,
            target_id   INTEGER NOT NULL,
            price       INTEGER NOT NULL,
            scale       INTEGER NOT NULL,
            PRIMARY KEY (series_id, valid_from)
        ) WITHOUT ROWID;
        """,
    ),
    (3, "attributes: currency is llm.currency", _rename_currency_attribute),
    (
        4,
        "anthropic server-tool requests: gen_ai.operation.name chat -> execute_tool",
        # Anthropic's llm.usage.tool_requests series were filed under `chat` until the operation became
        # `execute_tool` (as OpenAI's): renamed in place, so the re-read lookback finds the buckets it already
        # counted instead of starting a second series that would count them again. Keys keep their order (only
        # a value changes), so attrs stay canonical JSON.
        """
        UPDATE series
           SET attrs = replace(attrs, '"gen_ai.operation.name":"chat"', '"gen_ai.operation.name":"execute_tool"')
         WHERE metric = 'llm.usage.tool_requests'
           AND instr(attrs, '"gen_ai.provider.name":"anthropic"') > 0
           AND instr(attrs, '"gen_ai.operation.name":"chat"') > 0
           AND NOT EXISTS (
               SELECT 1 FROM series AS renamed
                WHERE renamed.instance = series.instance AND renamed.metric = series.metric
                  AND renamed.attrs = replace(series.attrs, '"gen_ai.operation.name":"chat"',
                                              '"gen_ai.operation.name":"execute_tool"'));
        """,
    ),
)

SQL_CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ns INTEGER NOT NULL
)"""
SQL_APPLIED_VERSIONS = "SELECT version FROM schema_migrations"
SQL_RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, applied_ns) VALUES (?, ?, ?)"
SQL_GET_META = "SELECT value FROM meta WHERE key = ?"
SQL_PUT_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
# The ledger's generations (``meta`` rows ``generation/<instance>`` and ``generation`` for ledger-wide changes):
# every transaction that changes what readers see (an apply, a prune, a pricing rebuild) bumps its row in the
# same transaction, so a reader that finds every generation unchanged knows no total, rollup or name changed and
# can keep what it derived from them (the exports, the money signals). One row per provider instance: replicas
# sharing a ledger never update the same row from two applies at once.
# The value counts the bumps (a TEXT column, so cast both ways; the PostgreSQL dialect names the target table).
META_GENERATION = "generation"
SQL_BUMP_GENERATION = """
INSERT INTO meta (key, value) VALUES (?, '1')
ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT)"""
# With the ledger's own id (``service.instance.id``): a token read from another ledger never equals this one's.
SQL_GENERATIONS = """
SELECT key, value FROM meta WHERE substr(key, 1, 10) = 'generation' OR key = 'service.instance.id' ORDER BY key"""


def new_generation(instance: str | None) -> tuple[str]:
    """``SQL_BUMP_GENERATION``'s parameter: the ``meta`` key of one instance's generation (``None``: the
    ledger-wide one)."""
    return (META_GENERATION if instance is None else f"{META_GENERATION}/{instance}",)


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (no statement in our schema has ';' inside a literal)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def newest_version() -> int:
    """The schema version this release writes."""
    return max((v for v, _, _ in MIGRATIONS), default=0)


def migrate(
    conn: Connection, path: Path, transaction: Callable[[], AbstractContextManager[Connection]],
    new_instance_id: Callable[[], str],
) -> None:
    """Bring the ledger on ``conn`` to the newest schema; refuse a newer one than this release understands."""
    conn.execute(SQL_CREATE_MIGRATIONS)
    applied = {row[0] for row in conn.execute(SQL_APPLIED_VERSIONS)}
    newest = newest_version()
    if applied and max(applied) > newest:
        raise LedgerError(
            f"ledger {path} has schema version {max(applied)}, newer than this release "
            f"understands ({newest}); upgrade otel-llm-receiver or point storage.path elsewhere"
        )
    for version, name, script in MIGRATIONS:
        if version in applied:
            continue
        with transaction() as tx:
            if callable(script):
                script(tx)
            else:
                for statement in _split_sql(script):
                    tx.execute(statement)
            tx.execute(SQL_RECORD_MIGRATION, (version, name, time.time_ns()))
    with transaction() as tx:
        tx.execute(SQL_PUT_META, ("service.instance.id", new_instance_id()))
