"""Contract tests: the real azure_openai provider against a fake Azure on loopback (tests/fakes/azure.py).

Expected values are computed from the fake's data, never pasted.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import ProviderError
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import PollResult, SourceFailure, UsageRecord, Window, to_nanos
from otel_llm_receiver.providers.azure_openai import AzureOpenAIProvider
from otel_llm_receiver.providers.azure_openai.costs import Pacer
from tests.fakes.api import Response
from tests.fakes.azure import FakeAccount, FakeAzure, FixedTokenCredential

H = 3600
D = 86400
NOW = int(datetime.datetime(2026, 11, 20, 12, 0, tzinfo=datetime.UTC).timestamp())
SUB = "00000000-0000-0000-0000-0000000000a1"
SUB_EUR = "00000000-0000-0000-0000-0000000000b2"
METRICS = "/providers/Microsoft.Insights/metrics"


@pytest.fixture
def fake(azure_fake: FakeAzure) -> FakeAzure:
    return azure_fake


def make(fake: FakeAzure, credential: Any = None, **options: Any) -> AzureOpenAIProvider:
    section = {
        "management_endpoint": fake.base_url, "subscriptions": [SUB], "cost_query_spacing": "0s",
        "retry_initial_interval": "10ms", **options,
    }
    cfg = parse_config({"providers": {"azure_openai/test": section}})
    return AzureOpenAIProvider(cfg.providers[0], credential=credential or FixedTokenCredential())


def fetch(provider: AzureOpenAIProvider, window: Window) -> PollResult:
    async def go() -> PollResult:
        try:
            return await provider.fetch(window)
        finally:
            await provider.aclose()
    return asyncio.run(go())


def fetch_many(provider: AzureOpenAIProvider, windows: list[Window]) -> list[PollResult]:
    async def go() -> list[PollResult]:
        try:
            return [await provider.fetch(w) for w in windows]
        finally:
            await provider.aclose()
    return asyncio.run(go())


def usage_failure(result: PollResult, pattern: str) -> SourceFailure:
    """The usage source's failure in a poll that kept going (usage and cost are separate sources)."""
    assert result.usage == [] and "usage" not in result.polled_sources
    failure = result.failed_sources["usage"]
    assert re.search(pattern, failure.message), failure.message
    return failure


def gpt_account(fake: FakeAzure, sub: str = SUB, name: str = "aoai-prod") -> FakeAccount:
    return fake.add_account(FakeAccount(sub, "rg-ai", name, "OpenAI",
                                        {"chat": ("gpt-4o", "2024-11-20"), "embed": ("text-embedding-3-small", "1")}))


def claude_account(fake: FakeAzure) -> FakeAccount:
    return fake.add_account(FakeAccount(SUB, "rg-foundry", "foundry-1", "AIServices",
                                        {"claude": ("claude-sonnet-4-5", "1")}))


def dims(deployment: str, model: str, version: str, **extra: str) -> dict[str, str]:
    return {"ModelDeploymentName": deployment, "ModelName": model, "ModelVersion": version, **extra}


def token_totals(records: list[UsageRecord]) -> Counter[tuple[str, str, str, str, str | None]]:
    out: Counter[tuple[str, str, str, str, str | None]] = Counter()
    for r in records:
        for t, n in r.tokens.items():
            out[(r.tenancy_id, r.dimensions["llm.deployment"], r.model, t, r.dimensions.get("llm.cache.ttl"))] += n
    return out


def test_usage_by_deployment_model_and_token_type(fake: FakeAzure) -> None:
    gpt, claude = gpt_account(fake), claude_account(fake)
    fake.add_account(FakeAccount(SUB, "rg-ai", "face-1", "Face"))  # not an OpenAI account: never polled
    start = NOW - 3 * H
    series = {
        (gpt, "InputTokens", "chat", "gpt-4o", "2024-11-20"): [1200, 900, 50],
        (gpt, "OutputTokens", "chat", "gpt-4o", "2024-11-20"): [300, 210, 7],
        (gpt, "InputTokens", "embed", "text-embedding-3-small", "1"): [8000, 0, 4000],
        (claude, "InputTokens", "claude", "claude-sonnet-4-5", "1"): [100, 120, 130],
        (claude, "OutputTokens", "claude", "claude-sonnet-4-5", "1"): [40, 41, 42],
        (claude, "cacheReadInputTokens", "claude", "claude-sonnet-4-5", "1"): [5000, 6000, 7000],
        (claude, "ephemeral5mInputTokens", "claude", "claude-sonnet-4-5", "1"): [700, 0, 10],
        (claude, "ephemeral1hInputTokens", "claude", "claude-sonnet-4-5", "1"): [0, 900, 0],
    }
    for (acct, metric, dep, model, version), values in series.items():
        for i, v in enumerate(values):
            fake.set_point(acct, metric, dims(dep, model, version), start + i * H, v)
    for status, n in (("200", 17), ("429", 3)):
        fake.set_point(gpt, "ModelRequests", dims("chat", "gpt-4o", "2024-11-20", StatusCode=status), start, n)

    result = fetch(make(fake, cost=False), Window(start, NOW))

    kinds = {"InputTokens": ("input", None), "OutputTokens": ("output", None),
             "cacheReadInputTokens": ("cache_read", None), "ephemeral5mInputTokens": ("cache_write", "5m"),
             "ephemeral1hInputTokens": ("cache_write", "1h")}
    expected: Counter[tuple[str, str, str, str, str | None]] = Counter()
    for (acct, metric, dep, model, version), values in series.items():
        tenancy = f"{acct.subscription}/{acct.resource_group}/{acct.name}".lower()
        token_type, ttl = kinds[metric]
        expected[(tenancy, dep, f"{model}-{version}", token_type, ttl)] += sum(values)
    assert token_totals(list(result.usage)) == expected
    assert {r.provider for r in result.usage} == {"azure.ai.openai"}
    ops = {r.model: r.operation for r in result.usage}
    assert ops["text-embedding-3-small-1"] == "embeddings" and ops["gpt-4o-2024-11-20"] == "chat"
    requests = {r.dimensions["llm.request.status_code"]: r.requests for r in result.usage if r.requests}
    assert requests == {"200": 17, "429": 3}
    assert result.names == {("tenancy", f"{SUB}/rg-ai/aoai-prod"): "aoai-prod",
                            ("tenancy", f"{SUB}/rg-foundry/foundry-1"): "foundry-1"}
    assert result.complete_until == NOW - H  # the current hour is still filling in
    assert result.costs == [] and result.cursors == {}
    # several metrics per call; the dimension split and `top` are asked for explicitly
    calls = [r for r in fake.api.requests if r.path.endswith(METRICS)]
    assert len(calls) == 4  # two accounts x (tokens, requests)
    token_call = next(r for r in calls if "InputTokens" in (r.param("metricnames") or ""))
    assert (token_call.param("metricnames") or "").split(",") == list(kinds)
    assert token_call.param("top") == "1000" and token_call.param("interval") == "PT1H"
    assert token_call.param("$filter") == "ModelDeploymentName eq '*' and ModelName eq '*' and ModelVersion eq '*'"
    assert all(r.headers["authorization"] == "Bearer test-aad-token-0001" for r in fake.api.requests)


def test_legacy_metrics_take_the_model_from_the_deployment_list(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    # ProcessedPromptTokens / GeneratedTokens have no ModelName dimension
    fake.set_point(gpt, "ProcessedPromptTokens", {"ModelDeploymentName": "chat", "ModelVersion": "2024-11-20"},
                   NOW - 2 * H, 500)
    fake.set_point(gpt, "GeneratedTokens", {"ModelDeploymentName": "chat", "ModelVersion": "2024-11-20"},
                   NOW - 2 * H, 60)
    fake.set_point(gpt, "AzureOpenAIRequests", dims("chat", "gpt-4o", "2024-11-20", StatusCode="200"),
                   NOW - 2 * H, 4)
    result = fetch(make(fake, cost=False, metric_set="azure_openai"), Window(NOW - 3 * H, NOW))
    assert token_totals(list(result.usage)) == {
        (f"{SUB}/rg-ai/aoai-prod", "chat", "gpt-4o-2024-11-20", "input", None): 500,
        (f"{SUB}/rg-ai/aoai-prod", "chat", "gpt-4o-2024-11-20", "output", None): 60,
    }
    assert [r.requests for r in result.usage if r.requests] == [4]


def test_truncated_series_are_asked_again_with_a_larger_top(fake: FakeAzure) -> None:
    acct = fake.add_account(FakeAccount(SUB, "rg", "many", "OpenAI", {f"d{i}": ("gpt-4o", "1") for i in range(3)}))
    for i in range(3):
        fake.set_point(acct, "InputTokens", dims(f"d{i}", "gpt-4o", "1"), NOW - H, 10 + i)
    provider = make(fake, cost=False, max_series=2)
    result = fetch(provider, Window(NOW - H, NOW))
    assert sum(r.tokens.get("input", 0) for r in result.usage) == 10 + 11 + 12
    tops = [r.param("top") for r in fake.api.requests if "InputTokens" in (r.param("metricnames") or "")]
    assert tops == ["2", "20"]
    assert provider.api_requests["monitor.metrics"] == 3  # tokens twice, requests once


def test_still_truncated_fails_the_poll_naming_max_series(fake: FakeAzure) -> None:
    acct = fake.add_account(FakeAccount(SUB, "rg", "many", "OpenAI", {}))
    for i in range(11):
        fake.set_point(acct, "OutputTokens", dims(f"d{i}", "gpt-4o", "1"), NOW - H, 1)
    info = usage_failure(fetch(make(fake, cost=False, max_series=1), Window(NOW - H, NOW)), "max_series")
    assert info.error_type == "config"


def test_429_with_retry_after_is_honoured_and_counted(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    fake.set_point(gpt, "InputTokens", dims("chat", "gpt-4o", "2024-11-20"), NOW - H, 77)
    fake.api.fail_next(f"{gpt.id}{METRICS}", 429, retry_after="0.05")
    provider = make(fake, cost=False)
    result = fetch(provider, Window(NOW - H, NOW))
    assert sum(r.tokens.get("input", 0) for r in result.usage) == 77
    assert provider.api_requests == Counter({"arm.accounts.list": 1, "arm.deployments.list": 1,
                                             "monitor.metrics": 3})


def test_a_revised_point_is_read_again_with_its_new_value(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    d = dims("chat", "gpt-4o", "2024-11-20")
    fake.set_point(gpt, "InputTokens", d, NOW - 2 * H, 1000)
    fake.set_point(gpt, "InputTokens", d, NOW - H, 100)  # the current hour, still filling in
    provider = make(fake, cost=False)

    async def go() -> tuple[PollResult, PollResult]:
        try:
            first = await provider.fetch(Window(NOW - 3 * H, NOW))
            fake.set_point(gpt, "InputTokens", d, NOW - 2 * H, 990)  # Azure revised an older point down
            fake.set_point(gpt, "InputTokens", d, NOW - H, 450)  # and the partial hour grew
            second = await provider.fetch(Window(NOW - 3 * H, NOW + 600))
            return first, second
        finally:
            await provider.aclose()

    first, second = asyncio.run(go())
    by_bucket = [{r.bucket_start: r.tokens["input"] for r in p.usage if r.tokens} for p in (first, second)]
    assert by_bucket == [{NOW - 2 * H: 1000, NOW - H: 100}, {NOW - 2 * H: 990, NOW - H: 450}]


def test_new_deployments_appear_after_the_discovery_interval(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    fake.set_point(gpt, "ProcessedPromptTokens", {"ModelDeploymentName": "new", "ModelVersion": ""}, NOW - H, 5)

    def models(**options: Any) -> list[set[str]]:
        provider = make(fake, cost=False, metric_set="azure_openai", **options)

        async def go() -> list[set[str]]:
            try:
                out = [{r.model for r in (await provider.fetch(Window(NOW - H, NOW))).usage}]
                gpt.deployments["new"] = ("gpt-4.1", "2025-04-14")
                out.append({r.model for r in (await provider.fetch(Window(NOW - H, NOW))).usage})
                return out
            finally:
                await provider.aclose()
                gpt.deployments.pop("new", None)
        return asyncio.run(go())

    assert models() == [{"unknown"}, {"unknown"}]  # cached for discovery_interval (1h)
    assert models(discovery_interval="0s") == [{"unknown"}, {"gpt-4.1-2025-04-14"}]


def test_explicit_resources_need_no_subscription_listing(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    fake.set_point(gpt, "InputTokens", dims("chat", "gpt-4o", "2024-11-20"), NOW - H, 9)
    provider = make(fake, cost=False, subscriptions=[], resources=[gpt.id])
    result = fetch(provider, Window(NOW - H, NOW))
    assert [r.tokens for r in result.usage] == [{"input": 9}]
    assert "arm.accounts.list" not in provider.api_requests


def test_accounts_list_follows_next_link(fake: FakeAzure) -> None:
    fake.arm_page_size = 1
    for i in range(3):
        acct = gpt_account(fake, name=f"aoai-{i}")
        fake.set_point(acct, "InputTokens", dims("chat", "gpt-4o", "2024-11-20"), NOW - H, 10**i)
    provider = make(fake, cost=False)
    result = fetch(provider, Window(NOW - H, NOW))
    assert sum(r.tokens.get("input", 0) for r in result.usage) == 111
    assert provider.api_requests["arm.accounts.list"] == 3


# -- costs ---------------------------------------------------------------------------------------------------
def cost_fixture(fake: FakeAzure) -> tuple[FakeAccount, FakeAccount, list[tuple[int, str, str, str]]]:
    usd, eur = gpt_account(fake), gpt_account(fake, SUB_EUR, "aoai-weu")
    rows = []
    for day_offset in range(5):  # today and the 4 days before
        day = NOW - NOW % D - day_offset * D
        for meter, amount in (("gpt-4o-1120 Inp glbl Tokens", "1.25"), ("gpt-4o-1120 Outp glbl Tokens", "3.5")):
            fake.add_cost(usd, day, meter, str(Decimal(amount) * (day_offset + 1)))
            rows.append((day, "usd", meter, str(Decimal(amount) * (day_offset + 1))))
        fake.add_cost(eur, day, "gpt-4o-1120 Inp regnl Tokens", "0.8", "EUR")
        rows.append((day, "eur", "gpt-4o-1120 Inp regnl Tokens", "0.8"))
    return usd, eur, rows


def test_costs_page_through_next_link_and_keep_currencies_apart(fake: FakeAzure) -> None:
    usd, eur, rows = cost_fixture(fake)
    fake.cost_page_size = 3
    provider = make(fake, subscriptions=[SUB, SUB_EUR])
    result = fetch(provider, Window(NOW - 3 * H, NOW))  # first poll: cost_lookback (72h) back
    first_day = (NOW - 72 * H) - (NOW - 72 * H) % D
    want: Counter[tuple[str, str]] = Counter()
    for day, which, _, amount in rows:
        if day >= first_day:
            want[(which, "USD" if which == "usd" else "EUR")] += Decimal(amount)  # type: ignore[assignment]
    got: Counter[tuple[str, str]] = Counter()
    for c in result.costs:
        got[("usd" if c.tenancy_id.endswith("aoai-prod") else "eur", c.currency)] += c.amount  # type: ignore[assignment]
    assert got == want and want[("eur", "EUR")] == Decimal("3.2")
    assert all(c.bucket_width == D and c.line_item and c.line_item.startswith("gpt-4o") for c in result.costs)
    assert result.cursors == {"cost": str(NOW)}
    queries = [r for r in fake.api.requests if r.path.endswith("/Microsoft.CostManagement/query")
               and json.loads(r.body)["dataset"]["grouping"][0]["name"] == "ResourceId"]  # not the unit query
    for sub, which in ((SUB, "usd"), (SUB_EUR, "eur")):
        pages = -(-sum(1 for d, w, _, _ in rows if w == which and d >= first_day) // 3)
        tokens = [q.param("$skiptoken") for q in queries if sub in q.path]
        assert tokens == [None] + [str(3 * i) for i in range(1, pages)] and pages >= 2
    body = json.loads(queries[0].body)
    assert body["type"] == "ActualCost" and body["dataset"]["granularity"] == "Daily"
    assert body["dataset"]["grouping"] == [{"type": "Dimension", "name": "ResourceId"},
                                           {"type": "Dimension", "name": "Meter"}]
    # each scope is filtered to its own accounts
    assert body["dataset"]["filter"]["dimensions"]["values"] == [usd.id.lower()] != [eur.id.lower()]
    assert all(json.loads(q.body) == body for q in queries if SUB in q.path)  # every page: the same body


def test_cost_rate_limit_headers_are_waited_for(fake: FakeAzure) -> None:
    cost_fixture(fake)
    fake.throttle_cost = 1
    fake.cost_retry_after = "0.3"
    provider = make(fake, retry_initial_interval="1ms")

    async def go() -> tuple[PollResult, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            return await provider.fetch(Window(NOW - H, NOW)), loop.time() - t0
        finally:
            await provider.aclose()

    result, elapsed = asyncio.run(go())
    assert elapsed >= 0.3  # x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after, not the 1ms backoff
    assert result.costs and provider.api_requests["costmanagement.query"] == 3  # 429, its retry, the unit query


def test_204_means_no_cost_data(fake: FakeAzure) -> None:
    cost_fixture(fake)
    fake.empty_cost_scopes.add(f"/subscriptions/{SUB}")
    result = fetch(make(fake), Window(NOW - H, NOW))
    assert result.costs == [] and result.cursors == {"cost": str(NOW)}


def test_cost_failure_keeps_usage_and_names_the_role(fake: FakeAzure, caplog: pytest.LogCaptureFixture) -> None:
    gpt = gpt_account(fake)
    fake.set_point(gpt, "InputTokens", dims("chat", "gpt-4o", "2024-11-20"), NOW - H, 3)
    fake.add_cost(gpt, NOW - NOW % D, "meter", "1")
    fake.forbidden_cost_scopes.add(f"/subscriptions/{SUB}")
    provider = make(fake)

    async def go() -> tuple[PollResult, PollResult]:
        try:
            first = await provider.fetch(Window(NOW - H, NOW))
            fake.forbidden_cost_scopes.clear()  # the role was granted
            return first, await provider.fetch(Window(NOW - H, NOW + 300))
        finally:
            await provider.aclose()

    with caplog.at_level(logging.WARNING):
        first, second = asyncio.run(go())
    assert [r.tokens for r in first.usage] == [{"input": 3}] and first.costs == [] and first.cursors == {}
    assert first.polled_sources == ["usage"] and first.failed_sources["cost"].error_type == "auth"
    assert "Cost Management Reader" in first.failed_sources["cost"].message
    assert second.polled_sources == ["usage", "cost"] and second.failed_sources == {}
    assert [c.amount for c in second.costs] == [Decimal(1)] and second.cursors == {"cost": str(NOW + 300)}


def test_cost_interval_and_restored_cursor_space_the_queries(fake: FakeAzure) -> None:
    cost_fixture(fake)

    def cost_queries(restored: dict[str, str], polls: list[int]) -> list[int]:
        provider = make(fake)
        provider.restore(restored)
        counts = []

        async def go() -> None:
            try:
                for t in polls:
                    before = provider.api_requests["costmanagement.query"]
                    result = await provider.fetch(Window(t - H, t))
                    counts.append(provider.api_requests["costmanagement.query"] - before)
                    assert bool(result.costs) == bool(counts[-1])
            finally:
                await provider.aclose()
        asyncio.run(go())
        return counts

    # each cost read is two queries (cost and quantity by account and meter; each meter's unit of measure)
    assert cost_queries({}, [NOW, NOW + H, NOW + 6 * H]) == [2, 0, 2]
    assert cost_queries({"poll": str(NOW), "cost": str(NOW - H)}, [NOW, NOW + 5 * H]) == [0, 2]


def test_first_cost_query_reaches_back_as_far_as_the_backfill(fake: FakeAzure) -> None:
    _, _, rows = cost_fixture(fake)
    result = fetch(make(fake, subscriptions=[SUB, SUB_EUR]), Window(NOW - 7 * D, NOW))
    assert len(result.costs) == len(rows)  # all 5 days, beyond the 72h cost_lookback


# -- auth and errors -----------------------------------------------------------------------------------------
def test_token_is_cached_and_refreshed_before_expiry(fake: FakeAzure) -> None:
    gpt_account(fake)
    cached = FixedTokenCredential(lifetime=3600)
    fetch(make(fake, cached, cost=False), Window(NOW - H, NOW))
    assert cached.scopes == [(f"{fake.base_url}/.default",)]
    short = FixedTokenCredential(lifetime=120)  # inside the 5-minute refresh margin: a new one per request
    provider = make(fake, short, cost=False)
    fetch(provider, Window(NOW - H, NOW))
    assert len(short.scopes) == sum(provider.api_requests.values()) == 4


def test_credential_failure_is_an_auth_error(fake: FakeAzure) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    gpt_account(fake)
    broken = FixedTokenCredential(error=ClientAuthenticationError("AADSTS7000215: Invalid client secret.\nTrace"))
    with pytest.raises(ProviderError, match="AADSTS7000215") as info:
        fetch(make(fake, broken), Window(NOW - H, NOW))
    assert info.value.error_type == "auth" and "Trace" not in str(info.value)


def test_rejected_token_is_retried_once_then_auth_naming_the_role(fake: FakeAzure) -> None:
    gpt_account(fake)
    wrong = FixedTokenCredential(token="not-the-token")
    with pytest.raises(ProviderError, match="needs Reader on subscription") as info:
        fetch(make(fake, wrong), Window(NOW - H, NOW))
    assert info.value.error_type == "auth"
    assert len(fake.api.requests) == 1  # a fresh token is not retried: it would fail the same way


def test_malformed_metrics_reject_the_poll(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    fake.api.route("GET", f"{gpt.id}{METRICS}", lambda r: Response(200, {"value": [{
        "name": {"value": "InputTokens"},
        "timeseries": [{"metadatavalues": [], "data": [{"timeStamp": "2026-11-20T11:00:00Z", "total": "many"}]}],
    }]}))
    info = usage_failure(fetch(make(fake, cost=False), Window(NOW - H, NOW)), r"timeseries\[0\]\.data\[0\]\.total")
    assert info.error_type == "bad_response"


def test_next_link_to_another_host_is_refused(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    fake.api.route("POST", f"/subscriptions/{SUB}/providers/Microsoft.CostManagement/query", lambda r: Response(200, {
        "properties": {"nextLink": "https://evil.example/steal?$skiptoken=1", "rows": [], "columns": [
            {"name": n, "type": "String"} for n in ("Cost", "UsageDate", "ResourceId", "Meter", "Currency")]}}))
    fake.api.route("GET", f"{gpt.id}/providers/Microsoft.Insights/metrics", lambda r: Response(200, {"value": []}))
    provider = make(fake)

    async def go() -> None:
        try:
            await provider.cost_reader.costs(_accounts(fake), Window(NOW - D, NOW))
        finally:
            await provider.aclose()
    with pytest.raises(ProviderError, match=r"nextLink points at https://evil\.example") as info:
        asyncio.run(go())
    assert info.value.error_type == "bad_response"
    assert all("evil" not in r.path for r in fake.api.requests)


def _accounts(fake: FakeAzure) -> list[Any]:
    from otel_llm_receiver.providers.azure_openai.discovery import parse_account_id

    return [parse_account_id(a.id) for a in fake.accounts]


@pytest.mark.parametrize(("options", "message"), [
    ({"subscriptions": []}, "set subscriptions or resources"),
    ({"resources": ["/subscriptions/x/resourceGroups/y"]}, "is not an account id"),
    ({"bucket_width": "2h"}, "bucket_width: must be"),
    ({"cost_lookback": "10d"}, "cost_lookback: is at most 7d"),
    ({"client_id": "abc"}, "client_id set without tenant_id, client_secret"),
    ({"authority_host": "http://login.example"}, "authority_host: 'http://login.example' is an invalid authority"),
])
def test_config_problems_are_one_clear_config_error(options: dict[str, Any], message: str) -> None:
    cfg = parse_config({"providers": {"azure_openai/x": {"subscriptions": [SUB], **options}}})
    with pytest.raises(ProviderError, match=message) as info:
        AzureOpenAIProvider(cfg.providers[0])
    assert info.value.error_type == "config"


def test_credentials_come_from_azure_identity_without_network() -> None:
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    def built(**options: Any) -> object:
        cfg = parse_config({"providers": {"azure_openai/x": {"subscriptions": [SUB], **options}}},
                           environ={"SECRET": "test-client-secret-123"})
        return AzureOpenAIProvider(cfg.providers[0]).credential

    assert isinstance(built(), DefaultAzureCredential)
    explicit = built(tenant_id="00000000-0000-0000-0000-00000000000t", client_id="app",
                     client_secret="${env:SECRET}", authority_host="login.microsoftonline.us")
    assert isinstance(explicit, ClientSecretCredential)


def test_pacer_spaces_queries_per_scope() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(15.0, clock=lambda: now[0], sleep=sleep)

    async def go() -> None:
        await pacer.wait("/subscriptions/a")
        now[0] += 4
        await pacer.wait("/subscriptions/a")  # 11s still to go
        await pacer.wait("/subscriptions/b")  # another scope: no wait
        now[0] += 20
        await pacer.wait("/subscriptions/a")  # long enough ago
    asyncio.run(go())
    assert slept == [11.0]



@pytest.mark.parametrize(("width", "subscriptions", "expected"), [
    # accounts lists + deployments lists + metrics (2 calls x chunks) + cost and unit queries (1 page each per scope)
    ("1h", 1, 1 + 10 + 10 * 2 * 1 + 2),
    ("5m", 1, 1 + 10 + 10 * 2 * 2 + 2),  # 7 days of 5-minute grains is 2016 buckets, over the 2000 per call: two chunks per account
    ("1h", 10, 10 + 10 + 10 * 2 * 1 + 20),
])
def test_requests_of_a_seven_day_backfill_of_ten_accounts(
    fake: FakeAzure, width: str, subscriptions: int, expected: int
) -> None:
    subs = [f"00000000-0000-0000-0000-{i:012d}" for i in range(subscriptions)]
    for i in range(10):
        acct = gpt_account(fake, subs[i % subscriptions], f"aoai-{i}")
        for day in range(8):
            fake.add_cost(acct, NOW - NOW % D - day * D, "gpt-4o-1120 Inp glbl Tokens", "1.5")
        fake.set_point(acct, "InputTokens", dims("chat", "gpt-4o", "2024-11-20"), NOW - 7 * D + H, 10)
    provider = make(fake, subscriptions=subs, backfill="7d", bucket_width=width)
    result = fetch(provider, Window(NOW - 7 * D, NOW))
    assert sum(provider.api_requests.values()) == len(fake.api.requests) == expected
    assert sum(r.tokens.get("input", 0) for r in result.usage) == 100
    assert len(result.costs) == 10 * 8  # the first cost query reaches back the whole backfill


def test_example_config_is_valid_and_builds_the_provider() -> None:
    from pathlib import Path

    from azure.identity import DefaultAzureCredential

    from otel_llm_receiver.config import load_config

    path = Path(__file__).resolve().parents[3] / "examples" / "azure_openai.yaml"
    plain = load_config(path, environ={})
    assert [p.type for p in plain.providers] == ["azure_openai"]
    provider = AzureOpenAIProvider(plain.providers[0])
    assert isinstance(provider.credential, DefaultAzureCredential)
    assert provider.backfill == 7 * D and provider.lookback == 3 * H and provider.width == H
    assert provider.cost_interval == 6 * H and provider.cost_lookback == 72 * H


def test_5xx_is_retried_and_malformed_json_rejects_the_poll(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    fake.set_point(gpt, "InputTokens", dims("chat", "gpt-4o", "2024-11-20"), NOW - H, 12)
    fake.api.fail_next(f"{gpt.id}/deployments", 503)
    provider = make(fake, cost=False)
    assert [r.tokens for r in fetch(provider, Window(NOW - H, NOW)).usage] == [{"input": 12}]
    assert provider.api_requests["arm.deployments.list"] == 2
    fake.api.fail_next(f"{gpt.id}{METRICS}", 200, body=b'{"value": [')
    info = usage_failure(fetch(make(fake, cost=False), Window(NOW - H, NOW)), "not JSON")
    assert info.error_type == "bad_response"


def test_api_client_extensions_204_and_azure_retry_after_headers() -> None:
    """The shared client's additions for Azure: 204 is "no data", and x-ms-ratelimit-*-retry-after is obeyed."""
    from otel_llm_receiver.providers.http import ApiClient
    from tests.fakes.api import FakeApi

    throttled = [2]

    def handler(request: Any) -> Response:
        if throttled[0]:
            throttled[0] -= 1
            return Response(429, {"error": {"code": "429", "message": "slow down"}}, headers={
                "retry-after": "0", "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after": "0.1",
                "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after": "0.2"})
        return Response(204, raw=b"")

    with FakeApi() as api:
        api.route("POST", "/q", handler)
        client = ApiClient(provider="p", base_url=api.base_url, headers={}, timeout=5, retry_initial_interval=0.001)

        async def go() -> tuple[Any, float]:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            try:
                return await client.request_json("POST", "/q", json_body={}), loop.time() - t0
            finally:
                await client.aclose()
        body, elapsed = asyncio.run(go())
    assert body is None and elapsed >= 0.4 and client.requests["/q"] == 3


def test_an_account_without_the_cache_metrics_is_read_without_them(fake: FakeAzure) -> None:
    plain = fake.add_account(FakeAccount(SUB, "rg", "old-aoai", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")},
                                         metrics={"InputTokens", "OutputTokens", "ModelRequests"}))
    claude = claude_account(fake)
    fake.set_point(plain, "InputTokens", dims("chat", "gpt-4o", "2024-11-20"), NOW - H, 40)
    fake.set_point(claude, "cacheReadInputTokens", dims("claude", "claude-sonnet-4-5", "1"), NOW - H, 900)
    provider = make(fake, cost=False)
    results = fetch_many(provider, [Window(NOW - H, NOW), Window(NOW - H, NOW + 60)])
    for result in results:
        assert sorted((r.model, t, n) for r in result.usage for t, n in r.tokens.items()) == [
            ("claude-sonnet-4-5-1", "cache_read", 900), ("gpt-4o-2024-11-20", "input", 40)]
    calls = [r.param("metricnames") for r in fake.api.requests if r.path == f"{plain.id}{METRICS}"]
    assert calls == [
        "InputTokens,OutputTokens,cacheReadInputTokens,ephemeral5mInputTokens,ephemeral1hInputTokens",
        "InputTokens,OutputTokens", "ModelRequests",  # first poll: refused once, then without them
        "InputTokens,OutputTokens", "ModelRequests",  # later polls remember it
    ]


def test_forbidden_metrics_name_the_monitoring_reader_role(fake: FakeAzure) -> None:
    gpt = gpt_account(fake)
    fake.api.fail_next(f"{gpt.id}{METRICS}", 403, body=json.dumps({"error": {
        "code": "AuthorizationFailed", "message": "does not have authorization to perform action "
        "'microsoft.insights/metrics/read'"}}).encode())
    info = usage_failure(fetch(make(fake, cost=False), Window(NOW - H, NOW)), "needs Monitoring Reader on account aoai-prod")
    assert info.error_type == "auth" and "microsoft.insights/metrics/read" in info.message


# -- billed quantities (UsageQuantity) ------------------------------------------------------------------------
def quantity_fixture(fake: FakeAzure, day: int, input_k: str = "31.234567") -> FakeAccount:
    """One account's day: token meters per 1K and per 1M tokens, and a meter billed by the hour."""
    gpt = gpt_account(fake)
    fake.add_cost(gpt, day, "gpt-4o-1120 Inp glbl Tokens", "0.078086", quantity=input_k, unit="1K")
    fake.add_cost(gpt, day, "gpt-4o-1120 Outp glbl Tokens", "0.5", quantity="0.05", unit="1M")
    fake.add_cost(gpt, day, "gpt-4o-1120 Outp glbl Tokens", "0.25", quantity="0.025", unit="1M")  # same key: summed
    fake.add_cost(gpt, day, "Standard Fine-tuning Hosting", "1.7", quantity="1.5", unit="1 Hour")
    return gpt


def test_costs_carry_the_billed_quantity_in_the_meters_unit(fake: FakeAzure) -> None:
    day = NOW - NOW % D - D
    quantity_fixture(fake, day)
    provider = make(fake)
    result = fetch(provider, Window(NOW - H, NOW))
    got = {c.line_item: (c.amount, c.quantity, c.quantity_unit) for c in result.costs if c.bucket_start == day}
    assert got == {
        "gpt-4o-1120 Inp glbl Tokens": (Decimal("0.078086"), Decimal("31234.567"), "tokens"),  # 1K, exactly
        "gpt-4o-1120 Outp glbl Tokens": (Decimal("0.75"), Decimal("75000"), "tokens"),  # 1M
        "Standard Fine-tuning Hosting": (Decimal("1.7"), Decimal("1.5"), "1 Hour"),  # not tokens: as Azure names it
    }
    bodies = [json.loads(r.body) for r in fake.api.requests if r.path.endswith("/Microsoft.CostManagement/query")]
    assert [b["dataset"]["aggregation"] for b in bodies] == [
        {"totalCost": {"name": "Cost", "function": "Sum"}, "totalQuantity": {"name": "UsageQuantity", "function": "Sum"}},
        {"totalQuantity": {"name": "UsageQuantity", "function": "Sum"}},
    ]
    assert [[g["name"] for g in b["dataset"]["grouping"]] for b in bodies] == [["ResourceId", "Meter"],
                                                                               ["Meter", "UnitOfMeasure"]]
    assert bodies[0]["dataset"]["filter"] == bodies[1]["dataset"]["filter"]  # the same accounts


def test_a_refused_unit_query_keeps_the_costs_without_quantities(
    fake: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    day = NOW - NOW % D - D
    quantity_fixture(fake, day)
    fake.unsupported_groupings.add("UnitOfMeasure")
    with caplog.at_level(logging.WARNING):
        result = fetch(make(fake), Window(NOW - H, NOW))
    assert {(c.line_item, c.amount, c.quantity) for c in result.costs} == {
        ("gpt-4o-1120 Inp glbl Tokens", Decimal("0.078086"), None),
        ("gpt-4o-1120 Outp glbl Tokens", Decimal("0.75"), None),
        ("Standard Fine-tuning Hosting", Decimal("1.7"), None),
    }
    assert "unit-of-measure query" in caplog.text and "without quantities" in caplog.text


def test_a_malformed_quantity_or_unit_answer_rejects_the_cost_read(
    fake: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    gpt = quantity_fixture(fake, NOW - NOW % D)
    columns = [{"name": "Cost", "type": "Number"}, {"name": "UsageQuantity", "type": "Number"},
               {"name": "UsageDate", "type": "Number"}, {"name": "ResourceId", "type": "String"},
               {"name": "Meter", "type": "String"}, {"name": "Currency", "type": "String"}]
    query = f"/subscriptions/{SUB}/providers/Microsoft.CostManagement/query"
    bad_quantity = {"properties": {"nextLink": None, "columns": columns,
                                   "rows": [[1.5, "many", 20261120, gpt.id.lower(), "m", "USD"]]}}
    bad_unit = {"properties": {"nextLink": None, "columns": [{"name": "UsageQuantity", "type": "Number"},
                                                             {"name": "Meter", "type": "String"}],
                               "rows": [[1.5, "m"]]}}
    for answer, phrase in ((bad_quantity, "quantity 'many' is not a number"),
                           (bad_unit, "unit query at /subscriptions/")):
        caplog.clear()
        if answer is bad_unit:
            fake.unit_answer = answer  # the cost query answers normally, the unit query's answer is broken
        else:
            fake.api.fail_next(query, 200, body=json.dumps(answer).encode())
        with caplog.at_level(logging.WARNING):
            result = fetch(make(fake), Window(NOW - H, NOW))
        fake.unit_answer = None
        # one clear error; nothing of the broken read is kept, the cost cursor does not move (retried next poll)
        assert result.costs == [] and result.cursors == {}
        failure = result.failed_sources["cost"]
        assert failure.error_type == "bad_response" and phrase in failure.message, failure


def test_quantities_reach_the_ledger_exactly_and_a_restated_day_counts_like_its_cost(
    fake: FakeAzure, tmp_path: Path
) -> None:
    day = NOW - NOW % D - D
    gpt = quantity_fixture(fake, day)
    provider = make(fake, cost_interval="1h")

    def quantities(ledger: Ledger) -> dict[str, tuple[int, int]]:
        return {json.loads(s.attrs)["llm.cost.line_item"]: (s.total, s.adjustments)
                for s in ledger.snapshot().series if s.metric == "llm.usage.billed_quantity"}

    with Ledger(tmp_path / "ledger.db") as ledger:
        first, second = fetch_many_then(provider, fake, gpt, day)
        ledger.apply("azure_openai", first)
        assert quantities(ledger) == {"gpt-4o-1120 Inp glbl Tokens": (to_nanos("31234.567"), 0),
                                      "gpt-4o-1120 Outp glbl Tokens": (to_nanos("75000"), 0),
                                      "Standard Fine-tuning Hosting": (to_nanos("1.5"), 0)}
        ledger.apply("azure_openai", second)
        got = quantities(ledger)
        # the input meter's day grew by 1.000001K tokens; the output meter's day shrank by 25000 tokens
        assert {k: total - adjusted for k, (total, adjusted) in got.items()} == {
            "gpt-4o-1120 Inp glbl Tokens": to_nanos("32234.568"),
            "gpt-4o-1120 Outp glbl Tokens": to_nanos("50000"),
            "Standard Fine-tuning Hosting": to_nanos("1.5")}
        assert {k: adjusted for k, (_, adjusted) in got.items() if adjusted} == {
            "gpt-4o-1120 Outp glbl Tokens": to_nanos("25000")}
        costs = {json.loads(s.attrs)["llm.cost.line_item"]: (s.total, s.adjustments)
                 for s in ledger.snapshot().series if s.metric == "llm.usage.cost"}
        assert costs["gpt-4o-1120 Outp glbl Tokens"][1] == to_nanos("0.25")  # the cost shrank with it


def fetch_many_then(provider: AzureOpenAIProvider, fake: FakeAzure, gpt: FakeAccount,
                    day: int) -> tuple[PollResult, PollResult]:
    """Two cost reads an hour apart; between them Cost Management restates ``day``."""
    async def go() -> tuple[PollResult, PollResult]:
        try:
            first = await provider.fetch(Window(NOW - H, NOW))
            with fake._lock:
                rows = fake.cost_rows[f"/subscriptions/{SUB}"]
                rows[:] = [r for r in rows if not (r[0] == day and r[2] == "gpt-4o-1120 Outp glbl Tokens"
                                                   and r[5] == Decimal("0.025"))]
            fake.add_cost(gpt, day, "gpt-4o-1120 Inp glbl Tokens", "0.0025", quantity="1.000001", unit="1K")
            return first, await provider.fetch(Window(NOW, NOW + H + 60))
        finally:
            await provider.aclose()

    return asyncio.run(go())


# -- resource ids in cost rows (issue 16.9) --------------------------------------------------------------------
def test_a_cost_row_without_the_leading_slash_in_lower_case_reaches_the_ledger(
    fake: FakeAzure, tmp_path: Path
) -> None:
    gpt = gpt_account(fake)
    day = NOW - NOW % D - D
    fake.add_cost(gpt, day, "gpt-4o-1120 Inp glbl Tokens", "4.50")
    fake.cost_resource_id = lambda rid: rid.lower().lstrip("/")  # "subscriptions/.../accounts/aoai-prod"
    result = fetch(make(fake), Window(NOW - H, NOW))
    assert [(c.tenancy_id, c.amount) for c in result.costs] == [
        (f"{SUB}/rg-ai/aoai-prod", Decimal("4.50"))]
    assert result.unmatched_records == {}
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.apply("azure_openai/test", result)
        spent = {json.loads(s.attrs)["llm.tenancy.id"]: s.total
                 for s in ledger.snapshot().series if s.metric == "llm.usage.cost"}
    assert spent == {f"{SUB}/rg-ai/aoai-prod": to_nanos("4.50")}


def test_a_cost_row_of_no_discovered_account_is_kept_counted_and_logged(
    fake: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    gpt = gpt_account(fake)
    day = NOW - NOW % D
    fake.add_cost(gpt, day, "gpt-4o-1120 Inp glbl Tokens", "1.25")
    fake.add_cost(gpt, day, "gpt-4o-1120 Outp glbl Tokens", "2.75")
    child = f"{gpt.id}/deployments/chat".lower()  # a resource id no discovered account has
    fake.cost_resource_id = lambda rid: child if rid == gpt.id else rid.lower()
    with caplog.at_level(logging.WARNING):
        result = fetch(make(fake), Window(NOW - H, NOW))
    assert sum(c.amount for c in result.costs) == Decimal("4.00")
    assert {c.tenancy_id for c in result.costs} == {child}
    assert result.unmatched_records == {"cost": 2}
    assert "2 cost row(s) matched no discovered account" in caplog.text and child in caplog.text


def test_check_reports_what_the_provider_refuses_with_key_paths() -> None:
    """Issue 19.3: ``AzureOpenAIOptions.validate()`` lines come out of ``check`` under their key paths."""
    from otel_llm_receiver.providers import provider_problems
    from otel_llm_receiver.providers.azure_openai.options import AzureOpenAIOptions

    cfg = parse_config({"providers": {"azure_openai/prod": {
        "resources": ["/subscriptions/x/resourceGroups/y"], "cost_lookback": "10d", "client_id": "abc"}}})
    problems = provider_problems(cfg.providers)
    assert [p.split(": ")[0] for p in problems] == [
        "providers.azure_openai/prod.resources[0]", "providers.azure_openai/prod.cost_lookback",
        "providers.azure_openai/prod.tenant_id",
    ]
    assert list(AzureOpenAIOptions.schema())[:3] == ["max_retries", "retry_initial_interval", "max_response_bytes"]
    assert AzureOpenAIOptions.from_config(cfg.providers[0]).cost_query_spacing == 15.0
