"""End to end: the real CLI (`run --once`, three separate processes) against the fake Anthropic Admin API.

Each run is a fresh process on the same ledger, so run 2 is a restart after buckets grew, a row arrived late and
a cost day was restated, and run 3 is a restart with nothing new. After every run the OTLP sink must hold exactly
the fake's ground truth (tokens, web searches, cost, Claude Code sessions), every metric on the wire must match
the catalog, and no counter's value or start time may move without a reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from otel_llm_receiver.catalog import CATALOG
from tests.fakes.anthropic import ADMIN_KEY, DAY, MINUTE, FakeAnthropic, Group, counts
from tests.support.otlp_sink import OTLPSink

ENV = {**os.environ, "ANTHROPIC_ADMIN_KEY": ADMIN_KEY, "LOG_FORMAT": "json"}


def write_config(tmp_path: Path, fake: FakeAnthropic, sink: OTLPSink) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
storage:
  path: {tmp_path / "ledger.db"}
health:
  endpoint: ""
exporters:
  otlp:
    endpoint: {sink.grpc_endpoint}
    tls: {{insecure: true}}
    timeout: 5s
providers:
  anthropic/prod:
    admin_key: ${{env:ANTHROPIC_ADMIN_KEY}}
    endpoint: {fake.base_url}
    tenant: acme
    timeout: 5s
    retry_initial_interval: 10ms
    sources: [messages, cost, claude_code]
""")
    return path


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "otel_llm_receiver", "run", "--config", str(config), "--once"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ADMIN_KEY not in proc.stdout + proc.stderr
    return proc


def sink_totals(sink: OTLPSink) -> tuple[dict[tuple[str, str, str, str | None], int], dict[tuple[str, str], int], dict[str, Decimal]]:
    tokens: dict[tuple[str, str, str, str | None], int] = defaultdict(int)
    for key, point in sink.number_points("llm.usage.tokens").items():
        a = dict(key)
        tokens[(a["llm.tenancy.id"], a["gen_ai.request.model"], a["gen_ai.token.type"],
                a.get("llm.cache.ttl"))] += int(point.value)
    tools: dict[tuple[str, str], int] = defaultdict(int)
    for key, point in sink.number_points("llm.usage.tool_requests").items():
        a = dict(key)
        tools[(a["llm.tenancy.id"], a["gen_ai.request.model"])] += int(point.value)
    cost: dict[str, Decimal] = defaultdict(Decimal)
    for key, point in sink.number_points("llm.usage.cost").items():
        cost[dict(key)["llm.tenancy.id"]] += Decimal(repr(point.value))  # short decimals: repr is exact
    return ({k: v for k, v in tokens.items() if v}, {k: v for k, v in tools.items() if v},
            {k: v for k, v in cost.items() if v})


def code_sessions(sink: OTLPSink) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for key, point in sink.number_points("llm.usage.code.sessions").items():
        out[dict(key)["llm.code.customer_type"]] += int(point.value)
    return dict(out)


def assert_catalog_shape(sink: OTLPSink) -> None:
    """Every metric on the wire is in the catalog and carries only the attributes it declares."""
    for name in sink.metric_names():
        allowed = set(CATALOG.metrics[name].attributes)
        for key in sink.points(name):
            assert set(dict(key)) <= allowed, (name, set(dict(key)) - allowed)


def truth(fake: FakeAnthropic) -> tuple[dict[tuple[str, str, str, str | None], int], dict[tuple[str, str], int], dict[str, Decimal]]:
    return ({k: v for k, v in fake.truth_tokens().items() if v},
            {k: v for k, v in fake.truth_tool_requests().items() if v},
            {k: v for k, v in fake.truth_cost_usd().items() if v})


def test_run_once_then_restarts_export_exactly_the_fakes_truth(tmp_path: Path) -> None:
    now = int(time.time())
    with FakeAnthropic() as fake, OTLPSink() as sink:
        fake.populate(now - 5 * 3600, now - 10 * MINUTE, seed=21)
        fake.populate_code(now - now % DAY - DAY, 2, seed=21)
        config = write_config(tmp_path, fake, sink)

        run_once(config)
        assert sink_totals(sink) == truth(fake)
        assert code_sessions(sink) == {k[0]: v for k, v in fake.truth_code()["llm.usage.code.sessions"].items()}
        assert_catalog_shape(sink)
        assert {"llm.usage.tool_requests", "llm.usage.code.tokens", "llm.usage.code.tool_actions",
                "llm.receiver.data.lag"} <= sink.metric_names()
        requests = {dict(k)["llm.api.operation"]: p.value
                     for k, p in sink.number_points("llm.receiver.provider_requests").items()}
        served = {path: len(fake.api.requests_to(path)) for path in requests}
        assert requests == served and "/v1/organizations/usage_report/messages" in requests
        names = {dict(k).get("llm.tenancy.name") for k in sink.number_points("llm.usage.tokens")}
        assert {"Default Workspace", "Production", "Research", "Old Experiments"} <= names
        starts = {k: p.start_time_unix_nano for k, p in sink.number_points("llm.usage.tokens").items()}

        # Between runs: the current bucket grows, a late row lands 80 minutes back, today's cost is restated.
        prod = Group("wrkspc_01Prod", "claude-sonnet-4-20250514")
        fake.add(now - 2 * MINUTE, prod, counts(uncached_input_tokens=4321, ephemeral_5m_input_tokens=99))
        fake.add(now - 80 * MINUTE, prod, counts(output_tokens=777, web_search_requests=5))
        fake.restate_cost(now, "1.25")
        fake.add_code(now, "ada@example.com", sessions=3)
        grown = truth(fake)
        assert grown != sink_totals(sink)

        run_once(config)  # a restart after the data changed
        assert sink_totals(sink) == grown
        assert code_sessions(sink) == {k[0]: v for k, v in fake.truth_code()["llm.usage.code.sessions"].items()}
        after = sink.number_points("llm.usage.tokens")
        assert all(after[k].start_time_unix_nano == s for k, s in starts.items()), "a start time moved"

        values = {k: p.value for k, p in after.items()}
        run_once(config)  # a restart with nothing new: nothing added
        assert {k: p.value for k, p in sink.number_points("llm.usage.tokens").items()} == values
        assert sink_totals(sink) == grown
