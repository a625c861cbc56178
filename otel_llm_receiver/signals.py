"""The money signals, read from the ledger: budgets, anomaly scores, attribution coverage, reconciliation and
token prices, as one ``SignalsReading`` (for the terminal) and as OTLP gauges (for the emitter).

Everything here reads the ledger's hourly rollups with a few aggregate queries (``Ledger.rollup_series_rows``,
``rollup_segment_sums``, ``rollup_values_rows``) and never calls a provider, so a restart mid-month loses nothing
and ``report`` works with no network. Money is exact ``Decimal`` until it becomes a gauge's double.

At scale (issue 20: 100,000 to 1,000,000 series) the per-series Python work is kept small: what a series'
attributes imply (team, budget matches, anomaly group, price attributes) is derived once per process and kept by
series id (attributes never change; a renamed tenancy re-derives its series); money series that no signal tells
apart are added up as integers per ``_Cell`` before any ``Decimal``; anomaly groups without a baseline read no
rollups. What depends on rollups (the series' extent, the money cells' window sums, anomaly scores) is kept only
while the ledger's generation (``Ledger.generation``, bumped by every apply and prune in its transaction) is the
one it was read at, and the window sums by the hour grid of their edges (rollups start on whole hours): an export
with nothing new in the same hour reads no rollup, and late data for any hour is seen by the next read. A known
series' attributes are not read again (series ids are never reused). tests/test_signals_fast.py compares every
reading with the straightforward series-by-series computation (tests/support/signals_reference.py) on randomized
ledgers, as time moves and as data lands between reads.

Spend sources (``budgets[].source``): ``estimated`` (``llm.usage.cost.estimated``), ``reported``
(``llm.usage.cost``, USD only) and ``best``: per provider instance and tenancy, reported cost up to the end of
its newest complete reported bucket, estimated cost after that (the hours reported cost has not reached yet),
and estimated cost alone where the provider reports no cost at all.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from . import anomalies, budgets
from .attribution import UNATTRIBUTED, Attributor
from .catalog import CATALOG
from .ledger import Ledger
from .names import CURRENCY_ATTR, METRIC_COST, METRIC_COST_ESTIMATED, METRIC_TOKENS
from .pricing import PRICE_GAUGE_ATTRIBUTES, PriceBook
from .signals_config import BudgetConfig, BudgetMatch, Period

__all__ = ["Anomaly", "Reconciliation", "Signals", "SignalsReading", "gauge_metrics"]

HOUR = 3600
DAY = 86400
#: Buckets still filling in are left out of "the newest complete hour" for this long after it ends.
SETTLE = 5 * 60
#: A day's reconciliation waits this long after the day ends, for the token buckets to settle.
RECONCILE_SETTLE = 2 * HOUR
PICO = Decimal(10) ** -12
NANO = Decimal(10) ** -9
MONEY_METRICS = (METRIC_COST_ESTIMATED, METRIC_COST)
#: The periods of ``llm.cost.period_to_date``: the UTC day and calendar month, as the dashboards' "today" and
#: "this month" mean them.
PERIODS: tuple[Period, ...] = ("day", "month")


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
class _Series:
    """A series of the money signals: what they need of its attributes, derived once per process (a series'
    attributes never change; its tenancy's name may, see ``Signals._series``), and its rollups' extent
    (``width``, ``first``, ``last``), read at every export. Only these few fields are kept, not the attribute
    dict, so that a million series stay small."""

    sid: int
    instance: str
    metric: str
    usd: bool  # False for reported cost in another currency: budgets are USD
    provider: str
    tenant: str
    model: str | None
    key: tuple[str, str]  # provider instance and tenancy: where reported and estimated meet
    group: tuple[str, str, str, str]  # the anomaly score's (provider, model, tenancy, signal)
    price_key: tuple[tuple[str, str], ...] | None  # token series: the price gauge's attributes
    tenancy_name: str | None
    team: str
    matches: int  # bit i set: ``budget_configs[i]`` matches the series
    cell: tuple[Any, ...] = ()  # what puts it in a ``_Cell``: key, metric, provider, tenant, team, matches
    width: int = 0
    first: int = 0
    last: int = 0  # read for reported cost only (``_reported_until``): the first hour for other series

    @property
    def unit(self) -> Decimal:
        return PICO if self.metric == METRIC_COST_ESTIMATED else NANO

    def money(self, value: int) -> Decimal:
        return Decimal(value) * self.unit


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
    sums: list[int]
    present: bool = False  # some member has rollups in one of the windows (else it adds nothing, not even 0)

    def money(self, i: int) -> Decimal:
        return Decimal(self.sums[i]) * self.unit


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
        self._known: dict[int, _Series] = {}
        self._names: dict[tuple[str, str, str], str] = {}
        self._shared: dict[Any, Any] = {}  # one copy of each repeated string and tuple
        self._match_labels = tuple(sorted({k for b in self.budget_configs for k in b.match.labels}))
        self._match_memo: dict[tuple[Any, ...], int] = {}
        self._last_groups: tuple[list[_Series], dict[tuple[str, str, str, str], list[_Series]]] = ([], {})
        # What holds only while the ledger is unchanged (``Ledger.generation``): the series with their rollups'
        # extent (by metrics asked), the money cells by the hour grid of the windows, and anomaly scores by hour.
        self._generation: tuple[tuple[str, str], ...] | None = None
        self._series_of: dict[tuple[str, ...], list[_Series]] = {}
        self._cells_of: dict[tuple[tuple[int, int], ...], tuple[list[_Cell], dict[tuple[str, str], _Series]]] = {}
        declared = frozenset(CATALOG.metrics["llm.pricing.token_price"].attributes)
        self._price_attrs = declared or PRICE_GAUGE_ATTRIBUTES

    # -- reading -----------------------------------------------------------------------------------------
    def _fresh(self, ledger: Ledger) -> None:
        """Forget what the ledger's last change may have made stale (read before the data: see
        ``Ledger.generation``). Unchanged, the series, cells and scores computed since are reused."""
        generation = ledger.generation()
        if generation != self._generation:
            if dict(generation).get("service.instance.id") != dict(self._generation or ()).get("service.instance.id"):
                self._known, self._names = {}, {}  # another ledger: its series ids mean other series
            self._generation = generation
            self._series_of.clear()
            self._cells_of.clear()
            self._scores.clear()

    def _series(self, ledger: Ledger, metrics: Sequence[str]) -> list[_Series]:
        """The series of ``metrics`` with rollups, in id order (reported cost in other currencies included:
        ``usd`` says). Attributes are parsed only for series not seen before, or whose tenancy name changed;
        nothing is read while the ledger's generation is the one of the last read (``_fresh``)."""
        cached = self._series_of.get(tuple(metrics))
        if cached is not None:
            return cached
        names = ledger.names()
        if names != self._names:
            changed = {
                (i, d) for (i, k, d) in names.keys() | self._names.keys()
                if k == "tenancy" and names.get((i, k, d)) != self._names.get((i, k, d))
            }
            if changed:
                self._known = {sid: s for sid, s in self._known.items() if s.key not in changed}
                self._match_memo.clear()
            self._names = names
        known = self._known
        # Series ids are never reused (series are never deleted), so a known id needs no attributes: they are
        # read with the rows only when nothing is known yet, else only for the ids not seen before.
        with_attrs = not known
        out: list[_Series | None] = []
        unseen: list[tuple[int, int, str, str, int, int, int]] = []  # (position in out, sid, instance, ...)
        for sid, instance, metric, text, width, first, last in ledger.rollup_series_rows(
                metrics, (METRIC_COST,), attrs=with_attrs):
            s = known.get(sid)
            if s is None or s.metric != metric or s.instance != instance:
                if text is None:
                    unseen.append((len(out), sid, instance, metric, width, first, last))
                    out.append(None)
                    continue
                s = known[sid] = self._derive(sid, instance, metric, text, names)
            s.width, s.first, s.last = width, first, last
            out.append(s)
        if unseen:
            texts = ledger.series_attrs([u[1] for u in unseen])
            for at, sid, instance, metric, width, first, last in unseen:
                text = texts[sid]
                s = known[sid] = self._derive(sid, instance, metric, text, names)
                s.width, s.first, s.last = width, first, last
                out[at] = s
        series = [s for s in out if s is not None]  # every None was filled in above
        self._series_of[tuple(metrics)] = series
        return series

    def _derive(
        self, sid: int, instance: str, metric: str, text: str, names: Mapping[tuple[str, str, str], str]
    ) -> _Series:
        shared = self._shared
        attrs: dict[str, str] = json.loads(text)
        tenancy = attrs.get("llm.tenancy.id")
        name = names.get((instance, "tenancy", tenancy)) if tenancy else None
        labels = self.labels.get(instance)
        team = self.attributor.team(attrs, name, labels)
        provider = attrs.get("gen_ai.provider.name", "")
        model = attrs.get("gen_ai.request.model")
        tenancy_id = attrs.get("llm.tenancy.id", "")
        instance = shared.setdefault(instance, instance)
        signal = "cost" if metric == METRIC_COST_ESTIMATED else "tokens"
        price_key = None
        if metric == METRIC_TOKENS:
            key_attrs = tuple(sorted((k, v) for k, v in attrs.items() if k in self._price_attrs))
            price_key = shared.setdefault(key_attrs, key_attrs)
        s = _Series(
            sid, instance, shared.setdefault(metric, metric),
            not (metric == METRIC_COST and CURRENCY_ATTR in attrs),
            shared.setdefault(provider, provider), shared.setdefault(t := attrs.get("llm.tenant", ""), t),
            shared.setdefault(model, model),
            shared.setdefault(k := (instance, tenancy_id), k),
            shared.setdefault(g := (provider, model or "", tenancy_id, signal), g), price_key, name,
            shared.setdefault(team, team), 0,
        )
        # Budget matches depend on these few fields only: many series (token types, cost of each) share them.
        facts = (instance, attrs.get("gen_ai.provider.name"), attrs.get("llm.tenant"), tenancy, name, model, team,
                 tuple(attrs.get(k) for k in self._match_labels))  # None where absent: not the same as ""
        matches = self._match_memo.get(facts)
        if matches is None:
            matches = self._match_memo[facts] = sum(
                1 << i for i, b in enumerate(self.budget_configs) if self._matches(b.match, s, attrs))
        s.matches = matches
        s.cell = shared.setdefault(c := (s.key, s.metric, s.provider, s.tenant, s.team, s.matches), c)
        return s

    def read(
        self, ledger: Ledger, now: int, *, anomaly_hour: int | None = None, peak_days: int = 0
    ) -> SignalsReading:
        self._fresh(ledger)
        every = self._series(ledger, (*MONEY_METRICS, METRIC_TOKENS))
        if len(self._known) > len(every):  # series pruned away (or seen only by other reads): forget them
            self._known = {s.sid: s for s in every}
        money = [s for s in every if s.usd and s.metric in MONEY_METRICS]
        hour_end = (now - SETTLE) // HOUR * HOUR  # end of the newest complete hour
        reported_until = self._reported_until(money, now)
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
        found = self._cells_of.get(grid)
        if found is None:
            found = self._cells_of[grid] = self._cells(money, *ledger.rollup_segment_rows(grid, MONEY_METRICS))
        cells, first_of_key = found

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
            distinct = dict.fromkeys(s.price_key for s in every if s.price_key is not None)
            token_prices = self.prices.token_prices(
                (dict(k) for k in distinct), now, frozenset(CATALOG.metrics["llm.pricing.token_price"].attributes))
        peak = None
        if peak_days:
            week = self.anomalies_between(ledger, hour - peak_days * DAY + HOUR, hour + HOUR)
            peak = max(week, key=lambda a: a.score, default=None)
        to_date = self._period_to_date(cells, {p: index[w] for p, w in periods.items()})
        return SignalsReading(
            now=now, budgets=statuses, anomalies=self.anomalies(ledger, hour, every), coverage=coverage,
            reconciliation=recon, token_prices=token_prices, period_to_date=to_date, hour=hour, peak=peak,
        )

    @staticmethod
    def _cells(
        money: Sequence[_Series], spans: Sequence[tuple[int, int]], segments: Iterable[Sequence[int]]
    ) -> tuple[list[_Cell], dict[tuple[str, str], _Series]]:
        """The money series' window sums added up per cell (in the order cells are first seen), and the first
        series of each (instance, tenancy): what names a reconciliation.

        ``segments`` are rows ``(series id, *sums)`` of the series' sums over disjoint time segments and
        ``spans`` each window's range of them (``Ledger.rollup_segment_rows``): a cell adds its members'
        segments as the rows stream in (rows of series not in ``money`` are left out), then each window once."""
        cells: dict[tuple[Any, ...], _Cell] = {}
        first_of_key: dict[tuple[str, str], _Series] = {}
        width = max((j for _, j in spans), default=0)
        cell_of: dict[int, _Cell] = {}
        for s in money:
            ck = s.cell
            c = cells.get(ck)
            if c is None:
                c = cells[ck] = _Cell(s.key, s.metric, s.provider, s.tenant, s.team, s.matches, s.unit, [0] * width)
                first_of_key.setdefault(s.key, s)
            cell_of[s.sid] = c
        for sid, *values in segments:
            member = cell_of.get(sid)
            if member is not None and any(values):
                member.present = True
                member.sums = list(map(operator.add, member.sums, values))
        for c in cells.values():
            c.sums = [sum(c.sums[i:j]) for i, j in spans]
        return list(cells.values()), first_of_key

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

    def _matches(self, match: BudgetMatch, s: _Series, a: Mapping[str, str]) -> bool:
        if match.model is not None and "gen_ai.request.model" not in a:
            return False
        labels = self.labels.get(s.instance, {})
        return (
            _glob(match.provider, a.get("gen_ai.provider.name"))
            and _glob(match.tenant, a.get("llm.tenant"))
            and _glob(match.tenancy, a.get("llm.tenancy.id"), s.tenancy_name)
            and _glob(match.model, a.get("gen_ai.request.model"))
            and _glob(match.team, s.team)
            and all(labels.get(k, a.get(k)) == v for k, v in match.labels.items())
        )

    @staticmethod
    def _reported_until(money: Sequence[_Series], now: int) -> dict[tuple[str, str], int]:
        """Per (instance, tenancy): the end of the newest complete reported bucket."""
        until: dict[tuple[str, str], int] = {}
        for s in money:
            if s.metric != METRIC_COST:
                continue
            width = s.width or HOUR
            end = s.last + width if s.last + width <= now else s.last
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
        cells: Sequence[_Cell], first_of_key: Mapping[tuple[str, str], _Series], days: Mapping[tuple[str, str], int],
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
        self._fresh(ledger)
        out: list[Anomaly] = []
        series: list[_Series] | None = None
        for hour in range(start - start % HOUR, end, HOUR):
            cached = self._scores.get(hour)
            if cached is None:
                if series is None:
                    series = self._series(ledger, (METRIC_COST_ESTIMATED, METRIC_TOKENS))
                cached = self.anomalies(ledger, hour, series)
            out += cached
        return out

    def _groups(self, series: Sequence[_Series]) -> dict[tuple[str, str, str, str], list[_Series]]:
        """The anomaly groups' members, in series order; kept while the series are the same objects in the
        same order (the usual export: no new series), since a series' group never changes."""
        seen, groups = self._last_groups
        if len(seen) == len(series) and seen == series:  # identity of each element (no __eq__): a C loop
            return groups
        groups = {}
        for s in series:
            if s.metric == METRIC_COST_ESTIMATED or s.metric == METRIC_TOKENS:
                members = groups.get(s.group)
                if members is None:
                    groups[s.group] = [s]
                else:
                    members.append(s)
        self._last_groups = (list(series), groups)
        return groups

    def anomalies(self, ledger: Ledger, hour: int, series: Sequence[_Series] | None = None) -> list[Anomaly]:
        """Scores of ``hour`` for every (provider, model, tenancy), for cost and for tokens.

        Groups without a baseline yet (``anomalies.baseline_hours``) are left out before any rollup is read:
        when none has one (a young ledger), no rollup is read at all.
        """
        if series is None:
            self._fresh(ledger)
            series = self._series(ledger, (METRIC_COST_ESTIMATED, METRIC_TOKENS))
        cached = self._scores.get(hour)
        if cached is not None:  # scored since the ledger last changed
            return list(cached)
        scores = self._scores[hour] = self._anomalies(ledger, hour, series)
        return list(scores)

    def _anomalies(self, ledger: Ledger, hour: int, series: Sequence[_Series]) -> list[Anomaly]:
        groups = self._groups(series)
        pasts: dict[int, list[int]] = {}
        scored = []
        for group, members in groups.items():
            first = min(s.first for s in members)
            if hour < first:
                continue
            past = pasts.get(first)
            if past is None:
                past = pasts[first] = anomalies.baseline_hours(hour, first)
            if past:
                scored.append((group, members, past))
        if not scored:
            return []
        wanted = {hour} | {hour - k * anomalies.WEEK for k in range(1, anomalies.WEEKS + 1)}
        wanted |= {hour - k * anomalies.DAY for k in range(1, anomalies.DAYS + 1)}
        hours, values = ledger.rollup_values_rows(sorted(wanted), (METRIC_COST_ESTIMATED, METRIC_TOKENS))
        position = {h: i for i, h in enumerate(hours)}
        out = []
        for (provider, model, tenancy, signal), members, past in sorted(scored, key=lambda g: g[0]):
            rows = [values[s.sid] for s in members if s.sid in values]
            scale = 1e-12 if members[0].metric == METRIC_COST_ESTIMATED else 1.0

            def at(h: int, rows: list[tuple[int | None, ...]] = rows, scale: float = scale) -> float:
                i = position[h]
                return float(sum(r[i] or 0 for r in rows)) * scale

            history = [at(h) for h in past]
            x = at(hour)
            score = anomalies.robust_z(x, history)
            if score is None:
                continue
            out.append(Anomaly(provider, model, tenancy, members[0].tenancy_name, signal, hour, x,
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
