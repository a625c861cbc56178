"""The money signals computed the straightforward way, series by series, as ``otel_llm_receiver.signals`` did
before it kept per-series facts by id and added money up per cell (issue 20): the reference the fast path is
compared with on randomized ledgers (tests/test_signals_fast.py). Not used by the receiver.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from otel_llm_receiver import anomalies, budgets
from otel_llm_receiver.attribution import UNATTRIBUTED, Attributor
from otel_llm_receiver.catalog import CATALOG
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.names import CURRENCY_ATTR, METRIC_COST, METRIC_COST_ESTIMATED, METRIC_TOKENS
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.signals import (
    DAY,
    HOUR,
    MONEY_METRICS,
    NANO,
    PERIODS,
    PICO,
    RECONCILE_SETTLE,
    SETTLE,
    Anomaly,
    Reconciliation,
    SignalsReading,
)
from otel_llm_receiver.signals_config import BudgetConfig, BudgetMatch

__all__ = ["ReferenceSignals"]


@dataclass(slots=True)
class _Series:
    sid: int
    instance: str
    metric: str
    attrs: dict[str, str]
    width: int
    first: int
    last: int
    tenancy_name: str | None
    team: str

    @property
    def key(self) -> tuple[str, str]:  # provider instance and tenancy: where reported and estimated meet
        return (self.instance, self.attrs.get("llm.tenancy.id", ""))

    def money(self, value: int) -> Decimal:
        return Decimal(value) * (PICO if self.metric == METRIC_COST_ESTIMATED else NANO)


def _glob(pattern: str | None, *values: str | None) -> bool:
    if pattern is None:
        return True
    return any(v is not None and fnmatch.fnmatchcase(v, pattern) for v in values)


class ReferenceSignals:
    """Computes ``SignalsReading``s from a ledger, for given budgets, attribution rules and prices."""

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

    # -- reading -----------------------------------------------------------------------------------------
    def _series(self, ledger: Ledger, metrics: Sequence[str]) -> list[_Series]:
        names = ledger.names()
        out = []
        for sid, (instance, metric, attrs, width, first, last) in ledger.rollup_series(metrics).items():
            if metric == METRIC_COST and CURRENCY_ATTR in attrs:
                continue  # budgets are USD
            tenancy = attrs.get("llm.tenancy.id")
            name = names.get((instance, "tenancy", tenancy)) if tenancy else None
            team = self.attributor.team(attrs, name, self.labels.get(instance))
            out.append(_Series(sid, instance, metric, attrs, width, first, last, name, team))
        return out

    def read(
        self, ledger: Ledger, now: int, *, anomaly_hour: int | None = None, peak_days: int = 0
    ) -> SignalsReading:
        every = self._series(ledger, (*MONEY_METRICS, METRIC_TOKENS))
        money = [s for s in every if s.metric in MONEY_METRICS]
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
        sums = ledger.rollup_window_sums(order, MONEY_METRICS)

        def spend(series: Iterable[_Series], window: tuple[int, int], source: str) -> Decimal:
            a, b = window
            total = Decimal(0)
            chosen = list(series)
            keys_reported = {s.key for s in chosen if s.metric == METRIC_COST}
            for s in chosen:
                values = sums.get(s.sid)
                if values is None:
                    continue
                own = METRIC_COST_ESTIMATED if source == "estimated" else METRIC_COST
                if source != "best":
                    if s.metric == own:
                        total += s.money(values[index[window]])
                else:
                    r = reported_until.get(s.key)
                    if s.key not in keys_reported or r is None:
                        if s.metric == METRIC_COST_ESTIMATED:
                            total += s.money(values[index[window]])
                    elif s.metric == METRIC_COST:
                        total += s.money(values[index[(a, max(a, min(b, r)))]])
                    else:
                        total += s.money(values[index[(min(b, max(a, r)), b)]])
            return total

        statuses = []
        for budget, bounds, plan in plans:
            matched = [s for s in money if self._matches(budget.match, s)]
            amounts = {k: spend(matched, w, budget.source) for k, w in plan.items()}
            statuses.append(budgets.status(
                budget.name, budget.amount, bounds, now, amounts["spent"], amounts["trailing"],
                {w: amounts[w] for w in budgets.BURN_WINDOWS},
            ))
        coverage = {}
        if self.attributor:  # without rules every share would be 0: nothing to say
            coverage = self._coverage(money, lambda ss: spend(ss, (hour_end - DAY, hour_end), "best"))
        recon = self._reconcile(money, recon_days, lambda ss, d, src: spend(ss, (d, d + DAY), src))
        hour = anomaly_hour if anomaly_hour is not None else hour_end - HOUR
        token_prices = []
        if self.prices is not None:
            declared = frozenset(CATALOG.metrics["llm.pricing.token_price"].attributes)
            token_prices = self.prices.token_prices(
                (s.attrs for s in every if s.metric == METRIC_TOKENS), now, declared)
        peak = None
        if peak_days:
            week = self.anomalies_between(ledger, hour - peak_days * DAY + HOUR, hour + HOUR)
            peak = max(week, key=lambda a: a.score, default=None)
        to_date = self._period_to_date(money, {p: (sums, index[w]) for p, w in periods.items()})
        return SignalsReading(
            now=now, budgets=statuses, anomalies=self.anomalies(ledger, hour, every), coverage=coverage,
            reconciliation=recon, token_prices=token_prices, period_to_date=to_date, hour=hour, peak=peak,
        )

    def _period_to_date(
        self, money: Sequence[_Series], periods: Mapping[str, tuple[Mapping[int, list[int]], int]]
    ) -> list[tuple[dict[str, str], Decimal]]:
        """Reported and estimated USD per period, provider, tenant (and team when rules exist).

        Every group that has a money series gets a point, 0 included: "nothing reported today yet" is a value,
        and a missing point would make a dashboard's sum fall back to something else.
        """
        totals: dict[tuple[tuple[str, str], ...], Decimal] = {}
        for period, (sums, i) in periods.items():
            for s in money:
                attrs = {
                    "llm.period": period,
                    "llm.cost.source": "reported" if s.metric == METRIC_COST else "estimated",
                    "gen_ai.provider.name": s.attrs.get("gen_ai.provider.name", ""),
                    "llm.tenant": s.attrs.get("llm.tenant", ""),
                }
                if self.attributor:
                    attrs["llm.team"] = s.team
                key = tuple(sorted(attrs.items()))
                values = sums.get(s.sid)
                totals[key] = totals.get(key, Decimal(0)) + (s.money(values[i]) if values else Decimal(0))
        return [(dict(key), usd) for key, usd in sorted(totals.items())]

    def _matches(self, match: BudgetMatch, s: _Series) -> bool:
        a = s.attrs
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

    def _coverage(self, money: Sequence[_Series], spend: Any) -> dict[str, Decimal]:
        by_provider: dict[str, list[_Series]] = defaultdict(list)
        for s in money:
            by_provider[s.attrs.get("gen_ai.provider.name", "")].append(s)
        out = {}
        for provider, series in by_provider.items():
            total = spend(series)
            if total > 0:
                out[provider] = spend([s for s in series if s.team != UNATTRIBUTED]) / total
        return out

    @staticmethod
    def _reconcile(money: Sequence[_Series], days: Mapping[tuple[str, str], int], spend: Any) -> list[Reconciliation]:
        by_key: dict[tuple[str, str], list[_Series]] = defaultdict(list)
        for s in money:
            by_key[s.key].append(s)
        out = []
        for key, day in sorted(days.items()):
            series = by_key[key]
            reported = spend(series, day, "reported")
            if not reported:
                continue
            a = series[0].attrs
            out.append(Reconciliation(
                a.get("gen_ai.provider.name", ""), a.get("llm.tenant", ""), key[1], series[0].tenancy_name, day,
                spend(series, day, "estimated"), reported,
            ))
        return out

    # -- anomalies -----------------------------------------------------------------------------------------
    def anomalies_between(self, ledger: Ledger, start: int, end: int) -> list[Anomaly]:
        """Scores of every complete hour in ``[start, end)`` (for ``report`` and the demo's "peak this week").

        Hours that ended more than a day ago are settled: their scores are cached for this object's life.
        """
        out: list[Anomaly] = []
        settled = end - DAY
        series: list[_Series] | None = None
        for hour in range(start - start % HOUR, end, HOUR):
            cached = self._scores.get(hour)
            if cached is None:
                if series is None:
                    series = self._series(ledger, (METRIC_COST_ESTIMATED, METRIC_TOKENS))
                cached = self.anomalies(ledger, hour, series)
                if hour < settled:
                    self._scores[hour] = cached
            out += cached
        return out

    def anomalies(self, ledger: Ledger, hour: int, series: Sequence[_Series] | None = None) -> list[Anomaly]:
        """Scores of ``hour`` for every (provider, model, tenancy), for cost and for tokens."""
        if series is None:
            series = self._series(ledger, (METRIC_COST_ESTIMATED, METRIC_TOKENS))
        series = [s for s in series if s.metric in (METRIC_COST_ESTIMATED, METRIC_TOKENS)]
        groups: dict[tuple[str, str, str, str], list[_Series]] = defaultdict(list)
        for s in series:
            a = s.attrs
            signal = "cost" if s.metric == METRIC_COST_ESTIMATED else "tokens"
            groups[(a.get("gen_ai.provider.name", ""), a.get("gen_ai.request.model", ""),
                    a.get("llm.tenancy.id", ""), signal)].append(s)
        wanted = {hour} | {hour - k * anomalies.WEEK for k in range(1, anomalies.WEEKS + 1)}
        wanted |= {hour - k * anomalies.DAY for k in range(1, anomalies.DAYS + 1)}
        values: dict[int, dict[int, int]] = defaultdict(dict)  # series id -> hour -> value
        for sid, h, v in ledger.rollup_values_at(sorted(wanted), (METRIC_COST_ESTIMATED, METRIC_TOKENS)):
            values[sid][h] = v
        out = []
        for (provider, model, tenancy, signal), members in sorted(groups.items()):
            first = min(s.first for s in members)
            if hour < first:
                continue
            past = anomalies.baseline_hours(hour, first)
            if not past:
                continue

            def at(h: int, members: list[_Series] = members) -> float:
                total = sum(values[s.sid].get(h, 0) for s in members)
                return float(total) * (1e-12 if members[0].metric == METRIC_COST_ESTIMATED else 1.0)

            history = [at(h) for h in past]
            x = at(hour)
            score = anomalies.robust_z(x, history)
            if score is None:
                continue
            out.append(Anomaly(provider, model, tenancy, members[0].tenancy_name, signal, hour, x,
                               sorted(history)[len(history) // 2], score))
        return out
