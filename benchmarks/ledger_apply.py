"""Ledger apply throughput and memory, against a same-key SQLite anchor, on the demo and a large organisation.

Run by hand: ``python benchmarks/ledger_apply.py [--sizes 10000,100000,1000000] [--large] [--repeat 3]
[--cases apply,steady]``.
It prints one table. Every figure is the median of ``--repeat`` (>= 3) runs, each in a fresh child process
(``harness.py``): wall and CPU seconds of the timed part, and the child's peak RSS (inputs included).

Shapes (what a user counts: API rows, series, days):
* ``org``: a large organisation's hourly usage: 834 (tenancy x model) API rows per hour, each with input and
  output tokens and a request count, i.e. 2,502 series; ``N`` rows span ``N / 834`` hours. ``--large`` adds the
  90-day case (1.8M rows, 5.4M points) the issue names.
* ``demo``: the demo provider's 7-day backfill at its default bucket width.

Each child sets up as ``run`` does once its start is done (``harness.settle_as_run``: the garbage collector's
settings, ``heap.py``), then builds the poll's records, untimed.

Cases, on the same points (one per token type, request count and other measure of each record):
* ``anchor``: ``executemany`` into a bare table with the ledger's primary key (``series_id, bucket_start``,
  WITHOUT ROWID), one transaction, the ledger's PRAGMAs: the floor cost of writing these rows at all;
* ``apply``: ``Ledger.apply`` of the records to an empty ledger, with pricing on (as the receiver runs);
* ``reapply``: the same records again, all unchanged (the overlap every steady-state poll re-reads);
* ``steady``: the same buckets again with every value grown (a running receiver's poll of buckets that fill in:
  every point looks up its prior value, and adds to totals, rollups and estimated cost).
Goal (issue 20): apply >= 50% of the anchor's rate at 10k, 100k and 1M rows; any backfill under 300 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, measure, settle_as_run, table, timed

if TYPE_CHECKING:
    from otel_llm_receiver.model import UsageRecord

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "o4-mini")
TENANCIES = 139  # x 6 models = 834 API rows an hour, 2,502 series
HOUR = 3600
START = 1_767_225_600  # 2026-01-01T00:00Z
CASES = ("anchor", "apply", "reapply", "steady")


def org_records(rows: int, grow: int = 0) -> list[UsageRecord]:
    from otel_llm_receiver.model import UsageRecord

    out: list[UsageRecord] = []
    keys = TENANCIES * len(MODELS)
    for i in range(rows):
        hour, k = divmod(i, keys)
        out.append(UsageRecord(
            "openai", MODELS[k % len(MODELS)], "chat", f"proj_{k // len(MODELS):04d}", START + hour * HOUR, HOUR,
            {"input": 1000 + (i * 7919) % 50_000 + grow, "output": 100 + (i * 104_729) % 5_000 + grow},
            requests=1 + i % 40 + grow,
        ))
    return out


def demo_records() -> list[UsageRecord]:
    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.model import Window
    from otel_llm_receiver.providers import create_provider

    config = parse_config({"providers": {"demo": {"backfill": "168h"}}})
    provider = create_provider(config.providers[0])
    now = START + 30 * 86400
    return list(asyncio.run(provider.fetch(Window(now - 7 * 86400, now))).usage)


def anchor_points(records: list[UsageRecord]) -> tuple[list[tuple[int, int, int, int]], int]:
    """The records' points as ``(series id, start, width, value)``, built here (not by the code measured, so
    the anchor is the same rows whichever checkout runs), and the number of series."""
    keys: dict[tuple[object, ...], int] = {}
    rows: list[tuple[int, int, int, int]] = []
    for r in records:
        ident = (r.provider, r.model, r.operation, r.tenancy_id, tuple(sorted(r.dimensions.items())))
        values = [*r.tokens.items(), *r.measures.items()]
        if r.requests is not None:
            values.append(("requests", r.requests))
        for name, value in values:
            rows.append((keys.setdefault((*ident, name), len(keys) + 1), r.bucket_start, r.bucket_width, value))
    return rows, len(keys)


def child(case: str, shape: str, size: int) -> None:
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import PollResult
    from otel_llm_receiver.pricing import PriceBook

    # Start-up done: the garbage collector's settings of `run` (heap.py), before the poll's records exist, as
    # in the receiver (the records are not frozen with start-up's objects). The anchor's child does the same.
    settle_as_run()
    records = org_records(size) if shape == "org" else demo_records()
    result = PollResult(usage=records)
    with tempfile.TemporaryDirectory() as tmp:
        if case == "anchor":
            rows, series = anchor_points(records)
            conn = sqlite3.connect(Path(tmp) / "anchor.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("CREATE TABLE buckets (series_id INTEGER NOT NULL, bucket_start INTEGER NOT NULL, "
                         "bucket_width INTEGER NOT NULL, value INTEGER NOT NULL, "
                         "PRIMARY KEY (series_id, bucket_start)) WITHOUT ROWID")
            with timed({"records": len(records), "points": len(rows), "series": series}):
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO buckets VALUES (?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            conn.close()
            return
        book = PriceBook()
        book.schedule("llm.usage.tokens", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                                           "gen_ai.token.type": "input"})  # the price data, loaded untimed
        with Ledger(Path(tmp) / "ledger.db") as ledger:
            ledger.set_pricer(book)
            if case in ("reapply", "steady"):
                ledger.apply("bench", result)
            if case == "steady":
                result = PollResult(usage=org_records(size, grow=1) if shape == "org" else [
                    dataclasses.replace(r, tokens={t: v + 1 for t, v in r.tokens.items()}) for r in records])
            with timed({"records": len(records)}) as out:
                stats = ledger.apply("bench", result)
            out["points"] = stats.points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="org-shape API rows, comma separated")
    parser.add_argument("--large", action="store_true", help="also the 90-day organisation (1.8M rows)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (>= 3); medians are printed")
    parser.add_argument("--cases", default=",".join(CASES), help="cases to run, comma separated (anchor always)")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "SHAPE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, shape, size = args.child
        child(case, shape, int(size))
        return

    script = Path(__file__).resolve()
    shapes = [("demo", 0)] + [("org", int(n)) for n in args.sizes.split(",") if n]
    if args.large:
        shapes.append(("org", TENANCIES * len(MODELS) * 24 * 90))
    print(f"ledger apply, {machine()}; medians of {max(3, args.repeat)} runs, each a fresh process")
    rows = []
    for shape, size in shapes:
        figures = {case: measure(case, script, [case, shape, str(size)], args.repeat)
                   for case in dict.fromkeys(["anchor", *[c for c in args.cases.split(",") if c in CASES]])}
        anchor = figures["anchor"]
        points = anchor.extra["points"]
        for case, f in figures.items():
            rate = points / f.cpu if f.cpu else float("inf")
            rows.append([
                f"{shape} {int(anchor.extra['records']):,} rows" if case == "anchor" else "", case,
                f"{int(points):,}", f"{f.wall:.3f}", f"{f.cpu:.3f}", f"{f.rss_mib:.0f}", f"{rate:,.0f}",
                "100%" if case == "anchor" else f"{anchor.cpu / f.cpu:.0%}",
                "100%" if case == "anchor" else f"{anchor.wall / f.wall:.0%}",
            ])
    print(table(rows, ["shape", "case", "points", "wall s", "cpu s", "peak MiB", "points/cpu s",
                       "of anchor (cpu)", "of anchor (wall)"]))
    print("goal: apply >= 50% of anchor at 10k/100k/1M rows; every backfill < 300 MiB peak RSS. The machine is "
          "shared: compare CPU seconds (wall times move with other load).")


if __name__ == "__main__":
    main()
