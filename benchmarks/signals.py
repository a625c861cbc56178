"""Time to compute every budget, anomaly, coverage, reconciliation and price gauge from 90 days of hourly
rollups of 1,000 series (the issue's target: under 1 s on a 2-core machine).

Run by hand (`python benchmarks/signals.py`); it prints its figures. The ledger is built through the real
``Ledger.apply`` (hourly buckets, priced as the receiver prices them: 1,000 token series and their 1,000
estimated-cost series, plus daily reported cost per tenancy), which takes a while and is not timed. The timed
part is ``Signals.read`` (what every export runs) and ``gauge_metrics`` (their OTLP encoding).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from otel_llm_receiver.attribution import Attributor
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import TOKEN_TYPES, CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.signals import Signals, gauge_metrics

H = 3600
D = 86400
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "claude-opus-4", "gpt-5")


def build(path: Path, days: int, pairs: int, now: int) -> None:
    """``pairs`` (tenancy, model) pairs x 4 token types = the token series; one apply per day."""
    ledger = Ledger(path)
    ledger.set_pricer(PriceBook())
    start = (now - days * D) // D * D
    for day in range(start, now // H * H, D):
        usage = []
        for p in range(pairs):
            model, tenancy = MODELS[p % len(MODELS)], f"proj-{p // len(MODELS):03d}"
            for hour in range(day, min(day + D, now // H * H), H):
                level = 1 + (hour // H * 7919 + p * 104_729) % 97 / 100
                usage.append(UsageRecord(
                    provider="openai" if model.startswith("gpt") else "anthropic", model=model, operation="chat",
                    tenancy_id=tenancy, bucket_start=hour, bucket_width=H,
                    tokens={t: int(10_000 * level) for t in TOKEN_TYPES},
                ))
        costs = [CostRecord(provider="openai", tenancy_id=f"proj-{t:03d}", bucket_start=day, bucket_width=D,
                            amount=Decimal("12.345678")) for t in range(pairs // len(MODELS))] if day + D < now else []
        ledger.apply("bench", PollResult(usage=usage, costs=costs))
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--series", type=int, default=1000, help="token series (a quarter as many tenancy-models)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best and the median are shown")
    parser.add_argument("--ledger", help="keep the built ledger at this path and reuse it on the next run")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # OpenAI models have no cache-write price: counted as unpriced, once each
    now = 1_795_000_000 // H * H + 1_800
    config = parse_config({
        "providers": {"demo": {"enabled": False}},
        "budgets": [
            {"name": "org-month", "amount": 100_000, "period": "month", "source": "best"},
            {"name": "openai-quarter", "amount": 250_000, "period": "quarter", "timezone": "Europe/Berlin",
             "source": "best", "match": {"provider": "openai"}},
            {"name": "team-day", "amount": 500, "period": "day", "source": "estimated", "match": {"team": "t1"}},
        ],
        "attribution": {"rules": [{"tenancy_regex": "proj-0[0-4].", "team": "t1"}]},
    })
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.ledger or Path(tmp) / "ledger.db")
        if not path.exists():
            t0 = time.perf_counter()
            build(path, args.days, args.series // len(TOKEN_TYPES), now)
            print(f"built {args.days} days of hourly rollups for {args.series:,} token series "
                  f"(+ their estimated-cost series) in {time.perf_counter() - t0:.1f}s (not timed)")
        signals = Signals(config.budgets, Attributor(config.attribution.rules), PriceBook())
        with Ledger(path, readonly=True) as ledger:
            counts = ledger.counts()
            rollups = ledger._conn.execute("SELECT count(*) FROM rollups").fetchone()[0]
            print(f"ledger: {counts['series']:,} series, {rollups:,} hourly rollups")
            timings = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                reading = signals.read(ledger, now)
                metrics = gauge_metrics(reading, now * 10**9)
                timings.append(time.perf_counter() - t0)
    points = sum(len(m.gauge.data_points) for m in metrics)
    timings.sort()
    print(f"signals: {len(reading.budgets)} budgets, {len(reading.anomalies):,} anomaly scores, "
          f"{len(reading.coverage)} coverage, {len(reading.reconciliation)} reconciliation, "
          f"{len(reading.token_prices)} prices -> {points:,} gauge points")
    print(f"compute all gauges: best {timings[0]:.3f}s, median {timings[len(timings) // 2]:.3f}s "
          f"(target < 1 s)")


if __name__ == "__main__":
    main()
