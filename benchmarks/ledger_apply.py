"""Ledger apply throughput on the demo provider's 7-day backfill, next to a plain-SQLite baseline.

Run by hand (`python benchmarks/ledger_apply.py`); it prints its figures. Three numbers matter:
- backfill: applying the whole 7-day backfill to an empty ledger (first poll of a new install);
- re-apply: applying the same records again, all unchanged (the steady-state overlap every poll re-reads);
- baseline: `executemany` of the same (series, bucket, value) rows into a bare table, one transaction,
  same PRAGMAs: the floor cost of writing the rows at all. Targets: ledger >= 30% of baseline's rate,
  re-apply at least as fast as the backfill.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.ledger.writer import plan_points
from otel_llm_receiver.model import PollResult, Window
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.series import expand


def demo_backfill(days: int, width: str) -> PollResult:
    config = parse_config({
        "exporters": {"otlp": {"endpoint": "127.0.0.1:4317"}},
        "providers": {"demo": {"backfill": f"{days * 24}h", "bucket_width": width}},
    })
    provider = create_provider(config.providers[0])
    now = int(time.time())
    return asyncio.run(provider.fetch(Window(now - days * 86400, now)))


def baseline(rows: list[tuple[int, int, int, int]], path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE t (series_id INTEGER, bucket_start INTEGER, bucket_width INTEGER, value INTEGER)")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--bucket-width", default="1m")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--no-pricing", action="store_true",
                        help="apply without a price book (no estimated cost), as before pricing existed")
    args = parser.parse_args()

    result = demo_backfill(args.days, args.bucket_width)
    records = len(result.usage) + len(result.costs)
    keys: dict[tuple[str, str], int] = {}
    rows = [(keys.setdefault(key, len(keys)), s, w, v)
            for key, s, w, v in plan_points(result, expand(result, "default"), {}, 0).pending]
    points = len(rows)
    print(f"demo backfill: {args.days} days at {args.bucket_width}: {records:,} records, {points:,} points, "
          f"{len(keys)} series")

    book = PriceBook()
    book.schedule("llm.usage.tokens", {"gen_ai.provider.name": "demo", "gen_ai.request.model": "gpt-4o",
                                       "gen_ai.token.type": "input"})  # load the price data outside the timing
    best = {"baseline": float("inf"), "backfill": float("inf"), "reapply": float("inf")}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            best["baseline"] = min(best["baseline"], baseline(rows, Path(tmp) / "baseline.db"))
            with Ledger(Path(tmp) / "ledger.db") as ledger:
                if not args.no_pricing:  # as the receiver runs: every token delta is priced in the apply
                    ledger.set_pricer(book)
                t0 = time.perf_counter()
                stats = ledger.apply("demo", result)
                best["backfill"] = min(best["backfill"], time.perf_counter() - t0)
                assert stats.outcomes["new"] == points, stats.outcomes
                t0 = time.perf_counter()
                stats = ledger.apply("demo", result)
                best["reapply"] = min(best["reapply"], time.perf_counter() - t0)
                assert stats.outcomes["unchanged"] == points, stats.outcomes

    def rate(seconds: float, n: int) -> str:
        return f"{n / seconds:>12,.0f}/s"

    print(f"{'':<28}{'seconds':>9}{'records':>15}{'points':>15}")
    for name, label in (("baseline", "baseline executemany"), ("backfill", "ledger apply (backfill)"),
                        ("reapply", "ledger re-apply unchanged")):
        print(f"{label:<28}{best[name]:>9.3f}{rate(best[name], records)}{rate(best[name], points)}")
    print(f"ledger backfill rate = {best['baseline'] / best['backfill']:.0%} of baseline (target >= 30%)")
    print(f"re-apply / backfill speed = {best['backfill'] / best['reapply']:.2f}x (target >= 1.00x)")


if __name__ == "__main__":
    main()
