"""The optional cost source: the real google-cloud-bigquery client against a fake BigQuery REST API on loopback,
through the real Receiver, ledger and OTLP sink; its own interval, its cursor across a restart, quota and
permission errors. Expected amounts are summed from the fake export table's rows (BigQuery NUMERIC semantics)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.scheduler import Receiver
from tests.fakes.bigquery import BillingRow, FakeBigQuery, numeric, quota_error_body
from tests.fakes.monitoring import FakeMonitoring
from tests.support.otlp_sink import OTLPSink
from tests.support.vertex_world import HOUR, T0, seed_vertex

TABLE = "acme-billing.billing_export.gcp_billing_export_v1_0123AB_CDEF45_6789AB"
DAY = 86400
NOW = T0 + 6 * HOUR + 600
SKUS = ("Gemini 2.5 Flash Text Input - Predictions", "Gemini 2.5 Flash Text Output - Predictions",
        "Claude Sonnet 4 Input Tokens")


@pytest.fixture
def bq() -> Iterator[FakeBigQuery]:
    with FakeBigQuery(table=TABLE, job_project="acme-billing", page_size=4) as server:
        for hour in range(-5 * 24, 6):
            for i, sku in enumerate(SKUS):
                start = T0 + hour * HOUR
                server.rows.append(BillingRow(start, "acme-prod", "Acme Production", "C7E2-9256-1C43", "Vertex AI",
                                              sku, 0.0123457 * (i + 1) + hour * 1e-7, (-0.001,) if i == 0 else ()))
            server.rows.append(BillingRow(T0 + hour * HOUR, "acme-prod", "Acme Production", "6F81-5844-456A",
                                          "Compute Engine", "N1 Predefined Instance Core", 9.99))  # not ours
            server.rows.append(BillingRow(T0 + hour * HOUR, "other-project", "Other", "C7E2-9256-1C43",
                                          "Vertex AI", SKUS[0], 5.0))  # not a configured project
        yield server


@pytest.fixture
def fake() -> Iterator[FakeMonitoring]:
    with FakeMonitoring(page_size=5) as server:
        seed_vertex(server, T0 - HOUR, NOW)
        yield server


def make_config(tmp_path: Path, sink: OTLPSink, bq: FakeBigQuery, fake: FakeMonitoring | None, **options: Any
                ) -> Config:
    provider: dict[str, Any] = {
        "projects": ["acme-prod"], "timeout": "2s", "backfill": "6h", "retry_initial_interval": "10ms",
        "billing_export": {"table": TABLE, "endpoint": bq.endpoint, "interval": "6h", "lookback": "3d"},
        **options,
    }
    if fake is not None:
        provider["endpoint"] = fake.endpoint
    return parse_config({
        "storage": {"path": str(tmp_path / "ledger.db")},
        "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}, "timeout": "2s"}},
        "providers": {"vertex_ai/prod": provider},
    })


def poll(config: Config, now: float) -> Receiver:
    receiver = Receiver(config, clock=lambda: now)
    try:
        asyncio.run(receiver.run_once())
    finally:
        asyncio.run(receiver.aclose())
    return receiver


def expected_cost(bq: FakeBigQuery, start: int, end: int) -> dict[tuple[str, str], Decimal]:
    """Net cost per (project, SKU) of Vertex AI rows of the configured project, days [start, end)."""
    out: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for r in bq.rows:
        if r.project_id == "acme-prod" and r.service == "Vertex AI" and start <= r.usage_start_time < end:
            out[(r.project_id, r.sku)] += numeric(r.cost) + sum((numeric(c) for c in r.credits), Decimal(0))
    return {k: v.quantize(Decimal("0.000001")) for k, v in out.items()}


def sink_cost(sink: OTLPSink) -> dict[tuple[str, str], Decimal]:
    out = {}
    for key, point in sink.number_points("llm.usage.cost").items():
        a = dict(key)
        assert a["gen_ai.provider.name"] == "gcp.vertex_ai" and "llm.currency" not in a  # USD
        assert a["llm.tenancy.name"] == "Acme Production"
        out[(a["llm.tenancy.id"], a["llm.cost.line_item"])] = Decimal(repr(point.value)).quantize(Decimal("0.000001"))
    return out


def requests_of(sink: OTLPSink, operation: str) -> int:
    return sum(int(p.value) for k, p in sink.number_points("llm.receiver.provider_requests").items()
               if dict(k)["llm.api.operation"] == operation)


def test_cost_on_its_own_interval_with_its_cursor_across_a_restart(
    tmp_path: Path, sink: OTLPSink, bq: FakeBigQuery, fake: FakeMonitoring
) -> None:
    config = make_config(tmp_path, sink, bq, fake)
    day0 = NOW - NOW % DAY
    poll(config, NOW)
    # Whole UTC days from the 3d lookback through today, paged (4 rows a page), exact to the cent and beyond.
    assert sink_cost(sink) == expected_cost(bq, day0 - 3 * DAY, day0 + DAY)
    assert len(bq.queries) == 1 and requests_of(sink, "jobs.query") == 1
    assert requests_of(sink, "jobs.getQueryResults") >= 1  # more than one page
    # Names from the export reach the usage series too.
    assert {dict(k).get("llm.tenancy.name") for k in sink.number_points("llm.usage.tokens")} == {"Acme Production"}

    # One hour later (a new process: the cursor comes from the ledger): usage is polled, BigQuery is not.
    poll(config, NOW + HOUR)
    assert len(bq.queries) == 1
    assert len(fake.requests_of("ListTimeSeries")) > 2

    # Six hours after the last run: queried again; a late row for yesterday grows that day's cost.
    bq.rows.append(BillingRow(day0 - DAY + 7 * HOUR, "acme-prod", "Acme Production", "C7E2-9256-1C43",
                              "Vertex AI", SKUS[2], 1.25))
    poll(config, NOW + 6 * HOUR)
    assert len(bq.queries) == 2
    assert sink_cost(sink) == expected_cost(bq, day0 - 3 * DAY, day0 + DAY)
    params = {p["name"]: p["parameterValue"] for p in bq.queries[-1]["queryParameters"]}
    start = datetime.fromisoformat(params["start"]["value"].replace(" ", "T"))
    assert start == datetime.fromtimestamp(day0 - 3 * DAY, UTC)
    assert [v["value"] for v in params["services"]["arrayValues"]] == ["Vertex AI"]


def test_a_credit_that_shrinks_a_day_is_an_adjustment_not_a_drop(
    tmp_path: Path, sink: OTLPSink, bq: FakeBigQuery
) -> None:
    config = make_config(tmp_path, sink, bq, None, sources=[])  # a cost-only instance
    day0 = NOW - NOW % DAY
    poll(config, NOW)
    before = sink_cost(sink)
    bq.rows.append(BillingRow(day0 - DAY + HOUR, "acme-prod", "Acme Production", "C7E2-9256-1C43", "Vertex AI",
                              SKUS[1], 0.0, (-0.5,)))
    poll(config, NOW + 6 * HOUR)
    key = ("acme-prod", SKUS[1])
    assert sink_cost(sink)[key] == before[key]  # the counter never goes down
    adjustments = [p.value for k, p in sink.number_points("llm.usage.adjustments").items()
                   if dict(k)["llm.measure"] == "cost"]
    assert adjustments == [pytest.approx(0.5)]


def test_quota_error_keeps_usage_and_retries_the_cost_query_within_the_hour(
    tmp_path: Path, sink: OTLPSink, bq: FakeBigQuery, fake: FakeMonitoring, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, sink, bq, fake, max_retries=1)
    bq.api.fail_next("/bigquery/v2/projects/acme-billing/queries", 403, count=2, body=quota_error_body())
    now = [float(NOW)]
    receiver = Receiver(config, clock=lambda: now[0])
    try:
        with caplog.at_level(logging.WARNING):
            assert asyncio.run(receiver.run_once()) == 1  # the cost source failed: --once says so
        assert "vertex_ai/prod: cost source failed (rate_limited)" in caplog.text
        assert sink.number_points("llm.usage.tokens") and not sink.number_points("llm.usage.cost")
        polls = {(dict(k)["llm.data.source"], dict(k)["llm.outcome"]): p.value
                 for k, p in sink.number_points("llm.receiver.polls").items()}
        assert polls == {("usage", "success"): 1, ("cost", "failure"): 1}
        now[0] += 1800
        asyncio.run(receiver.run_once())
        assert not sink.number_points("llm.usage.cost")  # not again before an hour has passed
        now[0] += 1800
        asyncio.run(receiver.run_once())
        assert sink.number_points("llm.usage.cost")
    finally:
        asyncio.run(receiver.aclose())
    assert len(bq.api.requests_to("/bigquery/v2/projects/acme-billing/queries")) == 3


@pytest.mark.parametrize(("status", "reason", "error_type", "text"), [
    (403, "accessDenied", "auth", "bigquery.jobs.create"),
    (403, "quotaExceeded", "rate_limited", "Quota exceeded"),
    (404, "notFound", "config", "Not found"),
])
def test_a_cost_only_instance_reports_its_failure(
    tmp_path: Path, sink: OTLPSink, bq: FakeBigQuery, status: int, reason: str, error_type: str, text: str
) -> None:
    body = quota_error_body().replace(b"quotaExceeded", reason.encode())
    if reason == "notFound":
        body = body.replace(b"Quota exceeded", b"Not found")
    bq.api.fail_next("/bigquery/v2/projects/acme-billing/queries", status, count=5, body=body)
    receiver = poll(make_config(tmp_path, sink, bq, None, sources=[], max_retries=1), NOW)
    state = receiver.health.statuses()[0]
    assert state.last_error_type == error_type and text in (state.last_error or "")
    assert not sink.number_points("llm.usage.cost")


def test_billing_export_settings_are_validated(tmp_path: Path, sink: OTLPSink, bq: FakeBigQuery) -> None:
    from otel_llm_receiver.errors import ProviderError
    from otel_llm_receiver.providers import create_provider

    bad = make_config(tmp_path, sink, bq, None, billing_export={"table": "no-dots", "interval": "soon", "x": "1"})
    with pytest.raises(ProviderError) as info:
        create_provider(bad.providers[0])
    message = str(info.value)
    assert info.value.error_type == "config"
    for part in ("billing_export.x: unknown key", "billing_export.table", "billing_export.interval"):
        assert part in message
    with pytest.raises(ProviderError, match="nothing to read"):
        create_provider(make_config(tmp_path, sink, bq, None, sources=[], billing_export=None).providers[0])
