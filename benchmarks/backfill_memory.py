"""Peak memory of a backfill, whatever its length: a real ``Receiver`` polls a large OpenAI organisation.

Run by hand (``python benchmarks/backfill_memory.py``); it prints its figures. Goal (issue 20): every backfill
peaks under 300 MiB RSS. Before: ``BENCH_CODE=/work/before python benchmarks/backfill_memory.py``.

The organisation: 84 projects x 6 models of completions traffic, one
API row per project, model and hour (504 rows an hour; four token types and a request count: 2,520
series), plus a daily cost per project. The fake API (``tests/fakes/openai.py`` in its generator mode: rows made
on request, never stored) runs in a separate process, started once per case, so its memory and CPU are not
counted. Each run is a fresh child process: a ``Receiver`` on an empty ledger, one first poll of the instance
(``Receiver.poll``: fetch, normalise, price, apply; chunked where the code chunks), timed. Peak RSS is the whole
child's (``wait4``), so it includes the interpreter and the imports.

Every usage type is polled (the nine others are empty), costs too, as the receiver runs by default.
``max_response_bytes`` is raised to 1 GiB: the unchunked code reads 168 hourly buckets a page, about 100 MB of
JSON for this organisation, which the default limit (32 MiB) refuses; a chunk of a day is about 14 MB.

Figures per case (median of the runs): wall and CPU seconds of the poll, peak RSS, API rows/s (completions rows
over wall time), ledger points and series. Prefer CPU seconds when comparing: the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness  # before any otel_llm_receiver import (BENCH_CODE), all of them inside the functions

HOUR, DAY = 3600, 86400
NOW = 1_767_225_600 + 10 * HOUR + 1800  # 2026-01-01 10:30 UTC: the last day is partial, as in real life
TENANCIES = 84  # x 6 models = 504 API rows an hour; 5 series each (4 token types, requests): 2,520 series
#: Real model names, so that every token is priced (genai-prices), as the receiver runs.
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3-mini")
NAME = "openai/bench"
ADMIN = "sk-admin-bench-0123456789"


def organisation(tenancies: int) -> Any:
    """(generator, projects): deterministic completions atoms for every (project, model, hour)."""

    def generate(usage_type: str, start: int, end: int) -> Iterator[tuple[int, dict[str, Any], dict[str, int]]]:
        if usage_type != "completions":
            return
        first = start + (-start) % HOUR  # atoms sit at the start of each hour
        for t in range(first, end, HOUR):
            for p in range(tenancies):
                for m, model in enumerate(MODELS):
                    k = (p * 31 + m * 7 + t // HOUR) % 997
                    yield t, {"project_id": f"proj_{p:03d}", "model": model}, {
                        "text_in": 1000 + k, "text_out": 200 + k, "requests": 1 + k % 20}

    return generate


def serve_fake(days: int, tenancies: int) -> None:
    """The fake API's process: prints its base URL, serves until its stdin closes."""
    from tests.fakes.openai import FakeOpenAI

    with FakeOpenAI(now=NOW, key=ADMIN, generate=organisation(tenancies)) as fake:
        start = NOW - NOW % DAY - days * DAY
        for p in range(tenancies):
            fake.add_project(f"proj_{p:03d}", f"Project {p}")
            for day in range(start, NOW, DAY):
                digest = hashlib.sha256(f"{p}/{day}".encode()).digest()
                fake.set_cost(day, {"project_id": f"proj_{p:03d}", "line_item": "Text tokens"},
                              f"{digest[0]}.{digest[1] % 100:02d}")
        print(fake.base_url, flush=True)
        sys.stdin.read()


def child(days: int, endpoint: str, tenancies: int) -> None:
    """One run: a Receiver on an empty ledger, one first poll (the backfill), timed."""
    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.scheduler import Receiver

    with tempfile.TemporaryDirectory() as tmp:
        section = {"admin_key": ADMIN, "endpoint": endpoint, "backfill": f"{days}d", "cost_backfill": f"{days}d",
                   "max_response_bytes": 1 << 30, "timeout": "120s", "collection_interval": "1h"}
        config = parse_config({"storage": {"path": str(Path(tmp) / "ledger.db")}, "providers": {NAME: section}})
        receiver = Receiver(config, exporters=[], clock=lambda: float(NOW))
        harness.settle_as_run()  # start-up done: the collector's settings of `run` (heap.py), when it has them
        rows = -(-(NOW - (NOW - NOW % DAY - days * DAY)) // HOUR) * tenancies * len(MODELS)
        try:
            with harness.timed({"api_rows": float(rows)}) as extra:
                outcome = asyncio.run(receiver.poll(NAME))
                if not outcome.ok:
                    raise SystemExit(f"the backfill failed: {outcome}")
                # counted inside the block, so that the one printed result carries it (a read, not timed work)
                with sqlite3.connect(Path(tmp) / "ledger.db") as db:
                    extra["series"] = db.execute("SELECT count(*) FROM series").fetchone()[0]
        finally:
            asyncio.run(receiver.aclose())


def start_fake(days: int, tenancies: int) -> tuple[subprocess.Popen[str], str]:
    # The fake is this checkout's (its generator mode), whichever code is measured.
    env = {k: v for k, v in os.environ.items() if k != "BENCH_CODE"}
    env["PYTHONPATH"] = str(harness.ROOT)
    proc = subprocess.Popen([sys.executable, __file__, "--fake", "--days", str(days), "--tenancies", str(tenancies)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise SystemExit("the fake API did not start")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--days", default="7,14,90", help="backfill lengths in days, comma separated")
    parser.add_argument("--tenancies", type=int, default=TENANCIES, help="projects (x 6 models x 3 series)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.fake:
        serve_fake(int(args.days), args.tenancies)
        return
    if args.child:
        child(int(args.days), args.endpoint, args.tenancies)
        return
    print(harness.machine())
    rows = []
    for days in (int(d) for d in args.days.split(",") if d):
        fake, url = start_fake(days, args.tenancies)
        try:
            fig = harness.measure(f"{days}d", Path(__file__), [
                "--days", str(days), "--endpoint", url, "--tenancies", str(args.tenancies)], args.repeat)
        finally:
            assert fake.stdin is not None
            fake.stdin.close()
            fake.wait()
        api_rows = fig.extra.get("api_rows", 0.0)
        rows.append([fig.name, f"{api_rows:,.0f}", f"{fig.extra.get('series', 0):,.0f}", str(fig.runs),
                     f"{fig.wall:.1f}", f"{fig.cpu:.1f}", f"{fig.rss_mib:.0f}", f"{api_rows / fig.wall:,.0f}"])
        print(harness.table(rows[-1:], ["backfill", "API rows", "series", "runs", "wall s", "CPU s", "peak MiB",
                                        "API rows/s"]), flush=True)
    print()
    print(harness.table(rows, ["backfill", "API rows", "series", "runs", "wall s", "CPU s", "peak MiB",
                               "API rows/s"]))
    print("goal: peak < 300 MiB for every backfill length")


if __name__ == "__main__":
    main()
