"""Steady-state apply time as the ledger grows: the curve should be flat (issue 20: no apply reads in
proportion to the ledger's size).

Run by hand: ``python benchmarks/ledger_growth.py [--sizes 100000,500000,1000000,2000000,5000000] [--repeat 3]``.
Each figure is the median of ``--repeat`` (>= 3) fresh child processes (``harness.py``): wall and CPU seconds
of the timed part, the child's peak RSS.

The poll: a large organisation's steady state, the last 24 h of 2,502 hourly series (834 API rows an hour,
``ledger_apply.org_records``) re-read, with the newest hour's 834 rows changed (2,502 grown buckets), applied with
``Ledger.apply`` and pricing on, to a ledger that already holds that poll once plus ``SIZE`` older buckets of the
same series. The older buckets are filler written with plain SQL into the real schema (built once per size and
code under the temp directory, copied for every run); the timed apply is the real one.
Anchor: the same poll's points upserted with one same-key ``executemany`` into a bare WITHOUT ROWID table that
holds ``SIZE`` rows of the same shape.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import CODE, machine, measure, table, timed


def _this_checkouts(name: str) -> ModuleType:
    """A sibling benchmark module of this checkout (``benchmarks`` is a namespace package: with ``BENCH_CODE``
    its name would find the other checkout's file first)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", Path(__file__).resolve().parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_apply = _this_checkouts("ledger_apply")
MODELS, START, TENANCIES = _apply.MODELS, _apply.START, _apply.TENANCIES
anchor_points, org_records = _apply.anchor_points, _apply.org_records

ROWS_PER_HOUR = TENANCIES * len(MODELS)
POLL_HOURS = 24
CACHE = Path(tempfile.gettempdir()) / "otel-llm-receiver-ledger-growth" / hashlib.sha1(
    str(CODE).encode()).hexdigest()[:10]
# SIZE older buckets, hour by hour back from START, for every usage series: in key order, so it builds fast.
SQL_FILL = """
WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < :per_series)
INSERT INTO buckets (series_id, bucket_start, bucket_width, value)
SELECT s.id, :start - k.n * 3600, 3600, 1 + (s.id * 7919 + k.n) % 50000
FROM series AS s, k WHERE s.metric IN ('llm.usage.tokens', 'llm.usage.requests') ORDER BY s.id, k.n DESC"""


def poll(changed: bool) -> list:  # type: ignore[type-arg]
    """The last 24 h; ``changed``: the newest hour's rows carry more tokens and requests (grown buckets)."""
    from dataclasses import replace

    records = org_records(ROWS_PER_HOUR * POLL_HOURS)
    if changed:
        newest = ROWS_PER_HOUR * (POLL_HOURS - 1)
        records[newest:] = [replace(r, tokens={t: v + 1 for t, v in r.tokens.items()},
                                    requests=(r.requests or 0) + 1) for r in records[newest:]]
    return records


def price_book():  # type: ignore[no-untyped-def]
    from otel_llm_receiver.pricing import PriceBook

    book = PriceBook()
    book.schedule("llm.usage.tokens", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                                       "gen_ai.token.type": "input"})  # the price data, loaded untimed
    return book


def build(size: int) -> tuple[Path, Path]:
    """The ledger and the anchor's bare table for ``size`` older buckets, made once and reused."""
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import PollResult

    CACHE.mkdir(parents=True, exist_ok=True)
    ledger_path, anchor_path = CACHE / f"ledger-{size}.db", CACHE / f"anchor-{size}.db"
    if not ledger_path.exists():
        tmp = ledger_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        with Ledger(tmp) as ledger:
            ledger.set_pricer(price_book())
            ledger.apply("bench", PollResult(usage=poll(changed=False)))
        conn = sqlite3.connect(tmp, isolation_level=None)
        series = conn.execute("SELECT count(*) FROM series WHERE metric IN "
                              "('llm.usage.tokens', 'llm.usage.requests')").fetchone()[0]
        conn.execute("BEGIN")
        conn.execute(SQL_FILL, {"per_series": max(1, size // series), "start": START})
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        tmp.rename(ledger_path)
    if not anchor_path.exists():
        tmp = anchor_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE buckets (series_id INTEGER NOT NULL, bucket_start INTEGER NOT NULL, "
                     "bucket_width INTEGER NOT NULL, value INTEGER NOT NULL, "
                     "PRIMARY KEY (series_id, bucket_start)) WITHOUT ROWID")
        rows, series = anchor_points(poll(changed=False))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO buckets VALUES (?, ?, ?, ?)", rows)
        conn.execute("CREATE TEMP TABLE series (id INTEGER PRIMARY KEY, metric TEXT)")
        conn.executemany("INSERT INTO series VALUES (?, 'llm.usage.tokens')", [(i,) for i in range(1, series + 1)])
        conn.execute(SQL_FILL.replace("INSERT INTO buckets", "INSERT INTO main.buckets"),
                     {"per_series": max(1, size // series), "start": START})
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        tmp.rename(anchor_path)
    return ledger_path, anchor_path


def child(case: str, size: int) -> None:
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import PollResult

    ledger_path, anchor_path = build(size)
    records = poll(changed=True)
    with tempfile.TemporaryDirectory() as tmp:
        if case == "anchor":
            path = Path(tmp) / "anchor.db"
            shutil.copy(anchor_path, path)
            rows, _ = anchor_points(records)
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            total = conn.execute("SELECT count(*) FROM buckets").fetchone()[0]
            with timed({"records": len(records), "points": len(rows), "buckets": total}):
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO buckets VALUES (?, ?, ?, ?) ON CONFLICT (series_id, bucket_start) "
                                 "DO UPDATE SET value = excluded.value", rows)
                conn.execute("COMMIT")
            conn.close()
            return
        path = Path(tmp) / "ledger.db"
        shutil.copy(ledger_path, path)
        with Ledger(path) as ledger:
            ledger.set_pricer(price_book())
            result = PollResult(usage=records)
            with timed({"records": len(records)}) as out:
                stats = ledger.apply("bench", result)
                out["points"] = stats.points
                out["grown"] = stats.outcomes.get("grown", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,500000,1000000,2000000,5000000",
                        help="older buckets in the ledger, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (>= 3); medians are printed")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    script = Path(__file__).resolve()
    print(f"ledger growth (steady-state poll: 24 h of 2,502 series, 2,502 buckets grown), {machine()}; "
          f"medians of {max(3, args.repeat)} runs, each a fresh process; ledgers cached in {CACHE}")
    rows = []
    for size in (int(n) for n in args.sizes.split(",") if n):
        build(size)  # outside the timed runs
        anchor = measure("anchor", script, ["anchor", str(size)], args.repeat)
        apply = measure("apply", script, ["apply", str(size)], args.repeat)
        rows.append([f"{int(anchor.extra['buckets']):,}", f"{int(apply.extra['points']):,}",
                     f"{int(apply.extra['grown']):,}",
                     f"{apply.wall:.3f}", f"{apply.cpu:.3f}", f"{apply.rss_mib:.0f}",
                     f"{anchor.wall:.3f}", f"{anchor.cpu:.3f}", f"{anchor.cpu / apply.cpu:.0%}"])
    print(table(rows, ["buckets", "points", "grown", "apply wall s", "apply cpu s", "peak MiB",
                       "anchor wall s", "anchor cpu s", "of anchor (cpu)"]))
    print("goal: apply time flat as the ledger grows (compare CPU seconds: the machine is shared)")


if __name__ == "__main__":
    main()
