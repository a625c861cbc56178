"""The ledger's write path: one poll applied in one transaction, pricing of its deltas, pruning.

Providers re-report the same buckets on every poll (overlapping windows), revise recent buckets (growing as a
partial bucket fills in, shrinking on a correction) and deliver them late. The ledger keeps, per series and
bucket, the last value seen, and turns each poll into differences against it:

* a bucket seen for the first time adds its value to the series' cumulative ``total``;
* a bucket that grew adds only the growth; an unchanged one adds nothing;
* a bucket that shrank adds nothing to ``total`` (counters never go down) and the shrink to ``adjustments``,
  so ``total - adjustments`` is exactly the sum of the latest bucket values (DESIGN.md invariant 1).

One poll is one write transaction holding its records, names and cursor (invariant 2). The series keys come
from the pure normalise step (``series.SeriesKeys``, cached across polls); the points are staged in a temp table
keyed like the ``buckets`` primary key, a slice at a time, and applied in ranges of whole series, so neither
Python nor SQLite holds more than a slice of working lists beside the staged points, and an unchanged re-read
costs one lookup.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, ClassVar, Final

from ..errors import LedgerError
from ..model import PollResult
from ..names import LEVEL_METRICS, METRIC_COST, METRIC_COST_ESTIMATED, METRIC_UNPRICED
from ..series import (
    PricingPeriod,
    SeriesKey,
    SeriesKeys,
    SeriesPricer,
    canonical_attrs,
)
from .engine import Connection, LedgerEngine
from .planner import Point, PointPlanner
from .schema import SQL_BUMP_GENERATION, new_generation

if TYPE_CHECKING:
    from .postgres.leases import Lease

log = logging.getLogger("otel_llm_receiver.ledger")

#: Rows of one multi-row ``INSERT`` when staging: one statement per 250 points instead of one per point.
STAGE_ROWS: Final = 250
#: About this many staged points are applied at a time, in ranges of whole series (SQLite's working set).
RANGE_POINTS: Final = 50_000
MAX_ID: Final = 2**63 - 1
HOUR: Final = 3600
MIN_ID: Final = -(2**63)

SQL_SERIES_OF_INSTANCE = "SELECT id, metric, attrs FROM series WHERE instance = ?"
SQL_NEW_SERIES_OF_INSTANCE = "SELECT id, metric, attrs FROM series WHERE id > ? AND instance = ?"
SQL_INSERT_SERIES = """
INSERT INTO series (instance, metric, attrs, start_time_ns, updated_ns) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (instance, metric, attrs) DO NOTHING"""

# Every point of the poll, parts of one bucket summed on the way in, keyed like buckets: read back in key
# order, each point finds its bucket's last value with one step of a join that walks both tables in order.
SQL_CREATE_STAGED = """
CREATE TEMP TABLE IF NOT EXISTS staged (
    series_id    INTEGER NOT NULL,
    bucket_start INTEGER NOT NULL,
    bucket_width INTEGER NOT NULL,
    value        INTEGER NOT NULL,
    PRIMARY KEY (series_id, bucket_start, bucket_width)
) WITHOUT ROWID"""
SQL_CLEAR_STAGED = "DELETE FROM staged"
SQL_STAGE_UPSERT = """
ON CONFLICT (series_id, bucket_start, bucket_width) DO UPDATE SET value = value + excluded.value"""
SQL_COUNT_STAGED = "SELECT count(*) FROM staged WHERE series_id >= :lo AND series_id <= :last"
# The first series id of the range after ``lo`` that starts more than RANGE_POINTS points further on.
SQL_NEXT_RANGE = "SELECT series_id FROM staged WHERE series_id >= ? ORDER BY series_id LIMIT 1 OFFSET ?"
# A rare fallback (SQLite gave new series other ids than predicted): staged points move to the real ids.
SQL_CREATE_REMAP = """
CREATE TEMP TABLE IF NOT EXISTS remap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)"""
SQL_INSERT_REMAP = "INSERT INTO remap (old, new) VALUES (?, ?)"
SQL_CREATE_MOVED = """
CREATE TEMP TABLE IF NOT EXISTS moved (
    series_id INTEGER NOT NULL, bucket_start INTEGER NOT NULL, bucket_width INTEGER NOT NULL,
    value INTEGER NOT NULL)"""
SQL_REMAP_STAGED = (
    "INSERT INTO moved SELECT m.new, s.bucket_start, s.bucket_width, s.value "
    "FROM staged AS s JOIN remap AS m ON m.old = s.series_id",
    "DELETE FROM staged WHERE series_id IN (SELECT old FROM remap)",
    "INSERT INTO staged SELECT * FROM moved WHERE true" + SQL_STAGE_UPSERT,
    "DELETE FROM moved",
    "DELETE FROM remap",
)

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
SQL_CLEAR_INCOMING = "DELETE FROM incoming"
# Keep only the points of one range of series that changed, each with its prior value: an unchanged re-read
# (most of every poll) costs one step of the join and writes nothing further.
SQL_KEEP_CHANGED = """
INSERT INTO incoming (series_id, hour_start, bucket_start, bucket_width, value, prior)
SELECT s.series_id, s.bucket_start - s.bucket_start % 3600, s.bucket_start, s.bucket_width, s.value, b.value
FROM staged AS s LEFT JOIN buckets AS b
  ON b.series_id = s.series_id AND b.bucket_start = s.bucket_start AND b.bucket_width = s.bucket_width
WHERE s.series_id >= :lo AND s.series_id <= :last AND b.value IS NOT s.value"""
# Series created by this very poll have no buckets (their ids are above every id the ledger had): no join.
SQL_KEEP_NEW = """
INSERT INTO incoming (series_id, hour_start, bucket_start, bucket_width, value, prior)
SELECT series_id, bucket_start - bucket_start % 3600, bucket_start, bucket_width, value, NULL
FROM staged WHERE series_id >= :lo AND series_id <= :last"""
# A new bucket that overlaps a bucket of another width (or a refined region) is a bucket-width change. Only
# points of series whose bucket width differs from theirs (or was ever mixed) can; for those series, ``bounds``
# holds the widest bucket they have, found by each series' own key range (never a scan of the whole ledger):
# a series of one width has only buckets of that width, a mixed one is read in its own rows.
SQL_CREATE_BOUNDS = """
CREATE TEMP TABLE IF NOT EXISTS bounds (
    series_id INTEGER PRIMARY KEY, width INTEGER NOT NULL, max_width INTEGER NOT NULL)"""
SQL_CLEAR_BOUNDS = "DELETE FROM bounds"
SQL_FILL_BOUNDS = """
INSERT INTO bounds (series_id, width, max_width)
SELECT s.id, s.bucket_width, CASE WHEN s.bucket_width > 0 THEN s.bucket_width ELSE max(
           coalesce((SELECT max(b.bucket_width) FROM buckets AS b WHERE b.series_id = s.id), 0),
           coalesce((SELECT max(r.bucket_width) FROM refined AS r WHERE r.series_id = s.id), 0)) END
FROM series AS s
WHERE s.id >= :lo AND s.id <= :last AND s.bucket_width IS NOT NULL
  AND EXISTS (SELECT 1 FROM incoming AS i WHERE i.series_id = s.id AND i.bucket_width <> s.bucket_width)"""
SQL_MARK_SLOW = """
UPDATE incoming SET slow = 1
FROM bounds AS w
WHERE incoming.series_id = w.series_id AND incoming.bucket_width <> w.width
AND (
    EXISTS (SELECT 1 FROM buckets AS b
            WHERE b.series_id = incoming.series_id
              AND b.bucket_start > incoming.bucket_start - w.max_width
              AND b.bucket_start < incoming.bucket_start + incoming.bucket_width
              AND b.bucket_start + b.bucket_width > incoming.bucket_start
              AND (b.bucket_start <> incoming.bucket_start OR b.bucket_width <> incoming.bucket_width))
    OR EXISTS (SELECT 1 FROM refined AS r
            WHERE r.series_id = incoming.series_id
              AND r.bucket_start > incoming.bucket_start - w.max_width
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
# Where no bucket is shorter than an hour, two points of a series rarely share an hour: the totals, rollups and
# priced deltas then read ``incoming`` itself, point by point in its key order (the totals grouped per series
# without a sort, rollup upserts adding repeated (series, hour) rows), with no ``deltas`` table in between. A
# steady-state poll re-reads hourly buckets, so this is the usual case; sub-hour buckets take ``deltas``.
SQL_COUNT_OUTCOMES_CHANGED = """
SELECT coalesce(sum(prior IS NULL), 0), coalesce(sum(prior IS NOT NULL AND prior < value), 0),
       coalesce(sum(prior IS NOT NULL AND prior > value), 0)
FROM incoming WHERE slow = 0"""
# The series' totals from per-series growth, shrink and bucket widths (``{source}``, one row per series); the
# series' bucket width is recorded on the way (0 = mixed widths: its later points get the overlap check).
_APPLY_TOTALS_FROM = """
UPDATE series SET
    total = total + d.grow,
    adjustments = adjustments + d.shrink,
    updated_ns = :now,
    bucket_width = CASE WHEN d.min_width <> d.max_width THEN 0
                        WHEN series.bucket_width IS NULL THEN d.min_width
                        WHEN series.bucket_width = d.min_width THEN d.min_width
                        ELSE 0 END
FROM ({source}) AS d
WHERE series.id = d.series_id"""
SQL_APPLY_TOTALS_CHANGED = _APPLY_TOTALS_FROM.format(source="""SELECT series_id,
             sum(max(value - coalesce(prior, 0), 0)) AS grow, sum(max(coalesce(prior, 0) - value, 0)) AS shrink,
             min(bucket_width) AS min_width, max(bucket_width) AS max_width
      FROM incoming WHERE slow = 0 GROUP BY series_id""")
SQL_APPLY_ROLLUPS_CHANGED = """
INSERT INTO rollups (series_id, hour_start, value)
SELECT series_id, hour_start, value - coalesce(prior, 0)
FROM incoming WHERE slow = 0 AND value <> coalesce(prior, 0)
ON CONFLICT (series_id, hour_start) DO UPDATE SET value = value + excluded.value"""
SQL_FILL_PRICED_CHANGED = """
INSERT INTO priced
SELECT p.target_id, i.hour_start,
       max(i.value - coalesce(i.prior, 0), 0) * p.price, max(coalesce(i.prior, 0) - i.value, 0) * p.price,
       (i.value - coalesce(i.prior, 0)) * p.price, p.scale
FROM incoming AS i JOIN pricing AS p
  ON p.series_id = i.series_id AND p.valid_from <= i.hour_start AND i.hour_start < p.valid_until
WHERE i.slow = 0"""
SQL_COUNT_OUTCOMES = "SELECT coalesce(sum(n_new), 0), coalesce(sum(n_grown), 0), coalesce(sum(n_shrunk), 0) FROM deltas"
SQL_APPLY_TOTALS = _APPLY_TOTALS_FROM.format(source="""SELECT series_id, sum(grow) AS grow, sum(shrink) AS shrink,
             min(min_width) AS min_width, max(max_width) AS max_width
      FROM deltas GROUP BY series_id""")
SQL_APPLY_ROLLUPS = """
INSERT INTO rollups (series_id, hour_start, value)
SELECT series_id, hour_start, net FROM deltas WHERE net <> 0
ON CONFLICT (series_id, hour_start) DO UPDATE SET value = value + excluded.value"""
# Ranges of series created by this poll skip ``incoming``: no prior values, nothing slow, every point new, so
# the checks, the totals, rollups, priced deltas and the bucket inserts read ``staged`` itself.
SQL_FIND_INVALID_NEW = """
SELECT s.metric, s.attrs, i.bucket_start, i.bucket_width, i.value
FROM staged AS i JOIN series AS s ON s.id = i.series_id
WHERE i.series_id >= :lo AND i.series_id <= :last AND (i.bucket_width <= 0 OR i.bucket_start < 0 OR i.value < 0)
LIMIT 1"""
# With sub-hour buckets (the demo's minutes), a new range's points are first summed per (series, hour): a
# fraction of the rows for the rollups and the pricing.
SQL_FILL_DELTAS_NEW = """
INSERT INTO deltas
SELECT series_id, bucket_start - bucket_start % 3600 AS hour, sum(value), 0, sum(value), count(*), 0, 0,
       min(bucket_width), max(bucket_width)
FROM staged WHERE series_id >= :lo AND series_id <= :last
GROUP BY series_id, hour"""
# Otherwise a range of new series needs no ``deltas``: its totals (grouped in the key order of ``staged``, no sort), rollups
# and priced deltas read ``staged`` itself (every point is new: its growth is its value). Where two points of
# a series share an hour (sub-hour buckets), the rollup upsert adds them. ``bucket_width`` as in
# ``SQL_APPLY_TOTALS`` (a new series has none yet).
SQL_APPLY_TOTALS_NEW = """
UPDATE series SET
    total = total + d.grow,
    updated_ns = :now,
    bucket_width = CASE WHEN d.min_width <> d.max_width THEN 0 ELSE d.min_width END
FROM (SELECT series_id, sum(value) AS grow, min(bucket_width) AS min_width, max(bucket_width) AS max_width
      FROM staged WHERE series_id >= :lo AND series_id <= :last GROUP BY series_id) AS d
WHERE series.id = d.series_id"""
SQL_APPLY_ROLLUPS_NEW = """
INSERT INTO rollups (series_id, hour_start, value)
SELECT series_id, bucket_start - bucket_start % 3600, value
FROM staged WHERE series_id >= :lo AND series_id <= :last AND value <> 0
ON CONFLICT (series_id, hour_start) DO UPDATE SET value = value + excluded.value"""
SQL_FILL_PRICED_NEW = """
INSERT INTO priced
SELECT p.target_id, s.bucket_start - s.bucket_start % 3600, s.value * p.price, 0, s.value * p.price, p.scale
FROM staged AS s JOIN pricing AS p
  ON p.series_id = s.series_id AND p.valid_from <= s.bucket_start - s.bucket_start % 3600
 AND s.bucket_start - s.bucket_start % 3600 < p.valid_until
WHERE s.series_id >= :lo AND s.series_id <= :last"""
# A new series has no buckets (nor rollups), and ``staged`` holds each key once: its points need no upsert.
SQL_INSERT_BUCKETS_NEW = """
INSERT INTO buckets (series_id, bucket_start, bucket_width, value)
SELECT series_id, bucket_start, bucket_width, value
FROM staged WHERE series_id >= :lo AND series_id <= :last"""
# What decides a new range's statements, in one pass: the narrowest and widest bucket, whether every bucket
# starts on the hour, and the smallest start and value (none below zero: no point is invalid).
SQL_NEW_SHAPE = """
SELECT min(bucket_width), max(bucket_width), max(bucket_start % 3600), min(bucket_start), min(value)
FROM staged WHERE series_id >= :lo AND series_id <= :last"""
# Where no two points of a series share an hour (one width, starts on the hour), each is its hour's rollup.
SQL_INSERT_ROLLUPS_NEW = """
INSERT INTO rollups (series_id, hour_start, value)
SELECT series_id, bucket_start - bucket_start % 3600, value
FROM staged WHERE series_id >= :lo AND series_id <= :last AND value <> 0"""
# A new range's priced deltas, each point's value times the price in force at its hour, go to the targets'
# totals and rollups straight from ``staged``, no ``priced`` table between, where an overflowing product fails
# the statement (``overflow_raises``: PostgreSQL, the only engine with data-modifying CTEs; SQLite would make an
# overflowing product a float unseen, and there the joins cost more than the table: 0.04 s against 0.03 s for 10k
# records). One statement, so the join is made once for both (``d``, materialized: 100k records, 200k priced
# points, 0.1 s of backend CPU less than a join per statement). ``pricing`` is restricted to the range's series
# as well as joined: planned without statistics of ``staged`` (a temp table has none), the join otherwise became
# 300k index probes of ``pricing`` (0.8 s of backend CPU for 100k records against 0.1 s hashed), and a large
# ledger's schedules of other series are never read.
_PRICED_NEW = """
WITH d AS MATERIALIZED (
    SELECT p.target_id, s.bucket_start - s.bucket_start % 3600 AS hour_start, s.value * p.price AS value, p.scale
    FROM staged AS s JOIN pricing AS p
      ON p.series_id = s.series_id AND p.valid_from <= s.bucket_start - s.bucket_start % 3600
     AND s.bucket_start - s.bucket_start % 3600 < p.valid_until
    WHERE s.series_id >= :lo AND s.series_id <= :last AND p.series_id >= :lo AND p.series_id <= :last),
r AS ({rollups})
UPDATE series SET
    total = total + (sub_total + g.grow) / g.scale,
    sub_total = (sub_total + g.grow) % g.scale,
    updated_ns = :now
FROM (SELECT target_id, sum(value) AS grow, max(scale) AS scale FROM d GROUP BY target_id) AS g
WHERE series.id = g.target_id AND g.grow <> 0"""
# The rollups: repeated (target, hour) deltas summed and added (a statement may not upsert a row twice) ...
SQL_APPLY_PRICED_NEW = _PRICED_NEW.format(rollups="""
    INSERT INTO rollups (series_id, hour_start, value)
    SELECT target_id, hour_start, sum(value) FROM d WHERE value <> 0
    GROUP BY target_id, hour_start ORDER BY target_id, hour_start
    ON CONFLICT (series_id, hour_start) DO UPDATE SET value = rollups.value + excluded.value""")
# ... or, where each priced target of the range's series was created by this poll (no rollups yet), is fed by one
# series only and has no points of its own (``_exclusive_targets``), and no two points of a series share an hour,
# no two priced deltas meet in one target's hour: inserted, no upsert.
SQL_INSERT_PRICED_NEW = _PRICED_NEW.format(rollups="""
    INSERT INTO rollups (series_id, hour_start, value) SELECT target_id, hour_start, value FROM d WHERE value <> 0""")
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
# One row per (series, hour) delta and period, not grouped: what reads ``priced`` sums per target or adds
# into rollups, so repeated (target, hour) rows are the same as their sum, without a sort.
SQL_FILL_PRICED = """
INSERT INTO priced
SELECT p.target_id, d.hour_start, d.grow * p.price, d.shrink * p.price, d.net * p.price, p.scale
FROM deltas AS d JOIN pricing AS p
  ON p.series_id = d.series_id AND p.valid_from <= d.hour_start AND d.hour_start < p.valid_until"""
# SQLite turns an overflowing integer product into a float: refuse it rather than lose exactness.
SQL_PRICED_OVERFLOW = """
SELECT count(*) FROM priced
WHERE typeof(grow) <> 'integer' OR typeof(shrink) <> 'integer' OR typeof(net) <> 'integer'"""
# Whole target units go to total, the rest stays in sub_total (and the same for adjustments).
# A target whose rollups move between hours with no total change (a bucket-width change) is updated too:
# its ``updated_ns`` tells readers that keep sums between polls (signals) to read it again.
SQL_APPLY_PRICED_TOTALS = """
UPDATE series SET
    total = total + (sub_total + g.grow) / g.scale,
    sub_total = (sub_total + g.grow) % g.scale,
    adjustments = adjustments + (sub_adjustments + g.shrink) / g.scale,
    sub_adjustments = (sub_adjustments + g.shrink) % g.scale,
    updated_ns = :now
FROM (SELECT target_id, sum(grow) AS grow, sum(shrink) AS shrink, max(scale) AS scale, max(abs(net)) AS moved
      FROM priced GROUP BY target_id) AS g
WHERE series.id = g.target_id AND (g.grow <> 0 OR g.shrink <> 0 OR g.moved <> 0)"""
SQL_APPLY_PRICED_ROLLUPS = """
INSERT INTO rollups (series_id, hour_start, value)
SELECT target_id, hour_start, net FROM priced WHERE net <> 0
ON CONFLICT (series_id, hour_start) DO UPDATE SET value = value + excluded.value"""
SQL_STAGE_SLOW_DELTA = """
INSERT INTO deltas VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0, 0)"""
SQL_INSERT_PRICING = """
INSERT INTO pricing (series_id, valid_from, valid_until, target_id, price, scale) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (series_id, valid_from) DO UPDATE SET
    valid_until = excluded.valid_until, target_id = excluded.target_id, price = excluded.price,
    scale = excluded.scale"""
# One page of the series to (re)price, in id order: a rebuild never holds more than a page of rows.
SQL_PRICEABLE_PAGE = """
SELECT id, instance, metric, attrs FROM series WHERE id > ? AND metric NOT IN (?, ?, ?) ORDER BY id LIMIT ?"""
#: Series priced per page (and per statement batch) when the schedules are rebuilt.
PRICING_PAGE: Final = 5_000
# The price book the schedules in ``pricing`` were built with (``PriceBook.fingerprint``); absent: unknown.
META_PRICING = "pricing_fingerprint"
SQL_GET_PRICING_FINGERPRINT = "SELECT value FROM meta WHERE key = ?"
SQL_SET_PRICING_FINGERPRINT = """
INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"""
SQL_FORGET_PRICING_FINGERPRINT = "DELETE FROM meta WHERE key = ?"
# The pricer's memo (``PriceBook.memo_state``: the price gauges' prices), valid for the fingerprint stored
# with it: ``{"fingerprint": ..., "memo": ...}``.
META_PRICER_MEMO = "pricer_memo"
# The ids of a batch of priced target series, found by the (instance, metric, attrs) index, never by reading
# every series of the instance.
SQL_CREATE_WANTED = "CREATE TEMP TABLE IF NOT EXISTS wanted (metric TEXT NOT NULL, attrs TEXT NOT NULL)"
SQL_INSERT_WANTED = "INSERT INTO wanted (metric, attrs) VALUES (?, ?)"
SQL_FIND_WANTED = """
SELECT s.id, w.metric, w.attrs FROM wanted AS w
JOIN series AS s ON s.instance = ? AND s.metric = w.metric AND s.attrs = w.attrs"""
SQL_CLEAR_WANTED = "DELETE FROM wanted"
#: Series whose deltas are money or already priced: never priced again (every other series is offered to the
#: pricer, which decides: tokens, requests, and any unit a price entry names).
UNPRICEABLE_METRICS: Final = frozenset({METRIC_COST, METRIC_COST_ESTIMATED, METRIC_UNPRICED})
SQL_MARK_MIXED = "UPDATE series SET bucket_width = 0 WHERE id = ?"
# The widest bucket a slow point's series may have: what it had (bounds) or what this poll brings.
SQL_SLOW_POINTS = """
SELECT i.series_id, i.bucket_start, i.bucket_width, i.value, i.prior,
       max(w.max_width, (SELECT max(o.bucket_width) FROM incoming AS o WHERE o.series_id = i.series_id))
FROM incoming AS i JOIN bounds AS w ON w.series_id = i.series_id
WHERE i.slow = 1
ORDER BY i.series_id, i.bucket_width DESC, i.bucket_start"""

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
SQL_MAX_SERIES_ID = "SELECT coalesce(max(id), 0) FROM series"
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


@dataclass(slots=True)
class ApplyStats:
    """What one ``apply`` did, for the ``llm.receiver.records`` counter and the poll's log line."""

    outcomes: Counter[str] = field(default_factory=Counter)
    series_created: int = 0

    @property
    def points(self) -> int:
        return sum(self.outcomes.values())


@functools.lru_cache(maxsize=8)
def _stage_sql(rows: int) -> str:
    return "INSERT INTO staged VALUES " + ",".join(["(?,?,?,?)"] * rows) + SQL_STAGE_UPSERT


def stage(tx: Connection, rows: Sequence[Point]) -> None:
    """Add ``rows`` to ``staged`` (parts of one bucket add up), ``STAGE_ROWS`` points to a statement."""
    flat = list(chain.from_iterable(rows))
    step = STAGE_ROWS * 4
    full = len(flat) - len(flat) % step
    if full:
        tx.executemany(_stage_sql(STAGE_ROWS), (flat[i:i + step] for i in range(0, full, step)))
    if full < len(flat):
        tx.execute(_stage_sql((len(flat) - full) // 4), flat[full:])


def _invalid_point(instance: str, bad: Sequence[object]) -> LedgerError:
    return LedgerError(
        f"{instance}: {bad[0]} {bad[1]} has an invalid point: bucket start {bad[2]}, "
        f"width {bad[3]}s, value {bad[4]}; the poll was not applied"
    )


def _exclusive_targets(schedules: Sequence[tuple[int, int]], max_id: int, created: Sequence[int]) -> bool:
    """Whether the priced targets of new series (``schedules``: their ``(series id, target id)``) were all
    created by this poll (ids above ``max_id``: no rollups yet), each is fed by one series, and none is one of
    the series ``created`` for the poll's own points: then no two priced deltas meet in one target's hour."""
    fed_by: dict[int, int] = {}
    for sid, target in schedules:
        if target <= max_id or fed_by.setdefault(target, sid) != sid:
            return False
    return fed_by.keys().isdisjoint(created)


class LedgerWriter(LedgerEngine):
    """The write half of ``Ledger``: ``apply``, ``set_pricer``, ``prune_rollups`` on the engine's connection."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        #: Series ids by key, per instance: dropped whenever a transaction fails (its new series do not exist).
        self._series_ids: dict[str, dict[SeriesKey, int]] = {}
        #: Record identity -> series keys, kept across polls (pure: never stale; see ``SeriesKeys``).
        self._keys = SeriesKeys()
        self._pricer: SeriesPricer | None = None
        #: The price book the schedules are current for (None: unknown, nothing is memoised).
        self._pricing_fingerprint: str | None = None
        #: How many times ``set_pricer`` rebuilt the schedules (0 when every start found them current).
        self.pricing_rebuilds = 0
        #: False: every range takes the general path (prior values looked up, deltas grouped per series and
        #: hour), never the shortcuts for ranges of new series and for hourly buckets. The tests compare the two.
        self.fast_paths = True

    #: The staging table, how it is emptied, and how its points move to the ids new series really got (the
    #: PostgreSQL ledger stages into an unindexed table: see ``postgres/engine.py``).
    _create_staged: ClassVar[str] = SQL_CREATE_STAGED
    _clear_staged: ClassVar[str] = SQL_CLEAR_STAGED
    _remap_staged: ClassVar[tuple[str, ...]] = SQL_REMAP_STAGED
    #: Whether the engine stages a poll whose points all have keys of their own more cheaply (PostgreSQL: no
    #: per-bucket sum), so the planner checks for it (``PointPlanner.distinct``).
    _stages_distinct: ClassVar[bool] = False
    #: Run before the first look-up of prior values (PostgreSQL: temp tables get no automatic statistics).
    _analyze_staged: ClassVar[str | None] = None

    def _stage(self, tx: Connection, rows: Sequence[Point]) -> None:
        """Add a slice of points to ``staged`` (the engine may stage another way: PostgreSQL uses COPY)."""
        stage(tx, rows)

    def _staged_all(self, tx: Connection, *, distinct: bool) -> None:
        """Every slice of the poll is staged; ``distinct``: no two of its points share a key, so none needs
        adding to another (``PointPlanner.distinct``). SQLite's staging upsert adds parts as they come: no use."""

    def pruned_before(self, instance: str) -> int:
        """Buckets of ``instance`` starting before this were pruned: records for them are rejected."""
        row = self._conn.execute(SQL_GET_HORIZON, (instance,)).fetchone()
        return 0 if row is None else int(row[0])

    # -- pricing -------------------------------------------------------------------------------------------
    def set_pricer(self, pricer: SeriesPricer | None, *, now_ns: int | None = None) -> int:
        """Price every token and request series with ``pricer`` from now on; returns the series re-priced.

        A pricer with a ``fingerprint()`` (``PriceBook``) is compared with the one the ledger's schedules were
        built with (the ``meta`` table): unchanged, nothing is rebuilt, so a start reads no price data and
        writes nothing. Otherwise the schedules of all existing series are rebuilt in one transaction, a page
        of series at a time (bounded memory at any ledger size), so a changed catalog applies to every delta
        from here on; what was already counted stays (counters never go down). New series get their schedule
        inside the apply that creates them.
        """
        self._pricer = pricer
        if pricer is None or self.readonly:
            return 0
        fingerprint_of = getattr(pricer, "fingerprint", None)
        fingerprint = str(fingerprint_of()) if callable(fingerprint_of) else None
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            if fingerprint is not None:
                row = self._conn.execute(SQL_GET_PRICING_FINGERPRINT, (META_PRICING,)).fetchone()
                if row is not None and row[0] == fingerprint:
                    self._restore_memo(pricer, fingerprint)
                    return 0
            priced = 0
            with self._transaction() as tx:
                tx.execute("DELETE FROM pricing")
                after = MIN_ID
                while True:
                    page = tx.execute(
                        SQL_PRICEABLE_PAGE, (after, *sorted(UNPRICEABLE_METRICS), PRICING_PAGE)).fetchall()
                    if not page:
                        break
                    after = int(page[-1][0])
                    priced += len(page)
                    by_instance: dict[str, list[tuple[int, str, str]]] = {}
                    for sid, instance, metric, attrs in page:
                        by_instance.setdefault(instance, []).append((sid, metric, attrs))
                    for instance, series in by_instance.items():
                        self._price_series(tx, instance, series, now_ns, cached=False)
                tx.execute(SQL_FORGET_PRICING_FINGERPRINT, (META_PRICER_MEMO,))
                if fingerprint is None:
                    tx.execute(SQL_FORGET_PRICING_FINGERPRINT, (META_PRICING,))
                else:
                    tx.execute(SQL_SET_PRICING_FINGERPRINT, (META_PRICING, fingerprint))
                tx.execute(SQL_BUMP_GENERATION, new_generation(None))
                self._series_ids.clear()
            self.pricing_rebuilds += 1
            self._pricing_fingerprint = fingerprint
        return priced

    def _restore_memo(self, pricer: SeriesPricer, fingerprint: str) -> None:
        self._pricing_fingerprint = fingerprint
        restore = getattr(pricer, "restore_memo", None)
        row = self._conn.execute(SQL_GET_PRICING_FINGERPRINT, (META_PRICER_MEMO,)).fetchone()
        if row is None or not callable(restore):
            return
        try:
            stored = json.loads(row[0])
        except ValueError:
            return
        if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint:
            restore(json.dumps(stored.get("memo", {})))

    def _memo_value(self) -> str | None:
        """What the pricer memoised since the last call (the gauges' prices) with the fingerprint it is valid
        for, as the ``meta`` value to store; None when there is nothing new."""
        state_of = getattr(self._pricer, "memo_state", None)
        if self._pricing_fingerprint is None or not callable(state_of):
            return None
        state = state_of()
        if not isinstance(state, str):
            return None
        return json.dumps({"fingerprint": self._pricing_fingerprint, "memo": json.loads(state)},
                          separators=(",", ":"))

    def _save_memo(self, tx: Connection) -> None:
        value = self._memo_value()
        if value is not None:
            tx.execute(SQL_SET_PRICING_FINGERPRINT, (META_PRICER_MEMO, value))

    def close(self) -> None:
        """Close, keeping first what the pricer memoised (an export's gauge prices) for the next start."""
        value = None if self.readonly else self._memo_value()
        if value is not None:
            try:
                with self._lock, self._transaction() as tx:
                    tx.execute(SQL_SET_PRICING_FINGERPRINT, (META_PRICER_MEMO, value))
            except LedgerError as exc:  # a cache: losing it costs the next start a price-data load, no more
                log.warning("ledger %s: could not keep the price memo: %s", self.path, exc)
        super().close()

    def _price_series(
        self, tx: Connection, instance: str, series: list[tuple[int, str, str]], now_ns: int, *,
        cached: bool = True,
    ) -> list[tuple[int, int]]:
        """Write the pricing schedules of new usage series (one pricer call per series, never per point);
        returns each schedule's ``(series id, target id)``.

        ``cached``: the instance's cached series ids are used and extended (an apply); a rebuild leaves them
        alone and looks the targets up by the index, so it never holds every series' id at once.
        """
        pricer = self._pricer
        if pricer is None:
            # Series created without a pricer have no schedule: the next ``set_pricer`` must rebuild.
            tx.execute(SQL_FORGET_PRICING_FINGERPRINT, (META_PRICING,))
            return []
        planned: list[tuple[int, PricingPeriod, tuple[str, str]]] = []
        for sid, metric, attrs in series:
            if metric in UNPRICEABLE_METRICS:
                continue
            parsed = json.loads(attrs)
            for period in pricer.schedule(metric, parsed):
                # Estimated cost keeps its usage series' attributes: their canonical JSON is ``attrs`` itself.
                target = attrs if period.target_attrs == parsed else canonical_attrs(period.target_attrs)
                planned.append((sid, period, (period.target_metric, target)))
        if not planned:
            return []
        ids = self._target_ids(tx, instance, list(dict.fromkeys(key for _, _, key in planned)), now_ns,
                               self._series_ids.get(instance) if cached else None)
        tx.executemany(SQL_INSERT_PRICING, [
            (sid, p.valid_from, p.valid_until, ids[key], p.price, p.scale) for sid, p, key in planned
        ])
        return [(sid, ids[key]) for sid, _, key in planned]

    def _target_ids(
        self, tx: Connection, instance: str, keys: list[SeriesKey], now_ns: int, cache: dict[SeriesKey, int] | None,
    ) -> Mapping[SeriesKey, int]:
        """The ids of ``keys`` (priced target series), created where missing; ``cache`` is used and extended."""
        missing = keys if cache is None else [k for k in keys if k not in cache]
        found: dict[SeriesKey, int] = {} if cache is None else cache
        if missing:
            tx.executemany(SQL_INSERT_SERIES, [(instance, m, a, now_ns, now_ns) for m, a in missing])
            tx.execute(SQL_CREATE_WANTED)
            tx.executemany(SQL_INSERT_WANTED, missing)
            for sid, metric, attrs in tx.execute(SQL_FIND_WANTED, (instance,)):
                found[(metric, attrs)] = sid
            tx.execute(SQL_CLEAR_WANTED)
        return found

    def _apply_priced(
        self, tx: Connection, instance: str, now_ns: int, *, fill: str = SQL_FILL_PRICED,
        span: Mapping[str, int] | None = None,
    ) -> None:
        """Turn the deltas just applied (``deltas``, or a new range's ``staged`` points: ``fill`` and ``span``)
        into deltas of their priced series (estimated cost, unpriced)."""
        tx.execute(SQL_CLEAR_PRICED)
        tx.execute(fill, span or {})
        if not self.overflow_raises and tx.execute(SQL_PRICED_OVERFLOW).fetchone()[0]:
            raise LedgerError(
                f"{instance}: an estimated-cost delta exceeds 64-bit pico-units (over 9.2 million USD in one "
                "series-hour); the poll was not applied"
            )
        tx.execute(SQL_APPLY_PRICED_TOTALS, {"now": now_ns})
        tx.execute(SQL_APPLY_PRICED_ROLLUPS)
        tx.execute(SQL_CLEAR_PRICED)


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
        fence: Lease | None = None,
    ) -> ApplyStats:
        """Apply one poll's records, names and cursor in one transaction; return what each point did.

        ``cursor`` is saved as the instance's ``poll`` cursor, ``result.cursors`` under their own sources.
        ``prune_before`` (Unix seconds) drops bucket rows that start before it, once the provider can no
        longer revise them; records for such buckets arriving later are rejected, so they are never counted
        twice.

        ``fence`` (PostgreSQL only, refused on SQLite with ``ValueError``): the writer's lease on ``instance``,
        checked first inside the transaction; a stale one raises ``StaleLeaseError`` and nothing is applied.
        """
        if self.readonly:
            raise LedgerError(f"ledger {self.path} is open read-only")
        now_ns = time.time_ns() if now_ns is None else now_ns
        # Not under ``heap.collector_paused``: it saved ~10% of the apply's Python CPU, but a backfill's chunks
        # then left their reference cycles (a fetched page's) to pile up across chunks: 14 days peaked at 211 MiB
        # instead of 130, 90 days at 671 MiB instead of 146 (``benchmarks/backfill_memory.py``).
        with self._lock:
            try:
                return self._apply(instance, result, tenant, cursor, prune_before, now_ns, fence)
            except BaseException:
                # Series created by a rolled-back poll do not exist: forget the ids cached for them.
                self._series_ids.pop(instance, None)
                raise

    def _apply(
        self, instance: str, result: PollResult, tenant: str, cursor: str | None, prune_before: int | None,
        now_ns: int, fence: Lease | None = None,
    ) -> ApplyStats:
        stats = ApplyStats()
        with self._transaction() as tx:
            self._fence(tx, instance, fence)
            for create in (self._create_staged, SQL_CREATE_INCOMING, SQL_CREATE_BOUNDS, SQL_CREATE_DELTAS,
                           SQL_CREATE_PRICED):
                tx.execute(create)
            tx.execute(self._clear_staged)
            tx.execute(SQL_CLEAR_INCOMING)
            ids = self._ids_for(tx, instance)
            known = bool(ids)  # the instance had series before this poll
            horizon = self.pruned_before(instance)
            max_id = int(tx.execute(SQL_MAX_SERIES_ID).fetchone()[0])
            # New series get max + 1, max + 2, ...; next to the largest possible id, placeholders below zero.
            check = self._stages_distinct
            planner = (PointPlanner(self._keys, ids, tenant, horizon, self._next_series_id(tx, max_id),
                                    check_distinct=check)
                       if max_id < 2**62
                       else PointPlanner(self._keys, ids, tenant, horizon, -1, id_step=-1, check_distinct=check))
            for rows in planner.slices(result):
                self._stage(tx, rows)
            self._staged_all(tx, distinct=planner.distinct)
            if planner.rejected:
                stats.outcomes["rejected"] = planner.rejected
                log.info(
                    "%s: %d points for buckets before the pruned horizon %d were rejected "
                    "(already counted, no longer revisable)", instance, planner.rejected, horizon,
                )
            if planner.new_ids:  # create the new series, then make sure their points carry their real ids
                missing = planner.new_ids
                tx.executemany(SQL_INSERT_SERIES, [(instance, m, a, now_ns, now_ns) for m, a in missing])
                stats.series_created = len(missing)
                ids = self._ids_after_insert(tx, instance, max_id, missing)
                remap = [(predicted, ids[key]) for key, predicted in missing.items() if ids[key] != predicted]
                if remap:  # SQLite chose other ids than max + 1, ... (never seen; correct either way)
                    known = True  # a key another writer created meanwhile may have an id the ledger had
                    tx.execute(SQL_CREATE_REMAP)
                    tx.execute(SQL_CREATE_MOVED)
                    tx.executemany(SQL_INSERT_REMAP, remap)
                    for statement in self._remap_staged:
                        tx.execute(statement)
                created = [ids[key] for key in missing]
                schedules = self._price_series(
                    tx, instance, [(sid, key[0], key[1]) for sid, key in zip(created, missing, strict=True)],
                    now_ns)
                exclusive = _exclusive_targets(schedules, max_id, created)
            else:
                exclusive = True
            distinct = changed = 0
            analyzed = False
            shrunk: list[tuple[str, str, int, int]] = []
            for lo, last in self._ranges(tx, max_id, known, bool(planner.new_ids)):
                all_new = lo > max_id and self.fast_paths
                if not all_new:  # some points may be unchanged: count them all (a new range's all count)
                    if self._analyze_staged and not analyzed:
                        tx.execute(self._analyze_staged)
                        analyzed = True
                    distinct += int(tx.execute(SQL_COUNT_STAGED, {"lo": lo, "last": last}).fetchone()[0])
                applied = self._apply_range(
                    tx, instance, lo, last, all_new, exclusive, planner.min_width >= HOUR, now_ns, stats, shrunk)
                changed += applied
                if all_new:
                    distinct += applied
            if distinct > changed:
                stats.outcomes["unchanged"] += distinct - changed
            for metric, attrs, shrunk_points, amount in sorted(shrunk, key=lambda s: -s[3])[:5]:
                log.warning(
                    "%s: %d bucket(s) of %s %s shrank by %d in total (counted in llm.usage.adjustments)",
                    instance, shrunk_points, metric, attrs, amount,
                )
            tx.execute(self._clear_staged)

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
            self._save_memo(tx)
            if prune_before is not None and prune_before > horizon:
                tx.execute(SQL_PRUNE_BUCKETS, {"before": prune_before, "instance": instance})
                tx.execute(SQL_PRUNE_REFINED, {"before": prune_before, "instance": instance})
                tx.execute(SQL_SET_HORIZON, (instance, prune_before))
            tx.execute(SQL_BUMP_GENERATION, new_generation(instance))  # readers: something may have changed
        return stats

    def _keep_changed(self, tx: Connection, span: Mapping[str, int]) -> int:
        """Keep the range's changed points in ``incoming`` with their prior values; returns how many."""
        return int(tx.execute(SQL_KEEP_CHANGED, span).rowcount)

    def _ranges(self, tx: Connection, max_id: int, known: bool, creates: bool) -> Iterator[tuple[int, int]]:
        """The ranges ``(lo, last)`` of whole series to apply one after the other, in id order: every step of
        ``_apply_range`` reads one series' points together, so applying range by range is the same as applying
        all at once. Each holds about RANGE_POINTS staged points (``one_range``: all the series the ledger had,
        then all it creates); no range mixes series the ledger had (ids up to ``max_id``) with new ones.
        ``known``: some staged point may be on a series the ledger had; ``creates``: some on a new one.
        """
        split = max_id < 2**62  # new series get max + 1, ...; next to the largest id, placeholders below zero
        if self.one_range:
            if not split:
                yield MIN_ID, MAX_ID
                return
            if known:
                yield MIN_ID, max_id
            if creates:
                yield max_id + 1, MAX_ID
            return
        lo: int | None = MIN_ID
        while lo is not None:
            row = tx.execute(SQL_NEXT_RANGE, (lo, RANGE_POINTS)).fetchone()
            nxt = None if row is None else max(int(row[0]), lo + 1)
            if split and lo <= max_id and (nxt is None or nxt > max_id + 1):
                nxt = max_id + 1  # ranges of new series only need no look-up of prior values
            yield lo, MAX_ID if nxt is None else nxt - 1
            lo = nxt

    def _apply_range(
        self, tx: Connection, instance: str, lo: int, last: int, all_new: bool, exclusive: bool, per_point: bool,
        now_ns: int, stats: ApplyStats, shrunk: list[tuple[str, str, int, int]],
    ) -> int:
        """Apply the staged points of series ``lo..last``; returns how many changed (incl. new and slow ones).

        ``all_new``: every series of the range was created by this poll (its ids are above the ledger's
        largest before it) and the shortcuts are on, so no point has a prior value to look up. ``exclusive``: so was every priced target
        of theirs, each fed by one series and with no points of its own. ``per_point``: no bucket of the poll
        is shorter than an hour (two points of a series rarely share an hour): no sums per (series, hour).
        """
        span = {"lo": lo, "last": last}
        if all_new:
            return self._apply_new_range(tx, instance, span, exclusive, now_ns, stats, per_point)
        changed = self._keep_changed(tx, span)
        if not changed:
            return 0
        bad = tx.execute(SQL_FIND_INVALID).fetchone()
        if bad is not None:
            raise _invalid_point(instance, bad)
        tx.execute(SQL_CLEAR_BOUNDS)
        if tx.execute(SQL_FILL_BOUNDS, span).rowcount:
            tx.execute(SQL_MARK_SLOW)
        tx.execute(SQL_CLEAR_DELTAS)
        per_point = per_point and self.fast_paths
        if per_point:
            counts = tx.execute(SQL_COUNT_OUTCOMES_CHANGED).fetchone()
        else:
            tx.execute(SQL_FILL_DELTAS)
            counts = tx.execute(SQL_COUNT_OUTCOMES).fetchone()
        for outcome, count in zip(("new", "grown", "shrunk"), counts, strict=True):
            if count:
                stats.outcomes[outcome] += count
        if counts[2]:
            shrunk.extend(
                (metric, attrs, n, amount) for metric, attrs, n, amount in tx.execute(SQL_SHRUNK)
                if metric not in LEVEL_METRICS  # a level going down is news, not a correction
            )
        if per_point:
            tx.execute(SQL_APPLY_TOTALS_CHANGED, {"now": now_ns})
            tx.execute(SQL_APPLY_ROLLUPS_CHANGED)
            tx.execute(SQL_APPLY_BUCKETS)
            self._apply_priced(tx, instance, now_ns, fill=SQL_FILL_PRICED_CHANGED)
        else:
            tx.execute(SQL_APPLY_TOTALS, {"now": now_ns})
            tx.execute(SQL_APPLY_ROLLUPS)
            tx.execute(SQL_APPLY_BUCKETS)
            self._apply_priced(tx, instance, now_ns)
        slow = tx.execute(SQL_SLOW_POINTS).fetchall()
        if slow:
            slow_deltas: list[tuple[int, int, int, int, int]] = []
            widest: dict[int, int] = {}
            for sid, start, width, value, prior, max_width in slow:
                bound = max(widest.get(sid, 0), int(max_width or 0), width)
                widest[sid] = bound
                outcome = self._apply_width_change(
                    tx, instance, sid, start, width, value, prior, bound, now_ns, slow_deltas)
                stats.outcomes[outcome] += 1
            tx.execute(SQL_CLEAR_DELTAS)
            tx.executemany(SQL_STAGE_SLOW_DELTA, slow_deltas)
            self._apply_priced(tx, instance, now_ns)
        tx.execute(SQL_CLEAR_INCOMING)
        tx.execute(SQL_CLEAR_DELTAS)
        return changed

    def _apply_new_range(
        self, tx: Connection, instance: str, span: Mapping[str, int], exclusive: bool, now_ns: int,
        stats: ApplyStats, per_point: bool,
    ) -> int:
        """Apply a range of series this poll created, straight from ``staged``: every point is new.

        ``per_point``: no bucket of the poll is shorter than an hour, so no (series, hour) sums are needed.
        """
        # One width and every start on the hour: no two points of a series share an hour, so each point is its
        # hour's rollup (and its priced delta its target's, where the targets are ``exclusive``). Asked only
        # where that saves upserts (``plain_inserts``): SQLite upserts at the cost of inserts.
        plain = valid = False
        if self.plain_inserts:
            shape = tx.execute(SQL_NEW_SHAPE, span).fetchone()
            if shape[0] is None:
                return 0
            narrowest, widest, off_hour, first, least = (int(v) for v in shape)
            plain = narrowest == widest and off_hour == 0
            valid = narrowest > 0 and first >= 0 and least >= 0
        if not valid:
            bad = tx.execute(SQL_FIND_INVALID_NEW, span).fetchone()
            if bad is not None:
                raise _invalid_point(instance, bad)
        changed = int(tx.execute(SQL_INSERT_BUCKETS_NEW, span).rowcount)
        if not changed:
            return 0
        stats.outcomes["new"] += changed
        if per_point or plain:
            tx.execute(SQL_APPLY_TOTALS_NEW, {**span, "now": now_ns})
            tx.execute(SQL_INSERT_ROLLUPS_NEW if plain else SQL_APPLY_ROLLUPS_NEW, span)
            if self.overflow_raises:  # no priced delta is checked, so none is staged in ``priced`` first
                tx.execute(SQL_INSERT_PRICED_NEW if plain and exclusive else SQL_APPLY_PRICED_NEW,
                           {**span, "now": now_ns})
            else:
                self._apply_priced(tx, instance, now_ns, fill=SQL_FILL_PRICED_NEW, span=span)
        else:
            tx.execute(SQL_CLEAR_DELTAS)
            tx.execute(SQL_FILL_DELTAS_NEW, span)
            tx.execute(SQL_APPLY_TOTALS, {"now": now_ns})
            tx.execute(SQL_APPLY_ROLLUPS)
            self._apply_priced(tx, instance, now_ns)
            tx.execute(SQL_CLEAR_DELTAS)
        return changed

    def prune_rollups(self, before: int) -> int:
        """Drop hourly rollups older than ``before`` (storage.retention); returns rows removed."""
        with self._lock, self._transaction() as tx:
            removed = int(tx.execute(SQL_PRUNE_ROLLUPS, (before,)).rowcount)
            if removed:
                tx.execute(SQL_BUMP_GENERATION, new_generation(None))
            return removed

    def _ids_for(
        self, tx: Connection, instance: str, *, refresh: bool = False
    ) -> dict[SeriesKey, int]:
        ids = self._series_ids.get(instance)
        if ids is None or refresh:
            ids = {(m, a): i for i, m, a in tx.execute(SQL_SERIES_OF_INSTANCE, (instance,))}
            self._series_ids[instance] = ids
        return ids

    def _ids_after_insert(
        self, tx: Connection, instance: str, max_id: int, inserted: Mapping[SeriesKey, int]
    ) -> dict[SeriesKey, int]:
        """The instance's ids once ``inserted`` were created: only the rows above ``max_id`` are read, unless
        some were not there (SQLite picked other ids, or another writer made them): then all are read again."""
        ids = self._ids_for(tx, instance)
        for sid, metric, attrs in tx.execute(SQL_NEW_SERIES_OF_INSTANCE, (max_id, instance)):
            ids[(metric, attrs)] = sid
        if any(key not in ids for key in inserted):
            ids = self._ids_for(tx, instance, refresh=True)
        return ids

    def _apply_width_change(
        self,
        tx: Connection,
        instance: str,
        sid: int,
        start: int,
        width: int,
        value: int,
        prior: int | None,
        max_width: int,
        now_ns: int,
        slow_deltas: list[tuple[int, int, int, int, int]],
    ) -> str:
        """Apply one point whose bucket overlaps buckets of another width (rare: a bucket-width change).

        A coarser bucket replaces the finer ones it covers, counting only its difference from their sum.
        A finer bucket inside an already counted coarser one refines it: that region counts
        ``max(coarse value, sum of the finer buckets)``, so tokens are neither lost nor counted twice.
        ``max_width`` is at least the widest bucket (or refined region) the series has: how far before
        ``start`` an overlapping bucket can begin.
        """
        end = start + width
        tx.execute(SQL_MARK_MIXED, (sid,))
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
        # Always: even a move that changes no total moved rollups between hours, and readers that keep sums
        # between polls (signals) re-read exactly the series whose ``updated_ns`` moved.
        tx.execute(SQL_ADD_TOTALS, (grow, shrink, now_ns, sid))
        if grow or shrink:
            slow_deltas.append((sid, start - start % 3600, grow, shrink, 0))
        if shrink:
            log.warning("%s: series %d shrank by %d at bucket %d (bucket-width change)", instance, sid, shrink, start)
        return outcome

