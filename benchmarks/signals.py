"""Time to compute every budget, anomaly, coverage, reconciliation and price gauge from 90 days of hourly
rollups of 1,000 series (the issue's goal: under 1 s on a 2-core machine, with headroom).

Run by hand: ``python benchmarks/signals.py [--days 90] [--series 1000] [--repeat 3] [--ledger PATH]``. It prints
one table. Every figure is the median of ``--repeat`` (>= 3) runs, each in a fresh child process
(``harness.py``): wall and CPU seconds of the timed part, and the child's peak RSS.

The ledger is built once, untimed, through the real ``Ledger.apply`` (hourly buckets, priced as the receiver
prices them: 1,000 token series and their 1,000 estimated-cost series, plus daily reported cost per tenancy).
Cases:
* ``first``: ``Signals.read`` and ``gauge_metrics`` (their OTLP encoding) in a fresh process, on a freshly
  opened ledger: what the first export after a start computes;
* ``later``: the same again in the same process (what every later export computes);
* ``anchor``: one SQL pass summing every rollup over the whole retention, per series (the rollups' primary key
  order): the floor of reading the data the signals read at all.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import CODE, ROOT, machine, measure, table, timed

H = 3600
D = 86400
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "claude-opus-4", "gpt-5")


def build(path: Path, days: int, pairs: int, now: int) -> None:
    """``pairs`` (tenancy, model) pairs x 4 token types = the token series; one apply per day."""
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import TOKEN_TYPES, CostRecord, PollResult, UsageRecord
    from otel_llm_receiver.pricing import PriceBook

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


CONFIG = {
    "providers": {"demo": {"enabled": False}},
    "budgets": [
        {"name": "org-month", "amount": 100_000, "period": "month", "source": "best"},
        {"name": "openai-quarter", "amount": 250_000, "period": "quarter", "timezone": "Europe/Berlin",
         "source": "best", "match": {"provider": "openai"}},
        {"name": "team-day", "amount": 500, "period": "day", "source": "estimated", "match": {"team": "t1"}},
    ],
    "attribution": {"rules": [{"tenancy_regex": "proj-0[0-4].", "team": "t1"}]},
}
NOW = 1_795_000_000 // H * H + 1_800
TOKEN_KINDS = 4  # len(model.TOKEN_TYPES): input, cache_read, cache_write, output


def child(case: str, path: str) -> None:
    from otel_llm_receiver.attribution import Attributor
    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.pricing import PriceBook
    from otel_llm_receiver.signals import Signals, gauge_metrics

    logging.disable(logging.WARNING)  # OpenAI models have no cache-write price: counted as unpriced, once each
    config = parse_config(CONFIG)
    signals = Signals(config.budgets, Attributor(config.attribution.rules), PriceBook())
    with Ledger(path, readonly=True) as ledger:
        if case == "anchor":
            with timed() as out:
                sums = ledger._conn.execute(
                    "SELECT series_id, sum(value) FROM rollups GROUP BY series_id").fetchall()
                out["points"] = float(len(sums))
            return
        if case == "later":
            gauge_metrics(signals.read(ledger, NOW), NOW * 10**9)
        with timed() as out:
            reading = signals.read(ledger, NOW)
            metrics = gauge_metrics(reading, NOW * 10**9)
            out["points"] = float(sum(len(m.gauge.data_points) for m in metrics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--series", type=int, default=1000, help="token series (a quarter as many tenancy-models)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (>= 3); medians are printed")
    parser.add_argument("--ledger", help="keep the built ledger at this path and reuse it on the next run")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=3, metavar=("PATH", "DAYS", "PAIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.build:
        logging.disable(logging.WARNING)
        build(Path(args.build[0]), int(args.build[1]), int(args.build[2]), NOW)
        return

    script = Path(__file__).resolve()
    print(f"signals, {machine()}; medians of {max(3, args.repeat)} runs, each a fresh process")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.ledger or Path(tmp) / "ledger.db")
        if not path.exists():
            t0 = time.perf_counter()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(CODE), str(ROOT)]))}
            subprocess.run([sys.executable, str(script), "--build", str(path), str(args.days),
                            str(args.series // TOKEN_KINDS)], check=True, env=env)
            print(f"built {args.days} days of hourly rollups for {args.series:,} token series "
                  f"(+ their estimated-cost series) in {time.perf_counter() - t0:.1f}s (not timed)")
        rows = []
        for case in ("first", "later", "anchor"):
            f = measure(case, script, [case, str(path)], args.repeat)
            rows.append([case, f"{int(f.extra.get('points', 0)):,}", f"{f.wall:.3f}", f"{f.cpu:.3f}",
                         f"{f.rss_mib:.0f}"])
    print(table(rows, ["case", "gauge points (anchor: series)", "wall s", "cpu s", "peak MiB"]))
    print("goal: every gauge in < 1 s (first and later), with headroom")


if __name__ == "__main__":
    main()
