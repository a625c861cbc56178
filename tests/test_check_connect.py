"""``check --connect`` against the real loopback fakes: one line per source and exporter, the role a refusal
needs, exit 0 only when everything answered, and nothing stored or exported."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_llm_receiver.cli import main
from otel_llm_receiver.config import ProviderConfig, parse_config
from otel_llm_receiver.connect import check_connect
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.providers.azure_openai import AzureOpenAIProvider
from otel_llm_receiver.providers.base import Provider
from otel_llm_receiver.providers.openai.endpoints import USAGE_ENDPOINTS
from tests.fakes.anthropic import ADMIN_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.aws import FakeAws
from tests.fakes.azure import FakeAccount, FakeAzure, FixedTokenCredential
from tests.fakes.bigquery import FakeBigQuery
from tests.fakes.monitoring import FakeMonitoring
from tests.fakes.openai import ADMIN_KEY as OPENAI_KEY
from tests.fakes.openai import FakeOpenAI
from tests.support.moto_server import FAKE_CREDENTIALS
from tests.support.otlp_sink import OTLPSink

SUB = "00000000-0000-0000-0000-0000000000a1"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def sink() -> Iterator[OTLPSink]:
    with OTLPSink() as s:
        yield s


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def run_check(tmp_path: Path, capsys: pytest.CaptureFixture[str], providers: dict[str, Any],
              exporters: dict[str, Any]) -> tuple[int, list[str]]:
    """``check --config FILE --connect`` in-process; its exit code and stdout lines."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"path": str(tmp_path / "ledger.db")}, "health": {"endpoint": ""},
        "exporters": exporters, "providers": providers,
    }))
    code = main(["check", "--config", str(path), "--connect"])
    out = capsys.readouterr()
    assert OPENAI_KEY not in out.out + out.err and ANTHROPIC_KEY not in out.out + out.err
    assert not (tmp_path / "ledger.db").exists()  # the ledger is never opened
    assert code != 2, out.err
    return code, out.out.splitlines()


def openai(fake: FakeOpenAI, key: str = OPENAI_KEY) -> dict[str, Any]:
    return {"admin_key": key, "endpoint": fake.base_url, "retry_initial_interval": "10ms"}


def anthropic(fake: FakeAnthropic, key: str = ANTHROPIC_KEY) -> dict[str, Any]:
    return {"admin_key": key, "endpoint": fake.base_url, "retry_initial_interval": "10ms",
            "sources": ["messages", "cost", "claude_code"]}


def bedrock(fake: FakeAws) -> dict[str, Any]:
    return {"regions": ["us-east-1"], "endpoint": fake.url, "mantle": False}


def exporters(sink: OTLPSink) -> dict[str, Any]:
    return {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}},
            "otlphttp": {"endpoint": sink.http_endpoint}}


def by_source(lines: list[str]) -> dict[tuple[str, str], str]:
    """(instance, source) -> the line, checking there is one line per pair."""
    out: dict[tuple[str, str], str] = {}
    for line in lines:
        _status, instance, rest = line.split(maxsplit=2)
        source = rest.split(":", 1)[0]
        assert (instance, source) not in out, line
        out[(instance, source)] = line
    return out


def test_every_source_and_exporter_ok_exits_0_and_nothing_is_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: OTLPSink
) -> None:
    with FakeOpenAI() as oa, FakeAnthropic() as an, FakeAws() as aws:
        code, lines = run_check(tmp_path, capsys, {
            "openai/prod": openai(oa), "anthropic/prod": anthropic(an), "bedrock/prod": bedrock(aws),
        }, exporters(sink))
    expected = {("openai/prod", f"usage.{e.name}") for e in USAGE_ENDPOINTS} | {
        ("openai/prod", "cost"), ("openai/prod", "projects"),
        ("anthropic/prod", "usage"), ("anthropic/prod", "cost"), ("anthropic/prod", "claude_code"),
        ("anthropic/prod", "workspaces"),
        ("bedrock/prod", "usage"), ("bedrock/prod", "cost"), ("bedrock/prod", "inference_profiles us-east-1"),
        ("exporters.otlp", "grpc"), ("exporters.otlphttp", "http"),
    }
    found = by_source(lines)
    assert set(found) == expected, lines
    assert all(line.startswith("ok  ") for line in lines), lines
    assert code == 0
    assert sink.attempt_count == 0 and sink.request_count == 0  # opened, never exported to


def test_wrong_key_fails_every_source_naming_the_admin_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: OTLPSink
) -> None:
    with FakeOpenAI() as oa, FakeAnthropic() as an:
        code, lines = run_check(tmp_path, capsys, {
            "openai/prod": openai(oa, "sk-admin-test-wrong-0000"),
            "anthropic/prod": anthropic(an, "sk-ant-admin01-test-wrong"),
        }, exporters(sink))
    found = by_source(lines)
    assert code == 1
    openai_lines = [line for (instance, _), line in found.items() if instance == "openai/prod"]
    assert len(openai_lines) == len(USAGE_ENDPOINTS) + 2
    assert all(line.startswith("FAIL openai/prod") and ": auth: " in line and "OpenAI Admin API key" in line
               for line in openai_lines), openai_lines
    anthropic_lines = [line for (instance, _), line in found.items() if instance == "anthropic/prod"]
    assert len(anthropic_lines) == 4
    assert all(line.startswith("FAIL") and "Admin API key, sk-ant-admin" in line for line in anthropic_lines)
    assert found[("exporters.otlp", "grpc")].startswith("ok  ")
    assert "sk-admin-test-wrong-0000" not in "\n".join(lines)


def test_one_endpoint_refused_fails_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: OTLPSink) -> None:
    """A key whose scopes leave out the costs endpoint: only that line fails, with the key it needs."""
    with FakeOpenAI() as oa:
        oa.api.fail_next("/v1/organization/costs", 403)
        code, lines = run_check(tmp_path, capsys, {"openai/prod": openai(oa)}, exporters(sink))
    found = by_source(lines)
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed == [found[("openai/prod", "cost")]]
    assert ": auth: " in failed[0] and "Admin API key" in failed[0]


def test_cost_explorer_denied_fails_only_the_cost_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: OTLPSink
) -> None:
    with FakeAws() as aws:
        aws.fail("GetCostAndUsage", 400, "AccessDeniedException")
        code, lines = run_check(tmp_path, capsys, {"bedrock/prod": bedrock(aws)}, exporters(sink))
    found = by_source(lines)
    assert code == 1
    assert [line for line in lines if line.startswith("FAIL")] == [found[("bedrock/prod", "cost")]]
    assert "the IAM policy must allow ce:GetCostAndUsage" in found[("bedrock/prod", "cost")]
    assert found[("bedrock/prod", "usage")].startswith("ok  ")


def azure_factory(config: ProviderConfig) -> Provider:
    """Azure with a fixed token (the token exchange is azure-identity's); every other type as the CLI builds it."""
    if config.type == "azure_openai":
        return AzureOpenAIProvider(config, credential=FixedTokenCredential())
    return create_provider(config)


def test_cost_management_forbidden_while_monitor_works(tmp_path: Path, sink: OTLPSink) -> None:
    fake = FakeAzure()
    try:
        fake.add_account(FakeAccount(SUB, "rg-ai", "aoai-prod", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
        fake.forbidden_cost_scopes.add(f"/subscriptions/{SUB}")
        config = parse_config({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}}},
            "providers": {"azure_openai/prod": {
                "management_endpoint": fake.base_url, "subscriptions": [SUB], "cost_query_spacing": "0s",
                "retry_initial_interval": "10ms",
            }},
        })
        lines: list[str] = []
        ok = check_connect(config, lines.append, azure_factory)
    finally:
        fake.close()
    found = by_source(lines)
    assert not ok
    assert found[("azure_openai/prod", "accounts")].startswith("ok  "), lines
    assert found[("azure_openai/prod", "usage")].startswith("ok  "), lines
    cost = found[("azure_openai/prod", "cost")]
    assert cost.startswith("FAIL") and ": auth: " in cost and "needs Cost Management Reader on" in cost
    assert found[("exporters.otlp", "grpc")].startswith("ok  ")
    assert not (tmp_path / "ledger.db").exists()


def test_vertex_one_line_per_project_and_the_denied_one_names_the_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: OTLPSink
) -> None:
    table = "acme-billing.billing_export.gcp_billing_export_v1_0123AB_CDEF45_6789AB"
    with FakeMonitoring() as mon, FakeBigQuery(table=table, job_project="acme-billing") as bq:
        mon.projects.add("acme-prod")
        mon.denied.add("acme-research")
        code, lines = run_check(tmp_path, capsys, {"vertex_ai/prod": {
            "projects": ["acme-prod", "acme-research"], "endpoint": mon.endpoint, "retry_initial_interval": "10ms",
            "billing_export": {"table": table, "endpoint": bq.endpoint},
        }}, exporters(sink))
    found = by_source(lines)
    assert code == 1
    assert found[("vertex_ai/prod", "usage acme-prod")].startswith("ok  "), lines
    assert found[("vertex_ai/prod", "cost")].startswith("ok  "), lines
    denied = found[("vertex_ai/prod", "usage acme-research")]
    assert denied.startswith("FAIL") and ": auth: " in denied and "roles/monitoring.viewer" in denied
    assert [line for line in lines if line.startswith("FAIL")] == [denied]


def test_azure_account_list_refused_names_the_reader_role(tmp_path: Path, sink: OTLPSink) -> None:
    fake = FakeAzure()
    try:
        fake.add_account(FakeAccount(SUB, "rg-ai", "aoai-prod", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
        fake.api.fail_next(f"/subscriptions/{SUB}/providers/Microsoft.CognitiveServices/accounts", 403)
        config = parse_config({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "providers": {"azure_openai/prod": {"management_endpoint": fake.base_url, "subscriptions": [SUB]}},
        })
        lines: list[str] = []
        ok = check_connect(config, lines.append, azure_factory)
    finally:
        fake.close()
    assert not ok
    assert len(lines) == 1 and lines[0].startswith("FAIL azure_openai/prod accounts: auth: "), lines
    assert f"needs Reader on subscription {SUB}" in lines[0]


def test_wrong_endpoint_is_a_network_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    code, lines = run_check(
        tmp_path, capsys,
        {"openai/prod": {"admin_key": OPENAI_KEY, "endpoint": f"http://127.0.0.1:{port}",
                         "usage_endpoints": ["completions"]}},
        {"otlp": {"endpoint": f"127.0.0.1:{port}", "tls": {"insecure": True}},
         "otlphttp": {"endpoint": f"http://127.0.0.1:{port}"}},
    )
    assert code == 1
    found = by_source(lines)
    assert set(found) == {("openai/prod", "usage.completions"), ("openai/prod", "cost"), ("openai/prod", "projects"),
                          ("exporters.otlp", "grpc"), ("exporters.otlphttp", "http")}
    assert all(line.startswith("FAIL") and ": network: " in line for line in lines), lines


def test_a_config_error_still_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("providers:\n  openai/prod:\n    api_key: x\n")
    assert main(["check", "--config", str(path), "--connect"]) == 2
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "ledger.db").exists()


def test_http_exporter_refusing_its_headers_is_an_auth_failure(tmp_path: Path) -> None:
    """A collector behind an auth extension: the probe's GET carries the configured headers; a 401 is named."""
    from tests.fakes.api import FakeApi

    with FakeApi(auth_header="authorization", auth_value="Bearer right-token-0001") as collector:
        config = parse_config({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "providers": {"demo": {"enabled": False}},
            "exporters": {"otlphttp/good": {"endpoint": collector.base_url,
                                   "headers": {"authorization": "Bearer right-token-0001"}},
                          "otlphttp/bad": {"endpoint": collector.base_url,
                                  "headers": {"authorization": "Bearer wrong-token-0002"}}},
        })
        lines: list[str] = []
        ok = check_connect(config, lines.append)
        assert all(r.method == "GET" for r in collector.requests)  # nothing was posted
    found = by_source(lines)
    assert not ok
    assert found[("exporters.otlphttp/good", "http")].startswith("ok  "), lines
    bad = found[("exporters.otlphttp/bad", "http")]
    assert bad.startswith("FAIL") and ": auth: " in bad and "HTTP 401" in bad
    assert "wrong-token-0002" not in "\n".join(lines) and "right-token-0001" not in "\n".join(lines)
