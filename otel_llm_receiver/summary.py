"""The terminal summary ``demo`` prints: per provider and model, the token rate, tokens, reported and estimated
spend; then budget burn, the top anomaly scores, attribution coverage and the reconciliation ratio.

Reported cost comes in daily buckets and usage starts wherever the backfill started, so the two spend columns are
summed over the same whole UTC days: those on which the row has reported cost and usage all day long (see
``report.compare_days``). A row with no such day shows both over the whole ledger ("all").

It reads the ledger like any other consumer (its own read-only connection) and never calls a provider; the money
signals come in as a ``SignalsReading`` computed from the same ledger.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal

from .ledger import Ledger
from .model import from_nanos
from .names import METRIC_COST, METRIC_COST_ESTIMATED, METRIC_TOKENS, METRIC_UNPRICED
from .progress import ProgressState
from .report import CURRENCY_ATTR, compare_days
from .signals import SignalsReading

RATE_WINDOW = 15 * 60  # tokens/min is averaged over this many seconds of settled buckets
SETTLE = 2 * 60  # ...ending this long ago, so the rate does not dip on buckets still filling in
CENT = Decimal("0.01")
TOP_ANOMALIES = 3


def render_summary(
    reader: Ledger, now: int, signals: SignalsReading | None = None, progress: Sequence[ProgressState] = ()
) -> str:
    """A compact table, one row per (provider, model), sorted by token rate, and the money signals; first, while
    a backfill runs, its progress (the table fills in as it lands)."""
    end = now - SETTLE
    recent: dict[tuple[str, str], int] = defaultdict(int)
    for _, metric, bucket_attrs, value in reader.bucket_sums_between(end - RATE_WINDOW, end):
        if metric == METRIC_TOKENS:
            recent[(bucket_attrs["gen_ai.provider.name"], bucket_attrs["gen_ai.request.model"])] += value
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    cost: dict[tuple[str, str], int] = defaultdict(int)
    estimated: dict[tuple[str, str], int] = defaultdict(int)
    unpriced: set[tuple[str, str]] = set()  # models with tokens no catalog prices: "unpriced", not 0.00
    for s in reader.snapshot().series:
        attrs: dict[str, str] = json.loads(s.attrs)
        key = (attrs.get("gen_ai.provider.name", "?"), attrs.get("gen_ai.request.model", "(none)"))
        if s.metric == METRIC_TOKENS:
            tokens[key] += s.total - s.adjustments
        elif s.metric == METRIC_COST and CURRENCY_ATTR not in attrs:
            cost[key] += s.total - s.adjustments
        elif s.metric == METRIC_COST_ESTIMATED:
            estimated[key] += s.total - s.adjustments
        elif s.metric == METRIC_UNPRICED and s.total > 0:
            unpriced.add(key)
    first = reader.rollup_range()
    compared = compare_days(reader, first[0] if first else now, now, lambda _, a: (
        a.get("gen_ai.provider.name", "?"), a.get("gen_ai.request.model", "(none)")))
    rows = sorted(set(tokens) | set(cost), key=lambda k: (-recent.get(k, 0), k))
    header = (f"{'provider':<10} {'model':<24} {'tokens/min':>12} {'tokens (all)':>16} {'UTC days':>13} "
              f"{'USD reported':>14} {'USD estimated':>14}")
    lines = [header, "-" * len(header)]
    if progress:
        lines[:0] = ["backfill in progress:", *(f"  {p.line()}" for p in progress), ""]
    spent_total = guess_total = Decimal(0)
    days_all: set[int] = set()
    for provider, model in rows:
        key = (provider, model)
        rate = recent.get(key, 0) / (RATE_WINDOW / 60)
        c = compared.get(key)
        days = c.days if c is not None else []
        if c is not None and days:
            spent, guess = c.reported_same_days, c.estimated_same_days
            shown_days = _days(days)
            days_all.update(days)
        else:  # no whole day with both reported cost and usage: nothing to compare, the whole ledger's figures
            spent, guess, shown_days = from_nanos(cost.get(key, 0)), from_nanos(estimated.get(key, 0)), "all"
        spent_total += spent
        guess_total += guess
        shown_guess = "unpriced" if key in unpriced and not guess else f"{guess.quantize(CENT):,}"
        lines.append(
            f"{provider:<10} {model[:24]:<24} {rate:>12,.0f} {tokens.get(key, 0):>16,} {shown_days:>13} "
            f"{spent.quantize(CENT):>14,} {shown_guess:>14}"
        )
    if not rows:
        lines.append("(no usage in the ledger yet)")
    total_rate = sum(recent.values()) / (RATE_WINDOW / 60)
    lines.append("-" * len(header))
    lines.append(f"{'total':<35} {total_rate:>12,.0f} {sum(tokens.values()):>16,} {_days(sorted(days_all)):>13} "
                 f"{spent_total.quantize(CENT):>14,} {guess_total.quantize(CENT):>14,}")
    lines.append('USD: both over the same whole UTC days (with reported cost and all-day usage); "all": no such day')
    if signals is not None:
        lines += signal_lines(signals)
    return "\n".join(lines)


def _days(days: list[int]) -> str:
    """``11-19..12-01`` (month-day of the first and last compared day), ``-`` when none."""
    if not days:
        return "-"
    first, last = (time.strftime("%m-%d", time.gmtime(d)) for d in (days[0], days[-1]))
    return first if first == last else f"{first}..{last}"


def signal_lines(signals: SignalsReading) -> list[str]:
    """Budget burn, top anomalies, coverage and reconciliation, one line each."""
    lines = [""]
    for b in signals.budgets:
        burn = ", ".join(f"{w} {r:.2f}x" for w, r in b.burn_rates.items())
        lines.append(
            f"budget {b.name}: {b.spent.quantize(CENT):,} of {b.limit:,} USD ({b.utilization:.1%}), "
            f"projected {b.projected.quantize(CENT):,} by {time.strftime('%Y-%m-%d', time.gmtime(b.period_end))}, "
            f"burn {burn}"
        )
    if not signals.budgets:
        lines.append("budgets: none configured")
    top = sorted(signals.anomalies, key=lambda a: -a.score)[:TOP_ANOMALIES]
    if top:
        when = time.strftime("%a %H:00 UTC", time.gmtime(signals.hour))
        lines.append(f"anomaly scores for {when}: " + "; ".join(
            f"{a.model} {a.tenancy_name or a.tenancy_id} {a.signal} {a.score:+.1f}" for a in top))
    peak = signals.peak
    if peak is not None:
        when = time.strftime("%a %Y-%m-%d %H:00 UTC", time.gmtime(peak.hour))
        shown = (f"{peak.value:,.0f} vs a usual {peak.baseline:,.0f} tokens" if peak.signal == "tokens"
                 else f"{peak.value:,.2f} vs a usual {peak.baseline:,.2f} USD")
        lines.append(f"highest anomaly score of the last 7 days: {peak.score:+.1f} at {when}, {peak.provider} "
                     f"{peak.model} {peak.tenancy_name or peak.tenancy_id} {peak.signal} ({shown} in that hour)")
    if signals.coverage:
        lines.append("attribution coverage (24h): " + ", ".join(
            f"{p} {share:.0%}" for p, share in sorted(signals.coverage.items())))
    for r in signals.reconciliation:
        if r.ratio is not None:
            lines.append(f"reconciliation {r.provider}/{r.tenancy_name or r.tenancy_id} "
                         f"{time.strftime('%Y-%m-%d', time.gmtime(r.day))}: estimated / reported = {r.ratio:.3f}")
    return lines
