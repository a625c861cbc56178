"""Memory of one poll that receives a huge page: peak RSS with and without ``max_response_bytes`` (issue 17.7).

Run by hand: ``python benchmarks/response_size.py [--mb 60] [--repeat 3]``; it prints one table. Before:
``BENCH_CODE=/work/before python benchmarks/response_size.py``. This process renders one valid OpenAI completions
page of about ``--mb`` MB (24 hourly buckets of distinct project x model rows) and serves it on loopback; every
figure is the median of ``--repeat`` (>= 3) runs, each a fresh child process (``harness.py``) that polls it once
with the OpenAI provider: wall and CPU seconds of the poll, and the child's peak RSS (``wait4``: the interpreter,
the imports and the poll).

Cases:
* ``idle``: the same child, the provider made, no poll: the floor every case starts from;
* ``unbounded``: ``max_response_bytes`` far above the page, i.e. what the receiver did before the limit: the
  whole body, its decoded JSON and the records are in memory at once;
* ``default``: the default limit (32 MiB): the body is streamed and the poll fails as ``bad_response`` as soon as
  the limit is passed, so memory stays near the idle figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import harness  # before any otel_llm_receiver import (BENCH_CODE), all of them inside the functions

# The measured code's test support comes from its checkout (BENCH_CODE), ahead of this one's.
sys.path[1:1] = [p for p in (str(harness.CODE), str(harness.ROOT)) if p not in sys.path]

HOUR = 3600
NOW = 1_767_225_600 + 10 * HOUR
USAGE = "/v1/organization/usage/completions"
CASES = {"idle": 0, "unbounded": 2**31 - 1, "default": 32 * 1024 * 1024}  # the largest limit the config takes


def page(megabytes: int) -> bytes:
    """A valid completions page of about ``megabytes`` MB: 24 hourly buckets, distinct (project, model) rows."""
    row_size = 270  # bytes of one rendered row, roughly
    per_bucket = megabytes * 1_000_000 // row_size // 24
    data = []
    for b in range(24):
        start = NOW - (24 - b) * HOUR
        results = [
            {"object": "organization.usage.completions.result", "input_tokens": 1000 + i, "output_tokens": 10 + b,
             "input_cached_tokens": 0, "num_model_requests": 1, "project_id": f"proj_{i // 20:05d}",
             "user_id": None, "api_key_id": None, "model": f"model-{i % 20}", "batch": False, "service_tier": None}
            for i in range(per_bucket)
        ]
        data.append({"object": "bucket", "start_time": start, "end_time": start + HOUR, "results": results})
    return json.dumps({"object": "page", "data": data, "has_more": False, "next_page": None}).encode()


def child(case: str, endpoint: str) -> None:
    """One poll of the page (none for ``idle``), timed; the outcome's record count rides along."""
    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.errors import ProviderError
    from otel_llm_receiver.model import Window
    from otel_llm_receiver.providers import create_provider

    config = parse_config({"providers": {"openai/bench": {
        "admin_key": "sk-admin-test-bench-0000", "endpoint": endpoint, "usage_endpoints": ["completions"],
        "costs": False, "timeout": "60s", "max_response_bytes": CASES[case] or 1, "max_retries": 0}}})
    provider = create_provider(config.providers[0])

    async def poll() -> tuple[float, float]:
        """(records, 1 if the poll failed as bad_response, else 0)."""
        try:
            if case == "idle":
                return 0.0, 0.0
            result = await provider.fetch(Window(NOW - 24 * HOUR, NOW))
            return float(len(result.usage)), 0.0
        except ProviderError as exc:
            return 0.0, 1.0 if exc.error_type == "bad_response" else -1.0
        finally:
            await provider.aclose()

    with harness.timed() as extra:
        extra["records"], extra["refused"] = asyncio.run(poll())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=60, help="size of the page in MB (default 60)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (>= 3); medians are printed")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from tests.support.response_world import NAMES, BodyServer, Served

    body = page(args.mb)
    server = BodyServer()
    server.answers[USAGE] = Served(body)
    for path, names in NAMES.items():
        server.answers[path] = Served(json.dumps(names).encode())
    script = Path(__file__).resolve()
    print(f"response size, {harness.machine()}; medians of {max(3, args.repeat)} runs, each a fresh process")
    rows = []
    try:
        for case, limit in CASES.items():
            f = harness.measure(case, script, [case, server.base_url], args.repeat)
            refused = f.extra.get("refused", 0.0)
            outcome = ("no poll" if case == "idle" else "refused: bad_response" if refused > 0
                       else "failed otherwise" if refused < 0 else f"ok, {f.extra.get('records', 0):,.0f} records")
            rows.append([case, f"{limit / 2**20:,.0f} MiB" if limit else "-", f"{f.wall:.2f}", f"{f.cpu:.2f}",
                         f"{f.rss_mib:.0f}", outcome])
    finally:
        server.close()
    print(f"page: {len(body) / 1e6:.1f} MB of JSON, one page of 24 hourly buckets")
    print(harness.table(rows, ["case", "max_response_bytes", "wall s", "CPU s", "peak MiB", "outcome"]))


if __name__ == "__main__":
    main()
