"""A poll's records -> the ledger's points ``(series id, bucket start, bucket width, value)``, a slice at a time.

Pure (no database): the series ids come in as a mapping, new series get the ids the engine will assign. Kept
apart from ``writer`` because it is the Python half of an apply (per record), while the writer is the SQL half
(per staged point): each can be made faster without touching the other, and the staged 4-tuple is their contract.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import compress, islice, repeat
from operator import lt
from typing import Any, Final, TypeAlias

from ..model import PollResult, UsageColumns, to_nanos
from ..series import CostIdent, SeriesKey, SeriesKeys, UsageIdent, check_measure

#: Points the planner hands over at a time (Python's working set: a list of this many 4-tuples).
SLICE_POINTS: Final = 50_000
HOUR: Final = 3600


Point = tuple[int, int, int, int]  # (series id, bucket start, bucket width, value)
# A usage identity's series, each as a ``[ledger id or None, key, new id or None]`` slot: by token type, and
# requests. A series not in the ledger gets its new id with the first point that creates it.
_Slot: TypeAlias = list[Any]  # [int | None, SeriesKey, int | None]: mutable, so a new id is found once
# A usage identity's slots by token type, its requests slot, and the latest bucket start of its points so far.
_UsageEntry: TypeAlias = list[Any]  # [dict[str, _Slot], _Slot, int]
#: Below every bucket start (a negative one is an invalid point, but still a key).
_BEFORE_ALL: Final = -(2**63) - 1


class PointPlanner:
    """A poll's records -> points ``(series id, start, width, value)``, handed over a slice at a time.

    Why slices: a backfill can hold a million records; building every point (and every record's identity) in
    lists first more than doubled the memory of the records themselves. The planner keeps only the current
    slice, the identities it resolved (a few thousand) and the series it will create.

    A series not in the ledger yet gets the id SQLite will assign it (``first_new_id`` + its rank among the
    new series: ``INTEGER PRIMARY KEY`` rows inserted in order in one write transaction get consecutive ids),
    so its points need no second pass; ``LedgerWriter`` checks the prediction and moves the points if it ever
    fails. Pure: no database, the ids come in as a mapping.
    """

    def __init__(
        self, keys: SeriesKeys, ids: Mapping[SeriesKey, int], tenant: str, horizon: int, first_new_id: int,
        *, id_step: int = 1, slice_points: int | None = None, check_distinct: bool = True,
    ) -> None:
        self.keys, self.ids, self.tenant, self.horizon = keys, ids, tenant, horizon
        self.first_new_id, self.id_step = first_new_id, id_step
        self.slice_points = SLICE_POINTS if slice_points is None else slice_points
        #: Series to create, in id order: the id each is expected to get.
        self.new_ids: dict[SeriesKey, int] = {}
        #: Points before the pruned horizon (already counted, no longer revisable).
        self.rejected = 0
        #: The narrowest bucket of the poll: none shorter than an hour lets the apply take its per-point paths.
        self.min_width = HOUR
        #: True when no two points of the poll share a key ``(series, start, width)``, so the engine may stage
        #: them without summing parts of one bucket (PostgreSQL: a sort instead of a sort and an aggregate).
        #: Known cheaply, per record rather than per point: each identity's records come in strictly increasing
        #: bucket starts (as providers report them, hour after hour), and no two identities share a series
        #: (dimensions that are no series attribute would); measures and cost quantities, rare, count as
        #: shared. False is always safe: it only costs the sum. Not checked (False) unless ``check_distinct``:
        #: SQLite sums parts as it stages, and the check costs ~1% of its apply.
        self.distinct = check_distinct
        self._entry_keys: set[SeriesKey] = set()

    def _claim(self, keys: list[SeriesKey]) -> None:
        """Note the series of a new identity; one another identity also feeds makes the poll not ``distinct``."""
        seen = self._entry_keys
        if len(set(keys)) != len(keys) or not seen.isdisjoint(keys):
            self.distinct = False
        seen.update(keys)

    def _new_id(self, key: SeriesKey) -> int:
        sid = self.new_ids.get(key)
        if sid is None:
            sid = self.new_ids[key] = self.first_new_id + self.id_step * len(self.new_ids)
        return sid

    def _usage_entry(self, ident: UsageIdent) -> _UsageEntry:
        keys, ids = self.keys.usage(ident), self.ids
        if self.distinct:
            self._claim([key for _, key in keys.tokens] + [keys.requests])
        return [{t: [ids.get(key), key, None] for t, key in keys.tokens}, [ids.get(keys.requests), keys.requests, None],
                _BEFORE_ALL]

    def _column(
        self, rows: list[Point], slot: _Slot, starts: Sequence[int], width: int, column: Sequence[int],
        creates_zero: bool,
    ) -> None:
        """The points of one column of a ``UsageColumns`` block into ``rows``: what its rows' records give, with
        the series looked up once and the tuples made by ``zip`` (no Python code per point)."""
        sid = slot[0]
        if sid is None:
            sid = slot[2]
            if not creates_zero:  # new and sparse: its zeros are no points (nor, alone, a series)
                if sid is None:
                    if not any(column):
                        return
                    sid = slot[2] = self._new_id(slot[1])
                rows += zip(repeat(sid), compress(starts, column), repeat(width), filter(None, column))
                return
            if sid is None:
                sid = slot[2] = self._new_id(slot[1])
        rows += zip(repeat(sid), starts, repeat(width), column)

    def _within_horizon(self, block: UsageColumns) -> UsageColumns:
        """``block`` without its rows before the pruned horizon, which are counted in ``rejected``."""
        keep = [start >= self.horizon for start in block.starts]
        per_row = len(block.tokens) + (block.requests is not None) + len(block.measures)
        self.rejected += per_row * keep.count(False)
        return UsageColumns(
            block.provider, block.model, block.operation, block.tenancy_id, block.bucket_width,
            list(compress(block.starts, keep)), {t: list(compress(c, keep)) for t, c in block.tokens.items()},
            None if block.requests is None else list(compress(block.requests, keep)), block.tenant,
            block.dimensions, {m: list(compress(c, keep)) for m, c in block.measures.items()}, block.sparse,
        )

    def slices(self, result: PollResult) -> Iterator[list[Point]]:
        """The points of ``result``, ``slice_points`` (or a few more: a block of ``usage_columns`` is not cut) at a
        time; the last slice may be short."""
        rows: list[Point] = []
        append = rows.append
        limit = self.slice_points
        horizon, tenant, ids, new_id, min_width = self.horizon, self.tenant, self.ids, self._new_id, self.min_width
        check = self.distinct  # False from the start when not asked for: nothing to track
        entries: dict[UsageIdent, _UsageEntry] = {}
        # Providers share one dimensions dict among the records of a group: sort each distinct dict once. (The
        # records hold the dicts alive meanwhile, so their ids are stable keys; bounded, in case they do not.)
        sorted_dims: dict[int, tuple[tuple[str, str], ...]] = {}
        for r in result.usage:
            d = r.dimensions
            dims: tuple[tuple[str, str], ...] = ()
            if d:
                found = sorted_dims.get(id(d))
                if found is None:
                    if len(sorted_dims) >= 4096:
                        sorted_dims.clear()
                    found = sorted_dims[id(d)] = tuple(sorted(d.items()))
                dims = found
            ident = (r.provider, r.model, r.operation, r.tenancy_id, r.tenant or tenant, dims)
            entry = entries.get(ident)
            if entry is None:
                entry = entries[ident] = self._usage_entry(ident)
            measures = r.measures
            if measures:
                for metric in measures:
                    check_measure(metric)
                self.distinct = False
            start = r.bucket_start
            if start < horizon:
                self.rejected += len(r.tokens) + (r.requests is not None) + len(measures)
                continue
            if check:
                if start <= entry[2]:
                    self.distinct = False
                entry[2] = start
            width, tokens = r.bucket_width, r.tokens
            if width < min_width:
                min_width = self.min_width = width
            creates_zero = not r.sparse  # a sparse record's zeros create no series (see UsageRecord)
            slots = entry[0]
            for token_type, value in tokens.items():
                slot = slots.get(token_type)
                if slot is None:  # not one of TOKEN_TYPES: no series
                    continue
                sid = slot[0]
                if sid is None:  # new: a sparse zero creates nothing, even after a value created it
                    if not (value or creates_zero):
                        continue
                    sid = slot[2]
                    if sid is None:
                        sid = slot[2] = new_id(slot[1])
                append((sid, start, width, value))
            requests = r.requests
            if requests is not None:
                slot = entry[1]
                sid = slot[0]
                if sid is None and (requests or creates_zero):
                    sid = slot[2]
                    if sid is None:
                        sid = slot[2] = new_id(slot[1])
                if sid is not None:
                    append((sid, start, width, requests))
            if measures:
                for metric, value in measures.items():
                    key = self.keys.measure(ident, metric)
                    sid = ids.get(key)
                    if sid is not None:
                        append((sid, start, width, value))
                    elif value or creates_zero:
                        append((new_id(key), start, width, value))
            if len(rows) >= limit:
                yield rows
                rows = []
                append = rows.append
        for block in result.usage_columns:
            starts = block.starts
            for metric in block.measures:
                check_measure(metric)
            if not starts:
                continue
            d = block.dimensions
            ident = (block.provider, block.model, block.operation, block.tenancy_id, block.tenant or tenant,
                     tuple(sorted(d.items())) if d else ())
            entry = entries.get(ident)
            if entry is None:
                entry = entries[ident] = self._usage_entry(ident)
            width = block.bucket_width
            if width < min_width:
                min_width = self.min_width = width
            if min(starts) < horizon:
                block = self._within_horizon(block)
                starts = block.starts
            if block.measures:
                self.distinct = False
            if starts and self.distinct:
                if starts[0] <= entry[2] or not all(map(lt, starts, islice(starts, 1, None))):
                    self.distinct = False
                entry[2] = starts[-1]
            creates_zero = not block.sparse
            slots = entry[0]
            for token_type, column in block.tokens.items():
                slot = slots.get(token_type)
                if slot is not None:  # else: not one of TOKEN_TYPES, no series
                    self._column(rows, slot, starts, width, column, creates_zero)
            if block.requests is not None:
                self._column(rows, entry[1], starts, width, block.requests, creates_zero)
            for metric, column in block.measures.items():
                key = self.keys.measure(ident, metric)
                self._column(rows, [ids.get(key), key, self.new_ids.get(key)], starts, width, column, creates_zero)
            if len(rows) >= limit:
                yield rows
                rows = []
                append = rows.append
        cost_entries: dict[CostIdent, list[Any]] = {}  # [ledger id or None, key, latest start]
        for c in result.costs:
            cdims = tuple(sorted(c.dimensions.items())) if c.dimensions else ()
            cident = (c.provider, c.tenancy_id, c.tenant or tenant, c.model, c.line_item, c.currency.upper(), cdims)
            centry = cost_entries.get(cident)
            if centry is None:
                ckey = self.keys.cost(cident)
                if check:
                    self._claim([ckey])
                centry = cost_entries[cident] = [ids.get(ckey), ckey, _BEFORE_ALL]
            start, width = c.bucket_start, c.bucket_width
            if width < min_width:
                min_width = self.min_width = width
            if start < horizon:
                self.rejected += 1 + (c.quantity is not None)
                continue
            if check:
                if start <= centry[2] or c.quantity is not None:
                    self.distinct = False
                centry[2] = start
            sid = centry[0]
            append((new_id(centry[1]) if sid is None else sid, start, width, to_nanos(c.amount)))
            if c.quantity is not None:
                qkey = self.keys.quantity(cident, c.quantity_unit)
                qsid = ids.get(qkey)
                append((new_id(qkey) if qsid is None else qsid, start, width, to_nanos(c.quantity)))
            if len(rows) >= limit:
                yield rows
                rows = []
                append = rows.append
        if rows:
            yield rows
