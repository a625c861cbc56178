"""The terminal summary ``demo`` prints: per provider and model, the token rate, tokens and reported spend.

It reads the ledger like any other consumer (its own read-only connection) and never calls a provider.
Estimated cost and budget burn join this table once pricing and budgets exist.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal

from .ledger import METRIC_COST, METRIC_TOKENS, Ledger
from .model import from_nanos

RATE_WINDOW = 15 * 60  # tokens/min is averaged over this many seconds of settled buckets
SETTLE = 2 * 60  # ...ending this long ago, so the rate does not dip on buckets still filling in


def render_summary(reader: Ledger, now: int) -> str:
    """A compact table, one row per (provider, model), sorted by token rate."""
    end = now - SETTLE
    recent: dict[tuple[str, str], int] = defaultdict(int)
    for _, metric, bucket_attrs, value in reader.bucket_sums_between(end - RATE_WINDOW, end):
        if metric == METRIC_TOKENS:
            recent[(bucket_attrs["gen_ai.provider.name"], bucket_attrs["gen_ai.request.model"])] += value
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    cost: dict[tuple[str, str], int] = defaultdict(int)
    for s in reader.snapshot().series:
        attrs: dict[str, str] = json.loads(s.attrs)
        key = (attrs.get("gen_ai.provider.name", "?"), attrs.get("gen_ai.request.model", "(none)"))
        if s.metric == METRIC_TOKENS:
            tokens[key] += s.total - s.adjustments
        elif s.metric == METRIC_COST and "currency" not in attrs:
            cost[key] += s.total - s.adjustments
    rows = sorted(set(tokens) | set(cost), key=lambda k: (-recent.get(k, 0), k))
    header = f"{'provider':<10} {'model':<24} {'tokens/min':>12} {'tokens (all)':>16} {'cost USD (reported)':>20}"
    lines = [header, "-" * len(header)]
    for provider, model in rows:
        rate = recent.get((provider, model), 0) / (RATE_WINDOW / 60)
        spent = from_nanos(cost.get((provider, model), 0)).quantize(Decimal("0.01"))
        lines.append(
            f"{provider:<10} {model[:24]:<24} {rate:>12,.0f} {tokens.get((provider, model), 0):>16,} {spent:>20,}"
        )
    if len(lines) == 2:
        lines.append("(no usage in the ledger yet)")
    total_rate = sum(recent.values()) / (RATE_WINDOW / 60)
    total_cost = from_nanos(sum(cost.values())).quantize(Decimal("0.01"))
    lines.append("-" * len(header))
    lines.append(f"{'total':<35} {total_rate:>12,.0f} {sum(tokens.values()):>16,} {total_cost:>20,}")
    lines.append("estimated cost and budget burn: not yet available (pricing and budgets come later)")
    return "\n".join(lines)

