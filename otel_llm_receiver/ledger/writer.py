"""The ledger's write path: one poll applied in one transaction, pricing of its deltas, pruning.

Providers re-report the same buckets on every poll (overlapping windows), revise recent buckets (growing as a
partial bucket fills in, shrinking on a correction) and deliver them late. The ledger keeps, per series and
bucket, the last value seen, and turns each poll into differences against it:

* a bucket seen for the first time adds its value to the series' cumulative ``total``;
* a bucket that grew adds only the growth; an unchanged one adds nothing;
* a bucket that shrank adds nothing to ``total`` (counters never go down) and the shrink to ``adjustments``,
  so ``total - adjustments`` is exactly the sum of the latest bucket values (DESIGN.md invariant 1).

One poll is one write transaction holding its records, names and cursor (invariant 2). The points come from
the pure normalise step (``series.expand``); staging them in temp tables keyed like the ``buckets`` primary
key, so an unchanged re-read costs one lookup, is this module's SQL.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from ..errors import LedgerError
from ..model import PollResult, to_nanos
from ..names import LEVEL_METRICS, METRIC_COST, METRIC_COST_ESTIMATED, METRIC_UNPRICED
from ..series import Expansion, PricingPeriod, SeriesPricer, canonical_attrs, expand
from .engine import Connection, LedgerEngine

log = logging.getLogger("otel_llm_receiver.ledger")

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



@dataclass(slots=True)
class PointPlan:
    rows: list[tuple[int, int, int, int]]  # (series_id, bucket_start, bucket_width, value)
    pending: list[tuple[int, int, int, int]]  # points of series not in the ledger yet, with their new ids
    new_ids: dict[tuple[str, str], int]  # series to create, in id order: the id SQLite will give each
    rejected: int  # points before the pruned horizon
    repeats: bool  # some record identity and bucket came twice (parts of one bucket to add up)


def plan_points(
    result: PollResult, ex: Expansion, ids: dict[tuple[str, str], int], horizon: int, max_id: int = 0
) -> PointPlan:
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
    return PointPlan(rows, pending, new_ids, rejected, repeats)



class LedgerWriter(LedgerEngine):
    """The write half of ``Ledger``: ``apply``, ``set_pricer``, ``prune_rollups`` on the engine's connection."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        self._series_ids: dict[str, dict[tuple[str, str], int]] = {}
        self._pricer: SeriesPricer | None = None

    def pruned_before(self, instance: str) -> int:
        """Buckets of ``instance`` starting before this were pruned: records for them are rejected."""
        row = self._conn.execute(SQL_GET_HORIZON, (instance,)).fetchone()
        return 0 if row is None else int(row[0])

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
        self, tx: Connection, instance: str, series: list[tuple[int, str, str]], now_ns: int
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

    def _apply_priced(self, tx: Connection, instance: str, now_ns: int) -> None:
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
            staged = plan_points(result, expand(result, tenant), ids, horizon, max_id)
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
        self, tx: Connection, instance: str, *, refresh: bool = False
    ) -> dict[tuple[str, str], int]:
        ids = self._series_ids.get(instance)
        if ids is None or refresh:
            ids = {(m, a): i for i, m, a in tx.execute(SQL_SERIES_OF_INSTANCE, (instance,))}
            self._series_ids[instance] = ids
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

