"""End to end: fake Azure -> the real azure_openai provider -> Receiver (scheduler, ledger) -> OTLP -> a sink.

One ledger, two processes, four polls: a backfill, a poll that sees revised points (one grown, one shrunk) and a
new hour, a restart that must neither re-query spend nor lose anything, and a later poll that re-reads revised
spend. The sink must show exactly the fake's latest values (tokens minus adjustments; money to the nano-unit),
with EUR spend kept under `llm.usage.cost.non_usd` and never in `llm.usage.cost`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.providers.azure_openai import AzureOpenAIProvider
from otel_llm_receiver.scheduler import Receiver
from tests.fakes.azure import FakeAccount, FakeAzure, FixedTokenCredential
from tests.support.otlp_sink import OTLPSink

H = 3600
D = 86400
T0 = int(datetime.datetime(2026, 11, 20, 12, 0, tzinfo=datetime.UTC).timestamp())
SUB = "00000000-0000-0000-0000-0000000000a1"
SUB_EUR = "00000000-0000-0000-0000-0000000000b2"
NAME = "azure_openai/prod"


@pytest.fixture
def fake(azure_fake: FakeAzure) -> FakeAzure:
    return azure_fake


def config(tmp_path: Path, fake: FakeAzure, sink: OTLPSink) -> Config:
    return parse_config({
        "storage": {"path": str(tmp_path / "ledger.db")},
        "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}, "timeout": "2s"}},
        "providers": {NAME: {
            "management_endpoint": fake.base_url, "subscriptions": [SUB, SUB_EUR], "collection_interval": "5m",
            "cost_query_spacing": "0s", "retry_initial_interval": "10ms",
        }},
    })


def run_process(cfg: Config, polls: list[int], sink: OTLPSink) -> Receiver:
    """One receiver process on the shared ledger: these polls, an export after each, then a clean stop."""
    now = [polls[0]]
    receiver = Receiver(cfg, clock=lambda: now[0])
    receiver.providers[NAME] = AzureOpenAIProvider(cfg.providers[0], credential=FixedTokenCredential())

    async def go() -> None:
        try:
            for t in polls:
                now[0] = t
                outcome = await receiver.poll(NAME)
                assert outcome.ok, outcome
                assert receiver.export_now() is True
        finally:
            await receiver.aclose()
    asyncio.run(go())
    return receiver


def by(sink: OTLPSink, metric: str, *keys: str, measure: str | None = None) -> Counter[tuple[Any, ...]]:
    """Sum the metric's points by ``keys``; for adjustments, only those of ``measure`` (tokens, cost, ...)."""
    out: Counter[tuple[Any, ...]] = Counter()
    for attrs, point in sink.number_points(metric).items():
        a = dict(attrs)
        if measure is not None and a.get("llm.measure") != measure:
            continue
        out[tuple(a.get(k) for k in keys)] += point.value  # type: ignore[assignment]
    return out


def test_backfill_revision_restart_and_currencies_end_to_end(tmp_path: Path, fake: FakeAzure) -> None:
    gpt = fake.add_account(FakeAccount(SUB, "rg-ai", "aoai-prod", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
    claude = fake.add_account(FakeAccount(SUB, "rg-ai", "foundry-1", "AIServices", {"c": ("claude-sonnet-4-5", "1")}))
    weu = fake.add_account(FakeAccount(SUB_EUR, "rg-eu", "aoai-weu", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
    fake.cost_page_size = 2
    # (account, metric, deployment, model, version) -> {hour start: value}: the fake's truth, edited below
    truth: dict[tuple[FakeAccount, str, str, str, str], dict[int, int]] = {}

    def put(acct: FakeAccount, metric: str, dep: str, model: str, start: int, value: int, version: str) -> None:
        truth.setdefault((acct, metric, dep, model, version), {})[start] = value
        fake.set_point(acct, metric, {"ModelDeploymentName": dep, "ModelName": model, "ModelVersion": version},
                       start, value)

    for h in range(1, 41):  # 40 hours back; the 24h backfill from 00:00 UTC yesterday must take only the last 36
        start = T0 - h * H
        put(gpt, "InputTokens", "chat", "gpt-4o", start, 1000 + 7 * h, "2024-11-20")
        put(gpt, "OutputTokens", "chat", "gpt-4o", start, 200 + h, "2024-11-20")
        put(claude, "InputTokens", "c", "claude-sonnet-4-5", start, 50 + h, "1")
        put(claude, "cacheReadInputTokens", "c", "claude-sonnet-4-5", start, 4000 + h, "1")
        put(claude, "ephemeral5mInputTokens", "c", "claude-sonnet-4-5", start, 300, "1")
        put(weu, "InputTokens", "chat", "gpt-4o", start, 10 * h, "2024-11-20")
    # spend: 5 days, USD and EUR; (day, account key, meter) -> amount, latest value
    spend: dict[tuple[int, str, str, str], Decimal] = {}

    def cost(acct: FakeAccount, day: int, meter: str, amount: str, currency: str) -> None:
        fake.add_cost(acct, day, meter, amount, currency)
        key = (day, acct.name, meter, currency)
        spend[key] = spend.get(key, Decimal(0)) + Decimal(amount)

    for k in range(5):
        day = T0 - T0 % D - k * D
        cost(gpt, day, "gpt-4o-1120 Inp glbl Tokens", f"{k + 1}.10", "USD")
        cost(claude, day, "Claude Sonnet 4.5 Inp Tokens", f"{k + 2}.015", "USD")
        cost(weu, day, "gpt-4o-1120 Inp regnl Tokens", f"{k + 3}.5", "EUR")

    backfill_start = (T0 - D) - (T0 - D) % D  # a backfill of a day or more starts at 00:00 UTC: whole days
    with OTLPSink() as sink:
        cfg = config(tmp_path, fake, sink)

        # -- process 1: backfill at T0, then a poll at T0+1h that sees revisions and a new hour
        def revise() -> None:
            put(gpt, "InputTokens", "chat", "gpt-4o", T0 - 2 * H, truth[(gpt, "InputTokens", "chat", "gpt-4o",
                                                                         "2024-11-20")][T0 - 2 * H] + 500, "2024-11-20")
            put(gpt, "OutputTokens", "chat", "gpt-4o", T0 - 3 * H, 100, "2024-11-20")  # shrank from 203
            put(gpt, "InputTokens", "chat", "gpt-4o", T0, 777, "2024-11-20")

        calls_before = len(fake.api.requests)
        run_process(cfg, [T0], sink)
        revise()
        run_process(cfg, [T0 + H], sink)
        cost_queries = [r for r in fake.api.requests[calls_before:] if r.method == "POST"]
        first_cost_day = (T0 - 72 * H) - (T0 - 72 * H) % D
        assert {r.path.split("/")[2] for r in cost_queries} == {SUB, SUB_EUR}  # only the first process's poll
        tokens_start = {k: p.start_time_unix_nano for k, p in sink.number_points("llm.usage.tokens").items()}

        # -- process 2 (a restart): T0+2h, cost not due yet (cursor restored); T0+7h, cost due, spend revised
        cost(gpt, T0 - T0 % D, "gpt-4o-1120 Inp glbl Tokens", "0.40", "USD")  # today's spend grew
        cost(weu, T0 - T0 % D - D, "gpt-4o-1120 Inp regnl Tokens", "1.25", "EUR")  # a late EUR row
        seen = len(fake.api.requests)
        run_process(cfg, [T0 + 2 * H, T0 + 7 * H], sink)
        later = fake.api.requests[seen:]
        assert sum(1 for r in later if r.method == "POST" and r.param("$skiptoken") is None) == 4  # cost + unit query per scope

        # -- what the sink holds: the fake's latest values, exactly
        want_tokens: Counter[tuple[Any, ...]] = Counter()
        kinds = {"InputTokens": "input", "cacheReadInputTokens": "cache_read", "ephemeral5mInputTokens": "cache_write",
                 "OutputTokens": "output"}
        for (acct, metric, dep, model, version), points in truth.items():
            for start, value in points.items():
                if start >= backfill_start:
                    want_tokens[(acct.name, dep, f"{model}-{version}", kinds[metric])] += value
        got = by(sink, "llm.usage.tokens", "llm.tenancy.name", "llm.deployment", "gen_ai.request.model",
                 "gen_ai.token.type")
        adjustments = by(sink, "llm.usage.adjustments", "llm.tenancy.name", "llm.deployment",
                         "gen_ai.request.model", "gen_ai.token.type", measure="tokens")
        assert adjustments == {("aoai-prod", "chat", "gpt-4o-2024-11-20", "output"): 203 - 100}
        assert got - adjustments == want_tokens  # total - adjustments is exact
        assert got[("aoai-prod", "chat", "gpt-4o-2024-11-20", "input")] == want_tokens[
            ("aoai-prod", "chat", "gpt-4o-2024-11-20", "input")] > 0
        ttl = {dict(k).get("llm.cache.ttl") for k in sink.number_points("llm.usage.tokens")
               if dict(k)["gen_ai.token.type"] == "cache_write"}
        assert ttl == {"5m"}

        # money: USD in llm.usage.cost (no llm.currency attribute), EUR only in llm.usage.cost.non_usd
        want_usd: Counter[str] = Counter()
        want_eur: Counter[str] = Counter()
        for (day, acct_name, _meter, currency), amount in spend.items():
            if day >= first_cost_day:
                (want_usd if currency == "USD" else want_eur)[acct_name] += amount  # type: ignore[assignment]
        usd = by(sink, "llm.usage.cost", "llm.tenancy.name", "llm.currency")
        eur = by(sink, "llm.usage.cost.non_usd", "llm.tenancy.name", "llm.currency")
        assert set(usd) == {(name, None) for name in want_usd} and "aoai-weu" not in want_usd
        for name, amount in want_usd.items():
            assert usd[(name, None)] == pytest.approx(float(amount), abs=1e-9)
        assert set(eur) == {("aoai-weu", "EUR")}
        assert eur[("aoai-weu", "EUR")] == pytest.approx(float(want_eur["aoai-weu"]), abs=1e-9)
        assert want_eur["aoai-weu"] == sum(Decimal(k + 3) + Decimal("0.5") for k in range(4)) + Decimal("1.25")
        assert sink.metric_info("llm.usage.cost.non_usd").unit == "{currency_unit}"

        # restart continuity: the series kept their start times
        after = sink.number_points("llm.usage.tokens")
        assert all(after[k].start_time_unix_nano == start for k, start in tokens_start.items())
        requests = by(sink, "llm.receiver.provider_requests", "llm.api.operation")
        assert requests[("costmanagement.query",)] > 0 and requests[("monitor.metrics",)] > 0


def test_unmatched_cost_rows_are_counted_in_the_self_metric(tmp_path: Path, fake: FakeAzure) -> None:
    gpt = fake.add_account(FakeAccount(SUB, "rg-ai", "aoai-prod", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
    fake.add_account(FakeAccount(SUB_EUR, "rg-eu", "aoai-weu", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
    fake.add_cost(gpt, T0 - T0 % D, "gpt-4o-1120 Inp glbl Tokens", "4.50")
    fake.cost_resource_id = lambda rid: f"{rid}/deployments/chat".lower()  # matches no discovered account
    with OTLPSink() as sink:
        run_process(config(tmp_path, fake, sink), [T0], sink)
        assert by(sink, "llm.receiver.unmatched_records", "llm.source", "llm.data.source") == {(NAME, "cost"): 1}
        assert sum(by(sink, "llm.usage.cost", "llm.tenancy.id").values()) == pytest.approx(4.5)


def test_a_failing_cost_query_shows_in_the_polls_metric_and_health_while_usage_lands(
    tmp_path: Path, fake: FakeAzure
) -> None:
    gpt = fake.add_account(FakeAccount(SUB, "rg-ai", "aoai-prod", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
    fake.add_account(FakeAccount(SUB_EUR, "rg-eu", "aoai-weu", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
    fake.set_point(gpt, "InputTokens", {"ModelDeploymentName": "chat", "ModelName": "gpt-4o",
                                        "ModelVersion": "2024-11-20"}, T0 - 2 * H, 321)
    fake.add_cost(gpt, T0 - T0 % D, "gpt-4o-1120 Inp glbl Tokens", "4.50")
    fake.forbidden_cost_scopes.add(f"/subscriptions/{SUB}")
    with OTLPSink() as sink:
        receiver = run_process(config(tmp_path, fake, sink), [T0], sink)
        polls = by(sink, "llm.receiver.polls", "llm.source", "llm.data.source", "llm.outcome", "error.type")
        assert polls == {(NAME, "usage", "success", None): 1, (NAME, "cost", "failure", "auth"): 1}
        assert by(sink, "llm.usage.tokens", "gen_ai.token.type") == {("input",): 321}
        assert not sink.number_points("llm.usage.cost")
        healthy, doc = receiver.health_report()
        instance: Any = doc["instances"][NAME]  # type: ignore[index]
        assert healthy and doc["failing_sources"] == [f"{NAME}:cost"]
        assert instance["failing_sources"]["cost"]["error_type"] == "auth"
        assert "Cost Management Reader" in instance["failing_sources"]["cost"]["error"]
