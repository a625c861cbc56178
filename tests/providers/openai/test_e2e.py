"""End to end: the real CLI (``run --once``) polls the fake OpenAI API and exports to a real OTLP sink.

Two separate processes, so the second run is also a restart: between them the fake's buckets grow (the
current hour fills in, a late row lands in an old hour) and a cost day is restated. After each run the sink's
cumulative values equal the fake's ground truth exactly: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.catalog import CATALOG
from tests.fakes.openai import ADMIN_KEY, FakeOpenAI, populate
from tests.support.otlp_sink import OTLPSink

HOUR, DAY = 3600, 86400


@pytest.fixture()
def world() -> Iterator[tuple[FakeOpenAI, OTLPSink]]:
    with FakeOpenAI(page_buckets=6) as fake, OTLPSink() as sink:
        yield fake, sink


def run_once(tmp_path: Path, fake: FakeOpenAI, sink: OTLPSink) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(f"""
storage:
  path: {tmp_path / "ledger.db"}
health:
  endpoint: ""
exporters:
  otlp:
    endpoint: {sink.grpc_endpoint}
    tls: {{insecure: true}}
providers:
  openai/prod:
    admin_key: ${{env:OPENAI_ADMIN_KEY}}
    tenant: acme
    endpoint: {fake.base_url}
    retry_initial_interval: 10ms
""")
    env = {**os.environ, "OPENAI_ADMIN_KEY": ADMIN_KEY, "LOG_FORMAT": "json"}
    proc = subprocess.run([sys.executable, "-m", "otel_llm_receiver", "run", "--config", str(config), "--once"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ADMIN_KEY not in proc.stdout + proc.stderr
    return proc


def sink_totals(sink: OTLPSink) -> dict[str, dict[tuple[str, ...], object]]:
    out: dict[str, dict[tuple[str, ...], object]] = defaultdict(dict)
    tokens: dict[tuple[str, ...], int] = defaultdict(int)
    for key, p in sink.number_points("llm.usage.tokens").items():
        a = dict(key)
        if a["gen_ai.operation.name"] == "chat":
            tokens[(a["llm.tenancy.id"], a["gen_ai.request.model"], a["gen_ai.token.type"])] += int(p.value)
    out["tokens"] = {k: v for k, v in tokens.items() if v}
    requests: dict[tuple[str, ...], int] = defaultdict(int)
    for key, p in sink.number_points("llm.usage.requests").items():
        a = dict(key)
        if a["gen_ai.operation.name"] == "chat":
            requests[(a["llm.tenancy.id"], a["gen_ai.request.model"])] += int(p.value)
    out["requests"] = dict(requests)
    cost: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
    for key, p in sink.number_points("llm.usage.cost").items():
        a = dict(key)
        # OTLP carries doubles: compare to the fake's exact decimals at the 1e-6 the dashboards show.
        cost[(a["llm.tenancy.id"], a["llm.cost.line_item"], "USD")] += Decimal(repr(p.value))
    out["cost"] = {k: v.quantize(Decimal("0.000001")) for k, v in cost.items()}
    images: dict[tuple[str, ...], int] = defaultdict(int)
    for key, p in sink.number_points("llm.usage.images").items():
        images[(dict(key)["llm.tenancy.id"], dict(key)["gen_ai.request.model"])] += int(p.value)
    out["images"] = dict(images)
    out["storage"] = {(dict(k)["llm.tenancy.id"],): int(p.value)
                      for k, p in sink.number_points("llm.usage.storage").items()}
    out["names"] = {(dict(k)["llm.tenancy.id"],): dict(k).get("llm.tenancy.name")
                    for k in sink.number_points("llm.usage.requests")}
    return out


def truth(fake: FakeOpenAI, usage_start: int, cost_start: int) -> dict[str, dict[tuple[str, ...], object]]:
    end = 2**40
    return {
        "tokens": {k: v for k, v in fake.tokens(usage_start, end).items() if v},
        "requests": dict(fake.requests("completions", usage_start, end)),
        "cost": {k: v.quantize(Decimal("0.000001")) for k, v in fake.costs(cost_start, end).items()},
        "images": dict(fake.measure("images", "images", usage_start, end)),
        "storage": {(p,): n for p, n in fake.storage(usage_start, end, HOUR).items()},
        "names": {(p.id,): p.name for p in fake.projects},
    }


def test_run_once_twice_exports_exactly_the_ground_truth_across_growth_and_a_restart(
    tmp_path: Path, world: tuple[FakeOpenAI, OTLPSink]
) -> None:
    fake, sink = world
    now = int(time.time())
    hour = now - now % HOUR
    usage_start = hour - 20 * HOUR  # well inside the 24h backfill, whatever minute this runs at
    populate(fake, usage_start, now, projects=3, models=2)
    cost_start = usage_start - usage_start % DAY

    first = run_once(tmp_path, fake, sink)
    assert sink_totals(sink) == truth(fake, usage_start, cost_start)
    starts = {k: p.start_time_unix_nano for k, p in sink.number_points("llm.usage.tokens").items()}
    polls = [json.loads(line) for line in first.stderr.splitlines() if '"window_end"' in line]
    assert len(polls) == 1

    # Between runs: the current hour grows, a late row lands two hours back (inside the 2h lookback), the first
    # day's cost is restated.
    dims = {"project_id": "proj_001", "model": "gpt-test-1", "batch": True, "service_tier": "flex"}
    fake.add_usage("completions", max(hour, now - 60), dims, text_in=1000, text_cached=10, cache_write=5,
                   image_in=7, text_out=99, requests=2)
    cursor = int(polls[0]["cursor"])  # where the next poll's lookback counts from
    fake.add_usage("completions", cursor - 2 * HOUR + 60, {**dims, "model": "gpt-late"}, text_in=5, text_out=1,
                   requests=1)
    fake.add_usage("images", hour - HOUR, {"project_id": "proj_000", "model": "gpt-image-1", "size": "1024x1024",
                                           "source": "image.edit"}, images=3, num_model_requests=1)
    fake.set_cost(cost_start, {"project_id": "proj_000", "line_item": "Image models"}, "4242.424242",
                  as_string=True)
    seen = len(fake.api.requests)
    run_once(tmp_path, fake, sink)
    assert sink_totals(sink) == truth(fake, usage_start, cost_start)
    after = sink.number_points("llm.usage.tokens")
    for key, start in starts.items():
        assert after[key].start_time_unix_nano == start  # the same counters, continued

    # Every metric on the wire is in the catalog, with its kind, unit and only its declared attributes.
    for name in sink.metric_names():
        m = CATALOG.metrics[name]
        info = sink.metric_info(name)
        assert (info.unit, info.kind) == (m.unit, m.instrument), name
        for key in sink.points(name):
            assert {k for k, _ in key} <= set(m.attributes), name
            for k, v in key:
                assert not CATALOG.attributes[k].enum or v in CATALOG.attributes[k].enum, (name, k, v)
    for path in tmp_path.glob("ledger.db*"):  # the key is in no file the receiver wrote
        assert ADMIN_KEY.encode() not in path.read_bytes()
    assert {"llm.usage.characters", "llm.usage.audio.duration", "llm.usage.sessions", "llm.usage.tool_requests",
            "llm.usage.billed_quantity", "llm.usage.storage"} <= sink.metric_names()
    # How current each endpoint is, and what the polls cost in API requests, are on the wire too.
    lag = {dict(k).get("llm.data.source"): p.value for k, p in sink.number_points("llm.receiver.data.lag").items()}
    assert {"completions", "embeddings", "images", "costs"} <= set(lag)
    assert all(0 <= v < 2 * DAY for v in lag.values())
    requests = {dict(k)["llm.api.operation"]: p.value
                for k, p in sink.number_points("llm.receiver.provider_requests").items()}
    served = Counter(r.path for r in fake.api.requests[seen:])  # the second process's requests, as the fake saw them
    assert requests == dict(served)
    assert "/v1/organization/usage/completions" in requests and "/v1/organization/costs" in requests
