"""Ground truth for the demo provider: what the ledger and the wire must say, computed independently.

Everything here comes from the demo's pure functions (``bucket_as_of``, ``daily_cost``), not from the ledger,
the emitter or the scheduler, so comparing against it is a real check of those.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from otel_llm_receiver.providers.demo import COST_DELAY, COST_LOOKBACK, WORKLOADS, bucket_as_of, daily_cost

DAY = 86400


def demo_truth(
    seed: int, first_window_start: int, as_of: int, width: int = 60
) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], int], dict[tuple[str, str], Decimal]]:
    """(tokens by (tenancy, model, type), requests by (tenancy, model), cost by (tenancy, model)).

    Assumes every poll re-read from ``lookback`` before the previous poll's ``complete_until`` (the scheduler's
    contract), so each bucket's latest value is its value as of the last poll, ``as_of``.
    """
    tokens: dict[tuple[str, str, str], int] = defaultdict(int)
    requests: dict[tuple[str, str], int] = defaultdict(int)
    cost: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    first = first_window_start - first_window_start % width
    for start in range(first, as_of, width):
        for w in WORKLOADS:
            values = bucket_as_of(seed, w, start, width, as_of)
            if values is None:
                continue
            for token_type, n in values[0].items():
                tokens[(w.tenancy, w.model, token_type)] += n
            requests[(w.tenancy, w.model)] += values[1]
    cost_start = first_window_start - COST_LOOKBACK
    for day in range(cost_start - cost_start % DAY, as_of, DAY):
        if as_of < day + DAY + COST_DELAY:
            break
        for w in WORKLOADS:
            cost[(w.tenancy, w.model)] += daily_cost(seed, w, day)
    return dict(tokens), dict(requests), dict(cost)
