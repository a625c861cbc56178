"""The ledger's read path: totals for the emitter, rollups for budgets, signals, FOCUS and reports.

Readers never write and take no writer lock; WAL lets them run beside the writer. A read that must be
consistent across tables (``snapshot``, ``export_rows``) is one read transaction (``_read_transaction``).
A level metric (``LEVEL_METRICS``, e.g. bytes stored) means its newest bucket's value, which ``snapshot``
reads as ``SeriesTotal.level``; its ``total`` is not a meaningful number.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

from ..errors import LedgerError
from ..names import LEVEL_METRICS
from .engine import EngineError, LedgerEngine
from .schema import SQL_GENERATIONS, SQL_GET_META

SQL_GET_CURSOR = "SELECT value FROM cursors WHERE instance = ? AND source = ?"
SQL_GET_CURSORS = "SELECT source, value FROM cursors WHERE instance = ?"

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
SQL_ROLLUP_SUMS_BETWEEN = """
SELECT s.instance, s.metric, s.attrs, sum(r.value)
FROM series AS s JOIN rollups AS r ON r.series_id = s.id
WHERE r.hour_start >= ? AND r.hour_start < ? AND s.metric IN ({metrics})
GROUP BY s.id"""
SQL_ROLLUP_SERIES = """
SELECT s.id, s.instance, s.metric, s.attrs, s.bucket_width,
       (SELECT min(hour_start) FROM rollups WHERE series_id = s.id),
       (SELECT max(hour_start) FROM rollups WHERE series_id = s.id)
FROM series AS s WHERE s.metric IN ({metrics}) ORDER BY s.id"""
SQL_ROLLUP_SERIES_ROWS = """
SELECT s.id, s.instance, s.metric, {attrs}, s.bucket_width,
       (SELECT min(hour_start) FROM rollups WHERE series_id = s.id), {last}, s.updated_ns
FROM series AS s WHERE s.metric IN ({metrics}) ORDER BY s.id"""
#: ``SQL_ROLLUP_SERIES_ROWS`` of every series, the extent read only for those of the metrics asked; then what
#: ``export_rows`` reads of each (total, adjustments, start time; levels: ``SQL_LEVELS_OF``, for the few).
SQL_EVERY_SERIES_ROWS = """
SELECT s.id, s.instance, s.metric, {attrs}, s.bucket_width,
       CASE WHEN s.metric IN ({metrics}) THEN (SELECT min(hour_start) FROM rollups WHERE series_id = s.id) END,
       {last}, s.updated_ns, s.total, s.adjustments, s.start_time_ns
FROM series AS s ORDER BY s.id"""
#: The levels of these series (``SQL_EXPORT_LEVELS`` by id): what ``export_rows`` reads of level metrics.
SQL_LEVELS_OF = """
SELECT s.id, (SELECT b.value FROM buckets AS b WHERE b.series_id = s.id ORDER BY b.bucket_start DESC LIMIT 1)
FROM series AS s WHERE s.id IN ({ids})"""
SQL_ROLLUP_SERIES_OF = """
SELECT s.id, s.instance, s.metric, NULL, s.bucket_width,
       (SELECT min(hour_start) FROM rollups WHERE series_id = s.id), {last}, s.updated_ns
FROM series AS s WHERE s.id IN ({ids})"""
SQL_SERIES_UPDATED = "SELECT id, updated_ns FROM series WHERE metric IN ({metrics}) ORDER BY id"
SQL_SERIES_ATTRS_OF = "SELECT id, attrs FROM series WHERE id IN ({ids})"
#: Ids per ``SQL_SERIES_ATTRS_OF`` statement (well under SQLite's and PostgreSQL's parameter limits).
ATTRS_PAGE = 500
SQL_ROLLUP_SEGMENT_SUMS = """
SELECT s.id, {segments} FROM series AS s WHERE s.metric IN ({metrics}) ORDER BY s.id"""
SQL_ROLLUP_SEGMENT_SUMS_OF = """
SELECT s.id, {segments} FROM series AS s WHERE s.id IN ({ids})"""
SQL_ROLLUP_VALUES_AT = """
SELECT r.series_id, r.hour_start, r.value FROM rollups AS r
WHERE r.hour_start IN ({hours}) AND r.series_id IN (SELECT id FROM series WHERE metric IN ({metrics}))"""
SQL_ROLLUP_HOURS = """
SELECT s.instance, s.metric, s.attrs, r.hour_start, r.value
FROM series AS s JOIN rollups AS r ON r.series_id = s.id
WHERE r.hour_start IN ({hours}) AND s.metric IN ({metrics})"""


def _segments(windows: Sequence[tuple[int, int]], since: int | None = None) -> tuple[list[tuple[int, int]], str]:
    """The disjoint segments the windows' edges cut time into, as correlated sums (one range walk of the
    rollups' primary key each), and each window's ``[i, j)`` range of them. A segment that ends at or before
    ``since`` is 0 without a read (the caller knows its series have no rollups before ``since``)."""
    edges = sorted({t for w in windows for t in w})
    if len(edges) < 2:
        return [], ""
    segments = ", ".join(
        "0" if since is not None and b <= since else
        f"(SELECT coalesce(sum(value), 0) FROM rollups WHERE series_id = s.id "
        f"AND hour_start >= {int(a)} AND hour_start < {int(b)})"
        for a, b in itertools.pairwise(edges)
    )
    position = {t: i for i, t in enumerate(edges)}
    return [(position[a], position[b]) for a, b in windows], segments


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

    totals: Iterable[tuple[int, int, int, int]]  # (series id, total, adjustments, start_time_ns)
    new_series: Iterable[tuple[int, str, str, str]]  # (series id, instance, metric, canonical attrs JSON)
    names: dict[tuple[str, str, str], str]  # (instance, kind, id) -> name
    levels: dict[int, int] = field(default_factory=dict)  # level series id -> its newest bucket's value



class TotalsColumns:
    """Every series' ``(id, total, adjustments, start_time_ns)``, kept as one flat int64 array.

    Why not a list of row tuples: at 1M series the tuples and their ints took ~180 MB for one export; the array
    takes 32 bytes a series. Iterating it yields the row tuples again, one at a time (re-iterable).
    """

    __slots__ = ("_flat",)

    def __init__(self, flat: array[int]) -> None:
        self._flat = flat

    @property
    def flat(self) -> array[int]:
        """The rows, flat: ``id, total, adjustments, start_time_ns`` of each in turn (read-only)."""
        return self._flat

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        values = iter(self._flat)
        return zip(values, values, values, values, strict=True)

    def __len__(self) -> int:
        return len(self._flat) // 4


# Typed rows of the rollup readers. Named tuples, not dataclasses: the callers (signals, FOCUS, reports) unpack
# them positionally and read many thousands per export, and a tuple is both the cheapest and compatible.
class SeriesSum(NamedTuple):
    """One series' sum over a time range (rollups or buckets), in the metric's rollup unit."""

    instance: str
    metric: str
    attrs: dict[str, str]
    value: int


class HourValue(NamedTuple):
    """One series' hourly rollup at one hour."""

    instance: str
    metric: str
    attrs: dict[str, str]
    hour: int
    value: int


class RollupSeries(NamedTuple):
    """A series that has rollups: its identity, bucket width and first and last rollup hour."""

    instance: str
    metric: str
    attrs: dict[str, str]
    bucket_width: int
    first_hour: int
    last_hour: int


class SeriesHourValue(NamedTuple):
    """One rollup by series id: ``(series id, hour, value)``."""

    series_id: int
    hour: int
    value: int


class LedgerReader(LedgerEngine):
    """The read half of ``Ledger``: every reader on the engine's connection."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        # Parsed attribute sets of the rollup readers, shared and read-only: a series' attributes never change,
        # and a reader called once per day (FOCUS) or per export (signals) would parse the same strings again.
        self._parsed_attrs: dict[str, dict[str, str]] = {}

    @property
    def instance_id(self) -> str:
        """The receiver's ``service.instance.id``: made once per ledger, so it survives restarts."""
        row = self._conn.execute(SQL_GET_META, ("service.instance.id",)).fetchone()
        if row is None:
            raise LedgerError(f"ledger {self.path} has no service.instance.id (not initialised)")
        return str(row[0])

    def generation(self) -> tuple[tuple[str, str], ...]:
        """A token that changes whenever a transaction changes what readers see (every apply, prune and
        pricing rebuild bumps it in the same transaction; ``schema.SQL_BUMP_GENERATION``).

        Read it before the data it guards: data read afterwards is at least as new as the token, so a cache
        keyed by it can be early (recomputed once more than needed), never stale. Per provider instance
        (``("generation/openai/prod", "12")``), so a caller may also tell which instances changed; with the
        ledger's ``service.instance.id``, so tokens of two ledgers never compare equal.
        """
        try:
            with self._lock:
                return tuple((str(k), str(v)) for k, v in self._conn.execute(SQL_GENERATIONS))
        except EngineError as exc:
            raise LedgerError(f"ledger {self.path}: cannot read the generation: {exc}") from exc

    def cursor(self, instance: str, source: str = "poll") -> str | None:
        row = self._conn.execute(SQL_GET_CURSOR, (instance, source)).fetchone()
        return None if row is None else str(row[0])

    def cursors(self, instance: str) -> dict[str, str]:
        """Every cursor of one instance, by source."""
        return {str(k): str(v) for k, v in self._conn.execute(SQL_GET_CURSORS, (instance,))}

    def snapshot(self) -> Snapshot:
        """Every series total and every name, read in one transaction so they are mutually consistent."""
        with self._read_transaction("a snapshot") as conn:
            rows = conn.execute(SQL_SNAPSHOT).fetchall()
            names = {(i, k, d): n for i, k, d, n in conn.execute(SQL_NAMES)}
        return Snapshot(
            series=tuple(SeriesTotal(*row) for row in rows), names=names, taken_ns=time.time_ns()
        )

    def export_rows(self, known_series: int = 0, *, page: int = 10_000) -> ExportRows:
        """Every series' totals and the names (one read), and the series with an id above ``known_series``.

        The new series are read lazily, ``page`` at a time, so that describing 100,000 series to a fresh
        emitter never holds all their attributes in memory at once. They need not be in the totals' read:
        a series' identity never changes, and one created after the totals were read is simply described early.
        """
        with self._read_transaction("the totals") as conn:
            flat: array[int] = array("q")
            cursor = conn.execute(SQL_EXPORT_TOTALS)
            while rows := cursor.fetchmany(page):
                flat.extend(chain.from_iterable(rows))
            totals = TotalsColumns(flat)
            names = {(i, k, d): n for i, k, d, n in conn.execute(SQL_NAMES)}
            levels = {sid: v for sid, v in conn.execute(SQL_EXPORT_LEVELS) if v is not None}
        return ExportRows(totals, self._series_after(known_series, page), names, levels)

    @staticmethod
    def export_rows_of(
        totals: array[int], names: dict[tuple[str, str, str], str], levels: dict[int, int],
    ) -> ExportRows:
        """``export_rows`` from what one read of every series gave (``rollup_series_pages(every=True)``):
        ``totals`` flat as ``TotalsColumns``, every series already described to the reader (no new series: one
        created since is read by the next export, whose generation moved)."""
        return ExportRows(TotalsColumns(totals), (), names, levels)

    def _series_after(self, after: int, page: int) -> Iterator[tuple[int, str, str, str]]:
        while True:
            with self._lock:
                try:
                    rows = self._conn.execute(SQL_SERIES_AFTER, (after, page)).fetchall()
                except EngineError as exc:
                    raise LedgerError(f"ledger {self.path}: cannot read the series: {exc}") from exc
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def bucket_sums_between(self, start: int, end: int) -> list[SeriesSum]:
        """Per series: the sum of the latest values of buckets lying inside ``[start, end)``."""
        return [
            SeriesSum(instance, metric, json.loads(attrs), int(value))
            for instance, metric, attrs, value in self._conn.execute(SQL_BUCKET_SUMS_BETWEEN, (start, end))
        ]

    def rollup_sums_between(
        self, start: int, end: int, metrics: Sequence[str]
    ) -> list[SeriesSum]:
        """Per series of ``metrics``: the sum of its hourly rollups with ``start <= hour < end``.

        Values are in the rollup unit of the metric (``ROLLUP_PICO_METRICS``: pico-units). The attribute dicts
        are shared between calls: read-only.
        """
        marks = ",".join("?" * len(metrics))
        sql = SQL_ROLLUP_SUMS_BETWEEN.format(metrics=marks)
        attrs_of = self._attrs
        return [
            SeriesSum(instance, metric, attrs_of(attrs), int(value))
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
    ) -> list[HourValue]:
        """The hourly rollups of ``metrics`` at exactly these hours.

        The attribute dicts are shared between calls: read-only.
        """
        if not hours or not metrics:
            return []
        sql = SQL_ROLLUP_HOURS.format(hours=",".join("?" * len(hours)), metrics=",".join("?" * len(metrics)))
        attrs_of = self._attrs
        return [
            HourValue(instance, metric, attrs_of(attrs), int(hour), int(value))
            for instance, metric, attrs, hour, value in self._conn.execute(sql, (*hours, *metrics))
        ]

    def rollup_series(self, metrics: Sequence[str]) -> dict[int, RollupSeries]:
        """Series of ``metrics`` that have rollups, by id, in id order (on PostgreSQL a table's order moves as
        rows are updated: what is made of them in this order must not). The first and last hours come from the
        rollups' primary key (one index probe each)."""
        sql = SQL_ROLLUP_SERIES.format(metrics=",".join("?" * len(metrics)))
        return {
            int(sid): RollupSeries(instance, metric, json.loads(attrs), int(width or 0), int(first), int(last))
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
        spans, segments = self.rollup_segment_sums(windows, metrics)
        return {sid: [sum(row[i:j]) for i, j in spans] for sid, row in segments.items()}

    def rollup_segment_sums(
        self, windows: Sequence[tuple[int, int]], metrics: Sequence[str]
    ) -> tuple[list[tuple[int, int]], dict[int, tuple[int, ...]]]:
        """``rollup_window_sums`` before the windows are added up: per series id of ``metrics`` with a non-zero
        sum, its sums over the disjoint segments that the windows' edges cut time into, and for each window
        the ``[i, j)`` range of segments it covers. Callers that add many series together (the money signals)
        add their segments first and each window once at the end."""
        spans, rows = self.rollup_segment_rows(windows, metrics)
        out: dict[int, tuple[int, ...]] = {}
        for sid, *row in rows:
            if any(row):
                out[int(sid)] = tuple(row)
        return spans, out

    def rollup_segment_rows(
        self, windows: Sequence[tuple[int, int]], metrics: Sequence[str], *, since: int | None = None,
    ) -> tuple[list[tuple[int, int]], Iterator[tuple[int, ...]]]:
        """``rollup_segment_sums`` as rows ``(series id, *segment sums)`` in id order, read a page at a time
        (zero rows included), for a caller that folds them as they come: at 1M series the dict of every series' sums
        would hold ~100 MB at once.

        ``since``: no series the caller keeps rows of has rollups before it (it read their first hours), so the
        segments that end by then are 0 without an index probe per series (a young ledger's money signals: at 1M
        series, half of the probes were of a month of hours before any rollup)."""
        if not windows or not metrics:
            return [], iter(())
        spans, segments = _segments(windows, since)
        if not segments:
            return [], iter(())
        sql = SQL_ROLLUP_SEGMENT_SUMS.format(segments=segments, metrics=",".join("?" * len(metrics)))
        rows: Iterator[tuple[int, ...]] = iter(self._conn.execute(sql, tuple(metrics)))  # streamed by SQLite
        return spans, rows

    def rollup_segment_rows_of(
        self, windows: Sequence[tuple[int, int]], ids: Sequence[int]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, ...]]]:
        """``rollup_segment_rows`` of these series only (a reader that keeps every series' sums and reads again
        only those of the series that changed, ``series_updated``)."""
        spans, segments = _segments(windows)
        out: list[tuple[int, ...]] = []
        if not segments:
            return spans, out
        for lo in range(0, len(ids), ATTRS_PAGE):
            page = ids[lo:lo + ATTRS_PAGE]
            sql = SQL_ROLLUP_SEGMENT_SUMS_OF.format(segments=segments, ids=",".join("?" * len(page)))
            out += self._conn.execute(sql, tuple(page))
        return spans, out

    def series_updated(self, metrics: Sequence[str]) -> Iterator[list[tuple[int, int]]]:
        """``(id, updated_ns)`` of every series of ``metrics``, a page at a time, in id order. Every
        change of a series' buckets (and so of its rollups) sets its ``updated_ns`` in the same transaction, so a
        reader that kept what it read of a series with the ``updated_ns`` read before needs to read again only
        the series whose ``updated_ns`` moved (and the ledger-wide changes: pruning, re-pricing, bump the
        ledger-wide generation)."""
        cursor = self._conn.execute(SQL_SERIES_UPDATED.format(metrics=",".join("?" * len(metrics))), tuple(metrics))
        while rows := cursor.fetchmany(10_000):
            yield rows

    def rollup_series_of(
        self, ids: Sequence[int], last_of: Sequence[str]
    ) -> list[tuple[int, str, str, None, int | None, int | None, int | None, int]]:
        """``rollup_series_pages``' rows (without attributes) of these series only."""
        last = ("CASE WHEN s.metric IN ({}) THEN (SELECT max(hour_start) FROM rollups WHERE series_id = s.id) END"
                .format(",".join("?" * len(last_of))))
        out: list[tuple[int, str, str, None, int | None, int | None, int | None, int]] = []
        for lo in range(0, len(ids), ATTRS_PAGE):
            page = ids[lo:lo + ATTRS_PAGE]
            sql = SQL_ROLLUP_SERIES_OF.format(last=last, ids=",".join("?" * len(page)))
            out += self._conn.execute(sql, (*last_of, *page))
        return out

    def rollup_values_at(self, hours: Sequence[int], metrics: Sequence[str]) -> list[SeriesHourValue]:
        """The rollups of ``metrics`` at exactly these hours, by series id (point lookups)."""
        if not hours or not metrics:
            return []
        hours = sorted(set(hours))
        lookups = ", ".join(
            f"(SELECT value FROM rollups WHERE series_id = s.id AND hour_start = {int(h)})" for h in hours
        )
        sql = SQL_ROLLUP_SEGMENT_SUMS.format(segments=lookups, metrics=",".join("?" * len(metrics)))
        out: list[SeriesHourValue] = []
        for sid, *values in self._conn.execute(sql, tuple(metrics)):
            out += [SeriesHourValue(int(sid), h, int(v)) for h, v in zip(hours, values, strict=True) if v is not None]
        return out

    def rollup_series_pages(
        self, metrics: Sequence[str], last_of: Sequence[str] | None = None, *, attrs: bool = True,
        every: bool = False,
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Every series of ``metrics`` as raw rows ``(id, instance, metric, attrs JSON, bucket width, first hour,
        last hour, updated_ns)`` in id order, a page at a time; first is None for a series without rollups.

        For callers that keep what they derive from a series' attributes by id (the money signals): they parse
        a series' JSON once per process, not once per export; with ``attrs=False`` the JSON is not read at all
        (None), and ``series_attrs`` reads it for the ids the caller has not seen. With ``last_of``, only series
        of those metrics get their last hour read (one index probe fewer for each other series: None). Pages
        of raw rows, not a row at a time: at 100,000 series a generator's step per row is a tenth of the read.

        With ``every``, the rows of every series, whatever its metric, those of other metrics without an extent
        (first and last None), each with three more columns: what ``export_rows`` reads of it (total,
        adjustments, start time; ``levels_of`` reads the levels of the few level series). One read of every
        series for three readers (issue 20): the first export after start describes every series to the
        builder and takes its totals from the signals' read (``scheduler.FirstRead``). A level read in a CASE
        of this statement cost 0.3 s at 1M series, for the one level series of a few.
        """
        marks = ",".join("?" * len(metrics))
        last = "(SELECT max(hour_start) FROM rollups WHERE series_id = s.id)"
        last_marks = marks if last_of is None else ",".join("?" * len(last_of))
        if last_of is not None or every:
            last = f"CASE WHEN s.metric IN ({last_marks}) THEN {last} END"
        last_args = tuple(metrics) if last_of is None and every else tuple(last_of or ())
        if every:
            sql = SQL_EVERY_SERIES_ROWS.format(attrs="s.attrs" if attrs else "NULL", last=last, metrics=marks)
            args = (*metrics, *last_args)
        else:
            sql = SQL_ROLLUP_SERIES_ROWS.format(attrs="s.attrs" if attrs else "NULL", last=last, metrics=marks)
            args = (*last_args, *metrics)
        cursor = self._conn.execute(sql, args)
        while rows := cursor.fetchmany(10_000):
            yield rows

    def levels_of(self, ids: Sequence[int]) -> dict[int, int]:
        """The level (newest bucket's value) of these level series, as ``export_rows`` reads them (None left
        out): read beside ``rollup_series_pages(every=True)``, on the same connection."""
        out: dict[int, int] = {}
        for lo in range(0, len(ids), ATTRS_PAGE):
            page = ids[lo:lo + ATTRS_PAGE]
            sql = SQL_LEVELS_OF.format(ids=",".join("?" * len(page)))
            out.update((sid, v) for sid, v in self._conn.execute(sql, tuple(page)) if v is not None)
        return out

    def series_attrs(self, ids: Sequence[int]) -> dict[int, str]:
        """The canonical attributes JSON of these series (a series' attributes never change)."""
        out: dict[int, str] = {}
        for lo in range(0, len(ids), ATTRS_PAGE):
            page = ids[lo:lo + ATTRS_PAGE]
            sql = SQL_SERIES_ATTRS_OF.format(ids=",".join("?" * len(page)))
            out.update(self._conn.execute(sql, tuple(page)))
        return out

    def rollup_values_rows(
        self, hours: Sequence[int], metrics: Sequence[str]
    ) -> tuple[list[int], dict[int, tuple[int | None, ...]]]:
        """The rollups of ``metrics`` at exactly these hours: the sorted distinct hours, and per series id that
        has a value at one of them its values in that order (None where it has none). Point lookups, as
        ``rollup_values_at``, without a tuple per value."""
        hours = sorted(set(hours))
        if not hours or not metrics:
            return hours, {}
        lookups = ", ".join(
            f"(SELECT value FROM rollups WHERE series_id = s.id AND hour_start = {int(h)})" for h in hours
        )
        sql = SQL_ROLLUP_SEGMENT_SUMS.format(segments=lookups, metrics=",".join("?" * len(metrics)))
        empty = (None,) * len(hours)
        out: dict[int, tuple[int | None, ...]] = {}
        for sid, *values in self._conn.execute(sql, tuple(metrics)):
            row = tuple(values)
            if row != empty:
                out[sid] = row
        return hours, out

    def rollup_values_pages(
        self, hours: Sequence[int], metrics: Sequence[str]
    ) -> Iterator[list[tuple[Any, ...]]]:
        """``rollup_values_rows`` as raw rows ``(series id, *values at the sorted distinct hours)`` (None where
        none), a page at a time, every series of ``metrics`` included: for a caller that adds them up as they
        come (at 1M series the dict of every series' values would hold hundreds of MB)."""
        hours = sorted(set(hours))
        if not hours or not metrics:
            return
        lookups = ", ".join(
            f"(SELECT value FROM rollups WHERE series_id = s.id AND hour_start = {int(h)})" for h in hours
        )
        sql = SQL_ROLLUP_SEGMENT_SUMS.format(segments=lookups, metrics=",".join("?" * len(metrics)))
        cursor = self._conn.execute(sql, tuple(metrics))
        while rows := cursor.fetchmany(10_000):
            yield rows

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
