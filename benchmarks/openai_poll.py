"""OpenAI provider throughput: one 7-day hourly backfill from the fake API through parse, normalize and ledger.

Run by hand (``python benchmarks/openai_poll.py``); it prints its figures. The organisation is 50 projects x
20 models of completions traffic (2026 response shape, every field), one row per project, model and hour,
plus daily costs; every other usage type is polled too (and empty). The fake's answers are rendered once in an
untimed warm-up and then served from memory, so the timed run measures the receiver, not the fake's JSON
rendering: HTTP over loopback, JSON decoding, validation, normalization and the ledger transaction.

Figures: wall time (and CPU time, stable on a shared machine) of the poll (fetch + normalize) and of the
ledger apply, HTTP requests made (and the
minimum the API's page limits allow: a 7-day hourly window is 169 buckets at most 168 a page -> 2 pages per
usage type), records/s. Target: >= 50,000 records/s, and no more requests than the page limits require.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import PollResult, Window
from otel_llm_receiver.providers import create_provider
from tests.fakes.api import Request, Response
from tests.fakes.openai import ADMIN_KEY, USAGE_TYPES, FakeOpenAI

HOUR, DAY = 3600, 86400
NOW = 1_767_225_600 + 10 * HOUR + 1800  # 2026-01-01 10:30 UTC: the 7-day window starts mid-hour


def build(fake: FakeOpenAI, projects: int, models: int, start: int, end: int) -> int:
    """Fill the fake with one completions row per (project, model, hour); returns the number of rows."""
    rows = 0
    for p in range(projects):
        fake.add_project(f"proj_{p:03d}", f"Project {p}")
        for m in range(models):
            dims = {"project_id": f"proj_{p:03d}", "model": f"gpt-bench-{m:02d}", "batch": m % 4 == 0}
            for t in range(start - start % HOUR, end, HOUR):
                k = (p * 31 + m * 7 + t // HOUR) % 997
                fake.add_usage("completions", t, dims, text_in=1000 + k, text_cached=k * 3, cache_write=k % 50,
                               audio_in=k % 3 if m == 0 else 0, text_out=200 + k, requests=1 + k % 20)
                rows += 1
        for day in range(start - start % DAY, end, DAY):
            fake.set_cost(day, {"project_id": f"proj_{p:03d}", "line_item": "Text tokens"}, f"{p}.{day % 97:02d}",
                          quantity=str(1000 * p + 1), quantity_unit="tokens")
    return rows


def cache_responses(fake: FakeOpenAI) -> None:
    """Serve each distinct request from memory after its first answer (the fake's rendering is not timed)."""
    paths = [f"/v1/organization/usage/{name}" for name in USAGE_TYPES]
    paths += ["/v1/organization/costs", "/v1/organization/projects"]
    for path in paths:
        handler = fake.api._routes[("GET", path)]

        def cached(req: Request, handler: Callable[[Request], Response] = handler,
                   memo: dict[tuple[tuple[str, str], ...], Response] = {}) -> Response:  # noqa: B006
            if req.query not in memo:
                memo[req.query] = handler(req)
            return memo[req.query]

        fake.api.route("GET", path, cached)


def poll(fake: FakeOpenAI, days: int, window: Window | None = None) -> PollResult:
    config = parse_config({"providers": {"openai/bench": {
        "admin_key": ADMIN_KEY, "endpoint": fake.base_url, "backfill": f"{days * 24}h",
        "cost_backfill": f"{days}d",
    }}})
    provider = create_provider(config.providers[0])

    out: list[PollResult] = []

    async def go() -> None:
        # The result is handed out through `out`, not returned: asyncio.run() (3.11) builds the repr of its
        # main task, result included, when it restores the SIGINT handler - seconds for 676k records.
        try:
            out.append(await provider.fetch(window or Window(NOW - days * DAY, NOW)))
        finally:
            await provider.aclose()

    asyncio.run(go())
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=50)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    with FakeOpenAI() as fake:
        t0 = time.perf_counter()
        rows = build(fake, args.projects, args.models, NOW - args.days * DAY, NOW)
        cache_responses(fake)
        poll(fake, args.days)  # warm-up: renders and caches every answer
        print(f"setup: {rows:,} completions rows in the fake, rendered in {time.perf_counter() - t0:.1f}s")
        fake.api.requests.clear()

        t1, c1 = time.perf_counter(), time.process_time()
        result = poll(fake, args.days)
        t2, c2 = time.perf_counter(), time.process_time()
        with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "ledger.db") as ledger:
            stats = ledger.apply("openai/bench", result)
            t3, c3 = time.perf_counter(), time.process_time()
            backfill_requests = list(fake.api.requests)
            requests = len(backfill_requests)
            # The steady state: a later poll re-reads the 2h lookback (3 hourly buckets) and 3 days of cost.
            steady_window = Window(NOW - NOW % HOUR - 2 * HOUR, NOW)
            poll(fake, args.days, steady_window)  # warm-up of these requests
            t4 = time.perf_counter()
            steady = poll(fake, args.days, steady_window)
            steady_stats = ledger.apply("openai/bench", steady)
            t5 = time.perf_counter()
    records = len(result.usage) + len(result.costs)
    usage_pages = {r.path: 0 for r in backfill_requests}
    for r in backfill_requests:
        usage_pages[r.path] += 1
    buckets = -(-(NOW - (NOW - args.days * DAY) // HOUR * HOUR) // HOUR)
    minimum = len(USAGE_TYPES) * -(-buckets // 168) + 1 + 1  # usage pages + one costs page + one projects page
    print(f"records: {len(result.usage):,} usage + {len(result.costs):,} cost = {records:,}; "
          f"ledger points: {stats.points:,} in {stats.series_created:,} series")
    print(f"HTTP requests: {requests} (minimum the page limits allow: {minimum}); "
          f"completions pages: {usage_pages.get('/v1/organization/usage/completions', 0)}")
    print(f"poll (HTTP + JSON + validate + normalize): {t2 - t1:.2f}s = {records / (t2 - t1):,.0f} records/s")
    print(f"ledger apply (one transaction): {t3 - t2:.2f}s = {records / (t3 - t2):,.0f} records/s")
    # CPU seconds of this process (the receiver's work plus the fake's cached serving): stable when the machine is
    # shared, where wall time is not.
    print(f"CPU time: poll {c2 - c1:.2f}s + apply {c3 - c2:.2f}s = {records / (c3 - c1):,.0f} records/CPU-s")
    print(f"steady-state poll (2h lookback, 3d cost) + apply: {t5 - t4:.2f}s for "
          f"{len(steady.usage) + len(steady.costs):,} records ({dict(steady_stats.outcomes)})")
    print(f"total: {t3 - t1:.2f}s = {records / (t3 - t1):,.0f} records/s, {rows / (t3 - t1):,.0f} API rows/s "
          f"(target >= 50,000 records/s)")


if __name__ == "__main__":
    main()
