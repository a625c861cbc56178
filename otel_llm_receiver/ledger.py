"""The ledger: the receiver's persistent memory, where every token and cent is counted exactly once.

Providers re-report the same buckets on every poll (overlapping windows), revise recent buckets (growing as a
partial bucket fills in, shrinking on a correction) and deliver them late. The ledger keeps, per series and
bucket, the last value seen, and turns each poll into differences against it:

* a bucket seen for the first time adds its value to the series' cumulative ``total``;
* a bucket that grew adds only the growth; an unchanged one adds nothing;
* a bucket that shrank adds nothing to ``total`` (counters never go down) and the shrink to ``adjustments``,
  so ``total - adjustments`` is exactly the sum of the latest bucket values (DESIGN.md invariant 1).

One poll is one ``BEGIN IMMEDIATE ... COMMIT`` holding its records, names and cursor (invariant 2), and every
total and start time lives here (invariant 3). Every SQL statement is a named constant below, next to the schema;
SQLite-specific pieces (PRAGMAs, ``WITHOUT ROWID``, temp tables) stay inside this module.

A "point" below is one value of one series in one bucket: one ``UsageRecord`` yields a point per token type,
one for requests and one per other measure (``UsageRecord.measures``). Money, and billed quantities (which may
be fractional), are stored as integer nano-units (see ``model.to_nanos``). A level metric (``LEVEL_METRICS``,
e.g. bytes stored) is kept the same way, bucket by bucket, but what it means is its newest bucket's value,
which ``snapshot`` reads as ``SeriesTotal.level``; its ``total`` is not a meaningful number.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .errors import LedgerError
from .ledger_check import create_atomically
from .ledger_lock import WriterLock
from .model import TOKEN_TYPES, PollResult, to_nanos
from .names import (
    CURRENCY_ATTR,
    LEVEL_METRICS,
    MEASURE_OF_METRIC,
    METRIC_BILLED_QUANTITY,
    METRIC_CODE_COMMITS,
    METRIC_CODE_LINES,
    METRIC_CODE_PULL_REQUESTS,
    METRIC_CODE_SESSIONS,
    METRIC_CODE_TOKENS,
    METRIC_CODE_TOOL_ACTIONS,
    METRIC_COST,
    METRIC_COST_ESTIMATED,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_THROTTLED,
    METRIC_TOKENS,
    METRIC_TOOL_REQUESTS,
    METRIC_UNPRICED,
    MONEY_METRICS,
    NANO_METRICS,
    ROLLUP_PICO_METRICS,
)
from .series import PICOS_PER_NANO, PricingPeriod, SeriesPricer, canonical_attrs

log = logging.getLogger(__name__)

__all__ = [
    "CURRENCY_ATTR",
    "LEGACY_CURRENCY_ATTR",
    "LEVEL_METRICS",
    "MEASURE_OF_METRIC",
    "METRIC_BILLED_QUANTITY",
    "METRIC_CODE_COMMITS",
    "METRIC_CODE_LINES",
    "METRIC_CODE_PULL_REQUESTS",
    "METRIC_CODE_SESSIONS",
    "METRIC_CODE_TOKENS",
    "METRIC_CODE_TOOL_ACTIONS",
    "METRIC_COST",
    "METRIC_COST_ESTIMATED",
    "METRIC_COST_NON_USD",
    "METRIC_REQUESTS",
    "METRIC_THROTTLED",
    "METRIC_TOKENS",
    "METRIC_TOOL_REQUESTS",
    "METRIC_UNPRICED",
    "MIGRATIONS",
    "MONEY_METRICS",
    "NANO_METRICS",
    "PICOS_PER_NANO",
    "ROLLUP_PICO_METRICS",
    "SCHEMA_VERSION",
    "UNPRICEABLE_METRICS",
    "ApplyStats",
    "ExportRows",
    "Ledger",
    "PricingPeriod",
    "SeriesPricer",
    "SeriesTotal",
    "Snapshot",
    "canonical_attrs",
]

SCHEMA_VERSION: Final = 4
#: ``CURRENCY_ATTR`` (names.py) was ``currency`` before schema version 3.
LEGACY_CURRENCY_ATTR: Final = "currency"

# --------------------------------------------------------------------------------------------------- schema
# Migrations are numbered; each runs in one transaction together with the row that records it. A step is an
# SQL script, or a function given the connection (inside that transaction) for what SQL cannot say portably.
MigrationStep = str | Callable[[sqlite3.Connection], None]
SQL_SERIES_WITH_LEGACY_CURRENCY = "SELECT id, attrs FROM series WHERE attrs LIKE '%\"currency\":%'"
SQL_SET_SERIES_ATTRS = "UPDATE series SET attrs = ? WHERE id = ?"


def _rename_currency_attribute(conn: sqlite3.Connection) -> None:
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

SQL_SERIES_OF_INSTANCE = "SELECT id, metric, attrs FROM series WHERE instance = ?"
SQL_INSERT_SERIES = """
INSERT INTO series (instance, metric, attrs, start_time_ns, updated_ns) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (instance, metric, attrs) DO NOTHING"""

SQL_CREATE_INCOMING = """
CREATE TEMP TABLE IF NOT EXISTS incoming (
    series_id    INTEGER NOT NULL,
    hour_start   INTEGER NOT NULL,
    bucket_start INTEGER NOT NULL,
    bucket_width INTEGER NOT NULL,
    value        INTEGER NOT NULL,
    prior        INTEGER,                     -- the bucket's last value in the ledger, NULL when new
    slow         INTEGER NOT NULL DEFAULT 0,  -- overlaps buckets of another width: handled one by one
    -- In this order the per-(series, hour) aggregation and the bucket upsert read it without sorting.
    PRIMARY KEY (series_id, hour_start, bucket_start, bucket_width)
) WITHOUT ROWID"""
SQL_CREATE_STAGED = """
CREATE TEMP TABLE IF NOT EXISTS staged (
    series_id    INTEGER NOT NULL,
    bucket_start INTEGER NOT NULL,
    bucket_width INTEGER NOT NULL,
    value        INTEGER NOT NULL
)"""
SQL_CLEAR_INCOMING = "DELETE FROM incoming"
SQL_CLEAR_STAGED = "DELETE FROM staged"
# Points of series created by this very poll have no prior value: they go straight to incoming.
SQL_STAGE_NEW_SERIES_POINT = """
INSERT INTO incoming (series_id, hour_start, bucket_start, bucket_width, value, prior)
VALUES (?1, ?2 - ?2 % 3600, ?2, ?3, ?4, NULL)"""
SQL_STAGE_NEW_SERIES_POINT_SUMMED = SQL_STAGE_NEW_SERIES_POINT + """
ON CONFLICT (series_id, hour_start, bucket_start, bucket_width) DO UPDATE SET value = value + excluded.value"""
SQL_COUNT_STAGED = "SELECT count(*) FROM (SELECT 1 FROM staged GROUP BY series_id, bucket_start, bucket_width)"
SQL_STAGE_POINT = "INSERT INTO staged (series_id, bucket_start, bucket_width, value) VALUES (?, ?, ?, ?)"
# Keep only the points that changed, each with its prior value: an unchanged re-read (most of every poll)
# costs one primary-key lookup and writes nothing further.
SQL_KEEP_CHANGED = """
INSERT INTO incoming (series_id, hour_start, bucket_start, bucket_width, value, prior)
SELECT s.series_id, s.bucket_start - s.bucket_start % 3600, s.bucket_start, s.bucket_width, s.value, b.value
FROM staged AS s LEFT JOIN buckets AS b
  ON b.series_id = s.series_id AND b.bucket_start = s.bucket_start AND b.bucket_width = s.bucket_width
WHERE b.value IS NOT s.value"""
# The same when some records of the poll are parts of one bucket (rows that normalize to the same series
# and bucket): their values add up first.
SQL_KEEP_CHANGED_SUMMED = """
INSERT INTO incoming (series_id, hour_start, bucket_start, bucket_width, value, prior)
SELECT s.series_id, s.bucket_start - s.bucket_start % 3600, s.bucket_start, s.bucket_width, s.value, b.value
FROM (SELECT series_id, bucket_start, bucket_width, sum(value) AS value FROM staged
      GROUP BY series_id, bucket_start, bucket_width) AS s
LEFT JOIN buckets AS b
  ON b.series_id = s.series_id AND b.bucket_start = s.bucket_start AND b.bucket_width = s.bucket_width
WHERE b.value IS NOT s.value"""
SQL_MAX_WIDTH = "SELECT max(w) FROM (SELECT max(bucket_width) AS w FROM buckets UNION ALL SELECT max(bucket_width) FROM refined)"
# A new bucket that overlaps a bucket of another width (or a refined region) is a bucket-width change.
# Only points of series whose bucket width changed (or was ever mixed) can overlap buckets of another
# width; for those, look for the overlap precisely. Every other point takes the set-based fast path.
SQL_MARK_SLOW = """
UPDATE incoming SET slow = 1
WHERE incoming.series_id IN (
    SELECT s.id FROM series AS s
    WHERE s.id = incoming.series_id AND s.bucket_width IS NOT NULL AND s.bucket_width <> incoming.bucket_width)
AND (
    EXISTS (SELECT 1 FROM buckets AS b
            WHERE b.series_id = incoming.series_id
              AND b.bucket_start > incoming.bucket_start - :max_width
              AND b.bucket_start < incoming.bucket_start + incoming.bucket_width
              AND b.bucket_start + b.bucket_width > incoming.bucket_start
              AND (b.bucket_start <> incoming.bucket_start OR b.bucket_width <> incoming.bucket_width))
    OR EXISTS (SELECT 1 FROM refined AS r
            WHERE r.series_id = incoming.series_id
              AND r.bucket_start > incoming.bucket_start - :max_width
              AND r.bucket_start < incoming.bucket_start + incoming.bucket_width
              AND r.bucket_start + r.bucket_width > incoming.bucket_start))"""
SQL_FIND_INVALID = """
SELECT s.metric, s.attrs, i.bucket_start, i.bucket_width, i.value
FROM incoming AS i JOIN series AS s ON s.id = i.series_id
WHERE i.bucket_width <= 0 OR i.bucket_start < 0 OR i.value < 0 LIMIT 1"""
SQL_SHRUNK = """
SELECT s.metric, s.attrs, count(*), sum(i.prior - i.value)
FROM incoming AS i JOIN series AS s ON s.id = i.series_id
WHERE i.slow = 0 AND i.value < i.prior
GROUP BY s.id ORDER BY sum(i.prior - i.value) DESC LIMIT 5"""
# One pass over the changed points, grouped by (series, hour): what the totals, the hourly rollups and the
# outcome counts need, so each of those reads a small table instead of scanning every point again.
SQL_CREATE_DELTAS = """
CREATE TEMP TABLE IF NOT EXISTS deltas (
    series_id INTEGER NOT NULL, hour_start INTEGER NOT NULL,
    grow INTEGER NOT NULL, shrink INTEGER NOT NULL, net INTEGER NOT NULL,
    n_new INTEGER NOT NULL, n_grown INTEGER NOT NULL, n_shrunk INTEGER NOT NULL,
    min_width INTEGER NOT NULL, max_width INTEGER NOT NULL
)"""
SQL_CLEAR_DELTAS = "DELETE FROM deltas"
SQL_FILL_DELTAS = """
INSERT INTO deltas
SELECT series_id, hour_start,
       sum(max(value - coalesce(prior, 0), 0)), sum(max(coalesce(prior, 0) - value, 0)),
       sum(value - coalesce(prior, 0)),
       sum(prior IS NULL), sum(prior IS NOT NULL AND prior < value), sum(prior IS NOT NULL AND prior > value),
       min(bucket_width), max(bucket_width)
FROM incoming WHERE slow = 0
GROUP BY series_id, hour_start"""
SQL_COUNT_OUTCOMES = "SELECT coalesce(sum(n_new), 0), coalesce(sum(n_grown), 0), coalesce(sum(n_shrunk), 0) FROM deltas"
# The series' bucket width is recorded on the way (0 = mixed widths: its later points get the overlap check).
SQL_APPLY_TOTALS = """
UPDATE series SET
    total = total + d.grow,
    adjustments = adjustments + d.shrink,
    updated_ns = :now,
    bucket_width = CASE WHEN d.min_width <> d.max_width THEN 0
                        WHEN series.bucket_width IS NULL THEN d.min_width
                        WHEN series.bucket_width = d.min_width THEN d.min_width
                        ELSE 0 END
FROM (SELECT series_id, sum(grow) AS grow, sum(shrink) AS shrink,
             min(min_width) AS min_width, max(max_width) AS max_width
      FROM deltas GROUP BY series_id) AS d
WHERE series.id = d.series_id"""
SQL_APPLY_ROLLUPS = """
INSERT INTO rollups (series_id, hour_start, value)
SELECT series_id, hour_start, net FROM deltas WHERE net <> 0
ON CONFLICT (series_id, hour_start) DO UPDATE SET value = value + excluded.value"""
SQL_APPLY_BUCKETS = """
INSERT INTO buckets (series_id, bucket_start, bucket_width, value)
SELECT series_id, bucket_start, bucket_width, value
FROM incoming WHERE slow = 0
ON CONFLICT (series_id, bucket_start, bucket_width) DO UPDATE SET value = excluded.value"""
# Pricing: each (series, hour) delta times the price in force at that hour, summed per priced target.
SQL_CREATE_PRICED = """
CREATE TEMP TABLE IF NOT EXISTS priced (
    target_id INTEGER NOT NULL, hour_start INTEGER NOT NULL,
    grow INTEGER NOT NULL, shrink INTEGER NOT NULL, net INTEGER NOT NULL, scale INTEGER NOT NULL
)"""
SQL_CLEAR_PRICED = "DELETE FROM priced"
SQL_FILL_PRICED = """
INSERT INTO priced
SELECT p.target_id, d.hour_start, sum(d.grow * p.price), sum(d.shrink * p.price), sum(d.net * p.price),
       max(p.scale)
FROM deltas AS d JOIN pricing AS p
  ON p.series_id = d.series_id AND p.valid_from <= d.hour_start AND d.hour_start < p.valid_until
GROUP BY p.target_id, d.hour_start"""
# SQLite turns an overflowing integer product into a float: refuse it rather than lose exactness.
SQL_PRICED_OVERFLOW = """
SELECT count(*) FROM priced
WHERE typeof(grow) <> 'integer' OR typeof(shrink) <> 'integer' OR typeof(net) <> 'integer'"""
# Whole target units go to total, the rest stays in sub_total (and the same for adjustments).
SQL_APPLY_PRICED_TOTALS = """
UPDATE series SET
    total = total + (sub_total + g.grow) / g.scale,
    sub_total = (sub_total + g.grow) % g.scale,
    adjustments = adjustments + (sub_adjustments + g.shrink) / g.scale,
    sub_adjustments = (sub_adjustments + g.shrink) % g.scale,
    updated_ns = :now
FROM (SELECT target_id, sum(grow) AS grow, sum(shrink) AS shrink, max(scale) AS scale
      FROM priced GROUP BY target_id) AS g
WHERE series.id = g.target_id AND (g.grow <> 0 OR g.shrink <> 0)"""
SQL_APPLY_PRICED_ROLLUPS = """
INSERT INTO rollups (series_id, hour_start, value)
SELECT target_id, hour_start, net FROM priced WHERE net <> 0
ON CONFLICT (series_id, hour_start) DO UPDATE SET value = value + excluded.value"""
SQL_STAGE_SLOW_DELTA = """
INSERT INTO deltas VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0, 0)"""
SQL_DELETE_PRICING_OF_INSTANCE = """
DELETE FROM pricing WHERE series_id IN (SELECT id FROM series WHERE instance = ?)"""
SQL_INSERT_PRICING = """
INSERT INTO pricing (series_id, valid_from, valid_until, target_id, price, scale) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (series_id, valid_from) DO UPDATE SET
    valid_until = excluded.valid_until, target_id = excluded.target_id, price = excluded.price,
    scale = excluded.scale"""
SQL_PRICEABLE_SERIES = "SELECT id, instance, metric, attrs FROM series WHERE metric NOT IN (?, ?, ?)"
#: Series whose deltas are money or already priced: never priced again (every other series is offered to the
#: pricer, which decides: tokens, requests, and any unit a price entry names).
UNPRICEABLE_METRICS: Final = frozenset({METRIC_COST, METRIC_COST_ESTIMATED, METRIC_UNPRICED})
SQL_MARK_MIXED = "UPDATE series SET bucket_width = 0 WHERE id = ?"
SQL_SLOW_POINTS = """
SELECT series_id, bucket_start, bucket_width, value, prior FROM incoming WHERE slow = 1
ORDER BY series_id, bucket_width DESC, bucket_start"""

SQL_OVERLAPPING_BUCKETS = """
SELECT bucket_start, bucket_width, value FROM buckets
WHERE series_id = ? AND bucket_start > ? AND bucket_start < ? AND bucket_start + bucket_width > ?"""
SQL_CONTAINING_REFINED = """
SELECT bucket_start, bucket_width, value FROM refined
WHERE series_id = ? AND bucket_start > ? AND bucket_start <= ? AND bucket_start + bucket_width >= ?"""
SQL_SUM_INSIDE = """
SELECT coalesce(sum(value), 0) FROM buckets
WHERE series_id = ? AND bucket_start >= ? AND bucket_start + bucket_width <= ?"""
SQL_DELETE_BUCKET = "DELETE FROM buckets WHERE series_id = ? AND bucket_start = ? AND bucket_width = ?"
SQL_MOVE_TO_REFINED = """
INSERT INTO refined (series_id, bucket_start, bucket_width, value) VALUES (?, ?, ?, ?)
ON CONFLICT (series_id, bucket_start, bucket_width) DO UPDATE SET value = excluded.value"""
SQL_UPSERT_BUCKET = """
INSERT INTO buckets (series_id, bucket_start, bucket_width, value) VALUES (?, ?, ?, ?)
ON CONFLICT (series_id, bucket_start, bucket_width) DO UPDATE SET value = excluded.value"""
SQL_ADD_TOTALS = "UPDATE series SET total = total + ?, adjustments = adjustments + ?, updated_ns = ? WHERE id = ?"
SQL_ADD_ROLLUP = """
INSERT INTO rollups (series_id, hour_start, value) VALUES (?, ?, ?)
ON CONFLICT (series_id, hour_start) DO UPDATE SET value = value + excluded.value"""

SQL_UPSERT_NAME = """
INSERT INTO names (instance, kind, id, name, updated_ns) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (instance, kind, id) DO UPDATE SET name = excluded.name, updated_ns = excluded.updated_ns"""
SQL_UPSERT_CURSOR = """
INSERT INTO cursors (instance, source, value, updated_ns) VALUES (?, ?, ?, ?)
ON CONFLICT (instance, source) DO UPDATE SET value = excluded.value, updated_ns = excluded.updated_ns"""
SQL_GET_CURSOR = "SELECT value FROM cursors WHERE instance = ? AND source = ?"
SQL_MAX_SERIES_ID = "SELECT coalesce(max(id), 0) FROM series"
SQL_GET_CURSORS = "SELECT source, value FROM cursors WHERE instance = ?"
SQL_GET_HORIZON = "SELECT pruned_before FROM horizons WHERE instance = ?"
SQL_SET_HORIZON = """
INSERT INTO horizons (instance, pruned_before) VALUES (?, ?)
ON CONFLICT (instance) DO UPDATE SET pruned_before = max(pruned_before, excluded.pruned_before)"""
SQL_PRUNE_BUCKETS = """
DELETE FROM buckets WHERE bucket_start < :before
  AND series_id IN (SELECT id FROM series WHERE instance = :instance)"""
SQL_PRUNE_REFINED = """
DELETE FROM refined WHERE bucket_start < :before
  AND series_id IN (SELECT id FROM series WHERE instance = :instance)"""
SQL_PRUNE_ROLLUPS = "DELETE FROM rollups WHERE hour_start < ?"

_LEVEL_LIST = ", ".join(f"'{m}'" for m in sorted(LEVEL_METRICS))  # constants: no injection
SQL_SNAPSHOT = f"""
SELECT s.id, s.instance, s.metric, s.attrs, s.total, s.adjustments, s.start_time_ns,
       CASE WHEN s.metric IN ({_LEVEL_LIST}) THEN
           (SELECT b.value FROM buckets AS b WHERE b.series_id = s.id ORDER BY b.bucket_start DESC LIMIT 1)
       END
FROM series AS s ORDER BY s.id"""
SQL_NAMES = "SELECT instance, kind, id, name FROM names"
SQL_EXPORT_TOTALS = "SELECT id, total, adjustments, start_time_ns FROM series ORDER BY id"
SQL_EXPORT_LEVELS = f"""
SELECT s.id, (SELECT b.value FROM buckets AS b WHERE b.series_id = s.id ORDER BY b.bucket_start DESC LIMIT 1)
FROM series AS s WHERE s.metric IN ({_LEVEL_LIST})"""
SQL_SERIES_AFTER = "SELECT id, instance, metric, attrs FROM series WHERE id > ? ORDER BY id LIMIT ?"
SQL_SERIES_COUNT = "SELECT count(*) FROM series"
SQL_BUCKET_COUNT = "SELECT count(*) FROM buckets"
SQL_BUCKET_SUMS_BETWEEN = """
SELECT s.instance, s.metric, s.attrs, sum(b.value)
FROM buckets AS b JOIN series AS s ON s.id = b.series_id
WHERE b.bucket_start >= ? AND b.bucket_start + b.bucket_width <= ?
GROUP BY s.id"""
SQL_EXACT_TOTALS = """
SELECT instance, attrs, total, sub_total, adjustments, sub_adjustments FROM series WHERE metric = ? ORDER BY id"""
SQL_ROLLUP_SUMS_BETWEEN = """
SELECT s.instance, s.metric, s.attrs, sum(r.value)
FROM series AS s JOIN rollups AS r ON r.series_id = s.id
WHERE r.hour_start >= ? AND r.hour_start < ? AND s.metric IN ({metrics})
GROUP BY s.id"""
SQL_ROLLUP_SERIES = """
SELECT s.id, s.instance, s.metric, s.attrs, s.bucket_width,
       (SELECT min(hour_start) FROM rollups WHERE series_id = s.id),
       (SELECT max(hour_start) FROM rollups WHERE series_id = s.id)
FROM series AS s WHERE s.metric IN ({metrics})"""
SQL_ROLLUP_SEGMENT_SUMS = """
SELECT s.id, {segments} FROM series AS s WHERE s.metric IN ({metrics})"""
SQL_ROLLUP_VALUES_AT = """
SELECT r.series_id, r.hour_start, r.value FROM rollups AS r
WHERE r.hour_start IN ({hours}) AND r.series_id IN (SELECT id FROM series WHERE metric IN ({metrics}))"""
SQL_ROLLUP_HOURS = """
SELECT s.instance, s.metric, s.attrs, r.hour_start, r.value
FROM series AS s JOIN rollups AS r ON r.series_id = s.id
WHERE r.hour_start IN ({hours}) AND s.metric IN ({metrics})"""
SQL_ROLLUPS_SINCE = """
SELECT s.instance, s.metric, s.attrs, sum(r.value)
FROM rollups AS r JOIN series AS s ON s.id = r.series_id
WHERE r.hour_start >= ?
GROUP BY s.id"""


# ------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True, slots=True)
class SeriesTotal:
    """One series as the emitter sees it: cumulative values and the start time they count from."""

    id: int
    instance: str
    metric: str
    attrs: str  # canonical JSON; parse with ``json.loads`` (the emitter caches the parse per id)
    total: int
    adjustments: int
    start_time_ns: int
    level: int | None = None  # newest bucket's value, for LEVEL_METRICS only


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent read of every series total and name, taken in one read transaction."""

    series: tuple[SeriesTotal, ...]
    names: dict[tuple[str, str, str], str]  # (instance, kind, id) -> name
    taken_ns: int


@dataclass(frozen=True, slots=True)
class ExportRows:
    """What one export reads: every series' totals, the series the reader has not seen yet, and names.

    A series' instance, metric and attributes never change once created (they are its identity) and series are
    never deleted, so an emitter needs them once per series; only the totals are read on every export.
    """

    totals: list[tuple[int, int, int, int]]  # (series id, total, adjustments, start_time_ns)
    new_series: Iterable[tuple[int, str, str, str]]  # (series id, instance, metric, canonical attrs JSON)
    names: dict[tuple[str, str, str], str]  # (instance, kind, id) -> name
    levels: dict[int, int] = field(default_factory=dict)  # level series id -> its newest bucket's value


@dataclass(slots=True)
class ApplyStats:
    """What one ``apply`` did, for the ``llm.receiver.records`` counter and the poll's log line."""

    outcomes: Counter[str] = field(default_factory=Counter)
    series_created: int = 0

    @property
    def points(self) -> int:
        return sum(self.outcomes.values())


# ------------------------------------------------------------------------------------------------- helpers
@dataclass(slots=True)
class _Expansion:
    """Records -> series keys -> rows, with attribute JSON built once per distinct record identity.

    Providers return many buckets of few series, so the per-point work is a dict lookup and a tuple; the
    JSON encoding and the series lookup happen once per identity, not once per point.
    """

    usage_idents: list[tuple[object, ...]] = field(default_factory=list)  # one per usage record, in order
    cost_idents: list[tuple[object, ...]] = field(default_factory=list)  # one per cost record, in order
    usage_keys: dict[tuple[object, ...], tuple[list[tuple[str, tuple[str, str]]], tuple[str, str]]] = field(
        default_factory=dict)
    cost_keys: dict[tuple[object, ...], tuple[str, str]] = field(default_factory=dict)
    usage_bases: dict[tuple[object, ...], dict[str, str]] = field(default_factory=dict)
    measure_keys: dict[tuple[tuple[object, ...], str], tuple[str, str]] = field(default_factory=dict)
    quantity_keys: dict[tuple[tuple[object, ...], str], tuple[str, str]] = field(default_factory=dict)


def _expand(result: PollResult, tenant: str) -> _Expansion:
    ex = _Expansion()
    # Providers share one dimensions dict among the records of a group: sort each distinct dict once. (The
    # records hold the dicts alive for this whole call, so their ids are stable keys.)
    sorted_dims: dict[int, tuple[tuple[str, str], ...]] = {}
    for r in result.usage:
        dims: tuple[tuple[str, str], ...] = ()
        if r.dimensions:
            dims = sorted_dims.get(id(r.dimensions)) or sorted_dims.setdefault(
                id(r.dimensions), tuple(sorted(r.dimensions.items())))
        ident = (r.provider, r.model, r.operation, r.tenancy_id, r.tenant or tenant, dims)
        ex.usage_idents.append(ident)
        if ident not in ex.usage_keys:
            base = {
                "gen_ai.provider.name": r.provider,
                "llm.tenancy.id": r.tenancy_id,
                "llm.tenant": r.tenant or tenant,
                **dict(dims),
            }
            if r.model:  # measures that belong to no model (e.g. Claude Code sessions) leave these out
                base["gen_ai.request.model"] = r.model
            if r.operation:
                base["gen_ai.operation.name"] = r.operation
            by_type: list[tuple[str, tuple[str, str]]] = [
                (t, (METRIC_TOKENS, canonical_attrs({**base, "gen_ai.token.type": t}))) for t in TOKEN_TYPES
            ]
            ex.usage_keys[ident] = (by_type, (METRIC_REQUESTS, canonical_attrs(base)))
            ex.usage_bases[ident] = base
        for metric in r.measures:
            if metric not in MEASURE_OF_METRIC and metric not in LEVEL_METRICS:
                # a provider bug, not a storage failure: the scheduler counts it as bad_response
                raise ValueError(f"unknown measure {metric!r} in a usage record (not a usage counter or level)")
            if (ident, metric) not in ex.measure_keys:
                ex.measure_keys[(ident, metric)] = (metric, canonical_attrs(ex.usage_bases[ident]))
    for c in result.costs:
        dims = tuple(sorted(c.dimensions.items())) if c.dimensions else ()
        currency = c.currency.upper()
        cost_ident = (c.provider, c.tenancy_id, c.tenant or tenant, c.model, c.line_item, currency, dims)
        ex.cost_idents.append(cost_ident)
        if cost_ident not in ex.cost_keys:
            base = {
                "gen_ai.provider.name": c.provider,
                "llm.tenancy.id": c.tenancy_id,
                "llm.tenant": c.tenant or tenant,
                **dict(dims),
            }
            if c.model:
                base["gen_ai.request.model"] = c.model
            if c.line_item:
                base["llm.cost.line_item"] = c.line_item
            if currency != "USD":
                base[CURRENCY_ATTR] = currency
            metric = METRIC_COST if currency == "USD" else METRIC_COST_NON_USD
            ex.cost_keys[cost_ident] = (metric, canonical_attrs(base))
        if c.quantity is not None and (cost_ident, c.quantity_unit or "") not in ex.quantity_keys:
            # What was billed for the money, per unit: the cost series' attributes (less currency) and the unit.
            quantity_attrs = {k: v for k, v in json.loads(ex.cost_keys[cost_ident][1]).items() if k != CURRENCY_ATTR}
            quantity_attrs["llm.cost.quantity_unit"] = c.quantity_unit or "unknown"
            ex.quantity_keys[(cost_ident, c.quantity_unit or "")] = (
                METRIC_BILLED_QUANTITY, canonical_attrs(quantity_attrs))
    return ex


@dataclass(slots=True)
class _Rows:
    rows: list[tuple[int, int, int, int]]  # (series_id, bucket_start, bucket_width, value)
    pending: list[tuple[int, int, int, int]]  # points of series not in the ledger yet, with their new ids
    new_ids: dict[tuple[str, str], int]  # series to create, in id order: the id SQLite will give each
    rejected: int  # points before the pruned horizon
    repeats: bool  # some record identity and bucket came twice (parts of one bucket to add up)


def _rows(
    result: PollResult, ex: _Expansion, ids: dict[tuple[str, str], int], horizon: int, max_id: int = 0
) -> _Rows:
    """Every point as ``(series id, start, width, value)``.

    A series not in the ledger yet gets the id SQLite will assign it (``max_id`` + its rank among the new
    series: ``INTEGER PRIMARY KEY`` rows inserted in order in one write transaction get consecutive ids), so
    its points need no second pass to swap keys for ids; ``Ledger._apply`` checks the prediction and remaps if
    it ever fails.
    """
    rows: list[tuple[int, int, int, int]] = []
    pending: list[tuple[int, int, int, int]] = []
    new_ids: dict[tuple[str, str], int] = {}

    def new_id(key: tuple[str, str]) -> int:
        sid = new_ids.get(key)
        if sid is None:
            sid = new_ids[key] = max_id + len(new_ids) + 1
        return sid

    append = rows.append
    rejected = 0
    seen: set[tuple[int, int, int]] = set()
    repeats = False
    usage_sids = {
        ident: ([(t, key, ids.get(key)) for t, key in by_type], req, ids.get(req))
        for ident, (by_type, req) in ex.usage_keys.items()
    }
    for r, ident in zip(result.usage, ex.usage_idents, strict=True):
        start, width, tokens = r.bucket_start, r.bucket_width, r.tokens
        if start < horizon:
            rejected += len(tokens) + (r.requests is not None) + len(r.measures)
            continue
        entry = usage_sids[ident]
        bucket = (id(entry), start, width)
        if bucket in seen:
            repeats = True
        seen.add(bucket)
        by_type_sids, req_key, req_sid = entry
        creates_zero = not r.sparse  # a sparse record's zeros create no series (see UsageRecord)
        for token_type, key, sid in by_type_sids:
            value = tokens.get(token_type)
            if value is not None:
                if sid is None:
                    if value or creates_zero:
                        pending.append((new_ids.get(key) or new_id(key), start, width, value))
                else:
                    append((sid, start, width, value))
        if r.requests is not None:
            if req_sid is None:
                if r.requests or creates_zero:
                    pending.append((new_ids.get(req_key) or new_id(req_key), start, width, r.requests))
            else:
                append((req_sid, start, width, r.requests))
        for metric, value in r.measures.items():
            key = ex.measure_keys[(ident, metric)]
            sid = ids.get(key)
            if sid is None:
                if value or creates_zero:
                    pending.append((new_id(key), start, width, value))
            else:
                append((sid, start, width, value))
    for c, ident in zip(result.costs, ex.cost_idents, strict=True):
        if c.bucket_start < horizon:
            rejected += 1 + (c.quantity is not None)
            continue
        key = ex.cost_keys[ident]
        cost_bucket = (id(key), c.bucket_start, c.bucket_width)
        if cost_bucket in seen:
            repeats = True
        seen.add(cost_bucket)
        sid = ids.get(key)
        if sid is None:
            pending.append((new_id(key), c.bucket_start, c.bucket_width, to_nanos(c.amount)))
        else:
            append((sid, c.bucket_start, c.bucket_width, to_nanos(c.amount)))
        if c.quantity is not None:
            qkey = ex.quantity_keys[(ident, c.quantity_unit or "")]
            qsid = ids.get(qkey)
            if qsid is None:
                pending.append((new_id(qkey), c.bucket_start, c.bucket_width, to_nanos(c.quantity)))
            else:
                append((qsid, c.bucket_start, c.bucket_width, to_nanos(c.quantity)))
    return _Rows(rows, pending, new_ids, rejected, repeats)


# -------------------------------------------------------------------------------------------------- ledger
def _check_ledger_file(path: Path) -> None:
    """Readers (``report``, ``focus``) open an existing ledger or say why not: they never create one.

    ``sqlite3.connect`` creates a missing file, which turned a typo in ``--storage`` into a 0-byte "ledger" and
    a traceback; this says what is wrong in one line instead.
    """
    if not path.exists():
        raise LedgerError(
            f"no ledger at {path}: run `otel-llm-receiver run` (or `demo`) first, or point --storage / "
            "storage.path at an existing ledger"
        )
    if not path.is_file():
        raise LedgerError(f"{path} is not a file, not a ledger")
    if path.stat().st_size == 0:
        raise LedgerError(f"{path} is empty, not a ledger (move it aside; `run` makes a new ledger)")


class Ledger:
    """One connection to the ledger file. Use one ``Ledger`` per thread (sqlite3 connections are not shared).

    The scheduler owns the only writer; the emitter and the terminal summary open their own readers, which
    WAL lets run beside the writer without blocking it.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._writer_lock: WriterLock | None = None
        if readonly:
            _check_ledger_file(self.path)
        try:
            self._connect(readonly)
        except BaseException:
            if self._writer_lock is not None:  # a writer that failed to open holds nothing
                self._writer_lock.release()
                self._writer_lock = None
            raise
        self._series_ids: dict[str, dict[tuple[str, str], int]] = {}
        # Parsed attribute sets of the rollup readers, shared and read-only: a series' attributes never change,
        # and a reader called once per day (FOCUS) or per export (signals) would parse the same strings again.
        self._parsed_attrs: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._pricer: SeriesPricer | None = None

    # -- pricing -------------------------------------------------------------------------------------------
    def set_pricer(self, pricer: SeriesPricer | None, *, now_ns: int | None = None) -> int:
        """Price every token and request series with ``pricer`` from now on; returns the series priced.

        The schedules of all existing series are rebuilt in one transaction, so a changed catalog applies to
        every delta from here on; what was already counted stays (counters never go down). New series get
        their schedule inside the apply that creates them.
        """
        self._pricer = pricer
        if pricer is None or self.readonly:
            return 0
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._lock, self._transaction() as tx:
            tx.execute("DELETE FROM pricing")
            rows = tx.execute(SQL_PRICEABLE_SERIES, sorted(UNPRICEABLE_METRICS)).fetchall()
            by_instance: dict[str, list[tuple[int, str, str]]] = {}
            for sid, instance, metric, attrs in rows:
                by_instance.setdefault(instance, []).append((sid, metric, attrs))
            for instance, series in by_instance.items():
                self._price_series(tx, instance, series, now_ns)
            self._series_ids.clear()
        return len(rows)

    def _price_series(
        self, tx: sqlite3.Connection, instance: str, series: list[tuple[int, str, str]], now_ns: int
    ) -> None:
        """Write the pricing schedules of new usage series (one pricer call per series, never per point)."""
        pricer = self._pricer
        if pricer is None:
            return
        planned: list[tuple[int, PricingPeriod, tuple[str, str]]] = []
        for sid, metric, attrs in series:
            if metric in UNPRICEABLE_METRICS:
                continue
            for period in pricer.schedule(metric, json.loads(attrs)):
                planned.append((sid, period, (period.target_metric, canonical_attrs(period.target_attrs))))
        if not planned:
            return
        targets = dict.fromkeys(key for _, _, key in planned)
        tx.executemany(SQL_INSERT_SERIES, [(instance, m, a, now_ns, now_ns) for m, a in targets])
        ids = self._ids_for(tx, instance, refresh=True)
        tx.executemany(SQL_INSERT_PRICING, [
            (sid, p.valid_from, p.valid_until, ids[key], p.price, p.scale) for sid, p, key in planned
        ])

    def _apply_priced(self, tx: sqlite3.Connection, instance: str, now_ns: int) -> None:
        """Turn the ``deltas`` just applied into deltas of their priced series (estimated cost, unpriced)."""
        tx.execute(SQL_CLEAR_PRICED)
        tx.execute(SQL_FILL_PRICED)
        if tx.execute(SQL_PRICED_OVERFLOW).fetchone()[0]:
            raise LedgerError(
                f"{instance}: an estimated-cost delta exceeds 64-bit pico-units (over 9.2 million USD in one "
                "series-hour); the poll was not applied"
            )
        tx.execute(SQL_APPLY_PRICED_TOTALS, {"now": now_ns})
        tx.execute(SQL_APPLY_PRICED_ROLLUPS)
        tx.execute(SQL_CLEAR_PRICED)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: cannot begin a transaction: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"ledger {self.path}: {exc}") from exc
            raise

    def _connect(self, readonly: bool) -> None:
        """Open (a writer: lock, create if missing, migrate) or attach read-only; every failure a LedgerError."""
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer_lock = WriterLock(self.path)  # before creating or opening: one writer at a time
                if not self.path.exists():  # built beside, linked into place: never an empty file at path
                    create_atomically(self.path, self._initialise)
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, timeout=30.0, check_same_thread=False
            )
            self._conn.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA temp_store = MEMORY")  # the per-poll staging tables
                self._migrate()
            else:
                self._conn.execute("PRAGMA query_only = ON")
                self._check_is_ledger()
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise LedgerError(f"{self.path} is not a receiver ledger (not an SQLite database)") from exc
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc.strerror or exc}") from exc

    def _check_is_ledger(self) -> None:
        """A reader must not guess at a database some other program made, nor at a newer schema."""
        found = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if found is None:
            raise LedgerError(f"{self.path} is an SQLite database but not a receiver ledger")
        newest = max((v for v, _, _ in MIGRATIONS), default=0)
        if self.schema_version > newest:
            raise LedgerError(
                f"ledger {self.path} has schema version {self.schema_version}, newer than this release "
                f"understands ({newest}); upgrade otel-llm-receiver"
            )

    def _initialise(self, conn: sqlite3.Connection) -> None:
        """Make a new ledger on ``conn`` (``create_atomically`` runs this on the file built beside the path)."""
        self._conn = conn
        conn.execute("PRAGMA journal_mode = WAL")
        self._migrate()

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute(SQL_CREATE_MIGRATIONS)
        applied = {row[0] for row in conn.execute(SQL_APPLIED_VERSIONS)}
        newest = max((v for v, _, _ in MIGRATIONS), default=0)
        if applied and max(applied) > newest:
            raise LedgerError(
                f"ledger {self.path} has schema version {max(applied)}, newer than this release "
                f"understands ({newest}); upgrade otel-llm-receiver or point storage.path elsewhere"
            )
        for version, name, script in MIGRATIONS:
            if version in applied:
                continue
            with self._transaction() as tx:
                if callable(script):
                    script(tx)
                else:
                    for statement in _split_sql(script):
                        tx.execute(statement)
                tx.execute(SQL_RECORD_MIGRATION, (version, name, time.time_ns()))
        with self._transaction() as tx:
            tx.execute(SQL_PUT_META, ("service.instance.id", str(uuid.uuid4())))

    # -- reads ---------------------------------------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        """The receiver's ``service.instance.id``: made once per ledger, so it survives restarts."""
        row = self._conn.execute(SQL_GET_META, ("service.instance.id",)).fetchone()
        if row is None:
            raise LedgerError(f"ledger {self.path} has no service.instance.id (not initialised)")
        return str(row[0])

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def cursor(self, instance: str, source: str = "poll") -> str | None:
        row = self._conn.execute(SQL_GET_CURSOR, (instance, source)).fetchone()
        return None if row is None else str(row[0])

    def cursors(self, instance: str) -> dict[str, str]:
        """Every cursor of one instance, by source."""
        return {str(k): str(v) for k, v in self._conn.execute(SQL_GET_CURSORS, (instance,))}

    def pruned_before(self, instance: str) -> int:
        row = self._conn.execute(SQL_GET_HORIZON, (instance,)).fetchone()
        return 0 if row is None else int(row[0])

    def snapshot(self) -> Snapshot:
        """Every series total and every name, read in one transaction so they are mutually consistent."""
        conn = self._conn
        with self._lock:
            try:
                conn.execute("BEGIN")
                try:
                    rows = conn.execute(SQL_SNAPSHOT).fetchall()
                    names = {(i, k, d): n for i, k, d, n in conn.execute(SQL_NAMES)}
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self.path}: cannot read a snapshot: {exc}") from exc
        return Snapshot(
            series=tuple(SeriesTotal(*row) for row in rows), names=names, taken_ns=time.time_ns()
        )

    def export_rows(self, known_series: int = 0, *, page: int = 10_000) -> ExportRows:
        """Every series' totals and the names (one read), and the series with an id above ``known_series``.

        The new series are read lazily, ``page`` at a time, so that describing 100,000 series to a fresh
        emitter never holds all their attributes in memory at once. They need not be in the totals' read:
        a series' identity never changes, and one created after the totals were read is simply described early.
        """
        conn = self._conn
        with self._lock:
            try:
                conn.execute("BEGIN")
                try:
                    totals = conn.execute(SQL_EXPORT_TOTALS).fetchall()
                    names = {(i, k, d): n for i, k, d, n in conn.execute(SQL_NAMES)}
                    levels = {sid: v for sid, v in conn.execute(SQL_EXPORT_LEVELS) if v is not None}
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self.path}: cannot read the totals: {exc}") from exc
        return ExportRows(totals, self._series_after(known_series, page), names, levels)

    def _series_after(self, after: int, page: int) -> Iterator[tuple[int, str, str, str]]:
        while True:
            with self._lock:
                try:
                    rows = self._conn.execute(SQL_SERIES_AFTER, (after, page)).fetchall()
                except sqlite3.Error as exc:
                    raise LedgerError(f"ledger {self.path}: cannot read the series: {exc}") from exc
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def rollup_totals_since(self, since: int) -> list[tuple[str, str, dict[str, str], int]]:
        """Per series: the sum of its hourly rollups from ``since`` on, as (instance, metric, attrs, value)."""
        return [
            (instance, metric, json.loads(attrs), int(value))
            for instance, metric, attrs, value in self._conn.execute(SQL_ROLLUPS_SINCE, (since,))
        ]

    def bucket_sums_between(self, start: int, end: int) -> list[tuple[str, str, dict[str, str], int]]:
        """Per series: the sum of the latest values of buckets lying inside ``[start, end)``."""
        return [
            (instance, metric, json.loads(attrs), int(value))
            for instance, metric, attrs, value in self._conn.execute(SQL_BUCKET_SUMS_BETWEEN, (start, end))
        ]

    def exact_totals(self, metric: str) -> list[tuple[str, dict[str, str], int, int]]:
        """Per series of ``metric``: (instance, attrs, total, adjustments) in sub-units, remainders included.

        For estimated cost that is pico-USD (``total * 1000 + sub_total``): the exact sum of every priced delta.
        """
        scale = PICOS_PER_NANO if metric in ROLLUP_PICO_METRICS else 1
        return [
            (instance, json.loads(attrs), int(total) * scale + int(sub), int(adj) * scale + int(sub_adj))
            for instance, attrs, total, sub, adj, sub_adj in self._conn.execute(SQL_EXACT_TOTALS, (metric,))
        ]

    def rollup_sums_between(
        self, start: int, end: int, metrics: Sequence[str]
    ) -> list[tuple[str, str, dict[str, str], int]]:
        """Per series of ``metrics``: the sum of its hourly rollups with ``start <= hour < end``.

        Values are in the rollup unit of the metric (``ROLLUP_PICO_METRICS``: pico-units). The attribute dicts
        are shared between calls: read-only.
        """
        marks = ",".join("?" * len(metrics))
        sql = SQL_ROLLUP_SUMS_BETWEEN.format(metrics=marks)
        attrs_of = self._attrs
        return [
            (instance, metric, attrs_of(attrs), int(value))
            for instance, metric, attrs, value in self._conn.execute(sql, (start, end, *metrics))
        ]

    def _attrs(self, text: str) -> dict[str, str]:
        """A series' attributes parsed once per ledger; callers must not change the dict they get."""
        parsed = self._parsed_attrs.get(text)
        if parsed is None:
            parsed = self._parsed_attrs[text] = json.loads(text)
        return parsed

    def rollup_hours(
        self, hours: Sequence[int], metrics: Sequence[str]
    ) -> list[tuple[str, str, dict[str, str], int, int]]:
        """The hourly rollups of ``metrics`` at exactly these hours: (instance, metric, attrs, hour, value).

        The attribute dicts are shared between calls: read-only.
        """
        if not hours or not metrics:
            return []
        sql = SQL_ROLLUP_HOURS.format(hours=",".join("?" * len(hours)), metrics=",".join("?" * len(metrics)))
        attrs_of = self._attrs
        return [
            (instance, metric, attrs_of(attrs), int(hour), int(value))
            for instance, metric, attrs, hour, value in self._conn.execute(sql, (*hours, *metrics))
        ]

    def rollup_series(self, metrics: Sequence[str]) -> dict[int, tuple[str, str, dict[str, str], int, int, int]]:
        """Series of ``metrics`` that have rollups: id -> (instance, metric, attrs, bucket width, first hour,
        last hour). The first and last hours come from the rollups' primary key (one index probe each)."""
        sql = SQL_ROLLUP_SERIES.format(metrics=",".join("?" * len(metrics)))
        return {
            int(sid): (instance, metric, json.loads(attrs), int(width or 0), int(first), int(last))
            for sid, instance, metric, attrs, width, first, last in self._conn.execute(sql, tuple(metrics))
            if first is not None
        }

    def rollup_window_sums(
        self, windows: Sequence[tuple[int, int]], metrics: Sequence[str]
    ) -> dict[int, list[int]]:
        """Per series id of ``metrics``: the sum of its hourly rollups in each ``[start, end)`` window.

        Budgets ask for several overlapping windows each (period to date, trailing hours, the part before and
        after reported cost ends). The edges of all windows cut time into disjoint segments; each segment of
        each series is one range walk of the rollups' primary key, so every row is read once whatever the
        number of windows, and each window adds up its segments.
        """
        if not windows or not metrics:
            return {}
        edges = sorted({t for w in windows for t in w})
        if len(edges) < 2:
            return {}
        segments = ", ".join(
            f"(SELECT coalesce(sum(value), 0) FROM rollups WHERE series_id = s.id "
            f"AND hour_start >= {int(a)} AND hour_start < {int(b)})"
            for a, b in itertools.pairwise(edges)
        )
        sql = SQL_ROLLUP_SEGMENT_SUMS.format(segments=segments, metrics=",".join("?" * len(metrics)))
        position = {t: i for i, t in enumerate(edges)}
        spans = [(position[a], position[b]) for a, b in windows]
        out: dict[int, list[int]] = {}
        for sid, *row in self._conn.execute(sql, tuple(metrics)):
            if any(row):
                out[int(sid)] = [sum(row[i:j]) for i, j in spans]
        return out

    def rollup_values_at(self, hours: Sequence[int], metrics: Sequence[str]) -> list[tuple[int, int, int]]:
        """(series id, hour, value) of the rollups of ``metrics`` at exactly these hours (point lookups)."""
        if not hours or not metrics:
            return []
        hours = sorted(set(hours))
        lookups = ", ".join(
            f"(SELECT value FROM rollups WHERE series_id = s.id AND hour_start = {int(h)})" for h in hours
        )
        sql = SQL_ROLLUP_SEGMENT_SUMS.format(segments=lookups, metrics=",".join("?" * len(metrics)))
        out = []
        for sid, *values in self._conn.execute(sql, tuple(metrics)):
            out += [(int(sid), h, int(v)) for h, v in zip(hours, values, strict=True) if v is not None]
        return out

    def names(self) -> dict[tuple[str, str, str], str]:
        """Every resolved name: (instance, kind, id) -> name."""
        return {(i, k, d): n for i, k, d, n in self._conn.execute(SQL_NAMES)}

    def rollup_range(self) -> tuple[int, int] | None:
        """The first and last hour with a rollup, or None when there are none."""
        row = self._conn.execute("SELECT min(hour_start), max(hour_start) FROM rollups").fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def counts(self) -> dict[str, int]:
        """Sizes for the health endpoint and logs."""
        return {
            "series": int(self._conn.execute(SQL_SERIES_COUNT).fetchone()[0]),
            "buckets": int(self._conn.execute(SQL_BUCKET_COUNT).fetchone()[0]),
        }

    # -- the write path ------------------------------------------------------------------------------------
    def apply(
        self,
        instance: str,
        result: PollResult,
        *,
        tenant: str = "default",
        cursor: str | None = None,
        prune_before: int | None = None,
        now_ns: int | None = None,
    ) -> ApplyStats:
        """Apply one poll's records, names and cursor in one transaction; return what each point did.

        ``cursor`` is saved as the instance's ``poll`` cursor, ``result.cursors`` under their own sources.
        ``prune_before`` (Unix seconds) drops bucket rows that start before it, once the provider can no
        longer revise them; records for such buckets arriving later are rejected, so they are never counted
        twice.
        """
        if self.readonly:
            raise LedgerError(f"ledger {self.path} is open read-only")
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            try:
                return self._apply(instance, result, tenant, cursor, prune_before, now_ns)
            except BaseException:
                # Series created by a rolled-back poll do not exist: forget the ids cached for them.
                self._series_ids.pop(instance, None)
                raise

    def _apply(
        self, instance: str, result: PollResult, tenant: str, cursor: str | None, prune_before: int | None,
        now_ns: int,
    ) -> ApplyStats:
        stats = ApplyStats()
        with self._transaction() as tx:
            tx.execute(SQL_CREATE_INCOMING)
            tx.execute(SQL_CREATE_STAGED)
            tx.execute(SQL_CLEAR_INCOMING)
            ids = self._ids_for(tx, instance)
            horizon = self.pruned_before(instance)
            max_id = tx.execute(SQL_MAX_SERIES_ID).fetchone()[0]
            staged = _rows(result, _expand(result, tenant), ids, horizon, max_id)
            rows, pending, rejected = staged.rows, staged.pending, staged.rejected
            if rejected:
                stats.outcomes["rejected"] = rejected
                log.info(
                    "%s: %d points for buckets before the pruned horizon %d were rejected "
                    "(already counted, no longer revisable)", instance, rejected, horizon,
                )
            if rows:  # points of known series: keep those that changed, with their prior values
                tx.executemany(SQL_STAGE_POINT, rows)
                if staged.repeats:  # parts of one bucket in one poll add up
                    changed = tx.execute(SQL_KEEP_CHANGED_SUMMED).rowcount
                    distinct = tx.execute(SQL_COUNT_STAGED).fetchone()[0]
                else:
                    changed = tx.execute(SQL_KEEP_CHANGED).rowcount
                    distinct = len(rows)
                tx.execute(SQL_CLEAR_STAGED)
                if distinct > changed:
                    stats.outcomes["unchanged"] = distinct - changed
            if pending:  # first points of new series: create the series, then stage the points as new
                missing = staged.new_ids
                tx.executemany(SQL_INSERT_SERIES, [(instance, m, a, now_ns, now_ns) for m, a in missing])
                stats.series_created = len(missing)
                ids = self._ids_for(tx, instance, refresh=True)
                remap = {predicted: ids[key] for key, predicted in missing.items() if ids[key] != predicted}
                if remap:  # SQLite chose other ids than max + 1, ... (never seen; correct either way)
                    pending = [(remap.get(sid, sid), start, width, value) for sid, start, width, value in pending]
                self._price_series(tx, instance, [(ids[key], key[0], key[1]) for key in missing], now_ns)
                tx.executemany(
                    SQL_STAGE_NEW_SERIES_POINT_SUMMED if staged.repeats else SQL_STAGE_NEW_SERIES_POINT, pending
                )
            bad = tx.execute(SQL_FIND_INVALID).fetchone()
            if bad is not None:
                raise LedgerError(
                    f"{instance}: {bad[0]} {bad[1]} has an invalid point: bucket start {bad[2]}, "
                    f"width {bad[3]}s, value {bad[4]}; the poll was not applied"
                )
            max_width = tx.execute(SQL_MAX_WIDTH).fetchone()[0]
            if max_width:
                tx.execute(SQL_MARK_SLOW, {"max_width": max_width})
            tx.execute(SQL_CREATE_DELTAS)
            tx.execute(SQL_CLEAR_DELTAS)
            tx.execute(SQL_FILL_DELTAS)
            counts = tx.execute(SQL_COUNT_OUTCOMES).fetchone()
            for outcome, count in zip(("new", "grown", "shrunk"), counts, strict=True):
                if count:
                    stats.outcomes[outcome] += count
            if stats.outcomes["shrunk"]:
                for metric, attrs, shrunk_points, amount in tx.execute(SQL_SHRUNK):
                    if metric in LEVEL_METRICS:  # a level going down is news, not a correction
                        continue
                    log.warning(
                        "%s: %d bucket(s) of %s %s shrank by %d in total (counted in llm.usage.adjustments)",
                        instance, shrunk_points, metric, attrs, amount,
                    )
            tx.execute(SQL_APPLY_TOTALS, {"now": now_ns})
            tx.execute(SQL_APPLY_ROLLUPS)
            tx.execute(SQL_APPLY_BUCKETS)
            tx.execute(SQL_CREATE_PRICED)
            self._apply_priced(tx, instance, now_ns)
            slow = tx.execute(SQL_SLOW_POINTS).fetchall()
            if slow:
                slow_deltas: list[tuple[int, int, int, int, int]] = []
                for sid, start, width, value, prior in slow:
                    outcome = self._apply_width_change(
                        tx, instance, sid, start, width, value, prior, now_ns, slow_deltas)
                    stats.outcomes[outcome] += 1
                tx.execute(SQL_CLEAR_DELTAS)
                tx.executemany(SQL_STAGE_SLOW_DELTA, slow_deltas)
                self._apply_priced(tx, instance, now_ns)
            tx.execute(SQL_CLEAR_INCOMING)
            tx.execute(SQL_CLEAR_DELTAS)

            if result.names:
                tx.executemany(
                    SQL_UPSERT_NAME,
                    [(instance, kind, ident, name, now_ns) for (kind, ident), name in result.names.items()],
                )
            cursors = dict(result.cursors)
            if cursor is not None:
                cursors["poll"] = cursor
            if cursors:
                tx.executemany(
                    SQL_UPSERT_CURSOR, [(instance, s, v, now_ns) for s, v in cursors.items()]
                )
            if prune_before is not None and prune_before > horizon:
                tx.execute(SQL_PRUNE_BUCKETS, {"before": prune_before, "instance": instance})
                tx.execute(SQL_PRUNE_REFINED, {"before": prune_before, "instance": instance})
                tx.execute(SQL_SET_HORIZON, (instance, prune_before))
        return stats

    def prune_rollups(self, before: int) -> int:
        """Drop hourly rollups older than ``before`` (storage.retention); returns rows removed."""
        with self._lock, self._transaction() as tx:
            return int(tx.execute(SQL_PRUNE_ROLLUPS, (before,)).rowcount)

    def _ids_for(
        self, tx: sqlite3.Connection, instance: str, *, refresh: bool = False
    ) -> dict[tuple[str, str], int]:
        ids = self._series_ids.get(instance)
        if ids is None or refresh:
            ids = {(m, a): i for i, m, a in tx.execute(SQL_SERIES_OF_INSTANCE, (instance,))}
            self._series_ids[instance] = ids
        return ids

    def _apply_width_change(
        self,
        tx: sqlite3.Connection,
        instance: str,
        sid: int,
        start: int,
        width: int,
        value: int,
        prior: int | None,
        now_ns: int,
        slow_deltas: list[tuple[int, int, int, int, int]],
    ) -> str:
        """Apply one point whose bucket overlaps buckets of another width (rare: a bucket-width change).

        A coarser bucket replaces the finer ones it covers, counting only its difference from their sum.
        A finer bucket inside an already counted coarser one refines it: that region counts
        ``max(coarse value, sum of the finer buckets)``, so tokens are neither lost nor counted twice.
        """
        end = start + width
        tx.execute(SQL_MARK_MIXED, (sid,))
        max_width = int(tx.execute(SQL_MAX_WIDTH).fetchone()[0] or width)
        lower = start - max(max_width, width)
        containing = tx.execute(SQL_CONTAINING_REFINED, (sid, lower, start, end)).fetchone()
        if containing is None:
            containing_bucket = [
                (s, w, v) for s, w, v in tx.execute(SQL_OVERLAPPING_BUCKETS, (sid, lower, end, start))
                if s <= start and s + w >= end and w != width
            ]
            if containing_bucket:
                # Refine: move the coarse bucket aside; it keeps counting until the fine ones exceed it.
                cs, cw, cv = containing_bucket[0]
                tx.execute(SQL_DELETE_BUCKET, (sid, cs, cw))
                tx.execute(SQL_MOVE_TO_REFINED, (sid, cs, cw, cv))
                containing = (cs, cw, cv)
        if containing is not None:
            cs, cw, cv = containing
            inside_before = int(tx.execute(SQL_SUM_INSIDE, (sid, cs, cs + cw)).fetchone()[0])
            own_before = prior or 0
            inside_after = inside_before - own_before + value
            delta = max(cv, inside_after) - max(cv, inside_before)
            tx.execute(SQL_UPSERT_BUCKET, (sid, start, width, value))
            outcome = "new" if prior is None else ("grown" if value > prior else "shrunk" if value < prior else "unchanged")
        else:
            overlapped = tx.execute(SQL_OVERLAPPING_BUCKETS, (sid, lower, end, start)).fetchall()
            if any(s < start or s + w > end for s, w, _ in overlapped):
                log.warning(
                    "%s: bucket [%d, +%ds) partly overlaps buckets of another width; rejected",
                    instance, start, width,
                )
                return "rejected"
            covered = sum(v for _, _, v in overlapped)
            for s, w, v in overlapped:
                tx.execute(SQL_DELETE_BUCKET, (sid, s, w))
                tx.execute(SQL_ADD_ROLLUP, (sid, s - s % 3600, -v))
                slow_deltas.append((sid, s - s % 3600, 0, 0, -v))
            tx.execute(SQL_UPSERT_BUCKET, (sid, start, width, value))
            tx.execute(SQL_ADD_ROLLUP, (sid, start - start % 3600, value))
            slow_deltas.append((sid, start - start % 3600, 0, 0, value))
            delta = value - covered
            outcome = "grown" if delta > 0 else "shrunk" if delta < 0 else "unchanged"
            if prior is None and not overlapped:
                outcome = "new"
        if containing is not None:
            tx.execute(SQL_ADD_ROLLUP, (sid, start - start % 3600, delta))
            slow_deltas.append((sid, start - start % 3600, 0, 0, delta))
        grow, shrink = max(delta, 0), max(-delta, 0)
        if grow or shrink:
            tx.execute(SQL_ADD_TOTALS, (grow, shrink, now_ns, sid))
            slow_deltas.append((sid, start - start % 3600, grow, shrink, 0))
        if shrink:
            log.warning("%s: series %d shrank by %d at bucket %d (bucket-width change)", instance, sid, shrink, start)
        return outcome


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (no statement in our schema has ';' inside a literal)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
