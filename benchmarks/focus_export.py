"""A FOCUS export as a user runs it (``otel-llm-receiver focus ... --out FILE``), a whole process per run, on the
demo's ledger and on a large one, to Parquet and to CSV, beside its anchors measured in the same run.

Run by hand: ``python benchmarks/focus_export.py [--repeat 3] [--days 90] [--series 1000]`` (or ``make bench``;
``BENCH_CODE=/old/checkout`` for the "before" figure). Goal (issue 20): each export under 10 s and 200 MiB, with
headroom on a loaded machine. Every figure is the median of ``--repeat`` (>= 3) runs of the whole command, timed
from its spawn (so importing the CLI counts) to its exit, with its CPU seconds and peak RSS from ``wait4``
(``harness.run_command``); the cases run round by round, interleaved with the anchors, so a change in the
machine's load moves them alike: on a shared machine compare the CPU column.

Ledgers, each built once in its own child process (untimed, so the build's memory is nobody's peak):
* ``demo``: the demo provider's 14-day backfill (the ``demo`` command's), applied and priced as the receiver does;
* ``large``: ``--series`` token series over ``--days`` days (default 1,000 x 90: about 1,000 FOCUS rows a day,
  90,000 in all), through the real ``Ledger.apply``: 250 tenancy-model pairs x 4 token types, half of them in an
  instance that reports daily cost per token type (reported rows, quantities matched from the usage) and half
  usage-only (estimated rows), hourly buckets priced with genai-prices.

Anchors: ``python -c pass`` (the interpreter's start), and ``anchor read+csv``: a bare Python running, day by
day, the query shape the export reads with (each series' hourly rollups of one UTC day summed, with the series'
attributes) over the same range of the same ledger file, and writing those series-days with ``csv``: the floor of
reading what a FOCUS file is made of into a file at all (no FOCUS columns, no pricing, no matching of cost to
usage).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Run, machine, median_figure, run_child, run_command, table, timed

H = 3600
D = 86400
#: Models genai-prices prices for all four token types, so every usage series has estimated cost (no unpriced rows).
MODELS = ("claude-sonnet-4", "claude-opus-4", "claude-3-5-haiku", "claude-sonnet-4-5", "claude-opus-4-1")
#: What the installed ``otel-llm-receiver`` console script runs (setuptools' entry-point wrapper).
ENTRY = "import sys; from otel_llm_receiver.cli import main; sys.exit(main())"
ANCHOR = """\
import csv, sqlite3, sys
ledger, start, end, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    for day in range(start, end, 86400):
        w.writerows(conn.execute(
            "SELECT s.instance, s.metric, s.attrs, ?, sum(r.value) FROM series AS s "
            "JOIN rollups AS r ON r.series_id = s.id WHERE r.hour_start >= ? AND r.hour_start < ? GROUP BY s.id",
            (day, day, day + 86400)))
"""
LIMIT_S, LIMIT_MIB = 10.0, 200.0


def build_large(path: Path, days: int, pairs: int, now: int) -> None:
    """``pairs`` (tenancy, model) pairs x 4 token types; one apply per instance and day."""
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import TOKEN_TYPES, CostRecord, PollResult, UsageRecord
    from otel_llm_receiver.pricing import PriceBook

    ledger = Ledger(path)
    ledger.set_pricer(PriceBook())
    start = (now - days * D) // D * D
    for day in range(start, now // H * H, D):
        for half, instance in enumerate(("anthropic/reported", "anthropic/usage-only")):
            usage, costs = [], []
            for p in range(half, pairs, 2):
                model, tenancy = MODELS[p % len(MODELS)], f"proj-{p // len(MODELS):03d}"
                provider = "anthropic"
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


def build_demo(path: Path, days: int, now: int) -> None:
    """The demo provider's backfill over ``days`` up to ``now``, applied once (as the first poll does)."""
    import asyncio

    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import Window
    from otel_llm_receiver.pricing import PriceBook
    from otel_llm_receiver.providers import create_provider

    config = parse_config({"providers": {"demo": {"backfill": f"{days * 24}h", "seed": 42}}})
    provider = create_provider(config.providers[0])
    result = asyncio.run(provider.fetch(Window(now - days * D, now)))
    with Ledger(path) as ledger:
        ledger.set_pricer(PriceBook())
        ledger.apply("demo", result)


def child(args: argparse.Namespace) -> None:
    """Build one ledger (untimed for the export figures; its own time is printed)."""
    logging.disable(logging.WARNING)
    path = Path(args.ledger)
    with timed():
        if args.shape == "demo":
            build_demo(path, args.days, args.now)
        else:
            build_large(path, args.days, args.series // 4, args.now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90, help="days of the large ledger (and of each export)")
    parser.add_argument("--series", type=int, default=1000, help="token series of the large ledger")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (>= 3); medians are printed")
    parser.add_argument("--now", type=int, default=1_795_000_000 // D * D + 10 * H)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--ledger", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    repeat = max(3, args.repeat)
    script = Path(__file__).resolve()
    shapes = {"demo": 14, "large": args.days}
    print(f"FOCUS export, {machine()}; medians of {repeat} runs, each a whole process")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for shape, days in shapes.items():
            ledger = work / f"{shape}.db"
            built = run_child(script, ["--shape", shape, "--ledger", str(ledger), "--days", str(days),
                                       "--series", str(args.series), "--now", str(args.now)])
            what = "demo, 14-day backfill" if shape == "demo" else f"{args.days} days x {args.series} token series"
            print(f"built {shape} ledger ({what}) in {built.wall:.1f} s, untimed; "
                  f"{ledger.stat().st_size / 2**20:.0f} MiB")
            start, end = (args.now - days * D) // D * D, args.now
            cases = {
                "python -c pass": ([sys.executable, "-c", "pass"], None),
                "anchor read+csv": ([sys.executable, "-c", ANCHOR, str(ledger), str(start), str(end),
                                     str(work / "anchor.csv")], None),
                **{f"focus {fmt}": ([sys.executable, "-c", ENTRY, "focus", "--storage", str(ledger),
                                     "--now", str(args.now), "--since", f"{days}d", "--format", fmt,
                                     "--out", str(work / f"focus.{fmt}")], work / f"focus.{fmt}")
                   for fmt in ("parquet", "csv")},
            }
            runs: dict[str, list[Run]] = {name: [] for name in cases}
            for _ in range(repeat):
                for name, (argv, _) in cases.items():
                    runs[name].append(run_command(argv, cwd=work))
            for name, (_, out) in cases.items():
                f = median_figure(name, runs[name])
                size = f"{out.stat().st_size / 2**20:.1f}" if out is not None else ""
                if name == "focus csv":  # what a user counts: FOCUS rows (the header line aside)
                    with out.open("rb") as lines:
                        size += f" ({sum(1 for _ in lines) - 1:,} rows)"
                goal = name.startswith("focus")
                verdict = ""
                if goal:
                    verdict = "met" if f.wall < LIMIT_S and f.rss_mib < LIMIT_MIB else "NOT met"
                    verdict += f" ({f.wall / LIMIT_S:.0%} of 10 s, {f.rss_mib / LIMIT_MIB:.0%} of 200 MiB)"
                rows.append([shape if name == "python -c pass" else "", name, f"{f.wall:.2f}", f"{f.cpu:.2f}",
                             f"{f.rss_mib:.0f}", size, verdict])
    print(table(rows, ["ledger", "case", "wall s", "cpu s", "peak MiB", "file MiB", "goal < 10 s, < 200 MiB"]))


if __name__ == "__main__":
    main()
