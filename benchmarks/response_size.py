"""Memory of one poll that receives a huge page: peak RSS with and without ``max_response_bytes`` (issue 17.7).

Run by hand (``python benchmarks/response_size.py [--mb 60]``); it prints its figures. This process renders one
valid OpenAI completions page of about ``--mb`` MB (24 hourly buckets of distinct project x model rows) and serves
it on loopback; each measurement runs in a fresh child process that polls it once with the OpenAI provider and
reports its peak RSS (``VmHWM``):

* ``unbounded``: ``max_response_bytes`` far above the page, i.e. what the receiver did before the limit: the
  whole body, its decoded JSON and the records are in memory at once;
* ``default``: the default limit (32 MiB): the body is streamed and the poll fails as ``bad_response`` as soon as
  the limit is passed, so memory stays near the idle figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOUR = 3600
NOW = 1_767_225_600 + 10 * HOUR
USAGE = "/v1/organization/usage/completions"


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


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): unlike ``ru_maxrss``, it does not carry the parent's peak over exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(endpoint: str, limit: int) -> None:
    """Poll the page once and print {"rss_mb", "outcome"}: runs in a fresh process per measurement."""
    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.errors import ProviderError
    from otel_llm_receiver.model import Window
    from otel_llm_receiver.providers import create_provider

    config = parse_config({"providers": {"openai/bench": {
        "admin_key": "sk-admin-test-bench-0000", "endpoint": endpoint, "usage_endpoints": ["completions"],
        "costs": False, "timeout": "60s", "max_response_bytes": limit, "max_retries": 0}}})
    provider = create_provider(config.providers[0])
    idle = peak_rss_mb()

    async def poll() -> str:
        try:
            result = await provider.fetch(Window(NOW - 24 * HOUR, NOW))
            return f"ok, {len(result.usage)} records"
        except ProviderError as exc:
            return f"{exc.error_type}: {exc}"
        finally:
            await provider.aclose()

    outcome = asyncio.run(poll())
    peak = peak_rss_mb()
    print(json.dumps({"idle_mb": round(idle), "rss_mb": round(peak), "outcome": outcome[:160]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=60, help="size of the page in MB (default 60)")
    parser.add_argument("--child", nargs=2, metavar=("ENDPOINT", "LIMIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    from tests.support.response_world import NAMES, BodyServer, Served

    body = page(args.mb)
    server = BodyServer()
    server.answers[USAGE] = Served(body)
    for path, names in NAMES.items():
        server.answers[path] = Served(json.dumps(names).encode())
    try:
        print(f"page: {len(body) / 1e6:.1f} MB")
        for label, limit in (("unbounded (before)", 1 << 40), ("default 32 MiB (after)", 32 * 1024 * 1024)):
            out = subprocess.run([sys.executable, __file__, "--child", server.base_url, str(limit)],
                                 capture_output=True, text=True, check=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{label:24} peak RSS {figures['rss_mb']:5d} MB (idle {figures['idle_mb']} MB): "
                  f"{figures['outcome']}")
    finally:
        server.close()


if __name__ == "__main__":
    main()
