"""The 7-day demo data set as the Collector's Prometheus exporter would expose it, in OpenMetrics text.

Why: dashboards and recording rules must be checked against a real Prometheus holding the series our stack
really produces. ``promtool tsdb create-blocks-from openmetrics`` turns this text into TSDB blocks.

* Usage series (``llm_usage_tokens_total``, ``llm_usage_requests_total``, ``llm_usage_cost_USD_total``) carry
  the exact cumulative totals the ledger holds after a poll at each sample time: per bucket, the latest value
  the demo API reports as of that time (``bucket_as_of`` / ``daily_cost``, the demo's own pure functions),
  summed over buckets since the 7-day backfill started. The last sample equals ``demo_truth`` (a test checks).
* Self-health series (polls, poll durations, last success, data lag, records) describe a process polling every
  minute; their numbers are synthetic (every 40th poll rate-limited, every 150th a timeout) because the demo
  provider never fails, but their names, types and labels are the catalog's.
* Pricing series (estimated cost, token prices) are priced with the receiver's own ``PriceBook``; the
  reconciliation ratio is a stand-in (see ``pricing_families``).
* Money signals (``llm.budget.*``, ``llm.anomaly.score``, ``llm.attribution.coverage``) are what the receiver
  computes for the ``demo`` command's budgets and attribution rules (``cli.DEMO_CONFIG``), derived with the
  package's own maths (``budgets.period_bounds`` / ``budgets.status``, ``anomalies.baseline_hours`` /
  ``robust_z``, ``Attributor``) from the hourly spend the ledger would hold (``_Spend``). A test compares
  every one of them with the gauges of a real ``run --once`` at the same moment: they are equal. With
  attribution on (the default), usage and cost series carry ``llm_team`` / ``llm_cost_center`` exactly where
  the receiver adds them.

Names come from the catalog (``prometheus_name``; attribute keys through ``prometheus_label_name``), and every
label is checked against the metric's catalog attributes, so the data set cannot drift from the catalog.
"""

from __future__ import annotations

import fnmatch
import functools
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import accumulate

import yaml

from otel_llm_receiver import anomalies, budgets
from otel_llm_receiver.attribution import UNATTRIBUTED, Attributor
from otel_llm_receiver.catalog import CATALOG, MetricDef
from otel_llm_receiver.cli import DEMO_CONFIG
from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.providers.demo import (
    COST_DELAY,
    COST_LOOKBACK,
    PROVIDER_NAME,
    TENANCIES,
    WORKLOADS,
    Workload,
    bucket_as_of,
    daily_cost,
    full_bucket,
)
from otel_llm_receiver.selfhealth import DURATION_BOUNDS
from otel_llm_receiver.signals import SETTLE  # an hour is "complete" this long after it ends
from otel_llm_receiver.signals_config import BudgetMatch
from tests.support.prometheus_names import prometheus_label_name

DAY = 86_400
HOUR = 3600
WIDTH = 60  # the demo's default bucket width
#: Resource attributes the Collector's prometheus exporter turns into job / instance.
JOB, INSTANCE = "otel-llm-receiver", "demo-receiver-0"
SOURCE = "demo"
TENANT = "default"


def sample_times(end: int, days: int = 7) -> list[int]:
    """When the data set has samples: every 12 hours over the week, every 30 minutes over the last 26 hours,
    every minute over the last 30 minutes.

    The queries under test run at "now" and reach back at most a day at full detail (``[1d]`` windows, 1h and
    5m rates) and a week for weekly totals, which a few samples serve exactly. Sparse on purpose:
    ``promtool tsdb create-blocks-from openmetrics`` writes one block per 2-hour range that has samples, at a
    fixed cost each, so a week sampled densely (84 blocks) would take seconds to load.
    """
    start = end - days * DAY
    recent, tail = end - 26 * 3600, end - 1800
    times = set(range(start, recent, 12 * 3600)) | set(range(recent, tail, 1800)) | set(range(tail, end + 1, 60))
    return sorted(t for t in times if start <= t <= end)


class _Family:
    """One metric family's lines, with every label checked against the catalog."""

    def __init__(self, metric: str) -> None:
        self.m: MetricDef = CATALOG.metrics[metric]
        kinds = {"histogram": "histogram", "gauge": "gauge"}
        self.kind = kinds.get(self.m.instrument, "counter" if self.m.monotonic else "gauge")
        self.family = self.m.prometheus_name.removesuffix("_total") if self.kind == "counter" else self.m.prometheus_name
        self.allowed = {prometheus_label_name(a) for a in self.m.attributes} | {"job", "instance", "le"}
        self.lines: list[str] = []

    def add(self, suffix: str, labels: dict[str, str], points: Sequence[tuple[int, float | int]]) -> None:
        unknown = set(labels) - self.allowed
        if unknown:
            raise ValueError(f"{self.m.name}: labels {sorted(unknown)} are not catalog attributes of it")
        body = ",".join(f'{k}="{v}"' for k, v in {"job": JOB, "instance": INSTANCE, **labels}.items())
        name = self.m.prometheus_name + suffix
        self.lines.extend(f"{name}{{{body}}} {_num(v)} {t}" for t, v in points)

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.family} {self.m.description}"
        yield f"# TYPE {self.family} {self.kind}"
        yield from self.lines


def _num(v: float | int) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def _usage_labels(w: Workload, attributed: bool = False) -> dict[str, str]:
    labels = {
        prometheus_label_name("gen_ai.provider.name"): PROVIDER_NAME,
        prometheus_label_name("gen_ai.request.model"): w.model,
        prometheus_label_name("gen_ai.operation.name"): w.operation,
        prometheus_label_name("llm.tenant"): TENANT,
        prometheus_label_name("llm.tenancy.id"): w.tenancy,
        prometheus_label_name("llm.tenancy.name"): TENANCIES[w.tenancy],
    }
    if attributed:
        labels |= {prometheus_label_name(k): v for k, v in _team_attributes(w).items()}
    return labels


@functools.cache
def demo_config() -> Config:
    """The ``demo`` command's configuration: the budgets and attribution rules the data set is computed for."""
    return parse_config(yaml.safe_load(DEMO_CONFIG))


def _team_attributes(w: Workload) -> dict[str, str]:
    """``llm.team`` / ``llm.cost_center`` of a workload, from the receiver's own ``Attributor``."""
    attrs = {"gen_ai.request.model": w.model, "llm.tenancy.id": w.tenancy}
    return Attributor(demo_config().attribution.rules).attributes(attrs, TENANCIES[w.tenancy])


@functools.lru_cache(maxsize=32)
def _final_buckets(seed: int, w: Workload, first: int, end: int) -> tuple[tuple[dict[str, int], int], ...]:
    """Final token counts and requests of every bucket starting in ``[first, end)`` (shared by the builders)."""
    return tuple(full_bucket(seed, w, s, WIDTH) for s in range(first, end, WIDTH))


def usage_series(
    seed: int, first_start: int, times: list[int]
) -> tuple[dict[tuple[Workload, str], list[int]], dict[Workload, list[int]], dict[Workload, list[Decimal]]]:
    """Cumulative tokens (by workload and token type), requests and cost at each sample time."""
    end = times[-1]
    first = first_start - first_start % WIDTH
    starts = list(range(first, end, WIDTH))
    tokens: dict[tuple[Workload, str], list[int]] = {}
    requests: dict[Workload, list[int]] = {}
    cost: dict[Workload, list[Decimal]] = {}
    cost_start = first_start - COST_LOOKBACK
    days = list(range(cost_start - cost_start % DAY, end, DAY))
    for w in WORKLOADS:
        finals = _final_buckets(seed, w, first, end)
        types = sorted(finals[0][0])
        settled_tokens = {t: [0, *accumulate(f[0][t] for f in finals)] for t in types}
        settled_requests = [0, *accumulate(f[1] for f in finals)]
        for t in types:
            tokens[(w, t)] = []
        requests[w] = []
        for at in times:
            # Buckets that started at least 2 widths before `at` are final; the last ones are filling in.
            n_final = max(0, min(len(starts), (at - 2 * WIDTH - first) // WIDTH + 1))
            partial_tokens = dict.fromkeys(types, 0)
            partial_requests = 0
            for i in range(n_final, len(starts)):
                if starts[i] >= at:
                    break
                values = bucket_as_of(seed, w, starts[i], WIDTH, at)
                if values is not None:
                    for t in types:
                        partial_tokens[t] += values[0].get(t, 0)
                    partial_requests += values[1]
            for t in types:
                tokens[(w, t)].append(settled_tokens[t][n_final] + partial_tokens[t])
            requests[w].append(settled_requests[n_final] + partial_requests)
        day_costs = [daily_cost(seed, w, d) for d in days]
        cost[w] = [
            sum((c for d, c in zip(days, day_costs, strict=True) if d + DAY + COST_DELAY <= at), Decimal(0))
            for at in times
        ]
    return tokens, requests, cost


@dataclass(frozen=True)
class DataSet:
    """What every family builder gets: the seed, the sample times and the window the backfill covers."""

    seed: int
    times: list[int]
    first_start: int
    attributed: bool = True  # usage and cost series carry llm_team / llm_cost_center (DEMO_CONFIG's rules)
    poll_lag: int = 0  # money signals at time t read a ledger as of a poll this much earlier (a real run's gap)


def usage_families(ds: DataSet) -> list[_Family]:
    """``llm.usage.tokens`` / ``requests`` / ``cost``: the ledger's exact totals at each sample time."""
    tokens, requests, cost = usage_series(ds.seed, ds.first_start, ds.times)
    fam_tokens, fam_requests, fam_cost = (_Family(n) for n in ("llm.usage.tokens", "llm.usage.requests", "llm.usage.cost"))
    for (w, t), values in tokens.items():
        fam_tokens.add("", {**_usage_labels(w, ds.attributed), prometheus_label_name("gen_ai.token.type"): t},
                       list(zip(ds.times, values, strict=True)))
    for w, req in requests.items():
        fam_requests.add("", _usage_labels(w, ds.attributed), list(zip(ds.times, req, strict=True)))
    for w, amounts in cost.items():
        labels = {k: v for k, v in _usage_labels(w, ds.attributed).items() if k != "gen_ai_operation_name"}
        labels[prometheus_label_name("llm.cost.line_item")] = "tokens"
        fam_cost.add("", labels, [(t, float(a)) for t, a in zip(ds.times, amounts, strict=True)])
    return [fam_tokens, fam_requests, fam_cost]


def self_health_families(ds: DataSet) -> list[_Family]:
    return _self_health(ds.times)


def pricing_families(ds: DataSet) -> list[_Family]:
    """``llm.usage.cost.estimated``, ``llm.pricing.token_price`` and ``llm.cost.reconciliation.ratio``.

    Priced with the receiver's own ``PriceBook`` (the demo's models are known to genai-prices), so estimated
    cost is exactly tokens x price at every sample. The reconciliation ratio here is a day-agnostic stand-in
    (cumulative estimated / cumulative reported per tenancy): the receiver computes it per final day, but the
    queries under test only need a real series of that name and labels.
    """
    tokens, _, cost = usage_series(ds.seed, ds.first_start, ds.times)
    book = PriceBook()
    estimated, price_gauge, ratio = (_Family(n) for n in (
        "llm.usage.cost.estimated", "llm.pricing.token_price", "llm.cost.reconciliation.ratio"))
    by_tenancy: dict[str, list[Decimal]] = {}
    priced: set[tuple[str, str]] = set()
    for (w, t), values in tokens.items():
        price = book.price(PROVIDER_NAME, w.model, t, {}, ds.times[0])
        if price is None:
            continue
        labels = {**_usage_labels(w, ds.attributed), prometheus_label_name("gen_ai.token.type"): t}
        amounts = [price.usd * v for v in values]
        estimated.add("", labels, [(at, float(a)) for at, a in zip(ds.times, amounts, strict=True)])
        running = by_tenancy.setdefault(w.tenancy, [Decimal(0)] * len(ds.times))
        by_tenancy[w.tenancy] = [r + a for r, a in zip(running, amounts, strict=True)]
        if (w.model, t) not in priced:
            priced.add((w.model, t))
            price_gauge.add("", {prometheus_label_name("gen_ai.provider.name"): PROVIDER_NAME,
                                 prometheus_label_name("gen_ai.request.model"): w.model,
                                 prometheus_label_name("gen_ai.token.type"): t},
                            [(at, float(price.usd)) for at in ds.times])
    reported: dict[str, list[Decimal]] = {}
    for w, amounts in cost.items():
        running = reported.setdefault(w.tenancy, [Decimal(0)] * len(ds.times))
        reported[w.tenancy] = [r + a for r, a in zip(running, amounts, strict=True)]
    for tenancy, est in by_tenancy.items():
        labels = {k: v for k, v in _usage_labels(next(w for w in WORKLOADS if w.tenancy == tenancy)).items()
                  if k not in ("gen_ai_request_model", "gen_ai_operation_name")}
        points = [(at, float(e / r)) for at, e, r in zip(ds.times, est, reported[tenancy], strict=True) if r]
        if points:
            ratio.add("", labels, points)
    return [estimated, price_gauge, ratio]


class _Spend:
    """The demo's spend as the receiver's ledger holds it in hourly rollups, for the money-signal builders.

    Estimated cost per workload and hour: the hour's final token counts x ``PriceBook`` prices (what the ledger
    prices, hour by hour). Reported cost: the demo's ``daily_cost`` at its day's start hour, known from
    ``COST_DELAY`` after the day ends and from ``COST_LOOKBACK`` before the backfill (what ``cost_records``
    returns). The hours still filling in at ``at`` count their buckets as the demo API reports them then
    (``bucket_as_of``: the newest ones partial or not there yet), as the ledger holds them after a poll at ``at``.
    """

    def __init__(self, ds: DataSet) -> None:
        end = ds.times[-1]
        first = ds.first_start - ds.first_start % WIDTH
        self.first_hour = first - first % HOUR
        book = PriceBook()
        self.seed, self.lag = ds.seed, ds.poll_lag
        self.hours = list(range(self.first_hour, end + HOUR, HOUR))
        self.prices: dict[Workload, dict[str, Decimal]] = {}
        self._tails: dict[tuple[Workload, int], dict[int, Decimal]] = {}
        self.tokens: dict[Workload, list[int]] = {}
        self.estimated: dict[Workload, list[Decimal]] = {}
        self._cum: dict[Workload, list[Decimal]] = {}
        for w in WORKLOADS:
            tokens = [0] * len(self.hours)
            cost = [Decimal(0)] * len(self.hours)
            finals = _final_buckets(ds.seed, w, first, end)
            found = {t: book.price(PROVIDER_NAME, w.model, t, {}, ds.times[0]) for t in finals[0][0]}
            prices = self.prices[w] = {t: p.usd for t, p in found.items() if p is not None}
            for k, (counts, _) in enumerate(finals):
                i = (first + k * WIDTH - self.first_hour) // HOUR
                for t, n in counts.items():
                    tokens[i] += n
                    cost[i] += prices.get(t, Decimal(0)) * n
            self.tokens[w], self.estimated[w] = tokens, cost
            self._cum[w] = [Decimal(0), *accumulate(cost)]
        cost_start = ds.first_start - COST_LOOKBACK
        self.days = list(range(cost_start - cost_start % DAY, end, DAY))
        self.daily = {w: [daily_cost(ds.seed, w, d) for d in self.days] for w in WORKLOADS}

    def _hour_index(self, t: int) -> int:
        return bisect_left(self.hours, t)

    def estimated_between(self, w: Workload, lo: int, hi: int, at: int) -> Decimal:
        """Estimated spend of hours starting in ``[lo, hi)`` as of ``at``."""
        settled = at - 2 * WIDTH  # buckets that started by then are final
        cut = settled - settled % HOUR  # hours before it hold final buckets only
        total = Decimal(0)
        end = min(hi, cut)
        if lo < end:
            cum = self._cum[w]
            total = cum[min(self._hour_index(end), len(cum) - 1)] - cum[min(self._hour_index(lo), len(cum) - 1)]
        return total + sum((v for h, v in self._tail(w, at).items() if lo <= h < hi), Decimal(0))

    def _tail(self, w: Workload, at: int) -> dict[int, Decimal]:
        """Estimated spend of the hours still filling in at ``at``, bucket by bucket as the poll before saw them."""
        key = (w, at)
        if key not in self._tails:
            at -= self.lag
            settled = at - 2 * WIDTH
            out: dict[int, Decimal] = {}
            for start in range(settled - settled % HOUR, at, WIDTH):
                values = bucket_as_of(self.seed, w, start, WIDTH, at)
                if values is not None:
                    amount = sum((self.prices[w].get(t, Decimal(0)) * n for t, n in values[0].items()), Decimal(0))
                    out[start - start % HOUR] = out.get(start - start % HOUR, Decimal(0)) + amount
            self._tails[key] = out
        return self._tails[key]

    def reported_until(self, at: int) -> int | None:
        """The end of the newest reported day known at ``at`` (the same for every demo tenancy)."""
        known = [d for d in self.days if d + DAY + COST_DELAY <= at - self.lag]
        return known[-1] + DAY if known else None

    def reported_between(self, w: Workload, lo: int, hi: int, at: int) -> Decimal:
        until = self.reported_until(at) or 0
        return sum((c for d, c in zip(self.days, self.daily[w], strict=True) if lo <= d < min(hi, until)),
                   Decimal(0))

    def spend(self, ws: Sequence[Workload], window: tuple[int, int], source: str, at: int) -> Decimal:
        """Spend of ``ws`` in ``window`` by source, splitting ``best`` where ``Signals.read`` splits it."""
        lo, hi = window
        if source == "estimated":
            return sum((self.estimated_between(w, lo, hi, at) for w in ws), Decimal(0))
        if source == "reported":
            return sum((self.reported_between(w, lo, hi, at) for w in ws), Decimal(0))
        r = self.reported_until(at)
        if r is None:
            return self.spend(ws, window, "estimated", at)
        return sum((self.reported_between(w, lo, max(lo, min(hi, r)), at)
                    + self.estimated_between(w, min(hi, max(lo, r)), hi, at) for w in ws), Decimal(0))


def _budget_matches(w: Workload, match: BudgetMatch) -> bool:
    """``Signals._matches`` for a demo workload (whose provider instance has no static labels)."""
    if match.labels:
        raise ValueError("the data set's budgets cannot match on labels (the demo has none)")
    values = {
        "provider": [PROVIDER_NAME], "tenant": [TENANT], "tenancy": [w.tenancy, TENANCIES[w.tenancy]],
        "model": [w.model], "team": [_team_attributes(w).get("llm.team", UNATTRIBUTED)],
    }
    return all(getattr(match, k) is None or any(fnmatch.fnmatchcase(v, getattr(match, k)) for v in vs)
               for k, vs in values.items())


def budget_families(ds: DataSet) -> list[_Family]:
    """``llm.budget.limit`` / ``spent`` / ``utilization`` / ``projected`` / ``burn_rate`` for ``DEMO_CONFIG``'s
    budgets at every sample time, with the receiver's ``budgets.period_bounds`` and ``budgets.status`` over the
    spend windows ``Signals.read`` uses. Only with attribution on: the budgets come with the demo
    configuration's rules (one matches a team)."""
    names = ("llm.budget.limit", "llm.budget.spent", "llm.budget.utilization", "llm.budget.projected",
             "llm.budget.burn_rate")
    fams = {n: _Family(n) for n in names}
    if not ds.attributed:
        return list(fams.values())
    money = _Spend(ds)
    for budget in demo_config().budgets:
        ws = [w for w in WORKLOADS if _budget_matches(w, budget.match)]
        points: dict[str, list[tuple[int, float]]] = {n: [] for n in (*names[:4], "1h", "6h")}
        for at in ds.times:
            bounds = budgets.period_bounds(at, budget.period, budget.timezone)
            hour_end = (at - SETTLE) // HOUR * HOUR
            spent = money.spend(ws, (bounds[0], at + HOUR), budget.source, at)
            trailing = money.spend(ws, (hour_end - budgets.PROJECTION_WINDOW, hour_end), budget.source, at)
            windows = {w: money.spend(ws, (hour_end - sec, hour_end), budget.source, at)
                       for w, sec in budgets.BURN_WINDOWS.items()}
            st = budgets.status(budget.name, budget.amount, bounds, at, spent, trailing, windows)
            for n, v in zip(names[:4], (st.limit, st.spent, st.utilization, st.projected), strict=True):
                points[n].append((at, float(v)))
            for w, rate in st.burn_rates.items():
                points[w].append((at, float(rate)))
        label = {prometheus_label_name("llm.budget.name"): budget.name}
        for n in names[:4]:
            fams[n].add("", label, points[n])
        for w in budgets.BURN_WINDOWS:
            fams["llm.budget.burn_rate"].add("", {**label, prometheus_label_name("llm.budget.window"): w}, points[w])
    return list(fams.values())


def anomaly_families(ds: DataSet) -> list[_Family]:
    """``llm.anomaly.score`` per (provider, model, tenancy) for cost and tokens: the receiver's
    ``anomalies.baseline_hours`` and ``robust_z`` over the demo's hourly totals, scoring at each sample time
    the newest complete hour, as ``Signals.read`` does. No score before five days of baseline exist (so a
    two-day data set has none, like a two-day backfill)."""
    fam = _Family("llm.anomaly.score")
    money = _Spend(ds)
    for w in WORKLOADS:
        for signal, values in (("cost", [float(c) for c in money.estimated[w]]),
                               ("tokens", [float(t) for t in money.tokens[w]])):
            points = []
            for at in ds.times:
                hour = (at - SETTLE) // HOUR * HOUR - HOUR
                past = anomalies.baseline_hours(hour, money.first_hour)
                if hour < money.first_hour or not past:
                    continue
                at_hour = {h: values[(h - money.first_hour) // HOUR] for h in (hour, *past)}
                score = anomalies.robust_z(at_hour[hour], [at_hour[h] for h in past])
                if score is not None:
                    points.append((at, score))
            if points:
                fam.add("", {
                    prometheus_label_name("gen_ai.provider.name"): PROVIDER_NAME,
                    prometheus_label_name("gen_ai.request.model"): w.model,
                    prometheus_label_name("llm.tenancy.id"): w.tenancy,
                    prometheus_label_name("llm.tenancy.name"): TENANCIES[w.tenancy],
                    prometheus_label_name("llm.anomaly.signal"): signal,
                }, points)
    return [fam]


def attribution_families(ds: DataSet) -> list[_Family]:
    """``llm.attribution.coverage`` per provider: attributed share of the last 24 complete hours of ``best``
    spend (``Signals._coverage``), with ``DEMO_CONFIG``'s rules (Support Bot is unattributed). Only with
    attribution on, as the receiver exports it only when rules exist."""
    fam = _Family("llm.attribution.coverage")
    if not ds.attributed:
        return [fam]
    money = _Spend(ds)
    owned = [w for w in WORKLOADS if _team_attributes(w).get("llm.team", UNATTRIBUTED) != UNATTRIBUTED]
    points = []
    for at in ds.times:
        hour_end = (at - SETTLE) // HOUR * HOUR
        window = (hour_end - DAY, hour_end)
        total = money.spend(WORKLOADS, window, "best", at)
        if total > 0:
            points.append((at, float(money.spend(owned, window, "best", at) / total)))
    fam.add("", {prometheus_label_name("gen_ai.provider.name"): PROVIDER_NAME}, points)
    return [fam]


def period_families(ds: DataSet) -> list[_Family]:
    """``llm.cost.period_to_date``: reported and estimated USD since UTC midnight and since the 1st, per provider,
    tenant and team (with attribution on), over the hours ``Signals.read`` counts: every hour that started in
    the period, the one still filling in included. Reported cost of today is 0 (the demo bills a day late)."""
    fam = _Family("llm.cost.period_to_date")
    money = _Spend(ds)
    groups: dict[str, list[Workload]] = {}
    for w in WORKLOADS:
        team = _team_attributes(w).get("llm.team", UNATTRIBUTED) if ds.attributed else ""
        groups.setdefault(team, []).append(w)
    for period in ("day", "month"):
        for source in ("reported", "estimated"):
            for team, ws in sorted(groups.items()):
                labels = {
                    prometheus_label_name("llm.period"): period,
                    prometheus_label_name("llm.cost.source"): source,
                    prometheus_label_name("gen_ai.provider.name"): PROVIDER_NAME,
                    prometheus_label_name("llm.tenant"): TENANT,
                }
                if ds.attributed:
                    labels[prometheus_label_name("llm.team")] = team
                fam.add("", labels, [
                    (at, float(money.spend(ws, (budgets.period_bounds(at, period)[0], at + HOUR), source, at)))
                    for at in ds.times
                ])
    return [fam]


#: The data set's metric families, one builder per group of metrics. A new group of metrics (issue 7's
#: ``llm.usage.cost.estimated``, ``llm.budget.*``, ``llm.anomaly.score``, ...) is one more builder here, so that
#: its rules and panels have data to run on in tests/test_dashboards.py.
FAMILY_BUILDERS: tuple[Callable[[DataSet], list[_Family]], ...] = (
    usage_families, self_health_families, pricing_families, budget_families, anomaly_families,
    attribution_families, period_families,
)


def demo_openmetrics(end: int, seed: int = 42, days: int = 7, attributed: bool = True) -> str:
    """The whole data set, ending at ``end`` (Unix seconds, a multiple of 60).

    ``attributed``: as the receiver sends it with ``DEMO_CONFIG``'s budgets and attribution rules (team labels,
    budgets, coverage); without, as with no ``budgets`` / ``attribution`` config.
    """
    if end % 60:
        raise ValueError("end must be a whole minute")
    ds = DataSet(seed, sample_times(end, days), end - days * DAY, attributed)
    families = [f for build in FAMILY_BUILDERS for f in build(ds) if f.lines]
    names = [f.family for f in families]
    if len(names) != len(set(names)):
        raise ValueError("a metric family is built twice")  # OpenMetrics needs each family in one block
    return "\n".join(line for f in families for line in f.render()) + "\n# EOF\n"


def _self_health(times: list[int]) -> list[_Family]:
    start = times[0]
    polls, durations = _Family("llm.receiver.polls"), _Family("llm.receiver.poll.duration")
    last, lag, records = (_Family(n) for n in ("llm.receiver.last_success", "llm.receiver.data.lag",
                                              "llm.receiver.records"))
    src = {"llm_source": SOURCE}

    def n_polls(at: int) -> int:
        return (at - start) // 60 + 1

    def failures(at: int, every: int) -> int:
        return n_polls(at) // every

    limited = [(t, failures(t, 40)) for t in times]
    timeouts = [(t, failures(t, 150)) for t in times]
    usage = {**src, "llm_data_source": "usage"}  # the demo provider has one source
    polls.add("", {**usage, "llm_outcome": "success"},
              [(t, n_polls(t) - failures(t, 40) - failures(t, 150)) for t in times])
    polls.add("", {**usage, "llm_outcome": "failure", "error_type": "rate_limited"}, limited)
    polls.add("", {**usage, "llm_outcome": "failure", "error_type": "timeout"}, timeouts)

    # Poll k takes 0.04 + (k mod 25) * 0.05 seconds: a spread over the histogram's lower buckets.
    cycle = [0.04 + k * 0.05 for k in range(25)]

    def observed(n: int, limit: float) -> int:  # how many of the first n polls took <= limit seconds
        full, rest = divmod(n, 25)
        return full * sum(1 for d in cycle if d <= limit) + sum(1 for d in cycle[:rest] if d <= limit)

    for i, le in enumerate([*map(str, DURATION_BOUNDS), "+Inf"]):
        limit = DURATION_BOUNDS[i] if i < len(DURATION_BOUNDS) else float("inf")
        durations.add("_bucket", {**src, "le": le}, [(t, observed(n_polls(t), limit)) for t in times])
    durations.add("_sum", src, [(t, round(sum(cycle) * (n_polls(t) // 25) + sum(cycle[: n_polls(t) % 25]), 6))
                                for t in times])
    durations.add("_count", src, [(t, n_polls(t)) for t in times])

    last.add("", src, [(t, float(t - 5)) for t in times])
    lag.add("", src, [(t, 90.0 + (t // 60) % 30) for t in times])
    for outcome, per_poll in (("new", 6), ("grown", 12), ("unchanged", 300)):
        records.add("", {**src, "llm_outcome": outcome}, [(t, n_polls(t) * per_poll) for t in times])
    return [polls, durations, last, lag, records]
