"""Unit tests of the Vertex AI provider's pure parts: config checks, endpoint rules, credentials, error mapping,
token-type mapping. The gRPC paths are exercised against the fake server in test_contract.py."""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import ERROR_TYPES, ProviderError
from otel_llm_receiver.model import Window
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.providers.vertex_ai import VertexAIProvider
from otel_llm_receiver.providers.vertex_ai.monitoring import classify, load_credentials, plaintext_target
from otel_llm_receiver.providers.vertex_ai.series import (
    VERTEX_QUERIES,
    Point,
    RecordBuilder,
    Series,
    token_type_of,
)
from tests.fakes.monitoring import FakeMonitoring
from tests.support.vertex_world import HOUR, PUBLISHER_MODEL, T0, TOKENS


def provider(**options: Any) -> VertexAIProvider:
    raw = {"exporters": {"otlp": {"endpoint": "127.0.0.1:4317"}},
           "providers": {"vertex_ai": {"projects": ["acme-prod"], **options}}}
    p = create_provider(parse_config(raw).providers[0])
    assert isinstance(p, VertexAIProvider)
    return p


@pytest.mark.parametrize(("options", "problem"), [
    ({"bucket_width": "7m"}, "bucket_width: must divide a day"),
    ({"bucket_width": "30s"}, "at least 1m"),
    ({"endpoint": "http://monitoring.example.com:80"}, "plaintext endpoint must be http://<loopback"),
    ({"endpoint": "http://127.0.0.1:9", "credentials_file": "/secrets/gcp.json"}, "cannot be used with a plaintext"),
    ({"projects": []}, "at least one GCP project"),
])
def test_bad_config_is_one_config_error(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProviderError) as info:
        provider(**options)
    assert info.value.error_type == "config" and problem in str(info.value)


def test_check_reports_what_the_provider_refuses_with_key_paths() -> None:
    """Issue 19.3: ``VertexAIOptions.validate()`` lines come out of ``check`` under their key paths."""
    from otel_llm_receiver.providers import provider_problems
    from otel_llm_receiver.providers.vertex_ai.options import VertexAIOptions

    config = parse_config({"providers": {"vertex_ai/prod": {
        "projects": ["acme-prod"], "bucket_width": "7m", "endpoint": "http://127.0.0.1:9",
        "credentials_file": "/secrets/gcp.json", "billing_export": {"table": "nope", "colour": "red"},
    }}})
    assert [line.split(": ")[0] for line in provider_problems(config.providers)] == [
        "providers.vertex_ai/prod.bucket_width", "providers.vertex_ai/prod.credentials_file",
        "providers.vertex_ai/prod.billing_export.colour", "providers.vertex_ai/prod.billing_export.table",
    ]
    options = VertexAIOptions.from_config(config.providers[0])
    assert (options.max_retries, options.sources, options.project_names) == (4, ("vertex",), True)


def test_defaults() -> None:
    p = provider()
    assert (p.width, p.sources, p.lookback) == (HOUR, ("vertex",), 3 * HOUR)
    assert p.backfill == 86400 and p.MAX_BACKFILL == 42 * 86400


def test_plaintext_only_to_loopback() -> None:
    assert plaintext_target(None) is None
    assert plaintext_target("monitoring.googleapis.com:443") is None
    assert plaintext_target("http://127.0.0.1:8085") == "127.0.0.1:8085"
    assert plaintext_target("http://localhost:8085") == "localhost:8085"
    assert plaintext_target("http://[::1]:8085") == "[::1]:8085"
    for bad in ("http://10.0.0.1:8085", "http://127.0.0.1", "http://127.0.0.1:80/v3"):
        with pytest.raises(ValueError):
            plaintext_target(bad)


def test_credentials_errors_are_classified(tmp_path: Path) -> None:
    with pytest.raises(ProviderError) as info:
        load_credentials('{"type": "service_account", ')
    assert info.value.error_type == "config" and "not valid JSON" in str(info.value)
    with pytest.raises(ProviderError) as info:
        load_credentials(str(tmp_path / "missing.json"))
    assert info.value.error_type == "auth" and "credentials_file" in str(info.value)
    with pytest.raises(ProviderError) as info:
        load_credentials('{"type": "no_such_type"}')
    assert info.value.error_type == "auth"


#: Every gRPC status's api_core class, and the error.type it must become.
EXPECTED = {
    "Cancelled": "timeout", "Unknown": "server_error", "InvalidArgument": "config",
    "DeadlineExceeded": "timeout", "NotFound": "config", "AlreadyExists": "bad_response",
    "PermissionDenied": "auth", "ResourceExhausted": "rate_limited", "FailedPrecondition": "config",
    "Aborted": "server_error", "OutOfRange": "config", "MethodNotImplemented": "server_error",
    "InternalServerError": "server_error", "ServiceUnavailable": "server_error", "DataLoss": "server_error",
    "Unauthenticated": "auth",
}


def test_every_grpc_status_is_mapped() -> None:
    grpc_classes = {
        name: cls for name, cls in inspect.getmembers(gexc, inspect.isclass)
        if issubclass(cls, gexc.GoogleAPICallError) and getattr(cls, "grpc_status_code", None) is not None
    }
    assert set(grpc_classes) == set(EXPECTED)
    assert {c.grpc_status_code for c in grpc_classes.values()} == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    for name, cls in grpc_classes.items():
        error = classify(cls("boom"), operation="ListTimeSeries", project="acme-prod")
        assert error.error_type == EXPECTED[name], name
        assert error.error_type in ERROR_TYPES and "projects/acme-prod" in str(error)
    denied = classify(gexc.PermissionDenied("x"), operation="ListTimeSeries",  # type: ignore[no-untyped-call]
                      project="acme-prod")
    assert "monitoring.timeSeries.list" in str(denied) and "roles/monitoring.viewer" in str(denied)
    expired = auth_exceptions.RefreshError("expired")  # type: ignore[no-untyped-call]
    assert classify(expired, operation="o", project="p").error_type == "auth"
    unreachable = auth_exceptions.TransportError("token endpoint unreachable")  # type: ignore[no-untyped-call]
    assert classify(unreachable, operation="o", project="p").error_type == "network"


def test_bigquery_style_quota_403_is_rate_limited() -> None:
    quota = gexc.Forbidden(  # type: ignore[no-untyped-call]
        "Quota exceeded", errors=[{"reason": "quotaExceeded", "message": "Quota exceeded"}])
    assert classify(quota, operation="jobs.query", project="p").error_type == "rate_limited"
    denied = gexc.Forbidden("Access Denied", errors=[{"reason": "accessDenied"}])  # type: ignore[no-untyped-call]
    error = classify(denied, operation="jobs.query", project="p", permission="bigquery.jobs.create")
    assert error.error_type == "auth" and "bigquery.jobs.create" in str(error)


def test_token_types() -> None:
    assert [token_type_of(t) for t in ("input", "output", "cache_read_input", "cache_write_1h_input", "image")] == [
        "input", "output", "cache_read", "cache_write", None]


def test_record_builder_merges_tokens_and_requests_and_rejects_misaligned_points() -> None:
    tokens_q, requests_q = VERTEX_QUERIES
    labels = {"resource.label.model_user_id": "gemini-2.5-flash", "resource.label.location": "us-central1",
              "resource.label.publisher": "google", "metric.label.request_type": "shared",
              "metric.label.explicit_caching": "true"}
    b = RecordBuilder("gcp.vertex_ai", "acme-prod", HOUR, attributes={
        "resource.label.location": "cloud.region", "resource.label.publisher": "llm.publisher",
        "metric.label.request_type": "llm.request_type", "metric.label.explicit_caching": "llm.cache.explicit"})
    b.add(tokens_q, Series({**labels, "metric.label.type": "input"}, (Point(T0, T0 + HOUR, 10),)), where="t")
    b.add(tokens_q, Series({**labels, "metric.label.type": "output"}, (Point(T0, T0 + HOUR, 3),)), where="t")
    b.add(tokens_q, Series({**labels, "metric.label.type": "audio_thing"}, (Point(T0, T0 + HOUR, 99),)), where="t")
    b.add(requests_q, Series(labels, (Point(T0, T0 + HOUR, 2), Point(T0 + HOUR, T0 + 2 * HOUR, 1))), where="t")
    records = b.records()
    assert [(r.bucket_start, dict(r.tokens), r.requests) for r in records] == [
        (T0, {"input": 10, "output": 3}, 2), (T0 + HOUR, {}, 1)]
    assert dict(records[0].dimensions) == {"cloud.region": "us-central1", "llm.publisher": "google",
                                           "llm.request_type": "shared", "llm.cache.explicit": "true"}
    assert b.unknown_types == {"audio_thing"}
    edge = RecordBuilder("gcp.vertex_ai", "acme-prod", HOUR)
    edge.add(tokens_q, Series({**labels, "metric.label.type": "input"},
                              (Point(T0, T0 + HOUR, 4), Point(T0 - HOUR, T0, 1))), where="t", start=T0)
    assert [(r.bucket_start, dict(r.tokens)) for r in edge.records()] == [(T0, {"input": 4})]  # edge point skipped
    with pytest.raises(ProviderError, match="not aligned"):
        b.add(tokens_q, Series({**labels, "metric.label.type": "input"}, (Point(T0 + 60, T0 + HOUR + 60, 1),)),
              where="t")
    with pytest.raises(ProviderError, match="negative"):
        b.add(tokens_q, Series({**labels, "metric.label.type": "input"}, (Point(T0, T0 + HOUR, -1),)), where="t")


def test_unknown_token_type_is_not_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with FakeMonitoring() as fake:
        resource = {"resource_container": "acme-prod", "location": "us-central1", "publisher": "google",
                    "model_user_id": "gemini-2.5-flash", "model_version_id": ""}
        for t, v in (("input", 5), ("output", 7), ("mystery", 1000)):
            fake.add_point("acme-prod", TOKENS, PUBLISHER_MODEL, resource,
                           {"type": t, "request_type": "shared", "explicit_caching": "false"}, T0 + 60, T0 + 120, v)
        p = provider(endpoint=fake.endpoint, timeout="2s")
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                result = asyncio.run(p.fetch(Window(T0, T0 + 2 * HOUR)))
                assert [dict(r.tokens) for r in result.usage] == [{"input": 5, "output": 7}]
        assert sum("'mystery'" in r.getMessage() for r in caplog.records) == 1
        assert result.complete_until == T0 + 2 * HOUR


def test_a_long_retry_delay_ends_the_poll_at_once_with_retry_after() -> None:
    with FakeMonitoring() as fake:
        fake.projects.add("acme-prod")
        fake.fail_next("ListTimeSeries", grpc.StatusCode.RESOURCE_EXHAUSTED, "Quota exceeded", retry_delay=3600)
        p = provider(endpoint=fake.endpoint, timeout="2s", collection_interval="5m")
        result = asyncio.run(p.fetch(Window(T0, T0 + 2 * HOUR)))
        failed = result.failed_sources["usage"]  # usage failed alone (a billing export would still be read)
        assert failed.error_type == "rate_limited" and failed.retry_after == 3600
        assert result.polled_sources == [] and not result.usage
        assert p.api_requests["ListTimeSeries"] == 1  # not retried: the wait is longer than the interval


def test_a_window_shorter_than_a_bucket_asks_nothing() -> None:
    with FakeMonitoring() as fake:
        p = provider(endpoint=fake.endpoint)
        result = asyncio.run(p.fetch(Window(T0 + 60, T0 + 120)))
        assert not result.usage and result.complete_until == T0 and not fake.requests


def test_a_service_account_file_loads_offline(tmp_path: Path) -> None:
    """A generated key (never a real one): loading it needs no network; tokens are fetched only on use."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "acme-prod", "private_key_id": "test-key-1",
            "private_key": pem, "client_email": "receiver@acme-prod.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    for source in (str(path), json.dumps(info)):  # a path, or the JSON itself from ${file:...}
        credentials = load_credentials(source)
        assert credentials.service_account_email == "receiver@acme-prod.iam.gserviceaccount.com"
        assert credentials.scopes == ["https://www.googleapis.com/auth/monitoring.read"]
        assert not credentials.valid  # no token was fetched


def test_the_example_config_builds_both_instances() -> None:
    from otel_llm_receiver.config import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "examples" / "vertex_ai.yaml")
    built = [create_provider(p) for p in config.providers]
    assert [type(p).__name__ for p in built] == ["VertexAIProvider", "VertexAIProvider"]
    usage, cost = built
    assert isinstance(usage, VertexAIProvider) and isinstance(cost, VertexAIProvider)
    assert usage.sources == ("vertex",) and usage.billing is None
    assert cost.sources == () and cost.billing is not None and cost.billing.interval == 6 * HOUR


def test_a_missing_extra_is_one_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_google(name: str, *args: Any) -> Any:
        return None if name.startswith("google.cloud.") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_google)
    with pytest.raises(ProviderError) as info:
        provider(billing_export={"table": "acme-billing.billing.gcp_billing_export_v1_X"})
    assert info.value.error_type == "config"
    assert "otel-llm-receiver[vertex]" in str(info.value) and "otel-llm-receiver[vertex-billing]" in str(info.value)
