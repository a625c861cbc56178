"""The Bedrock provider against moto in server mode, end to end: real boto3 -> provider -> ledger -> OTLP sink.

moto serves CloudWatch (seeded with ``put_metric_data``), Cost Explorer (seeded through its documented
``/moto-api/static/ce/cost-and-usage-results`` endpoint) and STS; what moto lacks (``ListInferenceProfiles``)
comes from the loopback fake through ``endpoint_url: {bedrock: ...}``, as a VPC endpoint would. Expected totals
are computed here from the seeded data points, never pasted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.model import Window, to_nanos
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.scheduler import Receiver
from tests.fakes.aws import FakeAws
from tests.support.moto_server import FAKE_CREDENTIALS, MotoServer
from tests.support.otlp_sink import OTLPSink

HOUR, DAY = 3600, 86400
REAL_NOW = int(datetime.now(UTC).timestamp())
NOW = REAL_NOW - REAL_NOW % HOUR + 40 * 60  # 40 minutes into the current hour
H = NOW - NOW % HOUR  # the hour still filling in
TODAY = NOW - NOW % DAY
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
EMBED = "amazon.titan-embed-text-v2:0"
GPT_OSS = "openai.gpt-oss-120b-1:0"
PROFILE_ID = "a1b2c3d4e5f6"
MOTO_ACCOUNT = "123456789012"  # moto's default account, what GetCallerIdentity answers

TOKEN_METRICS = {"InputTokenCount": "input", "OutputTokenCount": "output",
                 "CacheReadInputTokenCount": "cache_read", "CacheWriteInputTokenCount": "cache_write",
                 "TotalInputTokens": "input", "TotalOutputTokens": "output"}
REQUEST_METRICS = {"Invocations": "requests", "Inferences": "requests", "InvocationThrottles": "throttled"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: MotoServer) -> None:
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    moto.reset()


class Seeded:
    """Data points put into CloudWatch, and what the receiver must make of them."""

    def __init__(self, moto: MotoServer, profile_arn: str) -> None:
        self.moto = moto
        self.profile_arn = profile_arn
        self.points: list[tuple[str, str, str, str, int, int]] = []  # region, namespace, metric, model id, t, v

    def put(self, region: str, namespace: str, metric: str, model_id: str, at: int, value: int) -> None:
        cw = boto3.client("cloudwatch", region_name=region, endpoint_url=self.moto.url)
        cw.put_metric_data(Namespace=namespace, MetricData=[{
            "MetricName": metric, "Dimensions": [{"Name": "ModelId", "Value": model_id}],
            "Timestamp": datetime.fromtimestamp(at, UTC), "Value": float(value), "Unit": "Count",
        }])
        self.points.append((region, namespace, metric, model_id, at, value))

    def series(self, region: str, model_id: str) -> tuple[str, str, str | None]:
        """(tenancy, model, llm.inference_profile) the receiver must attribute a ModelId to."""
        if model_id == self.profile_arn:
            return PROFILE_ID, HAIKU, "application"
        if model_id.startswith("us."):
            return MOTO_ACCOUNT, model_id[3:], "us"
        if model_id.startswith("arn:"):
            return MOTO_ACCOUNT, model_id.rpartition("/")[2], None
        return MOTO_ACCOUNT, model_id, None

    def expected(self, since: int) -> tuple[Counter[tuple[Any, ...]], Counter[tuple[Any, ...]]]:
        """(tokens by (region, tenancy, model, profile, type), requests by (region, tenancy, model, profile, kind))."""
        tokens: Counter[tuple[Any, ...]] = Counter()
        requests: Counter[tuple[Any, ...]] = Counter()
        for region, _, metric, model_id, at, value in self.points:
            if at < since:
                continue
            key = (region, *self.series(region, model_id))
            if metric in TOKEN_METRICS:
                tokens[(*key, TOKEN_METRICS[metric])] += value
            else:
                requests[(*key, REQUEST_METRICS[metric])] += value
        return tokens, requests


def seed_usage(moto: MotoServer, profile_arn: str) -> Seeded:
    s = Seeded(moto, profile_arn)
    for h in range(5):  # five hours back, the current one included; minutes vary within each hour
        at = H - h * HOUR + 60 * (7 + h)
        s.put("us-east-1", "AWS/Bedrock", "InputTokenCount", HAIKU, at, 1000 + h)
        s.put("us-east-1", "AWS/Bedrock", "OutputTokenCount", HAIKU, at, 200 + h)
        s.put("us-east-1", "AWS/Bedrock", "CacheReadInputTokenCount", HAIKU, at, 5000 + h)
        s.put("us-east-1", "AWS/Bedrock", "CacheWriteInputTokenCount", HAIKU, at, 300 + h)
        s.put("us-east-1", "AWS/Bedrock", "Invocations", HAIKU, at, 10 + h)
        s.put("us-east-1", "AWS/Bedrock", "InvocationThrottles", HAIKU, at, h % 2)
        s.put("us-east-1", "AWS/Bedrock", "InputTokenCount", f"us.{HAIKU}", at + 5, 70 + h)
        s.put("us-east-1", "AWS/Bedrock", "Invocations", f"us.{HAIKU}", at + 5, 1)
        s.put("us-east-1", "AWS/Bedrock", "InputTokenCount", EMBED, at, 4000)
        s.put("us-east-1", "AWS/Bedrock", "Invocations", EMBED, at, 40)
        s.put("us-east-1", "AWS/BedrockMantle", "TotalInputTokens", GPT_OSS, at, 900 + h)
        s.put("us-east-1", "AWS/BedrockMantle", "TotalOutputTokens", GPT_OSS, at, 90)
        s.put("us-east-1", "AWS/BedrockMantle", "Inferences", GPT_OSS, at, 3)
        s.put("eu-central-1", "AWS/Bedrock", "InputTokenCount", profile_arn, at, 111 * (h + 1))
        s.put("eu-central-1", "AWS/Bedrock", "OutputTokenCount", profile_arn, at, 11)
        s.put("eu-central-1", "AWS/Bedrock", "Invocations", profile_arn, at, 2)
    # The same model spelled as a foundation-model ARN in another hour: one series with the plain id.
    s.put("us-east-1", "AWS/Bedrock", "InputTokenCount",
          f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}", H - 2 * HOUR + 1800, 55)
    return s


def day(offset: int) -> str:
    return datetime.fromtimestamp(TODAY + offset * DAY, UTC).date().isoformat()


COST_GROUPS = [  # (day offset, service, usage type, amount, UsageQuantity amount and unit)
    (-2, "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "0.0101516483", "169.194138", "1K tokens"),
    (-2, "Amazon Bedrock", "USE1-Nova2.0Lite-cache-read-input-token-count", "0.0000312", "2080", "Tokens"),
    (-2, "Claude 3 Haiku (Amazon Bedrock Edition)", "USE1-MP:USE1_InputTokenCount-Units", "1.25", "5000", "Units"),
    (-2, "Amazon Elastic Compute Cloud - Compute", "USE1-BoxUsage:t3.micro", "9.99", "24", "Hrs"),
    (-1, "Amazon Bedrock", "USE1-Claude4Sonnet-output-tokens-cross-region-global", "3.3333333333", "222.2222222",
     "1K tokens"),
    (-1, "Claude 3 Haiku (Amazon Bedrock Edition)", "USE1-MP:USE1_OutputTokenCount-Units", "0.5", "400", "Units"),
]
#: What each seeded UsageQuantity must reach the sink as: (quantity, llm.cost.quantity_unit).
QUANTITIES = {
    "USE1-Nova2.0Lite-input-tokens": (Decimal("169194.138"), "tokens"),
    "USE1-Nova2.0Lite-cache-read-input-token-count": (Decimal("2080"), "tokens"),
    "USE1-MP:USE1_InputTokenCount-Units": (Decimal("5000"), "Units"),
    "USE1-Claude4Sonnet-output-tokens-cross-region-global": (Decimal("222222.2222"), "tokens"),
    "USE1-MP:USE1_OutputTokenCount-Units": (Decimal("400"), "Units"),
}
#: What each Bedrock usage type must be read as: (gen_ai.request.model, gen_ai.token.type).
PARSED = {
    "USE1-Nova2.0Lite-input-tokens": ("Nova2.0Lite", "input"),
    "USE1-Nova2.0Lite-cache-read-input-token-count": ("Nova2.0Lite", "cache_read"),
    "USE1-MP:USE1_InputTokenCount-Units": ("Claude 3 Haiku", "input"),  # the model from the service name
    "USE1-Claude4Sonnet-output-tokens-cross-region-global": ("Claude4Sonnet", "output"),
    "USE1-MP:USE1_OutputTokenCount-Units": ("Claude 3 Haiku", "output"),
}


def seed_costs(moto: MotoServer) -> None:
    by_day: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for offset, service, usage_type, amount, quantity, unit in COST_GROUPS:
        by_day[offset].append({"Keys": [service, usage_type],
                               "Metrics": {"UnblendedCost": {"Amount": amount, "Unit": "USD"},
                                           "UsageQuantity": {"Amount": quantity, "Unit": unit}}})
    moto.seed_cost_and_usage([{
        "GroupDefinitions": [{"Type": "DIMENSION", "Key": "SERVICE"}, {"Type": "DIMENSION", "Key": "USAGE_TYPE"}],
        "ResultsByTime": [
            {"TimePeriod": {"Start": day(o), "End": day(o + 1)}, "Total": {}, "Groups": g, "Estimated": False}
            for o, g in sorted(by_day.items())
        ],
        "DimensionValueAttributes": [],
    }])


def make_config(tmp_path: Path, sink: OTLPSink, providers: dict[str, Any]) -> Config:
    return parse_config({
        "storage": {"path": str(tmp_path / "ledger.db")},
        "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}, "timeout": "2s"}},
        "providers": providers,
    })


def bedrock(moto: MotoServer, fake: FakeAws, **extra: Any) -> dict[str, Any]:
    return {
        "regions": ["us-east-1", "eu-central-1"], "endpoint": moto.url, "endpoint_url": {"bedrock": fake.url},
        "bucket_width": "1h", "lookback": "3h", "backfill": "6h", "cost_interval": "6h", "cost_lookback": "72h",
        "timeout": "5s", "max_attempts": 1, **extra,
    }


def totals(sink: OTLPSink, metric: str, *keys: str) -> dict[tuple[Any, ...], Any]:
    return {tuple(dict(k).get(a) for a in keys): p.value for k, p in sink.number_points(metric).items()}


TOKEN_KEYS = ("cloud.region", "llm.tenancy.id", "gen_ai.request.model", "llm.inference_profile", "gen_ai.token.type")
REQUEST_KEYS = ("cloud.region", "llm.tenancy.id", "gen_ai.request.model", "llm.inference_profile")


def check_usage(sink: OTLPSink, seeded: Seeded, since: int) -> None:
    tokens, requests = seeded.expected(since)
    assert totals(sink, "llm.usage.tokens", *TOKEN_KEYS) == dict(tokens)
    assert totals(sink, "llm.usage.requests", *REQUEST_KEYS) == {
        k[:-1]: v for k, v in requests.items() if k[-1] == "requests"}
    assert totals(sink, "llm.usage.throttled_requests", *REQUEST_KEYS) == {
        k[:-1]: v for k, v in requests.items() if k[-1] == "throttled"}


def run(receiver: Receiver, *polls: str) -> None:
    async def go() -> None:
        if polls:
            for name in polls:
                assert (await receiver.poll(name)).ok
            assert await asyncio.to_thread(receiver.export_now)
        else:
            assert await receiver.run_once() == 0

    asyncio.run(go())


def test_end_to_end_exact_totals_revised_point_and_restart(moto: MotoServer, tmp_path: Path) -> None:
    with FakeAws(account=MOTO_ACCOUNT) as fake, OTLPSink() as sink:
        arn = fake.add_profile("eu-central-1", PROFILE_ID, "search-team",
                               f"arn:aws:bedrock:eu-central-1::foundation-model/{HAIKU}", {"team": "search"})
        seeded = seed_usage(moto, arn)
        seed_costs(moto)
        config = make_config(tmp_path, sink, {"bedrock/prod": bedrock(moto, fake)})
        clock = [float(NOW)]
        window_start = NOW - 6 * HOUR

        receiver = Receiver(config, clock=lambda: clock[0])
        try:
            run(receiver)
            check_usage(sink, seeded, window_start - window_start % HOUR)
            # llm.tenancy.name: the application profile's name, resolved through ListInferenceProfiles
            names = {dict(k).get("llm.tenancy.id"): dict(k).get("llm.tenancy.name")
                     for k in sink.number_points("llm.usage.tokens")}
            assert names == {MOTO_ACCOUNT: None, PROFILE_ID: "search-team"}
            operations = {dict(k)["gen_ai.request.model"]: dict(k)["gen_ai.operation.name"]
                          for k in sink.number_points("llm.usage.requests")}
            assert operations == {HAIKU: "chat", EMBED: "embeddings", GPT_OSS: "chat"}
            # Cost: only Bedrock services (Marketplace included, EC2 not), amounts exact to the ledger's nano
            cost = totals(sink, "llm.usage.cost", "llm.cost.line_item", "gen_ai.request.model", "gen_ai.token.type")
            assert cost == {
                (usage_type, model, kind): float(Decimal(to_nanos(amount)) / 10**9)
                for _, service, usage_type, amount, _, _ in COST_GROUPS if "Bedrock" in service
                for model, kind in [PARSED[usage_type]]
            }
            # Billed quantity: each usage type's UsageQuantity, token counts scaled to tokens, exact to the nano
            assert totals(sink, "llm.usage.billed_quantity", "llm.cost.line_item", "llm.cost.quantity_unit") == {
                (usage_type, unit): float(Decimal(to_nanos(q)) / 10**9) for usage_type, (q, unit) in QUANTITIES.items()
            }
            start_times = {k: p.start_time_unix_nano for k, p in sink.number_points("llm.usage.tokens").items()}

            # A late data point lands in an hour already read (its Sum is revised up), another in the current one.
            seeded.put("us-east-1", "AWS/Bedrock", "InputTokenCount", HAIKU, H - HOUR + 3000, 777)
            seeded.put("eu-central-1", "AWS/Bedrock", "InputTokenCount", arn, H + 2100, 5)
            clock[0] += 300
            sink.clear()
            run(receiver, "bedrock/prod")
            check_usage(sink, seeded, window_start - window_start % HOUR)
            requests = totals(sink, "llm.receiver.provider_requests", "llm.api.operation")
            assert requests[("GetCostAndUsage",)] == 1  # cost_interval (6h) not passed: not asked again
            assert requests[("ListInferenceProfiles",)] == 1  # cached (profile_ttl 1h)
        finally:
            asyncio.run(receiver.aclose())

        # Restart: a new process on the same ledger re-reads the overlap, which adds nothing.
        clock[0] += 300
        sink.clear()
        receiver = Receiver(config, clock=lambda: clock[0])
        try:
            run(receiver)
            check_usage(sink, seeded, window_start - window_start % HOUR)
            assert {k: p.start_time_unix_nano for k, p in sink.number_points("llm.usage.tokens").items()} == start_times
            requests = totals(sink, "llm.receiver.provider_requests", "llm.api.operation")
            assert ("GetCostAndUsage",) not in requests  # the restored cost cursor says it is not due
            assert requests[("GetMetricData",)] == 2  # one per region
        finally:
            asyncio.run(receiver.aclose())
        assert len(fake.calls_of("ListInferenceProfiles")) == 2  # once per process (cached for profile_ttl)


def test_role_arn_is_assumed_and_used(moto: MotoServer, tmp_path: Path) -> None:
    """role_arn: STS AssumeRole (moto's) with the default chain's credentials, once, then the polls go on."""
    seeded = Seeded(moto, "unused")
    seeded.put("us-east-1", "AWS/Bedrock", "InputTokenCount", HAIKU, H - HOUR + 60, 42)
    config = parse_config({"providers": {"bedrock": {
        "regions": ["us-east-1"], "endpoint": moto.url, "costs": False, "mantle": False, "max_attempts": 1,
        "role_arn": f"arn:aws:iam::{MOTO_ACCOUNT}:role/llm-usage-reader",
    }}})
    provider = create_provider(config.providers[0])
    try:
        result = asyncio.run(provider.fetch(Window(H - 2 * HOUR, NOW)))
    finally:
        asyncio.run(provider.aclose())
    assert [(r.model, r.tokens) for r in result.usage] == [(HAIKU, {"input": 42})]
    assert provider.api_requests["AssumeRole"] == 1
    assert set(provider.api_requests) == {"AssumeRole", "GetCallerIdentity", "ListMetrics", "GetMetricData"}


def test_no_credentials_is_one_auth_line_and_other_providers_go_on(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with OTLPSink() as sink:
        config = make_config(tmp_path, sink, {
            "demo": {"backfill": "1h", "seed": 1},
            "bedrock": {"regions": ["us-east-1"], "endpoint": moto.url, "max_attempts": 1},
        })
        receiver = Receiver(config)
        try:
            with caplog.at_level(logging.WARNING):
                assert asyncio.run(receiver.run_once()) == 1
        finally:
            asyncio.run(receiver.aclose())
        polls = totals(sink, "llm.receiver.polls", "llm.source", "llm.data.source", "llm.outcome", "error.type")
        assert polls[("demo", "usage", "success", None)] == 1
        # no credentials: the poll fails whole, so each of its sources counts a failure
        assert polls[("bedrock", "usage", "failure", "auth")] == polls[("bedrock", "cost", "failure", "auth")] == 1
    lines = [r.getMessage() for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "no usable AWS credentials" in lines[0] and "instance roles" in lines[0]


def test_a_cost_explorer_error_never_costs_the_cloudwatch_usage(
    moto: MotoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Usage and cost are separate sources (issue 16.10): Cost Explorer refusing (its endpoint the loopback fake,
    failing on demand) leaves moto's CloudWatch tokens landing, and shows as a failed cost poll."""
    with FakeAws(account=MOTO_ACCOUNT) as fake, OTLPSink() as sink:
        arn = fake.add_profile("eu-central-1", PROFILE_ID, "search-team",
                               f"arn:aws:bedrock:eu-central-1::foundation-model/{HAIKU}", {"team": "search"})
        seeded = seed_usage(moto, arn)
        fake.fail("GetCostAndUsage", 400, "AccessDeniedException", "not authorized to perform ce:GetCostAndUsage")
        config = make_config(tmp_path, sink, {"bedrock/prod": bedrock(
            moto, fake, endpoint_url={"bedrock": fake.url, "ce": fake.url})})
        clock = [float(NOW)]
        receiver = Receiver(config, clock=lambda: clock[0])
        try:
            with caplog.at_level(logging.WARNING):
                assert asyncio.run(receiver.run_once()) == 1  # a source failed: --once says so
            window_start = NOW - 6 * HOUR
            check_usage(sink, seeded, window_start - window_start % HOUR)
            assert not sink.number_points("llm.usage.cost")
            polls = totals(sink, "llm.receiver.polls", "llm.data.source", "llm.outcome", "error.type")
            assert polls == {("usage", "success", None): 1, ("cost", "failure", "auth"): 1}
            assert "bedrock/prod: cost source failed (auth)" in caplog.text
            healthy, doc = receiver.health_report()
            assert healthy and doc["failing_sources"] == ["bedrock/prod:cost"]

            clock[0] = NOW + 300  # the next poll asks Cost Explorer again: its cursor did not move
            assert asyncio.run(receiver.run_once()) == 0
            polls = totals(sink, "llm.receiver.polls", "llm.data.source", "llm.outcome", "error.type")
            assert polls == {("usage", "success", None): 2, ("cost", "failure", "auth"): 1,
                             ("cost", "success", None): 1}
            assert receiver.health_report()[1]["failing_sources"] == []
        finally:
            asyncio.run(receiver.aclose())
