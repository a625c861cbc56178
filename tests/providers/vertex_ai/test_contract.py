"""Contract tests: the real provider and the real google-cloud-monitoring client against a fake MetricService on
loopback, through the real Receiver, ledger and an OTLP sink. Totals are computed from the fake's raw points.

Credentials: the fake is reached only through the ``endpoint`` setting (``http://127.0.0.1:PORT``), for which the
provider uses a plaintext channel and ``AnonymousCredentials`` (so no Application Default Credentials are looked
up and no token exists that could leak); nothing here can reach Google.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.scheduler import Receiver
from tests.fakes.monitoring import FakeMonitoring
from tests.support.otlp_sink import OTLPSink
from tests.support.vertex_world import (
    GEMINI_IN_FREE,
    GEMINI_IN_PAID,
    GEMINI_OUT,
    HOUR,
    T0,
    seed_gemini,
    seed_vertex,
    truth,
)

NOW = T0 + 6 * HOUR + 10 * 60  # 06:10 UTC: the buckets up to 06:00 are read, 06:00-07:00 not yet
PROJECTS = ["acme-prod", "acme-research"]


@pytest.fixture
def fake() -> Iterator[FakeMonitoring]:
    with FakeMonitoring(page_size=3) as server:
        yield server


def make_config(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink, **options: Any) -> Config:
    provider = {"projects": PROJECTS, "endpoint": fake.endpoint, "timeout": "2s", "backfill": "6h",
                "collection_interval": "5m", "retry_initial_interval": "10ms", **options}
    return parse_config({
        "storage": {"path": str(tmp_path / "ledger.db")},
        "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}, "timeout": "2s"}},
        "providers": {"vertex_ai/prod": provider},
    })


def run_once(config: Config, now: list[float]) -> Receiver:
    receiver = Receiver(config, clock=lambda: now[0])
    try:
        asyncio.run(receiver.run_once())
    finally:
        asyncio.run(receiver.aclose())
    return receiver


def sink_tokens(sink: OTLPSink) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = defaultdict(int)
    for key, point in sink.number_points("llm.usage.tokens").items():
        a = dict(key)
        assert a["gen_ai.operation.name"] == "generate_content" and a["llm.tenant"] == "default"
        out[(a["gen_ai.provider.name"], a["llm.tenancy.id"], a["gen_ai.request.model"], a.get("cloud.region", ""),
             a.get("llm.publisher", ""), a.get("llm.request_type", ""), a.get("llm.cache.explicit", ""),
             a.get("llm.batch", ""), a["gen_ai.token.type"])] += int(point.value)
    return dict(out)


def sink_requests(sink: OTLPSink) -> dict[tuple[str, ...], int]:
    return {
        (a["gen_ai.provider.name"], a["llm.tenancy.id"], a["gen_ai.request.model"], a["cloud.region"],
         a["llm.publisher"], a["llm.request_type"], a["llm.cache.explicit"]): int(p.value)
        for a, p in ((dict(k), p) for k, p in sink.number_points("llm.usage.requests").items())
    }


def receiver_counter(sink: OTLPSink, metric: str, **attrs: str) -> int:
    return sum(int(p.value) for k, p in sink.number_points(metric).items()
               if all(dict(k).get(name.replace("_", ".")) == v for name, v in attrs.items()))


def api_requests(sink: OTLPSink, operation: str) -> int:
    return sum(int(p.value) for k, p in sink.number_points("llm.receiver.provider_requests").items()
               if dict(k)["llm.api.operation"] == operation and dict(k)["llm.source"] == "vertex_ai/prod")


def test_exact_totals_revised_point_and_restart(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink) -> None:
    seed_vertex(fake, T0 - HOUR, NOW)
    config = make_config(tmp_path, fake, sink)
    now = [float(NOW)]

    # First poll: the 6h backfill, aligned to whole hours, over several pages per query.
    run_once(config, now)
    end = NOW - NOW % HOUR
    tokens, requests = truth(fake, end - 6 * HOUR, end)
    assert sink_tokens(sink) == tokens
    assert sink_requests(sink) == requests
    assert {k[4] for k in tokens} == {"google", "anthropic", "meta"}  # partner models keep their publisher
    assert {k[7] for k in tokens} == {"", "true"}  # batch prediction tokens are told apart
    calls = fake.requests_of("ListTimeSeries")
    assert any(c.page_token for c in calls)  # paging was followed
    assert api_requests(sink, "ListTimeSeries") == len(calls)
    first = calls[0]
    assert first.name == "projects/acme-prod" and first.view == 0  # FULL (points, not only headers)
    assert first.filter == ('metric.type = "aiplatform.googleapis.com/publisher/online_serving/token_count" '
                            'AND resource.type = "aiplatform.googleapis.com/PublisherModel"')
    assert (first.interval.start_time.seconds, first.interval.end_time.seconds) == (end - 6 * HOUR, end)
    assert first.aggregation.alignment_period.seconds == HOUR
    assert list(first.aggregation.group_by_fields) == [
        "resource.label.model_user_id", "resource.label.location", "resource.label.publisher",
        "metric.label.request_type", "metric.label.explicit_caching", "metric.label.source", "metric.label.type"]
    start_times = {k: p.start_time_unix_nano for k, p in sink.number_points("llm.usage.tokens").items()}

    # An hour later: a late point revises an hour already read, and a new hour arrived.
    revised = (T0 + 4 * HOUR + 120, T0 + 4 * HOUR + 180)
    fake.add_point("acme-prod", "aiplatform.googleapis.com/publisher/online_serving/token_count",
                   "aiplatform.googleapis.com/PublisherModel",
                   {"resource_container": "acme-prod", "location": "us-central1", "publisher": "google",
                    "model_user_id": "gemini-2.5-flash", "model_version_id": ""},
                   {"type": "output", "request_type": "shared", "explicit_caching": "false", "modality": "TEXT",
                    "source": "us-central1"},
                   *revised, 777)
    seed_vertex(fake, NOW, NOW + HOUR, seed=5)
    now[0] += HOUR
    fake.requests.clear()
    run_once(config, now)
    tokens, requests = truth(fake, end - 6 * HOUR, end + HOUR)
    assert sink_tokens(sink) == tokens
    assert sink_requests(sink) == requests
    key = ("gcp.vertex_ai", "acme-prod", "gemini-2.5-flash", "us-central1", "google", "shared", "false", "",
           "output")
    assert receiver_counter(sink, "llm.receiver.records", llm_outcome="grown") >= 1
    second = fake.requests_of("ListTimeSeries")[0]
    assert second.interval.start_time.seconds == end - 3 * HOUR  # the cursor minus the 3h default lookback
    assert tokens[key] > 0

    # Restart: a new process on the same ledger re-reads the overlap and adds nothing; start times are kept.
    fake.requests.clear()
    run_once(config, now)
    assert sink_tokens(sink) == tokens
    assert fake.requests_of("ListTimeSeries")  # it did poll again
    for k, p in sink.number_points("llm.usage.tokens").items():
        if k in start_times:
            assert p.start_time_unix_nano == start_times[k]


def test_quota_error_is_retried_then_rate_limited_and_loses_nothing(
    tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink
) -> None:
    seed_vertex(fake, T0, NOW)
    config = make_config(tmp_path, fake, sink, max_retries=1, projects=["acme-prod"])
    now = [float(NOW)]
    quota = ("Quota exceeded for quota metric 'Time series queries' and limit 'Time series queries per minute' "
             "of service 'monitoring.googleapis.com' for consumer 'project_number:123456789012'.")
    fake.fail_next("ListTimeSeries", grpc.StatusCode.RESOURCE_EXHAUSTED, quota, count=2, retry_delay=0.01)
    receiver = run_once(config, now)
    assert receiver_counter(sink, "llm.receiver.polls", llm_outcome="failure", error_type="rate_limited") == 1
    assert api_requests(sink, "ListTimeSeries") == 2  # the attempt and its one retry, both counted
    assert "Quota exceeded" in (receiver.health.statuses()[0].last_error or "")
    assert not sink.number_points("llm.usage.tokens")

    # One quota error in the next poll is retried within it; the poll then reads everything.
    fake.fail_next("ListTimeSeries", grpc.StatusCode.RESOURCE_EXHAUSTED, quota, count=1)
    run_once(config, now)
    end = NOW - NOW % HOUR
    tokens, _ = truth(fake, end - 6 * HOUR, end)
    assert {k: v for k, v in tokens.items() if k[1] == "acme-prod"} == sink_tokens(sink)
    # This process's counter (self-health restarts with the process): its pages plus the retried one.
    assert api_requests(sink, "ListTimeSeries") == len(fake.requests_of("ListTimeSeries")) - 2


def test_permission_denied_is_auth_naming_the_permission(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink
                                                        ) -> None:
    seed_vertex(fake, T0, NOW)
    fake.denied.add("acme-research")
    receiver = run_once(make_config(tmp_path, fake, sink), [float(NOW)])
    assert receiver_counter(sink, "llm.receiver.polls", llm_outcome="failure", error_type="auth") == 1
    status = receiver.health.statuses()[0]
    assert status.last_error_type == "auth"
    assert "monitoring.timeSeries.list" in (status.last_error or "") and "acme-research" in (status.last_error or "")
    assert not sink.number_points("llm.usage.tokens")  # the poll is rejected whole
    assert len(fake.requests_of("ListTimeSeries")) > 1  # not retried: one call for the denied project


def test_a_hung_call_ends_as_timeout_within_the_configured_timeout(
    tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink
) -> None:
    seed_vertex(fake, T0, NOW)
    fake.hang_next("ListTimeSeries", count=2)
    config = make_config(tmp_path, fake, sink, timeout="300ms", max_retries=1)
    receiver = run_once(config, [float(NOW)])
    assert receiver_counter(sink, "llm.receiver.polls", llm_outcome="failure", error_type="timeout") == 1
    assert receiver.health.statuses()[0].last_error_type == "timeout"
    assert api_requests(sink, "ListTimeSeries") == 2


def test_unavailable_is_a_server_error_after_retries(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink) -> None:
    seed_vertex(fake, T0, NOW)
    fake.fail_next("ListTimeSeries", grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.", count=3)
    run_once(make_config(tmp_path, fake, sink, max_retries=2), [float(NOW)])
    assert receiver_counter(sink, "llm.receiver.polls", llm_outcome="failure", error_type="server_error") == 1
    assert api_requests(sink, "ListTimeSeries") == 3


def test_gemini_developer_api_source(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink) -> None:
    seed_vertex(fake, T0, NOW)
    seed_gemini(fake, "acme-prod", T0, NOW)
    config = make_config(tmp_path, fake, sink, sources=["vertex", "gemini_api"])
    now = [float(NOW)]
    run_once(config, now)
    end = NOW - NOW % HOUR
    tokens, _ = truth(fake, end - 6 * HOUR, end)
    assert sink_tokens(sink) == tokens
    gemini = {k: v for k, v in tokens.items() if k[0] == "gcp.gemini"}
    assert {k[8] for k in gemini} == {"input", "output"} and len({k[2] for k in gemini}) == 2
    descriptors = fake.requests_of("ListMetricDescriptors")
    # Only acme-prod has Gemini API metrics; acme-research lists none (and reads no input metric).
    assert [d.name for d in descriptors] == ["projects/acme-prod", "projects/acme-research"]
    queried = {r.filter.split('"')[1] for r in fake.requests_of("ListTimeSeries")}
    assert {GEMINI_OUT, GEMINI_IN_FREE, GEMINI_IN_PAID} <= queried
    assert not any(t.endswith("/limit") for t in queried)
    # Within one process the descriptor list is reused (6h TTL): a second poll lists nothing again.
    receiver = Receiver(config, clock=lambda: now[0])
    try:
        asyncio.run(receiver.poll("vertex_ai/prod"))
        asyncio.run(receiver.poll("vertex_ai/prod"))
    finally:
        asyncio.run(receiver.aclose())
    assert len(fake.requests_of("ListMetricDescriptors")) == 4  # 2 projects, once for the new process


def test_a_series_without_a_model_rejects_the_poll_whole(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink
                                                         ) -> None:
    seed_vertex(fake, T0, NOW)
    fake.add_point("acme-prod", "aiplatform.googleapis.com/publisher/online_serving/token_count",
                   "aiplatform.googleapis.com/PublisherModel", {"location": "us-central1", "publisher": "google"},
                   {"type": "input", "request_type": "shared", "explicit_caching": "false"}, T0 + 60, T0 + 120, 5)
    receiver = run_once(make_config(tmp_path, fake, sink), [float(NOW)])
    status = receiver.health.statuses()[0]
    assert status.last_error_type == "bad_response" and "model_user_id" in (status.last_error or "")
    assert not sink.number_points("llm.usage.tokens")


def test_project_names_from_resource_manager_never_block_usage(
    tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink
) -> None:
    from tests.fakes.api import FakeApi, Response

    seed_vertex(fake, T0, NOW)
    with FakeApi() as rm:
        rm.route("GET", "/v3/projects/acme-prod", lambda _: Response(200, {
            "name": "projects/123456789012", "projectId": "acme-prod", "state": "ACTIVE",
            "displayName": "Acme Production", "parent": "organizations/987654321"}))
        rm.route("GET", "/v3/projects/acme-research", lambda _: Response(403, {"error": {
            "code": 403, "message": "The caller does not have permission", "status": "PERMISSION_DENIED"}}))
        config = make_config(tmp_path, fake, sink, resource_manager_endpoint=rm.base_url)
        now = [float(NOW)]
        receiver = Receiver(config, clock=lambda: now[0])
        try:
            asyncio.run(receiver.run_once())
            now[0] += HOUR
            asyncio.run(receiver.run_once())  # names are cached: no second lookup within the TTL
        finally:
            asyncio.run(receiver.aclose())
        names = {dict(k)["llm.tenancy.id"]: dict(k).get("llm.tenancy.name")
                 for k in sink.number_points("llm.usage.tokens")}
        assert names == {"acme-prod": "Acme Production", "acme-research": None}
        assert [r.path for r in rm.requests] == ["/v3/projects/acme-prod", "/v3/projects/acme-research"]
        assert api_requests(sink, "projects.get") == 2


def test_an_emulator_endpoint_never_looks_names_up_at_google(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink
                                                             ) -> None:
    from otel_llm_receiver.providers import create_provider
    from otel_llm_receiver.providers.vertex_ai import VertexAIProvider

    p = create_provider(make_config(tmp_path, fake, sink).providers[0])
    assert isinstance(p, VertexAIProvider) and p._names is None


def test_cli_run_once_exports_the_fake_projects_exactly(tmp_path: Path, fake: FakeMonitoring, sink: OTLPSink
                                                        ) -> None:
    """The whole product, as a user runs it: `run --once` in a subprocess, at the real time of day."""
    import json
    import os
    import subprocess
    import sys
    import time

    now = int(time.time())
    seed_vertex(fake, now - now % HOUR - 8 * HOUR, now + 60)
    config = tmp_path / "config.yaml"
    config.write_text(f"""
storage: {{path: {tmp_path / "ledger.db"}}}
health: {{endpoint: ""}}
exporters:
  otlp: {{endpoint: {sink.grpc_endpoint}, tls: {{insecure: true}}, timeout: 2s}}
providers:
  vertex_ai/prod:
    projects: [acme-prod, acme-research]
    endpoint: {fake.endpoint}
    backfill: 6h
    timeout: 2s
""")
    proc = subprocess.run([sys.executable, "-m", "otel_llm_receiver", "run", "--config", str(config), "--once"],
                          env={**os.environ, "LOG_FORMAT": "json"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (poll,) = [d for d in map(json.loads, filter(None, proc.stderr.splitlines())) if "window_end" in d]
    end = int(poll["cursor"])
    tokens, requests = truth(fake, end - 6 * HOUR, end)
    assert end == int(poll["window_end"]) - int(poll["window_end"]) % HOUR
    assert sink_tokens(sink) == tokens and sink_requests(sink) == requests
