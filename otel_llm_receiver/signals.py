"""The money signals, read from the ledger: budgets, anomaly scores, attribution coverage, reconciliation and
token prices, as one ``SignalsReading`` (for the terminal) and as OTLP gauges (for the emitter).

Everything here reads the ledger's hourly rollups with a few aggregate queries (``Ledger.rollup_series_pages``,
``rollup_segment_rows``, ``rollup_values_pages``) and never calls a provider, so a restart mid-month loses nothing
and ``report`` works with no network. Money is exact ``Decimal`` until it becomes a gauge's double.

At scale (issue 20: 100,000 to 1,000,000 series) the per-series Python work and memory are kept small:

* what a series' attributes imply is derived once per process (attributes never change; a renamed tenancy
  re-derives its series) and kept by series id as small integers in arrays: the index of its ``_Facts`` (what
  the series of a tenancy share: cell, team, budget matches, tenancy name), of its anomaly group (provider,
  model, tenancy) and of its price key. A canonical attribute text is cut around its tenancy id, and what the
  rest implies is worked out once per distinct rest (``_derive_texts``: no JSON parse per series; texts the
  cut cannot take are parsed a page per ``json.loads`` call), and team and budget matches are worked out once
  per distinct value of what the rules and budgets look at. The first reading hands every series it reads,
  with its total and level, to the export (a ``Describer``: ``scheduler.FirstRead`` describes them to the
  builder and keeps the totals), so at start the series are read once, not twice;
* the money sums skip the segments that end before the first rollup of any series read (a young ledger), and
  are gathered a chunk of rows at a time, in C loops where a chunk holds exactly the next money series' rows;
* money series that no signal tells apart are added up as integers per ``_Cell`` before any ``Decimal``
  (``_Sums``: per series, one flat array of its sums over the segments the windows' edges cut time into);
  anomaly groups are two arrays by group (first hour, first member), scored from rows streamed from the ledger,
  and groups without a baseline read no rollups;
* what depends on rollups is kept while the ledger's generation (``Ledger.generation``, bumped in the
  transaction of every apply, prune and re-pricing) is unchanged: an export with nothing new in the same hour
  reads no rollup. After polls (instance generations moved, the ledger-wide one not), only the series whose
  ``updated_ns`` moved (every change of a series' buckets sets it in the same transaction) are read again:
  their extent, and their sums, by which their cells move (``_catch_up``). A new series, a rename, a prune or a
  re-pricing reads everything again; a new hour grid (the hour turned) reads the sums again.
* the cyclic garbage collector is paused while a reading is computed (``heap.collector_paused``): nothing made
  here is in a cycle, and its full passes over the heap cost about as much as a first reading of 100,000 series.

tests/test_signals_fast.py and tests/test_signals_engines.py (both engines) compare every reading with the
straightforward series-by-series computation (tests/support/signals_reference.py) on randomized ledgers, as time
moves and as data lands between reads (new series, late restatements, one instance moving, renames, prunes).

Spend sources (``budgets[].source``): ``estimated`` (``llm.usage.cost.estimated``), ``reported``
(``llm.usage.cost``, USD only) and ``best``: per provider instance and tenancy, reported cost up to the end of
its newest complete reported bucket, estimated cost after that (the hours reported cost has not reached yet),
and estimated cost alone where the provider reports no cost at all.
"""

from __future__ import annotations

import bisect
import datetime as dt
import fnmatch
import itertools
import json
import operator
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from . import anomalies, budgets
from .attribution import UNATTRIBUTED, Attributor
from .catalog import CATALOG
from .heap import collector_paused
from .ledger import Ledger
from .ledger.schema import META_GENERATION
from .names import CURRENCY_ATTR, LEVEL_METRICS, METRIC_COST, METRIC_COST_ESTIMATED, METRIC_TOKENS
from .pricing import PRICE_GAUGE_ATTRIBUTES, PriceBook
from .signals_config import BudgetConfig, BudgetMatch, Period

__all__ = ["Anomaly", "Describer", "Reconciliation", "Signals", "SignalsReading", "gauge_metrics"]

HOUR = 3600
DAY = 86400
#: Buckets still filling in are left out of "the newest complete hour" for this long after it ends.
SETTLE = 5 * 60
#: A day's reconciliation waits this long after the day ends, for the token buckets to settle.
RECONCILE_SETTLE = 2 * HOUR
PICO = Decimal(10) ** -12
NANO = Decimal(10) ** -9
MONEY_METRICS = (METRIC_COST_ESTIMATED, METRIC_COST)
#: The series the signals keep: money, and tokens (anomaly scores and price gauges).
SERIES_METRICS = (*MONEY_METRICS, METRIC_TOKENS)
_SERIES_METRICS = frozenset(SERIES_METRICS)


class Describer(Protocol):
    """Who the first reading hands every series it reads to (the export: ``scheduler.FirstRead``), so that at
    start the series are read once, not once for the signals and again for the export (issue 20)."""

    def page(
        self, series: Iterable[tuple[int, str, str, str]], names: Mapping[tuple[str, str, str], str],
        totals: tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]], levels: Mapping[int, int],
    ) -> None:
        """One page of series ``(id, instance, metric, attributes JSON)`` with the names, and their totals (the
        columns id, total, adjustments, start_time_ns) and levels (id -> value)."""

    def complete(self) -> None:
        """Every series was handed over: the pages are one whole read of the ledger's series."""

#: The periods of ``llm.cost.period_to_date``: the UTC day and calendar month, as the dashboards' "today" and
#: "this month" mean them.
PERIODS: tuple[Period, ...] = ("day", "month")
_ABSENT = object()  # an attribute not set (not the same as any value)
_NO_HOUR = 2**62  # the first hour of an anomaly group without members
_FOLD = 256  # rows a cell gathers before adding them up (bounded memory at a million series)
_SUMS_CHUNK = 4_096  # rows of the money sums taken at a time (``_read_sums``)
#: Attribute sets parsed per ``json.loads`` call: one JSON array a page costs half of one call a series.
_PARSE_PAGE = 2_000
_ID_KEY = "llm.tenancy.id"
_ID_CUT = '"llm.tenancy.id":"'  # where a canonical attribute text is cut (``Signals._template``)


@dataclass(frozen=True, slots=True)
class Anomaly:
    provider: str
    model: str
    tenancy_id: str
    tenancy_name: str | None
    signal: str  # cost or tokens
    hour: int
    value: float
    baseline: float  # the median it was compared with
    score: float


@dataclass(frozen=True, slots=True)
class Reconciliation:
    provider: str
    tenant: str
    tenancy_id: str
    tenancy_name: str | None
    day: int
    estimated: Decimal
    reported: Decimal

    @property
    def ratio(self) -> Decimal | None:
        return self.estimated / self.reported if self.reported else None


@dataclass(frozen=True)
class SignalsReading:
    """One consistent computation of every money signal at ``now``."""

    now: int
    budgets: list[budgets.BudgetStatus] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    coverage: dict[str, Decimal] = field(default_factory=dict)  # provider -> attributed share of 24 h spend
    reconciliation: list[Reconciliation] = field(default_factory=list)
    token_prices: list[tuple[dict[str, str], Decimal]] = field(default_factory=list)
    #: USD spent in the current UTC day / month, by period, source, provider, tenant (and team with rules).
    period_to_date: list[tuple[dict[str, str], Decimal]] = field(default_factory=list)
    hour: int = 0  # the hour the anomaly scores are about
    peak: Anomaly | None = None  # the highest score of the last week (with ``peak_days``)


@dataclass(slots=True, eq=False)
class _Facts:
    """What the money signals need of a series' attributes, shared by every series whose attributes imply the
    same (derived once per process and distinct set of facts, see ``Signals._derive``; a series keeps only the
    index of its facts in an array, so a million series cost a few bytes each, not an object each)."""

    instance: str
    metric: str
    usd: bool  # False for reported cost in another currency: budgets are USD
    provider: str
    tenant: str
    key: tuple[str, str]  # provider instance and tenancy: where reported and estimated meet
    tenancy_name: str | None
    team: str
    matches: int  # bit i set: ``budget_configs[i]`` matches the series
    cell: tuple[Any, ...]  # what puts it in a ``_Cell``: key, metric, provider, tenant, team, matches
    unit: Decimal


class _Template(NamedTuple):
    """What an attribute text implies apart from its tenancy id (``Signals._template``): its facts' class (the
    facts memo without the id), its anomaly group's provider and model (None: reported cost, not scored), its
    price key's index (-1: not a token series) and its attributes with the id "". A tuple: a series unpacks it."""

    facts: int
    provider: str | None
    model: str
    price: int
    attrs: dict[str, str]


_UNSEEN = _Template(-1, None, "", -1, {})  # a text not cut before (``_derive_texts``)


@dataclass(slots=True, eq=False)
class _SeriesSet:
    """The money and token series that have rollups, in id order, as parallel arrays: id, facts index, first
    rollup hour, price key index (token series, else -1); and by id, reported cost's ``(facts, width, last)``."""

    sids: array[int] = field(default_factory=lambda: array("q"))
    facts: array[int] = field(default_factory=lambda: array("i"))
    firsts: array[int] = field(default_factory=lambda: array("q"))
    prices: array[int] = field(default_factory=lambda: array("i"))
    reported: dict[int, tuple[int, int, int]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Groups:
    """The anomaly groups by code (twice the index of their (provider, model, tenancy), plus 1 for cost): the
    first hour of their rollups and the facts of their first member (-1: no member)."""

    firsts: array[int]
    heads: array[int]


@dataclass(slots=True, eq=False)
class _Sums:
    """The USD money series' sums over the segments of one hour grid, kept per series (one flat array, ``width``
    values a series) and added up per cell, so that after a poll only the series that changed are read again
    and their cells move by the difference."""

    grid: tuple[tuple[int, int], ...]
    spans: list[tuple[int, int]]
    width: int
    cells: list[_Cell]
    first_of_key: dict[tuple[str, str], _Facts]
    money: array[int]  # the series' ids, in id order: the position of a series' row and cell
    cell_of: list[_Cell]
    rows: array[int]


@dataclass(slots=True, eq=False)
class _Cell:
    """The money series that no money signal tells apart, their window sums added up as integers.

    Every signal groups or filters money series by at most these fields (provider instance and tenancy, metric,
    provider, tenant, team, budget matches), so summing their integer rollups first and turning each cell into
    ``Decimal`` once gives exactly the sum of the series' ``Decimal``s (exact arithmetic: no rounding below 28
    digits, and the same exponents since the same units are added)."""

    key: tuple[str, str]
    metric: str
    provider: str
    tenant: str
    team: str
    matches: int
    unit: Decimal
    rows: list[Sequence[int]]  # while summing: the members' rows ``(*segment sums)``
    columns: list[int] = field(default_factory=list)  # the members' sums per segment
    nonzero: int = 0  # members with rollups in some segment (none: the cell adds nothing, not even 0)
    sums: list[int] = field(default_factory=list)  # per window, for the reading at hand

    @property
    def present(self) -> bool:
        return self.nonzero > 0

    def money(self, i: int) -> Decimal:
        return Decimal(self.sums[i]) * self.unit


def _holds(ids: array[int], sid: int) -> bool:
    """Whether the sorted ``ids`` hold ``sid``."""
    at = bisect.bisect_left(ids, sid)
    return at < len(ids) and ids[at] == sid


def _kept(n: int, keep: list[bool] | None) -> list[int]:
    """The positions of a page's ``n`` rows that ``keep`` keeps (None: every row)."""
    return list(range(n)) if keep is None else list(itertools.compress(range(n), keep))


def _fold(c: _Cell) -> None:
    """Add the rows a cell gathered ``(series id, *segment sums)`` to its columns, and count them."""
    if c.rows:
        c.columns = [a + b for a, b in zip(c.columns, [sum(col) for col in zip(*c.rows, strict=True)][1:],
                                           strict=True)]
        c.nonzero += len(c.rows)
        c.rows = []


def _parse(texts: list[str]) -> list[dict[str, str]]:
    """Attribute sets (canonical JSON objects) parsed as one JSON array: a tenth of a million ``json.loads``
    calls cost as much as the parsing itself."""
    try:
        parsed: list[dict[str, str]] = json.loads("[" + ",".join(texts) + "]")
    except ValueError:  # not one array after all (e.g. a text that is not a single JSON value): one by one
        return [json.loads(t) for t in texts]
    if len(parsed) != len(texts):  # a text holding several values, e.g. '{...},{...}'
        return [json.loads(t) for t in texts]
    return parsed


def _glob(pattern: str | None, *values: str | None) -> bool:
    if pattern is None:
        return True
    return any(v is not None and fnmatch.fnmatchcase(v, pattern) for v in values)


class Signals:
    """Computes ``SignalsReading``s from a ledger, for given budgets, attribution rules and prices.

    What depends only on a series' attributes (team, budget matches, anomaly group, price attributes) is kept by
    series id for the object's life; everything that depends on time or on rollups is computed at each ``read``,
    so a reading is the same whether it is the first or the hundredth.
    """

    def __init__(
        self,
        budget_configs: Sequence[BudgetConfig] = (),
        attributor: Attributor | None = None,
        prices: PriceBook | None = None,
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.budget_configs = tuple(budget_configs)
        self.attributor = attributor or Attributor(())
        self.prices = prices
        self.labels = labels or {}
        self._scores: dict[int, list[Anomaly]] = {}
        self._names: dict[tuple[str, str, str], str] = {}
        self._shared: dict[Any, Any] = {}  # one copy of each repeated string and tuple
        # Attribute keys whose values decide a team or a budget match (beside provider, tenant, tenancy, model).
        self._label_keys = tuple(sorted(
            {k for b in self.budget_configs for k in b.match.labels} | {k for r in self.attributor.rules for k in r.labels}))
        # Per series id: the index of its facts (-1: not derived yet) and of its price key (-1: none).
        self._fact_at: array[int] = array("i")
        self._price_at: array[int] = array("i")
        self._facts: list[_Facts] = []
        self._fact_memo: dict[tuple[Any, ...], int] = {}
        # The cut path of ``_derive_texts``: what a text implies around its tenancy id, by (instance, metric, text
        # before the id, text after it); the facts by (fact class, tenancy id), the classes by their memo.
        self._templates: dict[tuple[str, str, str, str], _Template | None] = {}
        self._fact_classes: dict[tuple[Any, ...], int] = {}
        self._cut_facts: dict[tuple[int, str], int] = {}
        self._price_keys: list[tuple[tuple[str, str], ...]] = []
        self._price_memo: dict[tuple[str | None, ...], int] = {}  # by the price attributes' values
        # Team and budget matches by what decides them (``_attribution``): the model and the tenancy only when
        # a rule or a budget names one.
        rules, matches = self.attributor.rules, [b.match for b in self.budget_configs]
        self._by_model = any(r.model is not None for r in rules) or any(m.model is not None for m in matches)
        self._by_tenancy = (any(r.tenancy is not None or r.tenancy_regex is not None for r in rules)
                            or any(m.tenancy is not None for m in matches))
        self._attribution_memo: dict[tuple[Any, ...], tuple[str, int]] = {}
        # Per series id: its anomaly group (provider, model, tenancy; -1 for reported cost), by index.
        self._group_at: array[int] = array("i")
        self._group_keys: list[tuple[str, str, str]] = []
        self._group_memo: dict[tuple[str, str, str], int] = {}
        self._last_groups: tuple[_SeriesSet | None, _Groups | None] = (None, None)
        # What holds only while the ledger is unchanged (``Ledger.generation``): the series with their rollups'
        # extent (by metrics asked), the money cells by the hour grid of the windows, and anomaly scores by hour.
        self._generation: tuple[tuple[str, str], ...] | None = None
        # The series and the money sums, kept across generations: a generation moved by polls only (not by a
        # prune or a re-pricing, which move the ledger-wide one) means only the series whose ``updated_ns``
        # moved are read again (``_catch_up``).
        self._set: _SeriesSet | None = None
        self._moved = False
        # Every series of SERIES_METRICS (with rollups or not), in id order, and its updated_ns when last read.
        self._all_sids: array[int] = array("q")
        self._all_updated: array[int] = array("q")
        self._sums: _Sums | None = None
        declared = frozenset(CATALOG.metrics["llm.pricing.token_price"].attributes)
        self._price_attrs = declared or PRICE_GAUGE_ATTRIBUTES
        self._price_order = tuple(sorted(self._price_attrs))
        self._fact_order = ("gen_ai.provider.name", "llm.tenant", "llm.tenancy.id", "llm.tenancy.name",
                            *self._label_keys)
        self._id_slot = 3 + self._fact_order.index(_ID_KEY)  # the tenancy id's place in ``_fact_memo_of``

    # -- reading -----------------------------------------------------------------------------------------
    def _fresh(self, ledger: Ledger) -> None:
        """Forget what the ledger's last change may have made stale (read before the data: see
        ``Ledger.generation``). Unchanged, the series, cells and scores computed since are reused."""
        generation = ledger.generation()
        if generation != self._generation:
            new, old = dict(generation), dict(self._generation or ())
            if new.get("service.instance.id") != old.get("service.instance.id"):
                self._forget_facts()  # another ledger: its series ids mean other series
                self._names = {}
            if new.get(META_GENERATION) != old.get(META_GENERATION) or self._generation is None:
                self._set, self._sums = None, None  # pruned or re-priced: every series may have changed
            else:
                self._moved = True  # polls landed: the series they changed are read again (``_catch_up``)
            self._generation = generation
            self._scores.clear()

    def _forget_facts(self) -> None:
        self._fact_at, self._price_at = array("i"), array("i")
        self._all_sids, self._all_updated = array("q"), array("q")
        self._set, self._sums = None, None
        self._facts, self._fact_memo = [], {}
        self._templates, self._fact_classes, self._cut_facts = {}, {}, {}
        self._price_keys, self._price_memo = [], {}
        self._attribution_memo = {}
        self._group_at, self._group_keys, self._group_memo = array("i"), [], {}
        self._last_groups = (None, None)

    def _series(self, ledger: Ledger, describe: Describer | None = None) -> _SeriesSet:
        """The money and token series with rollups, in id order (reported cost in other currencies included:
        their facts say ``usd``). Attributes are parsed only for series not seen before, or whose tenancy name
        changed; nothing is read while the ledger's generation is the one of the last read (``_fresh``), and
        after polls only what changed (``_catch_up``)."""
        if self._set is not None:
            if not self._moved:
                return self._set
            self._moved = False
            if self._catch_up(ledger, self._set):
                return self._set
        self._set, self._sums, self._moved = None, None, False
        self._set = self._read_series(ledger, describe)
        return self._set

    def _read_series(self, ledger: Ledger, describe: Describer | None = None) -> _SeriesSet:
        """Every series of SERIES_METRICS, its extent and facts. With ``describe``, when the attributes are read
        (the first reading), every series of any metric is read, and each page of them ``(id, instance, metric,
        attributes)`` handed to ``describe`` with the names and their totals and levels, then ``complete`` once
        the read got to its end: one read of the series for the export too (``scheduler.FirstRead``)."""
        names = ledger.names()
        if names != self._names:
            changed = {
                (i, d) for (i, k, d) in names.keys() | self._names.keys()
                if k == "tenancy" and names.get((i, k, d)) != self._names.get((i, k, d))
            }
            if changed:  # their series' team, matches and tenancy name change: derived again below
                stale = {f for f, facts in enumerate(self._facts) if facts.key in changed}
                if stale:
                    fact_at = self._fact_at
                    for sid, f in enumerate(fact_at):
                        if f in stale:
                            fact_at[sid] = -1
                self._fact_memo = {k: f for k, f in self._fact_memo.items() if f not in stale}
                self._cut_facts = {k: f for k, f in self._cut_facts.items() if f not in stale}
                self._attribution_memo.clear()
            self._names = names
        # Series ids are never reused (series are never deleted), so a known id needs no attributes: they are
        # read with the rows only when nothing is known yet, else only for the ids not seen before.
        fact_at = self._fact_at
        out = _SeriesSet()
        sids, facts, firsts = out.sids, out.facts, out.firsts
        derive = self._derive_texts
        reported: list[tuple[int, int, int]] = []  # (position in out, width, last hour)
        all_sids, all_updated = array("q"), array("q")
        attrs = not self._facts
        every = attrs and describe is not None
        for page in ledger.rollup_series_pages(SERIES_METRICS, (METRIC_COST,), attrs=attrs, every=every):
            # Column by column (C loops), as most series are known and have rollups.
            ids, instances, metrics, texts, widths, page_firsts, lasts, updated, *export = zip(*page, strict=True)
            kept_ids, kept_updated = ids, updated
            if every:
                assert describe is not None
                totals, adjustments, starts = export
                levels = {} if LEVEL_METRICS.isdisjoint(metrics) else ledger.levels_of(
                    [sid for sid, metric in zip(ids, metrics, strict=True) if metric in LEVEL_METRICS])
                describe.page(zip(ids, instances, metrics, texts, strict=True), names,
                              (ids, totals, adjustments, starts), levels)
                mine = list(map(_SERIES_METRICS.__contains__, metrics))  # the others have no extent: not kept
                if not all(mine):
                    kept_ids = tuple(itertools.compress(ids, mine))
                    kept_updated = tuple(itertools.compress(updated, mine))
            all_sids.extend(kept_ids)
            all_updated.extend(kept_updated)  # read with the extent: the sums, read later, are at least as new
            keep: list[bool] | None = None
            if None in page_firsts:  # some have no rollups (pruned away, or none yet)
                keep = list(map(operator.is_not, page_firsts, itertools.repeat(None)))
            base = len(sids)
            if attrs:  # the first reading: no series known, each derived from the text read with it (C loops)
                compress = itertools.compress
                if keep is None:
                    chosen_ids, chosen_firsts = ids, page_firsts
                    columns = (instances, metrics, texts)
                else:
                    chosen_ids, chosen_firsts = tuple(compress(ids, keep)), tuple(compress(page_firsts, keep))
                    columns = (tuple(compress(instances, keep)), tuple(compress(metrics, keep)),
                               tuple(compress(texts, keep)))
                sids.extend(chosen_ids)
                firsts.extend(chosen_firsts)
                facts.extend(derive(chosen_ids, *columns, names))
                if METRIC_COST in metrics:
                    reported += [(base + at, widths[i] or 0, page_firsts[i] if lasts[i] is None else lasts[i])
                                 for at, i in enumerate(_kept(len(ids), keep)) if metrics[i] == METRIC_COST]
                continue
            rows = _kept(len(ids), keep)
            known = len(fact_at)
            page_facts = [fact_at[ids[i]] if ids[i] < known else -1 for i in rows]
            sids.extend([ids[i] for i in rows])
            firsts.extend([page_firsts[i] for i in rows])
            if -1 in page_facts:  # series not seen before: their facts derived from their attributes
                todo = [at for at, f in enumerate(page_facts) if f < 0]
                need = [ids[rows[at]] for at in todo if texts[rows[at]] is None]
                stored = ledger.series_attrs(need) if need else {}
                chosen = list(map(rows.__getitem__, todo))
                derived = derive(
                    [ids[i] for i in chosen], [instances[i] for i in chosen], [metrics[i] for i in chosen],
                    [texts[i] if texts[i] is not None else stored[ids[i]] for i in chosen], names)
                for at, f in zip(todo, derived, strict=True):
                    page_facts[at] = f
            facts.extend(page_facts)
            if METRIC_COST in metrics:
                reported += [(base + at, widths[i] or 0, page_firsts[i] if lasts[i] is None else lasts[i])
                             for at, i in enumerate(rows) if metrics[i] == METRIC_COST]
        if every:
            assert describe is not None
            describe.complete()
        self._all_sids, self._all_updated = all_sids, all_updated
        out.reported = {sids[at]: (facts[at], width, last) for at, width, last in reported}
        price_at = self._price_at
        out.prices = array("i", map(price_at.__getitem__, sids))  # every sid in ``out`` was derived: in range
        return out

    def _catch_up(self, ledger: Ledger, series: _SeriesSet) -> bool:
        """Bring the kept series (extent, reported cost, anomaly groups' first hours) and money sums up to date
        after polls, reading again only the series whose ``updated_ns`` moved; False when that is not enough (a
        new series, one that gained its first rollups, a rename, an extent that shrank): read everything.

        This rests on the writer setting a series' ``updated_ns`` in every transaction that changes its rollups
        (every apply path does, a bucket-width change that moves value between hours without changing the total
        included; tests/test_signals_engines.py has one)."""
        if ledger.names() != self._names:
            return False
        all_sids, all_updated = array("q"), array("q")
        for page in ledger.series_updated(SERIES_METRICS):
            ids, updated = zip(*page, strict=True)
            all_sids.extend(ids)
            all_updated.extend(updated)
        if all_sids != self._all_sids:
            return False  # a new series: its facts are derived with everything else
        old = self._all_updated
        changed = [(all_sids[i], u) for i, (o, u) in enumerate(zip(old, all_updated, strict=True)) if o != u]
        if not changed:
            return True
        sids = series.sids
        position: dict[int, int] = {}
        for sid, _ in changed:
            at = bisect.bisect_left(sids, sid)
            if at < len(sids) and sids[at] == sid:
                position[sid] = at
        rows = ledger.rollup_series_of(sorted(position), (METRIC_COST,))
        if len(rows) != len(position) or len(position) != len(changed):
            return False  # a series without rollups before (gained some) or none now
        groups = self._last_groups[1] if self._last_groups[0] is series else None
        for sid, _, metric, _, width, first, last, _ in rows:
            at = position[sid]
            if first is None or first > series.firsts[at]:
                return False  # its rollups were pruned or cancelled out: read everything again
            series.firsts[at] = first
            f = series.facts[at]
            if metric == METRIC_COST:
                series.reported[sid] = (f, width or 0, first if last is None else last)
            if groups is not None and metric != METRIC_COST:
                code = 2 * self._group_at[sid] + (metric == METRIC_COST_ESTIMATED)
                if first < groups.firsts[code]:
                    groups.firsts[code] = first
        if self._sums is not None:
            self._sums_catch_up(ledger, self._sums, [sid for sid in position if _holds(self._sums.money, sid)])
        self._all_updated = all_updated
        return True

    def _grow_ids(self, sid: int) -> None:
        """Room in the per-series arrays for ids up to ``sid`` (amortised: ids grow with the ledger)."""
        fact_at = self._fact_at
        if sid >= len(fact_at):
            grow = sid + 1 - len(fact_at) + len(fact_at) // 4
            fact_at.extend(array("i", [-1]) * grow)
            self._price_at.extend(array("i", [-1]) * grow)
            self._group_at.extend(array("i", [-1]) * grow)

    def _derive_texts(
        self, sids: Sequence[int], instances: Sequence[str], metrics: Sequence[str], texts: Sequence[str],
        names: Mapping[tuple[str, str, str], str],
    ) -> list[int]:
        """``_derive`` of these series from their attribute texts (canonical JSON); the indexes of their facts.

        A text is cut around its tenancy id (``_template``): what the rest implies (the facts but for the
        tenancy, the anomaly group's provider and model, the price key) is worked out once per distinct rest,
        and a series then costs two lookups by (that, tenancy id), no JSON parse. Measured at 100,000 series
        (issue 20): parsing every text and deriving per series was 0.35 s of a 0.75 s first reading. Texts the
        cut cannot take (escapes, no tenancy id) are parsed and derived one by one (``_derive``): the cut path
        gives exactly their facts, since it builds the same attribute dict and looks it up in the same memos.
        """
        out = [-1] * len(sids)
        if not sids:
            return out
        self._grow_ids(max(sids))
        fact_at, price_at, group_at = self._fact_at, self._price_at, self._group_at
        templates, cut_facts, group_memo = self._templates, self._cut_facts, self._group_memo
        partition, missing = str.partition, _UNSEEN
        slow = []
        for at, (sid, instance, metric, text) in enumerate(zip(sids, instances, metrics, texts, strict=True)):
            before, found, rest = partition(text, _ID_CUT)
            if found and "\\" not in text:
                tenancy, _, after = partition(rest, '"')
                t = templates.get((instance, metric, before, after), missing)
                if t is missing:
                    t = self._template(instance, metric, before, after)
                if t is not None and tenancy.isprintable():
                    fact_class, provider, model, price, attrs = t
                    f = cut_facts.get((fact_class, tenancy))
                    if f is None:
                        f = cut_facts[(fact_class, tenancy)] = self._fact_index(
                            instance, metric, {**attrs, _ID_KEY: tenancy}, names)
                    fact_at[sid] = out[at] = f
                    if provider is not None:
                        g = group_memo.get((provider, model, tenancy))
                        group_at[sid] = g if g is not None else self._group_index(provider, model, tenancy)
                    if price >= 0:
                        price_at[sid] = price
                    continue
            slow.append(at)
        if slow:
            parsed = _parse([texts[at] for at in slow])
            for at, attrs in zip(slow, parsed, strict=True):
                out[at] = self._derive(sids[at], instances[at], metrics[at], attrs, names)
        return out

    def _template(self, instance: str, metric: str, before: str, after: str) -> _Template | None:
        """What the attribute text ``before + '"llm.tenancy.id":"' + id + '"' + after`` implies apart from the
        id, for every id without quotes, escapes or control characters (the caller checks): None when the rest
        is not a JSON object in which that is the only tenancy id (then the text is parsed)."""
        t = None
        attrs = None
        if '"llm.tenancy.id"' not in before and '"llm.tenancy.id"' not in after:
            try:
                attrs = json.loads(before + _ID_CUT + '"' + after)
            except ValueError:
                attrs = None
        if isinstance(attrs, dict) and attrs.get(_ID_KEY) == "" and _ID_KEY not in self._price_attrs:
            memo = self._fact_memo_of(instance, metric, attrs)
            slot = self._id_slot
            fact_class = self._fact_classes.setdefault(memo[:slot] + memo[slot + 1:], len(self._fact_classes))
            price = self._price_index(attrs) if metric == METRIC_TOKENS else -1
            provider: str | None = None
            model = ""
            if metric != METRIC_COST:
                shared = self._shared
                provider = attrs.get("gen_ai.provider.name") or ""
                model = str(attrs.get("gen_ai.request.model") or "")
                provider, model = shared.setdefault(provider, provider), shared.setdefault(model, model)
            t = _Template(fact_class, provider, model, price, attrs)
        self._templates[(instance, metric, before, after)] = t
        return t

    def _derive(
        self, sid: int, instance: str, metric: str, attrs: dict[str, str], names: Mapping[tuple[str, str, str], str]
    ) -> int:
        """The index of the series' facts (and its price key's, kept by id), derived from its attributes; series
        whose attributes imply the same facts share them (token types, the cost of each)."""
        get = attrs.get
        self._grow_ids(sid)
        if metric == METRIC_TOKENS:
            self._price_at[sid] = self._price_index(attrs)
        if metric != METRIC_COST:  # the anomaly group: (provider, model, tenancy); its signal is the metric's
            self._group_at[sid] = self._group_index(
                get("gen_ai.provider.name") or "", get("gen_ai.request.model") or "", get("llm.tenancy.id") or "")
        f = self._fact_at[sid] = self._fact_index(instance, metric, attrs, names)
        return f

    def _price_index(self, attrs: Mapping[str, str]) -> int:
        """The index of a token series' price key (the price attributes it has)."""
        values = tuple(map(attrs.get, self._price_order))  # the price attributes' values, None where absent
        p = self._price_memo.get(values)
        if p is None:
            p = self._price_memo[values] = len(self._price_keys)
            self._price_keys.append(tuple(sorted((k, v) for k, v in attrs.items() if k in self._price_attrs)))
        return p

    def _group_index(self, provider: str, model: str, tenancy: str) -> int:
        """The index of an anomaly group (provider, model, tenancy)."""
        group = (provider, model, tenancy)
        g = self._group_memo.get(group)
        if g is None:
            shared = self._shared  # one copy of each provider, model and tenancy
            group = (shared.setdefault(provider, provider), shared.setdefault(model, model),
                     shared.setdefault(tenancy, tenancy))
            g = self._group_memo[group] = len(self._group_keys)
            self._group_keys.append(group)
        return g

    def _fact_memo_of(self, instance: str, metric: str, attrs: Mapping[str, str]) -> tuple[Any, ...]:
        """Every fact depends on these few values only (and on the names and labels of the instance); None where
        absent, not the same as "". The model only when a rule or a budget names one: a tenancy's series share."""
        get = attrs.get
        usd = not (metric == METRIC_COST and CURRENCY_ATTR in attrs)
        money = metric in MONEY_METRICS
        return (instance, metric, usd, *map(get, self._fact_order),
                get("gen_ai.request.model", _ABSENT) if money and self._by_model else None)

    def _fact_index(
        self, instance: str, metric: str, attrs: Mapping[str, str], names: Mapping[tuple[str, str, str], str]
    ) -> int:
        memo = self._fact_memo_of(instance, metric, attrs)
        f = self._fact_memo.get(memo)
        if f is None:
            f = self._fact_memo[memo] = len(self._facts)
            self._facts.append(self._new_facts(instance, metric, memo[2], attrs, names))
        return f

    def _new_facts(
        self, instance: str, metric: str, usd: bool, attrs: Mapping[str, str],
        names: Mapping[tuple[str, str, str], str],
    ) -> _Facts:
        shared = self._shared
        tenancy = attrs.get("llm.tenancy.id")
        name = names.get((instance, "tenancy", tenancy)) if tenancy else None
        provider = attrs.get("gen_ai.provider.name", "")
        tenancy_id = attrs.get("llm.tenancy.id", "")
        tenant = attrs.get("llm.tenant", "")
        team, matches = "", 0
        if metric in MONEY_METRICS:  # team and budget matches: only money is counted per team and budget
            team, matches = self._attribution(instance, attrs, name)
        s = _Facts(
            shared.setdefault(instance, instance), shared.setdefault(metric, metric), usd,
            shared.setdefault(provider, provider), shared.setdefault(tenant, tenant),
            shared.setdefault(k := (instance, tenancy_id), k), name, team, matches, (),
            PICO if metric == METRIC_COST_ESTIMATED else NANO,
        )
        s.cell = shared.setdefault(c := (s.key, s.metric, s.provider, s.tenant, s.team, s.matches), c)
        return s

    def _attribution(self, instance: str, attrs: Mapping[str, str], name: str | None) -> tuple[str, int]:
        """A money series' team and budget matches, kept per distinct value of what the rules and budgets look
        at: the model and the tenancy only when some rule or budget names one (a tenancy's series then share)."""
        a = attrs
        memo = (
            instance, a.get("gen_ai.provider.name"), a.get("llm.tenant"),
            (a.get("llm.tenancy.id"), name, a.get("llm.tenancy.name")) if self._by_tenancy else None,
            a.get("gen_ai.request.model", _ABSENT) if self._by_model else None,
            tuple(a.get(k) for k in self._label_keys),  # None where absent: not the same as ""
        )
        found = self._attribution_memo.get(memo)
        if found is None:
            team = self.attributor.team(attrs, name, self.labels.get(instance))
            matches = sum(1 << i for i, b in enumerate(self.budget_configs)
                          if self._matches(b.match, instance, name, team, attrs))
            found = self._attribution_memo[memo] = (self._shared.setdefault(team, team), matches)
        return found

    def read(
        self, ledger: Ledger, now: int, *, anomaly_hour: int | None = None, peak_days: int = 0,
        describe: Describer | None = None,
    ) -> SignalsReading:
        """Every money signal at ``now``. ``describe``: see ``_read_series`` (the export hands its builder's)."""
        with collector_paused():
            return self._read(ledger, now, anomaly_hour, peak_days, describe)

    def _read(
        self, ledger: Ledger, now: int, anomaly_hour: int | None, peak_days: int, describe: Describer | None = None,
    ) -> SignalsReading:
        self._fresh(ledger)
        every = self._series(ledger, describe)
        hour_end = (now - SETTLE) // HOUR * HOUR  # end of the newest complete hour
        reported_until = self._reported_until(every, now)
        base_windows: list[tuple[int, int]] = [(hour_end - DAY, hour_end)]
        plans = []
        for budget in self.budget_configs:
            bounds = budgets.period_bounds(now, budget.period, budget.timezone)
            plan = {
                "spent": (bounds[0], now + HOUR),
                "trailing": (hour_end - budgets.PROJECTION_WINDOW, hour_end),
                **{w: (hour_end - seconds, hour_end) for w, seconds in budgets.BURN_WINDOWS.items()},
            }
            plans.append((budget, bounds, plan))
            base_windows += plan.values()
        recon_days = self._final_days(reported_until, now)
        base_windows += [(d, d + DAY) for d in set(recon_days.values())]
        windows = set(base_windows)
        for lo, hi in base_windows:
            for r in set(reported_until.values()):
                windows.add((lo, max(lo, min(hi, r))))
                windows.add((min(hi, max(lo, r)), hi))
        # Period to date: every hour that started in the period, the current one (still filling in) included,
        # as a budget's "spent" counts it.
        periods = {p: (budgets.period_bounds(now, p)[0], now + HOUR) for p in PERIODS}
        windows.update(periods.values())
        order = sorted(windows)
        index = {w: i for i, w in enumerate(order)}
        # Rollups start on whole hours, so a window's sum depends only on its edges rounded up to the hour: the
        # cells are kept by that grid while the ledger is unchanged (a later export in the same hour reads none).
        grid = tuple((-(-a // HOUR) * HOUR, -(-b // HOUR) * HOUR) for a, b in order)
        sums = self._sums
        if sums is None or sums.grid != grid:
            # No series read has rollups before the first of their first hours: segments that end by then are 0
            # (rows of series read later are left out; a series that gains older rollups is read again in full
            # by ``_catch_up``, its ``updated_ns`` having moved).
            since = min(every.firsts) if every.firsts else None
            sums = self._sums = self._read_sums(every, grid, *ledger.rollup_segment_rows(grid, MONEY_METRICS, since=since))
        cells, first_of_key = sums.cells, sums.first_of_key
        for c in cells:
            c.sums = [sum(c.columns[i:j]) for i, j in sums.spans]

        def spend(chosen: Sequence[_Cell], window: tuple[int, int], source: str) -> Decimal:
            a, b = window
            i = index[window]
            total = Decimal(0)
            keys_reported = {c.key for c in chosen if c.metric == METRIC_COST}
            own = METRIC_COST_ESTIMATED if source == "estimated" else METRIC_COST
            for c in chosen:
                if not c.present:
                    continue
                if source != "best":
                    if c.metric == own:
                        total += c.money(i)
                    continue
                r = reported_until.get(c.key)
                if c.key not in keys_reported or r is None:
                    if c.metric == METRIC_COST_ESTIMATED:
                        total += c.money(i)
                elif c.metric == METRIC_COST:
                    total += c.money(index[(a, max(a, min(b, r)))])
                else:
                    total += c.money(index[(min(b, max(a, r)), b)])
            return total

        statuses = []
        for bi, (budget, bounds, plan) in enumerate(plans):
            matched = [c for c in cells if c.matches >> bi & 1]
            amounts = {k: spend(matched, w, budget.source) for k, w in plan.items()}
            statuses.append(budgets.status(
                budget.name, budget.amount, bounds, now, amounts["spent"], amounts["trailing"],
                {w: amounts[w] for w in budgets.BURN_WINDOWS},
            ))
        coverage = {}
        if self.attributor:  # without rules every share would be 0: nothing to say
            coverage = self._coverage(cells, lambda cs: spend(cs, (hour_end - DAY, hour_end), "best"))
        recon = self._reconcile(cells, first_of_key, recon_days, lambda cs, d, src: spend(cs, (d, d + DAY), src))
        hour = anomaly_hour if anomaly_hour is not None else hour_end - HOUR
        token_prices = []
        if self.prices is not None:
            keys = self._price_keys
            distinct = dict.fromkeys(keys[p] for p in dict.fromkeys(every.prices) if p >= 0)
            token_prices = self.prices.token_prices(
                (dict(k) for k in distinct), now, frozenset(CATALOG.metrics["llm.pricing.token_price"].attributes))
        peak = None
        if peak_days:
            week = self._anomalies_between(ledger, hour - peak_days * DAY + HOUR, hour + HOUR)
            peak = max(week, key=lambda a: a.score, default=None)
        to_date = self._period_to_date(cells, {p: index[w] for p, w in periods.items()})
        return SignalsReading(
            now=now, budgets=statuses, anomalies=self._anomalies_of(ledger, hour, every), coverage=coverage,
            reconciliation=recon, token_prices=token_prices, period_to_date=to_date, hour=hour, peak=peak,
        )

    def _read_sums(
        self, every: _SeriesSet, grid: tuple[tuple[int, int], ...], spans: list[tuple[int, int]],
        segments: Iterable[Sequence[int]],
    ) -> _Sums:
        """The USD money series' sums over the segments of ``grid``, kept per series and added up per cell (in
        the order cells are first seen, by series id), and the facts of the first series of each (instance,
        tenancy): what names a reconciliation.

        ``segments`` are rows ``(series id, *sums)`` of the series' sums over disjoint time segments and
        ``spans`` each window's range of them (``Ledger.rollup_segment_rows``); rows of other series (other
        currencies, no rollups, created since the series were read) are left out."""
        cells: dict[tuple[Any, ...], _Cell] = {}
        first_of_key: dict[tuple[str, str], _Facts] = {}
        width = max((j for _, j in spans), default=0)
        facts = self._facts
        # Each fact's cell (None: not USD money), the facts taken in the order of their first series (by id), so
        # cells and ``first_of_key`` come in series order; then every series' cell in C loops.
        cell_of_fact: list[_Cell | None] = [None] * len(facts)
        for f in dict.fromkeys(every.facts):
            s = facts[f]
            if s.usd and s.metric in MONEY_METRICS:
                c = cells.get(s.cell)
                if c is None:
                    c = cells[s.cell] = _Cell(s.key, s.metric, s.provider, s.tenant, s.team, s.matches, s.unit, [])
                    first_of_key.setdefault(s.key, s)
                cell_of_fact[f] = c
        chosen = list(map(cell_of_fact.__getitem__, every.facts))
        keep = list(map(operator.is_not, chosen, itertools.repeat(None)))
        money = array("q", itertools.compress(every.sids, keep))  # the USD money series' ids, in id order
        cell_of: list[_Cell] = list(itertools.compress(chosen, keep))  # type: ignore[arg-type]
        for c in cells.values():
            c.columns = [0] * width
        # Rows come in id order, as ``money``: a walk of both. Each series' row is kept (flat, ``width + 1``
        # values a series, 0 where it has no row); a cell adds its members' rows a batch at a time.
        # A chunk of rows that are exactly the next money series' (the common case: no gaps, no other series)
        # takes C loops but for one step a row, its cell's; any other chunk is walked row by row.
        zero = array("q", [0]) * (width + 1)
        rows, at, end = array("q"), 0, len(money)
        segments = iter(segments)
        first_id = operator.itemgetter(0)
        while chunk := list(itertools.islice(segments, _SUMS_CHUNK)):
            hi = at + len(chunk)
            if hi <= end and money[at:hi] == array("q", map(first_id, chunk)):
                rows.extend(itertools.chain.from_iterable(chunk))
                touched = cell_of[at:hi]
                for c, row in zip(touched, chunk, strict=True):
                    if row.count(0) < width:  # some segment is not 0 (the series id never is)
                        c.rows.append(row)
                for c in set(touched):
                    if len(c.rows) >= _FOLD:
                        _fold(c)
                at = hi
                continue
            for row in chunk:
                sid = row[0]
                while at < end and money[at] < sid:
                    rows += zero
                    at += 1
                if at < end and money[at] == sid:
                    rows.extend(row)
                    if row.count(0) < width:
                        c = cell_of[at]
                        c.rows.append(row)
                        if len(c.rows) >= _FOLD:
                            _fold(c)
                    at += 1
        rows += zero * (end - at)
        for c in cells.values():
            _fold(c)
        return _Sums(grid, spans, width, list(cells.values()), first_of_key, money, cell_of, rows)

    @staticmethod
    def _sums_catch_up(ledger: Ledger, sums: _Sums, sids: Sequence[int]) -> None:
        """Read again the sums of these (changed) series and move their cells by the difference."""
        if not sids or not sums.width:
            return
        _, rows = ledger.rollup_segment_rows_of(sums.grid, sids)
        width, kept = sums.width, sums.rows
        step = width + 1
        for row in rows:
            at = bisect.bisect_left(sums.money, row[0])
            old = kept[at * step:(at + 1) * step]
            c = sums.cell_of[at]
            columns = c.columns
            for i in range(width):
                columns[i] += row[i + 1] - old[i + 1]
            c.nonzero += (row.count(0) < width) - (old.count(0) < width)
            kept[at * step:(at + 1) * step] = array("q", row)

    def _period_to_date(self, cells: Sequence[_Cell], periods: Mapping[str, int]) -> list[tuple[dict[str, str], Decimal]]:
        """Reported and estimated USD per period, provider, tenant (and team when rules exist).

        Every group that has a money series gets a point, 0 included: "nothing reported today yet" is a value,
        and a missing point would make a dashboard's sum fall back to something else.
        """
        # The cells of one point share a metric (so a unit): their integers add up first, exactly.
        points: dict[tuple[str, str, str, str], list[_Cell]] = defaultdict(list)
        for c in cells:
            points[(c.metric, c.provider, c.tenant, c.team if self.attributor else "")].append(c)
        totals: dict[tuple[tuple[str, str], ...], Decimal] = {}
        for period, i in periods.items():
            for (metric, provider, tenant, team), group in points.items():
                attrs = {
                    "llm.period": period,
                    "llm.cost.source": "reported" if metric == METRIC_COST else "estimated",
                    "gen_ai.provider.name": provider,
                    "llm.tenant": tenant,
                }
                if self.attributor:
                    attrs["llm.team"] = team
                key = tuple(sorted(attrs.items()))
                present = [c.sums[i] for c in group if c.present]
                usd = Decimal(sum(present)) * group[0].unit if present else Decimal(0)
                totals[key] = totals.get(key, Decimal(0)) + usd
        return [(dict(key), usd) for key, usd in sorted(totals.items())]

    def _matches(self, match: BudgetMatch, instance: str, name: str | None, team: str, a: Mapping[str, str]) -> bool:
        if match.model is not None and "gen_ai.request.model" not in a:
            return False
        labels = self.labels.get(instance, {})
        return (
            _glob(match.provider, a.get("gen_ai.provider.name"))
            and _glob(match.tenant, a.get("llm.tenant"))
            and _glob(match.tenancy, a.get("llm.tenancy.id"), name)
            and _glob(match.model, a.get("gen_ai.request.model"))
            and _glob(match.team, team)
            and all(labels.get(k, a.get(k)) == v for k, v in match.labels.items())
        )

    def _reported_until(self, every: _SeriesSet, now: int) -> dict[tuple[str, str], int]:
        """Per (instance, tenancy): the end of the newest complete reported (USD) bucket."""
        until: dict[tuple[str, str], int] = {}
        for f, width, last in every.reported.values():
            s = self._facts[f]
            if not s.usd:
                continue
            width = width or HOUR
            end = last + width if last + width <= now else last
            until[s.key] = max(until.get(s.key, end), end)
        return until

    @staticmethod
    def _final_days(reported_until: Mapping[tuple[str, str], int], now: int) -> dict[tuple[str, str], int]:
        """Per (instance, tenancy): the newest UTC day that reported cost covers and whose usage settled."""
        out = {}
        for key, until in reported_until.items():
            end = min(until, now - RECONCILE_SETTLE) // DAY * DAY
            if end > 0:
                out[key] = end - DAY
        return out

    @staticmethod
    def _coverage(cells: Sequence[_Cell], spend: Any) -> dict[str, Decimal]:
        by_provider: dict[str, list[_Cell]] = defaultdict(list)
        for c in cells:
            by_provider[c.provider].append(c)
        out = {}
        for provider, group in by_provider.items():
            total = spend(group)
            if total > 0:
                out[provider] = spend([c for c in group if c.team != UNATTRIBUTED]) / total
        return out

    @staticmethod
    def _reconcile(
        cells: Sequence[_Cell], first_of_key: Mapping[tuple[str, str], _Facts], days: Mapping[tuple[str, str], int],
        spend: Any,
    ) -> list[Reconciliation]:
        by_key: dict[tuple[str, str], list[_Cell]] = defaultdict(list)
        for c in cells:
            by_key[c.key].append(c)
        out = []
        for key, day in sorted(days.items()):
            group = by_key[key]
            reported = spend(group, day, "reported")
            if not reported:
                continue
            s = first_of_key[key]
            out.append(Reconciliation(s.provider, s.tenant, key[1], s.tenancy_name, day,
                                      spend(group, day, "estimated"), reported))
        return out

    # -- anomalies -----------------------------------------------------------------------------------------
    def anomalies_between(self, ledger: Ledger, start: int, end: int) -> list[Anomaly]:
        """Scores of every complete hour in ``[start, end)`` (for ``report`` and the demo's "peak this week").

        Scores are kept by hour while the ledger's generation is unchanged (late data for an old hour changes it,
        and with it that hour's score).
        """
        with collector_paused():
            return self._anomalies_between(ledger, start, end)

    def _anomalies_between(self, ledger: Ledger, start: int, end: int) -> list[Anomaly]:
        self._fresh(ledger)
        out: list[Anomaly] = []
        series: _SeriesSet | None = None
        for hour in range(start - start % HOUR, end, HOUR):
            cached = self._scores.get(hour)
            if cached is None:
                if series is None:
                    series = self._series(ledger)
                cached = self._anomalies_of(ledger, hour, series)
            out += cached
        return out

    def _groups(self, series: _SeriesSet) -> _Groups:
        """The anomaly groups' first hours and first members' facts, by code (twice the index of their
        (provider, model, tenancy), plus 1 for cost); kept while the series set is the same object
        (``_catch_up`` moves their first hours), since a series' group never changes."""
        seen, groups = self._last_groups
        if seen is series and groups is not None:
            return groups
        cost = [int(s.metric == METRIC_COST_ESTIMATED) for s in self._facts]
        group_at = self._group_at
        size = 2 * len(self._group_keys)
        firsts, heads = array("q", [_NO_HOUR]) * size, array("i", [-1]) * size
        for sid, f, first in zip(series.sids, series.facts, series.firsts, strict=True):
            g = group_at[sid]
            if g < 0:
                continue  # reported cost: not scored
            code = 2 * g + cost[f]
            if heads[code] < 0:
                heads[code] = f
            if first < firsts[code]:
                firsts[code] = first
        groups = _Groups(firsts, heads)
        self._last_groups = (series, groups)
        return groups

    def anomalies(self, ledger: Ledger, hour: int, series: _SeriesSet | None = None) -> list[Anomaly]:
        """Scores of ``hour`` for every (provider, model, tenancy), for cost and for tokens.

        Groups without a baseline yet (``anomalies.baseline_hours``) are left out before any rollup is read:
        when none has one (a young ledger), no rollup is read at all.
        """
        with collector_paused():
            return self._anomalies_of(ledger, hour, series)

    def _anomalies_of(self, ledger: Ledger, hour: int, series: _SeriesSet | None) -> list[Anomaly]:
        if series is None:
            self._fresh(ledger)
            series = self._series(ledger)
        cached = self._scores.get(hour)
        if cached is not None:  # scored since the ledger last changed
            return list(cached)
        scores = self._scores[hour] = self._anomalies(ledger, hour, series)
        return list(scores)

    def _anomalies(self, ledger: Ledger, hour: int, series: _SeriesSet) -> list[Anomaly]:
        groups = self._groups(series)
        pasts: dict[int, list[int]] = {}
        scored: dict[int, list[int]] = {}  # code -> past hours
        for code, (first, head) in enumerate(zip(groups.firsts, groups.heads, strict=True)):
            if head < 0 or hour < first:
                continue
            past = pasts.get(first)
            if past is None:
                past = pasts[first] = anomalies.baseline_hours(hour, first)
            if past:
                scored[code] = past
        if not scored:
            return []
        wanted = {hour} | {hour - k * anomalies.WEEK for k in range(1, anomalies.WEEKS + 1)}
        wanted |= {hour - k * anomalies.DAY for k in range(1, anomalies.DAYS + 1)}
        hours = sorted(wanted)
        position = {h: i for i, h in enumerate(hours)}
        # Each scored group's integer sum at each hour, the series' rows streamed (never all held at once).
        totals = {code: [0] * len(hours) for code in scored}
        group_at, fact_at, facts, sids = self._group_at, self._fact_at, self._facts, series.sids
        for page in ledger.rollup_values_pages(hours, (METRIC_COST_ESTIMATED, METRIC_TOKENS)):
            for sid, *values in page:
                if sid >= len(group_at) or group_at[sid] < 0:
                    continue  # a series not read yet (created since): in the next reading
                code = 2 * group_at[sid] + (facts[fact_at[sid]].metric == METRIC_COST_ESTIMATED)
                total = totals.get(code)
                if total is None:
                    continue
                at = bisect.bisect_left(sids, sid)
                if at == len(sids) or sids[at] != sid:
                    continue  # not in this reading's series (no rollups when they were read)
                for i, v in enumerate(values):
                    if v:
                        total[i] += v
        keys = self._group_keys
        named = sorted(((*keys[code >> 1], "cost" if code & 1 else "tokens"), code) for code in scored)
        out = []
        for (provider, model, tenancy, signal), code in named:
            s = facts[groups.heads[code]]
            scale = 1e-12 if s.metric == METRIC_COST_ESTIMATED else 1.0
            total = totals[code]
            past = scored[code]
            history = [float(total[position[h]]) * scale for h in past]
            x = float(total[position[hour]]) * scale
            score = anomalies.robust_z(x, history)
            if score is None:
                continue
            out.append(Anomaly(provider, model, tenancy, s.tenancy_name, signal, hour, x,
                               sorted(history)[len(history) // 2], score))
        return out


# ----------------------------------------------------------------------------------------------- gauges
def _kv(attrs: Mapping[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=str(v))) for k, v in sorted(attrs.items())]


def _gauge(name: str, points: list[tuple[dict[str, str], float]], now_ns: int) -> pb.Metric:
    d = CATALOG.metrics[name]
    return pb.Metric(name=d.name, description=d.description, unit=d.unit, gauge=pb.Gauge(data_points=[
        pb.NumberDataPoint(attributes=_kv(attrs), time_unix_nano=now_ns, as_double=value)
        for attrs, value in points
    ]))


def gauge_metrics(reading: SignalsReading, now_ns: int) -> list[pb.Metric]:
    """The reading as OTLP gauge metrics (the builder drops disabled ones and frames them)."""
    series: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for b in reading.budgets:
        name = {"llm.budget.name": b.name}
        series["llm.budget.limit"].append((name, float(b.limit)))
        series["llm.budget.spent"].append((name, float(b.spent)))
        series["llm.budget.utilization"].append((name, float(b.utilization)))
        series["llm.budget.projected"].append((name, float(b.projected)))
        for window, rate in b.burn_rates.items():
            series["llm.budget.burn_rate"].append(({**name, "llm.budget.window": window}, float(rate)))
    for a in reading.anomalies:
        attrs = {"gen_ai.provider.name": a.provider, "gen_ai.request.model": a.model,
                 "llm.tenancy.id": a.tenancy_id, "llm.anomaly.signal": a.signal}
        if a.tenancy_name:
            attrs["llm.tenancy.name"] = a.tenancy_name
        series["llm.anomaly.score"].append((attrs, a.score))
    for provider, share in sorted(reading.coverage.items()):
        series["llm.attribution.coverage"].append(({"gen_ai.provider.name": provider}, float(share)))
    for r in reading.reconciliation:
        if r.ratio is not None:
            attrs = {"gen_ai.provider.name": r.provider, "llm.tenant": r.tenant, "llm.tenancy.id": r.tenancy_id}
            if r.tenancy_name:
                attrs["llm.tenancy.name"] = r.tenancy_name
            series["llm.cost.reconciliation.ratio"].append((attrs, float(r.ratio)))
    for attrs, usd in reading.token_prices:
        series["llm.pricing.token_price"].append((attrs, float(usd)))
    for attrs, usd in reading.period_to_date:
        series["llm.cost.period_to_date"].append((attrs, float(usd)))
    return [_gauge(name, points, now_ns) for name, points in series.items() if points]


def day_label(day: int) -> str:
    return dt.datetime.fromtimestamp(day, dt.UTC).strftime("%Y-%m-%d")
