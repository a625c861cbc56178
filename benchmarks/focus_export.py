"""Wall time and peak memory of a FOCUS export of 90 days x 1,000 series, to Parquet and to CSV (the issue's
target: under 10 s and under 200 MiB each on a 2-core machine).

Run by hand (`python benchmarks/focus_export.py`, or `make bench`); it prints its figures. The ledger is built
through the real ``Ledger.apply`` (hourly buckets priced as the receiver prices them), which takes a while and is
not timed: 1,000 token series (250 tenancy-model pairs x 4 token types), half of them in an instance that reports
daily cost per token type (reported rows, quantities matched from the usage) and half usage-only (estimated
rows), so about 1,000 rows a day, 90,000 in all. Each export runs in a fresh child process through the real
command (``otel-llm-receiver focus --storage ... --since 90d``), timed from the command's start to its exit, and
the child's peak RSS (``ru_maxrss``) is reported, so the ledger build does not count against it.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import TOKEN_TYPES, CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook

H = 3600
D = 86400
#: Models genai-prices prices for all four token types, so every usage series has estimated cost (no unpriced rows).
MODELS = ("claude-sonnet-4", "claude-opus-4", "claude-3-5-haiku", "claude-sonnet-4-5", "claude-opus-4-1")


def build(path: Path, days: int, pairs: int, now: int) -> None:
    """``pairs`` (tenancy, model) pairs x 4 token types; one apply per instance and day."""
    ledger = Ledger(path)
    ledger.set_pricer(PriceBook())
    start = (now - days * D) // D * D
    for day in range(start, now // H * H, D):
        for half, instance in enumerate(("anthropic/reported", "anthropic/usage-only")):
            usage, costs = [], []
            for p in range(half, pairs, 2):
                model, tenancy = MODELS[p % len(MODELS)], f"proj-{p // len(MODELS):03d}"
                provider = "anthropic"
                tokens = {}
                for hour in range(day, min(day + D, now // H * H), H):
                    level = 1 + (hour // H * 7919 + p * 104_729) % 97 / 100
                    tokens = {t: int(10_000 * level) for t in TOKEN_TYPES}
                    usage.append(UsageRecord(provider=provider, model=model, operation="chat", tenancy_id=tenancy,
                                             bucket_start=hour, bucket_width=H, tokens=tokens))
                if half == 0 and day + D < now:  # daily reported cost per model and token type
                    costs += [CostRecord(provider=provider, tenancy_id=tenancy, bucket_start=day, bucket_width=D,
                                         amount=Decimal("1.234567"), model=model, line_item=t) for t in TOKEN_TYPES]
            ledger.apply(instance, PollResult(usage=usage, costs=costs))
    ledger.close()


def child(args: argparse.Namespace) -> None:
    """Run one export through the command and print (seconds, peak RSS in MiB) as JSON."""
    from otel_llm_receiver.cli import main as cli

    t0 = time.perf_counter()
    code = cli(["focus", "--storage", args.ledger, "--now", str(args.now), "--since", f"{args.days}d",
                "--format", args.format, "--out", args.out])
    elapsed = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"code": code, "seconds": elapsed, "rss_mib": rss_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--series", type=int, default=1000, help="token series (a quarter as many tenancy-models)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per format; the best and median shown")
    parser.add_argument("--ledger", help="keep the built ledger at this path and reuse it on the next run")
    parser.add_argument("--now", type=int, default=1_795_000_000 // D * D + 10 * H)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(args.ledger) if args.ledger else Path(tmp) / "ledger.db"
        if not ledger.exists():
            t0 = time.perf_counter()
            build(ledger, args.days, args.series // len(TOKEN_TYPES), args.now)
            print(f"built {ledger} ({args.days} days x {args.series} token series) in "
                  f"{time.perf_counter() - t0:.1f}s (not timed)")
        for fmt in ("parquet", "csv"):
            out = Path(tmp) / f"focus.{fmt}"
            runs = []
            for _ in range(args.repeat):
                cmd = [sys.executable, __file__, "--child", "--ledger", str(ledger), "--now", str(args.now),
                       "--days", str(args.days), "--format", fmt, "--out", str(out)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                assert runs[-1]["code"] == 0, done.stderr
            rows = done.stderr.strip().splitlines()[-1]
            seconds = [r["seconds"] for r in runs]
            rss = max(r["rss_mib"] for r in runs)
            print(f"{fmt:8s} {rows.removeprefix('focus: ')}; {out.stat().st_size / 2**20:.1f} MiB; "
                  f"wall best {min(seconds):.2f}s, median {statistics.median(seconds):.2f}s "
                  f"(target < 10 s); peak RSS {rss:.0f} MiB (target < 200 MiB)")


if __name__ == "__main__":
    main()
