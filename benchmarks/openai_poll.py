"""OpenAI provider throughput, as the receiver runs: one hourly backfill fetched, parsed, normalised and applied.

Run by hand: ``python benchmarks/openai_poll.py [--shapes default,large] [--repeat 3]``; it prints one table per
shape. Before: ``BENCH_CODE=/work/before python benchmarks/openai_poll.py`` (the same script, the old package and
its fake). Every figure is the median of ``--repeat`` (>= 3) runs, each a fresh child process (``harness.py``):
wall and CPU seconds of the timed part, and the child's peak RSS. Prefer CPU seconds when comparing figures: the
machine may be shared, and wall time moves with its load.

Shapes (what a user counts: API rows, i.e. the ``results`` rows the API returned, not internal records):
* ``default``: 50 projects x 20 models of completions traffic, one row per project, model and hour, 7 days;
* ``large``: a large organisation, 84 projects x 6 models (504 rows an hour: four token types and a request
  count, about 2,500 series), 14 days;
both with a daily cost row per project. Every field of the 2026 completions shape is filled; the models are real
names, so every token is priced (genai-prices), as the receiver runs. Every other usage type is polled too (and
empty), and the projects list is read for names.

The fake API (``tests/fakes/openai.py`` of the measured code) runs in this parent process, not in the child: its
answers are rendered once, in an untimed warm-up run, and served from memory afterwards, so a child's CPU time is
the receiver's alone. ``max_response_bytes`` is raised to 1 GiB: a page of 168 hourly buckets of this size is
about 100 MB of JSON, which the default limit (32 MiB) refuses.

Cases, on the same pages:
* ``anchor``: the floor of getting the bytes at all: the same requests over loopback with ``httpx`` (the
  receiver's client), 4 at a time, and ``json.loads`` of each body (``decode`` is the ``json.loads`` part);
* ``fetch``: ``provider.fetch`` (HTTP, JSON, validation, normalisation, names lookup) into a ``PollResult``;
* ``apply``: ``Ledger.apply`` of that result to an empty ledger, priced by the receiver's own money stack
  (``money.money_stack(config).prices`` set with ``set_pricer``, the price data loaded untimed);
* ``whole``: fetch + apply, the receiver's poll.
The child sets up as ``run`` does before its first poll (``harness.settle_as_run``: the garbage collector's
settings of ``heap.py``, when the measured code has them), then times.
``fetch``, ``apply`` and ``whole`` are timed in the same child runs. ``OPENAI_POLL_PROFILE=/tmp/p`` makes each
receiver child write cProfile stats of its fetch and its apply to ``/tmp/p.fetch`` and ``/tmp/p.apply`` (the
figures are then the profiler's, not the receiver's: for finding where the time goes, not for quoting). Requests made are compared with the minimum
the API's page limits allow (168 hourly buckets a page, 180 days of costs, 100 projects).
Goal (issue 20): whole >= 30,000 API rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness  # before any otel_llm_receiver import (BENCH_CODE), all of them inside the functions

# The measured code's test fakes come from its checkout (BENCH_CODE), ahead of this one's.
sys.path[1:1] = [p for p in (str(harness.CODE), str(harness.ROOT)) if p not in sys.path]

HOUR, DAY = 3600, 86400
NOW = 1_767_225_600 + 10 * HOUR + 1800  # 2026-01-01 10:30 UTC: the window starts mid-hour, the last hour is partial
NAME = "openai/bench"
#: Real model names (each priced by genai-prices), so that pricing does what it does for a real organisation.
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3-mini", "o1", "o1-mini", "o3",
          "o4-mini", "gpt-4-turbo", "gpt-4", "gpt-3.5-turbo", "gpt-5", "gpt-5-mini", "gpt-5-nano",
          "gpt-4o-audio-preview", "chatgpt-4o-latest", "gpt-4.5-preview", "codex-mini-latest")
USAGE_PAGE = 168  # hourly buckets a page at most (the spec's limit for 1h)
COST_PAGE = 180  # days a costs page at most
PROJECTS_PAGE = 100


@dataclass(frozen=True)
class Shape:
    projects: int
    models: int
    days: int


SHAPES = {"default": Shape(50, 20, 7), "large": Shape(84, 6, 14), "small": Shape(10, 5, 2)}


# ------------------------------------------------------------------------------------------------ the fake (parent)
def build(fake: Any, shape: Shape) -> None:
    """Fill the fake with one completions row per (project, model, hour) and a cost row per (project, day)."""
    start, end = NOW - shape.days * DAY, NOW
    for p in range(shape.projects):
        project = f"proj_{p:03d}"
        fake.add_project(project, f"Project {p}")
        for m in range(shape.models):
            dims = {"project_id": project, "model": MODELS[m], "batch": m % 4 == 0}
            for t in range(start - start % HOUR, end, HOUR):
                k = (p * 31 + m * 7 + t // HOUR) % 997
                fake.add_usage("completions", t, dims, text_in=1000 + k, text_cached=k * 3, cache_write=k % 50,
                               audio_in=k % 3 if m == 0 else 0, text_out=200 + k, requests=1 + k % 20)
        for day in range(start - start % DAY, end, DAY):
            fake.set_cost(day, {"project_id": project, "line_item": "Text tokens"}, f"{p}.{day % 97:02d}",
                          quantity=str(1000 * p + 1), quantity_unit="tokens")


class Memo:
    """Each distinct request is rendered by the fake once, then served from memory (rendering is not timed)."""

    def __init__(self, fake: Any, paths: list[str]) -> None:
        self.answers: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self.renders = 0
        for path in paths:
            handler = fake.api._routes[("GET", path)]
            fake.api.route("GET", path, self._cached(path, handler))

    def _cached(self, path: str, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def serve(req: Any) -> Any:
            key = (path, req.query)
            if key not in self.answers:
                self.renders += 1
                self.answers[key] = handler(req)
            return self.answers[key]

        return serve


def api_rows(memo: Memo, requests: list[Any]) -> tuple[int, int, int]:
    """(usage rows, cost rows, body bytes) the API returned for ``requests``: what a user counts."""
    usage = costs = size = 0
    for req in requests:
        answer = memo.answers.get((req.path, req.query))
        if answer is None or answer.raw is None:
            continue
        size += len(answer.raw)
        if req.path.endswith("/projects"):
            continue
        rows = sum(len(bucket["results"]) for bucket in json.loads(answer.raw)["data"])
        if req.path.endswith("/costs"):
            costs += rows
        else:
            usage += rows
    return usage, costs, size


# --------------------------------------------------------------------------------------------------- the children
def config_for(endpoint: str, days: int) -> Any:
    from otel_llm_receiver.config import parse_config

    return parse_config({"providers": {NAME: {
        "admin_key": harness_key(), "endpoint": endpoint, "backfill": f"{days * 24}h", "cost_backfill": f"{days}d",
        "max_response_bytes": 1 << 30, "timeout": "120s",
    }}})


def harness_key() -> str:
    from tests.fakes.openai import ADMIN_KEY

    return str(ADMIN_KEY)


class GcTime:
    """CPU seconds spent in the cyclic garbage collector (``gc.callbacks``): part of the figures, shown apart."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.seconds += time.process_time() - self._start


def records(result: Any) -> int:
    """Usage and cost records of a poll, usage handed over column-wise (``usage_columns``) counted row by row
    (code from before the columns has ``usage`` only)."""
    usage = getattr(result, "usage_count", None)
    return int(len(result.usage) if usage is None else usage) + len(result.costs)


def child_receiver(endpoint: str, days: int) -> None:
    """fetch, then apply with pricing on (the money stack of ``run``), each timed apart, on an empty ledger."""
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import PollResult, Window
    from otel_llm_receiver.money import money_stack
    from otel_llm_receiver.providers import create_provider

    config = config_for(endpoint, days)
    provider = create_provider(config.providers[0])
    prices = money_stack(config).prices
    # genai-prices' data are loaded on the first price asked for: once per process, not per row, so untimed.
    prices.schedule("llm.usage.tokens", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                                         "gen_ai.token.type": "input"})
    out: list[PollResult] = []

    async def fetch() -> None:
        # Handed out through `out`, not returned: asyncio.run() (3.11) builds the repr of its main task's result
        # when it restores the SIGINT handler, seconds for a large result.
        try:
            out.append(await provider.fetch(Window(NOW - days * DAY, NOW)))
        finally:
            await provider.aclose()

    with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "ledger.db") as ledger:
        ledger.set_pricer(prices)
        settled = harness.settle_as_run()  # start-up done: the collector's settings of `run` (heap.py)
        collector = GcTime()
        profile = os.environ.get("OPENAI_POLL_PROFILE")  # a path prefix: cProfile stats of each part there
        profiler = cProfile.Profile() if profile else None
        with harness.timed() as extra:
            w0, c0 = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            asyncio.run(fetch())
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(f"{profile}.fetch")
                profiler = cProfile.Profile()
                profiler.enable()
            w1, c1, g1 = time.perf_counter(), time.process_time(), collector.seconds
            stats = ledger.apply(NAME, out[0])
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(f"{profile}.apply")
            w2, c2 = time.perf_counter(), time.process_time()
            extra.update(fetch_wall=w1 - w0, fetch_cpu=c1 - c0, apply_wall=w2 - w1, apply_cpu=c2 - c1,
                         fetch_gc=g1, apply_gc=collector.seconds - g1,
                         records=records(out[0]), points=stats.points,
                         series=stats.series_created, requests=sum(provider.api_requests.values()),
                         settled=float(settled))


def child_anchor(endpoint: str, requests_file: str) -> None:
    """The same requests over loopback with httpx, 4 at a time, and json.loads of each body: nothing else."""
    from decimal import Decimal

    import httpx

    requests = json.loads(Path(requests_file).read_text())
    decode = [0.0]

    async def go() -> None:
        gate = asyncio.Semaphore(4)
        async with httpx.AsyncClient(base_url=endpoint, timeout=120,
                                     headers={"authorization": f"Bearer {harness_key()}"}) as client:
            async def one(path: str, query: list[list[str]]) -> None:
                async with gate:
                    response = await client.get(path, params=[(k, v) for k, v in query])
                    response.raise_for_status()
                    c = time.process_time()
                    text = response.content.decode("utf-8")
                    json.loads(text, parse_float=Decimal) if path.endswith("/costs") else json.loads(text)
                    decode[0] += time.process_time() - c

            await asyncio.gather(*(one(path, query) for path, query in requests))

    with harness.timed() as extra:
        asyncio.run(go())
        extra.update(decode_cpu=decode[0], requests=len(requests))


# ----------------------------------------------------------------------------------------------------- the parent
def minimum_requests(shape: Shape, usage_types: int) -> int:
    start = NOW - shape.days * DAY
    buckets = -(-(NOW - (start - start % HOUR)) // HOUR)
    cost_days = -(-(NOW - (start - start % DAY)) // DAY)
    return (usage_types * -(-buckets // USAGE_PAGE) + -(-cost_days // COST_PAGE)
            + -(-shape.projects // PROJECTS_PAGE))


def run_shape(label: str, shape: Shape, repeat: int) -> list[list[str]]:
    from tests.fakes.openai import USAGE_TYPES, FakeOpenAI

    script = Path(__file__).resolve()
    with FakeOpenAI(now=NOW) as fake, tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build(fake, shape)
        memo = Memo(fake, [f"/v1/organization/usage/{name}" for name in USAGE_TYPES]
                    + ["/v1/organization/costs", "/v1/organization/projects"])
        receiver = ["receiver", fake.base_url, str(shape.days)]
        fake.api.requests.clear()
        harness.run_child(script, receiver)  # the warm-up: renders every answer the poll asks for
        warm = list(fake.api.requests)
        usage_rows, cost_rows, size = api_rows(memo, warm)
        requests_file = Path(tmp) / "requests.json"
        requests_file.write_text(json.dumps([[r.path, list(r.query)] for r in warm]))
        renders = memo.renders
        print(f"{label}: {shape.projects} projects x {shape.models} models x {shape.days} days hourly; "
              f"{usage_rows:,} usage + {cost_rows:,} cost API rows, {size / 1e6:.1f} MB of JSON in {len(warm)} "
              f"requests (minimum the page limits allow: {minimum_requests(shape, len(USAGE_TYPES))}); "
              f"built and rendered in {time.perf_counter() - t0:.1f}s", flush=True)
        anchor = harness.measure("anchor", script, ["anchor", fake.base_url, str(requests_file)], repeat)
        poll = harness.measure("receiver", script, receiver, repeat)
        if memo.renders != renders:
            print(f"  warning: {memo.renders - renders} answers were rendered during the timed runs")
    rows = usage_rows + cost_rows
    e = poll.extra
    whole_wall, whole_cpu = e["fetch_wall"] + e["apply_wall"], e["fetch_cpu"] + e["apply_cpu"]

    def line(case: str, wall: float, cpu: float, rss: str, note: str) -> list[str]:
        return [label if case == "anchor" else "", case, f"{wall:.2f}", f"{cpu:.2f}", rss,
                f"{rows / wall:,.0f}", f"{rows / cpu:,.0f}", f"{cpu / anchor.cpu:.1f}x", note]

    return [
        line("anchor", anchor.wall, anchor.cpu, f"{anchor.rss_mib:.0f}",
             f"GET + json.loads; json.loads {anchor.extra['decode_cpu']:.2f} CPU-s"),
        line("fetch", e["fetch_wall"], e["fetch_cpu"], "", f"{int(e['requests'])} requests, "
             f"{int(e['records']):,} records; GC {e['fetch_gc']:.2f} CPU-s"
             + ("" if e.get("settled") else " (CPython's default GC settings)")),
        line("apply", e["apply_wall"], e["apply_cpu"], "",
             f"pricing on; {int(e['points']):,} points, {int(e['series']):,} series; GC {e['apply_gc']:.2f} CPU-s"),
        line("whole", whole_wall, whole_cpu, f"{poll.rss_mib:.0f}", "fetch + apply"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="default,large", help=f"comma separated, of {', '.join(SHAPES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (>= 3); medians are printed")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "ENDPOINT", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # One line per unpriced model (OpenAI's cache writes have no genai-prices rate) is the receiver's log,
        # not a figure: kept off the benchmark's output.
        logging.disable(logging.WARNING)
        case, endpoint, arg = args.child
        if case == "receiver":
            child_receiver(endpoint, int(arg))
        else:
            child_anchor(endpoint, arg)
        return
    print(f"OpenAI poll, {harness.machine()}; medians of {max(3, args.repeat)} runs, each a fresh process")
    rows: list[list[str]] = []
    for label in (s for s in args.shapes.split(",") if s):
        rows += run_shape(label, SHAPES[label], args.repeat)
    print(harness.table(rows, ["shape", "case", "wall s", "CPU s", "peak MiB", "API rows/s", "API rows/CPU-s",
                               "CPU x anchor", ""]))
    print("goal (issue 20): whole >= 30,000 API rows/s (compare CPU: the machine is shared)")


if __name__ == "__main__":
    main()
