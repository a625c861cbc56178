"""The Bedrock provider against the loopback AWS fake: what moto cannot show.

Paging and batching of ``GetMetricData`` / ``ListMetrics``, throttling and retries, access denied, expired and
rejected credentials, a hung call, malformed answers, application inference profiles (moto has no
``ListInferenceProfiles``), and Cost Explorer paging, restated days, final days never re-asked, linked accounts
and cost tags. The real boto3 client talks to the fake over loopback HTTP in AWS's own wire protocols.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import ProviderError
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import PollResult, Window, to_nanos
from otel_llm_receiver.providers import create_provider, provider_problems
from otel_llm_receiver.providers.base import Provider
from otel_llm_receiver.providers.bedrock.options import BedrockOptions
from otel_llm_receiver.scheduler import Receiver
from tests.fakes.api import Response
from tests.fakes.aws import ACCOUNT, ROLE_KEY, CostRow, FakeAws
from tests.support.moto_server import FAKE_CREDENTIALS

HOUR, DAY = 3600, 86400
NOW = 1_795_683_100  # 2026-11-26 06:11:40 UTC
H = NOW - NOW % HOUR
TODAY = NOW - NOW % DAY
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
NOVA = "amazon.nova-lite-v1:0"
WINDOW = Window(H - 3 * HOUR, NOW)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def fake() -> Iterator[FakeAws]:
    with FakeAws() as f:
        yield f


def provider(fake: FakeAws, **options: Any) -> Provider:
    section = {"regions": ["us-east-1"], "endpoint": fake.url, "max_attempts": 1, "costs": False,
               "mantle": False, **options}
    return create_provider(parse_config({"providers": {"bedrock": section}}).providers[0])


def fetch(p: Provider, window: Window = WINDOW) -> PollResult:
    async def go() -> PollResult:
        try:
            return await p.fetch(window)
        finally:
            await p.aclose()

    return asyncio.run(go())


@dataclass(frozen=True)
class Failure:
    """A poll's one failure: raised whole (STS, credentials) or one source's (usage and cost fail alone)."""

    error_type: str
    message: str
    source: str | None

    def __str__(self) -> str:
        return self.message


def failure(p: Provider, window: Window = WINDOW) -> Failure:
    try:
        result = fetch(p, window)
    except ProviderError as exc:
        return Failure(exc.error_type, str(exc), None)
    ((source, failed),) = result.failed_sources.items()
    assert source not in result.polled_sources
    return Failure(failed.error_type, failed.message, source)


def day(offset: int) -> str:
    return datetime.fromtimestamp(TODAY + offset * DAY, UTC).date().isoformat()


# -- CloudWatch ---------------------------------------------------------------------------------------------
RUNTIME_METRICS = {"Invocations": "requests", "InputTokenCount": "input", "OutputTokenCount": "output",
                   "CacheReadInputTokenCount": "cache_read", "CacheWriteInputTokenCount": "cache_write"}


def test_get_metric_data_is_batched_by_500_and_paged_and_list_metrics_is_paged() -> None:
    with FakeAws(metric_page=150, list_page=40) as fake:
        want: Counter[tuple[str, int, str]] = Counter()
        models = [f"vendor.model-{i:03d}-v1:0" for i in range(101)]  # 101 models x 5 metrics = 505 queries
        for i, model in enumerate(models):
            for h in range(2):
                for metric, measure in RUNTIME_METRICS.items():
                    value = 1 + i + 10 * h + len(metric)
                    fake.put("us-east-1", "AWS/Bedrock", metric, model, H - h * HOUR + 61, value)
                    want[(model, H - h * HOUR, measure)] += value
        p = provider(fake)
        result = fetch(p)
    got: Counter[tuple[str, int, str]] = Counter()
    for r in result.usage:
        for t, n in r.tokens.items():
            got[(r.model, r.bucket_start, t)] += n
        assert r.requests is not None
        got[(r.model, r.bucket_start, "requests")] += r.requests
    assert got == want
    calls = fake.calls_of("GetMetricData")
    batches = Counter(len(c["MetricDataQueries"]) for c in calls if "NextToken" not in c)
    assert batches == {500: 1, 5: 1}  # the API's limit of 500 queries per call
    assert any("NextToken" in c for c in calls)  # 1010 points at 150 a page: pages were followed
    assert len(fake.calls_of("ListMetrics")) == -(-505 // 40)
    assert p.api_requests["GetMetricData"] == len(calls)
    assert p.api_requests["ListMetrics"] == len(fake.calls_of("ListMetrics"))


def test_cache_metrics_absent_means_no_cache_series_and_no_query_for_them(fake: FakeAws) -> None:
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", NOVA, H - HOUR + 5, 900)
    fake.put("us-east-1", "AWS/Bedrock", "OutputTokenCount", NOVA, H - HOUR + 5, 90)
    result = fetch(provider(fake))
    assert [(r.model, dict(r.tokens), r.requests) for r in result.usage] == [(NOVA, {"input": 900, "output": 90}, None)]
    asked = {q["MetricStat"]["Metric"]["MetricName"] for c in fake.calls_of("GetMetricData")
             for q in c["MetricDataQueries"]}
    assert asked == {"InputTokenCount", "OutputTokenCount"}
    assert result.complete_until == H  # the current hour is still filling in: re-read from there


def test_mantle_namespace_is_read_by_its_own_model_dimension(fake: FakeAws) -> None:
    fake.put("us-east-1", "AWS/BedrockMantle", "TotalInputTokens", "openai.gpt-oss-120b-1:0", H + 60, 500,
             dimension="Model")
    fake.put("us-east-1", "AWS/BedrockMantle", "Inferences", "openai.gpt-oss-120b-1:0", H + 60, 4, dimension="Model")
    fake.put("us-east-1", "AWS/BedrockMantle", "TotalInputTokens", "proj_abc", H + 60, 999, dimension="Project")
    result = fetch(provider(fake, mantle=True))
    assert [(r.model, dict(r.tokens), r.requests) for r in result.usage] == [
        ("openai.gpt-oss-120b-1:0", {"input": 500}, 4)]


def test_application_profiles_resolve_to_model_team_and_tags_and_are_cached() -> None:
    with FakeAws(profile_page=1) as fake:
        search = fake.add_profile("us-east-1", "aaaa1111bbbb", "search", f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}",
                                  {"team": "search", "app": "ranker"})
        fake.add_profile("us-east-1", "cccc2222dddd", "support", f"arn:aws:bedrock:us-east-1::foundation-model/{NOVA}",
                         {"team": "support"})
        fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", search, H - HOUR + 1, 10)
        fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", "cccc2222dddd", H - HOUR + 1, 20)  # a bare id
        fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", "eeee3333ffff", H - HOUR + 1, 30)  # unknown
        p = provider(fake)

        async def two_polls() -> list[PollResult]:
            try:
                return [await p.fetch(Window(H - 3 * HOUR, NOW)), await p.fetch(Window(H - 3 * HOUR, NOW + 60))]
            finally:
                await p.aclose()

        first, second = asyncio.run(two_polls())
    rows = {(r.tenancy_id, r.model, r.dimensions.get("llm.inference_profile"), r.tokens["input"]) for r in first.usage}
    assert rows == {("aaaa1111bbbb", HAIKU, "application", 10), ("cccc2222dddd", NOVA, "application", 20),
                    (ACCOUNT, "eeee3333ffff", None, 30)}  # a bare id that is no known profile: kept as is
    assert first.names == {
        ("tenancy", "aaaa1111bbbb"): "search", ("tag:team", "aaaa1111bbbb"): "search",
        ("tag:app", "aaaa1111bbbb"): "ranker", ("tenancy", "cccc2222dddd"): "support",
        ("tag:team", "cccc2222dddd"): "support",
    }
    assert second.names == first.names
    assert len(fake.calls_of("ListInferenceProfiles")) == 2  # two pages, once: the second poll used the cache
    assert fake.calls_of("ListInferenceProfiles")[0]["type"] == "APPLICATION"


def test_a_failed_profile_listing_never_blocks_usage(fake: FakeAws, caplog: pytest.LogCaptureFixture) -> None:
    arn = fake.add_profile("us-east-1", "aaaa1111bbbb", "search", f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}", {})
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", arn, H - HOUR + 1, 10)
    fake.fail("ListInferenceProfiles", 403, "AccessDeniedException")
    with caplog.at_level(logging.WARNING):
        result = fetch(provider(fake))
    assert [(r.tenancy_id, r.model, r.tokens["input"]) for r in result.usage] == [("aaaa1111bbbb", "aaaa1111bbbb", 10)]
    assert result.names == {}
    assert any("bedrock:ListInferenceProfiles" in r.getMessage() for r in caplog.records)


def test_profile_cache_refreshes_after_its_ttl() -> None:
    from otel_llm_receiver.providers.bedrock.models import ProfileCache

    now = [0.0]
    calls: list[str] = []

    async def call(service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        calls.append(operation)
        if operation == "ListTagsForResource":
            return {"tags": []}
        return {"inferenceProfileSummaries": [{
            "inferenceProfileId": "p1", "inferenceProfileArn": "arn:p1", "inferenceProfileName": f"v{now[0]:g}",
            "models": [{"modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{NOVA}"}],
            "status": "ACTIVE", "type": "APPLICATION"}]}

    cache = ProfileCache(call, ttl=60, provider="bedrock", clock=lambda: now[0])

    async def names() -> list[str | None]:
        out = []
        for t in (0.0, 59.0, 60.0):
            now[0] = t
            p = await cache.lookup("us-east-1", "p1")
            out.append(p.name if p else None)
        return out

    assert asyncio.run(names()) == ["v0", "v0", "v60"]
    assert calls.count("ListInferenceProfiles") == 2


# -- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("operation", "status", "code", "error_type", "phrase"),
    [
        ("GetMetricData", 400, "ThrottlingException", "rate_limited", "GetMetricData throttled"),
        ("GetMetricData", 403, "AccessDenied", "auth", "must allow cloudwatch:GetMetricData"),
        ("ListMetrics", 400, "AccessDeniedException", "auth", "must allow cloudwatch:ListMetrics"),
        ("GetCostAndUsage", 400, "AccessDeniedException", "auth", "must allow ce:GetCostAndUsage"),
        ("GetCostAndUsage", 400, "LimitExceededException", "rate_limited", "GetCostAndUsage throttled"),
        ("ListMetrics", 400, "ExpiredTokenException", "auth", "credentials expired"),
        ("GetCallerIdentity", 403, "ExpiredToken", "auth", "credentials expired"),
        ("GetMetricData", 400, "UnrecognizedClientException", "auth", "rejected the credentials"),
        ("GetMetricData", 500, "InternalFailure", "server_error", "server error"),
        ("GetCostAndUsage", 400, "DataUnavailableException", "bad_response", "DataUnavailableException"),
    ],
)
def test_errors_are_one_classified_line(
    fake: FakeAws, operation: str, status: int, code: str, error_type: str, phrase: str
) -> None:
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", NOVA, H + 1, 1)
    fake.fail(operation, status, code, "User: arn:aws:iam::111122223333:user/x is not authorized")
    p = provider(fake, costs=True)
    error = failure(p)
    assert error.error_type == error_type
    assert phrase in str(error) and "\n" not in str(error)
    assert p.api_requests[operation] == 1  # max_attempts 1: no retry


def test_throttling_is_retried_by_botocore_and_every_attempt_counted(fake: FakeAws) -> None:
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", NOVA, H + 1, 8)
    fake.fail("GetMetricData", 400, "ThrottlingException", "Rate exceeded")
    p = provider(fake, max_attempts=2)
    result = fetch(p)
    assert [r.tokens["input"] for r in result.usage] == [8]
    assert p.api_requests["GetMetricData"] == 2 == len(fake.calls_of("GetMetricData"))


def test_a_hung_call_is_bounded_by_timeout_and_never_blocks_the_event_loop(fake: FakeAws) -> None:
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", NOVA, H + 1, 8)
    released = fake.hang("GetMetricData")
    p = provider(fake, timeout="300ms")
    ticks = 0

    async def go() -> ProviderError:
        nonlocal ticks
        task = asyncio.create_task(p.fetch(Window(H - HOUR, NOW)))
        while not task.done():  # the loop keeps running while boto3 waits in its thread
            ticks += 1
            await asyncio.sleep(0.01)
        try:
            result = await task
            assert result.usage == [] and result.polled_sources == []
            failed = result.failed_sources["usage"]
            return ProviderError(failed.message, provider=p.name, error_type=failed.error_type)
        finally:
            await p.aclose()

    t0 = time.monotonic()
    error = asyncio.run(go())
    released.set()
    assert error.error_type == "timeout" and "timed out after 0.3s" in str(error)
    assert time.monotonic() - t0 < 5
    assert ticks > 5


def test_malformed_answers_are_rejected_whole(fake: FakeAws) -> None:
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", NOVA, H + 1, 8)
    fake.respond("GetMetricData", Response(200, {"MetricDataResults": [
        {"Id": "q0", "Timestamps": [H], "Values": [], "StatusCode": "Complete"}]}))
    assert "do not pair up" in str(failure(provider(fake)))
    fake.respond("GetMetricData", Response(200, raw=b"{not json"))
    assert failure(provider(fake)).error_type == "bad_response"
    fake.respond("GetMetricData", Response(200, {"MetricDataResults": [
        {"Id": "q0", "Timestamps": [H], "Values": [-5.0], "StatusCode": "Complete"}]}))
    assert "is not a count" in str(failure(provider(fake)))
    fake.costs.append(CostRow(day(-1), "Amazon Bedrock", "USE1-Nova-input-tokens", "1.0"))
    fake.respond("GetCostAndUsage", Response(200, {"ResultsByTime": [{"TimePeriod": {"Start": day(-1)}, "Groups": [
        {"Keys": ["Amazon Bedrock", "USE1-Nova-input-tokens"], "Metrics": {"UnblendedCost": {"Amount": "1,5"}}}]}]}))
    error = failure(provider(fake, costs=True))
    assert error.error_type == "bad_response" and "is not a decimal" in str(error)


def test_role_arn_credentials_sign_every_call(fake: FakeAws) -> None:
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", NOVA, H + 1, 8)
    p = provider(fake, role_arn="arn:aws:iam::111122223333:role/llm-usage-reader")
    fetch(p)
    signers = dict(fake.signers)
    assert signers.pop("AssumeRole") == FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]  # the default chain assumes
    assert set(signers.values()) == {ROLE_KEY}  # everything else is the role's
    assert fake.calls_of("AssumeRole")[0]["RoleArn"] == "arn:aws:iam::111122223333:role/llm-usage-reader"


def test_config_problems_are_one_config_error() -> None:
    with pytest.raises(ProviderError) as info:
        create_provider(parse_config({"providers": {"bedrock": {
            "regions": ["us-east-1", "Frankfurt"], "bucket_width": "90s", "cost_tag": "team",
            "linked_accounts": True, "endpoint_url": {"s3": "http://127.0.0.1:1"}, "cost_lookback": "30d",
        }}}).providers[0])
    message = str(info.value)
    assert info.value.error_type == "config"
    for part in ("regions[1]: 'Frankfurt' is not an AWS region", "bucket_width: ", "cannot be used together",
                 "endpoint_url.s3: ", "cost_lookback: must be at most 14d"):
        assert part in message


def test_check_reports_what_the_provider_refuses_with_key_paths() -> None:
    """Issue 19.3: ``BedrockOptions.validate()`` lines come out of ``check`` under their key paths."""
    config = parse_config({"providers": {"bedrock/prod": {
        "regions": ["us-east-1", "Frankfurt"], "endpoint_url": {"s3": "http://127.0.0.1:1"}, "cost_lookback": "30d",
    }}})
    assert provider_problems(config.providers) == [
        "providers.bedrock/prod.regions[1]: 'Frankfurt' is not an AWS region name",
        "providers.bedrock/prod.cost_lookback: must be at most 14d",
        "providers.bedrock/prod.endpoint_url.s3: is not one of cloudwatch, ce, bedrock, sts",
    ]
    options = BedrockOptions.from_config(parse_config({"providers": {"bedrock": {}}}).providers[0])
    assert options == BedrockOptions() and (options.bucket_width, options.cost_lookback) == (3600.0, 3 * 86400.0)


# -- Cost Explorer ------------------------------------------------------------------------------------------
def cost_rows() -> list[CostRow]:
    rows = []
    for offset in range(-8, 1):  # eight days back and today
        rows += [
            CostRow(day(offset), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", f"0.{offset + 10:02d}10516483"),
            CostRow(day(offset), "Amazon Bedrock", "USE1-Nova2.0Lite-output-tokens", "0.25"),
            CostRow(day(offset), "Claude 3 Haiku (Amazon Bedrock Edition)", "USW2-MP:USW2_InputTokenCount-Units",
                    f"{offset + 9}.125"),
            CostRow(day(offset), "Amazon Simple Storage Service", "USE1-TimedStorage-ByteHrs", "3.5"),
        ]
    return rows


def cost_totals(path: Path) -> dict[tuple[str | None, str | None], tuple[int, int]]:
    with Ledger(path, readonly=True) as reader:
        out = {}
        for s in reader.snapshot().series:
            if s.metric == "llm.usage.cost":
                import json

                a = json.loads(s.attrs)
                out[(a.get("llm.tenancy.id"), a.get("llm.cost.line_item"))] = (s.total, s.adjustments)
        return out


def expected(rows: list[CostRow], since: str, *, owner: Any = lambda r: ACCOUNT) -> dict[tuple[Any, str], int]:
    want: Counter[tuple[Any, str]] = Counter()
    for r in rows:
        if r.day >= since and "Bedrock" in r.service:
            want[(owner(r), r.usage_type)] += to_nanos(Decimal(r.amount))
    return dict(want)


def test_costs_paged_restated_days_counted_and_final_days_never_reasked(tmp_path: Path) -> None:
    with FakeAws(cost_page=5) as fake:
        fake.costs = cost_rows()
        config = parse_config({"storage": {"path": str(tmp_path / "ledger.db")}, "providers": {"bedrock": {
            "regions": ["us-east-1"], "endpoint": fake.url, "max_attempts": 1, "mantle": False,
            "backfill": "7d", "cost_interval": "6h", "cost_lookback": "72h",
        }}})
        clock = [float(NOW)]
        receiver = Receiver(config, exporters=[], clock=lambda: clock[0])

        seen: Counter[str] = Counter()

        def poll() -> dict[str, int]:
            """One poll; the API requests it made, by operation (from the receiver's own counter)."""
            outcome = asyncio.run(receiver.poll("bedrock"))
            assert outcome.ok, outcome
            total = Counter({op: n for (_, op), n in receiver.health.reading().api_requests.items()})
            made = total - seen
            seen.update(made)
            return dict(made)

        try:
            requests = poll()
            first = fake.calls_of("GetCostAndUsage")
            # A 7-day backfill asks for the 7 days back and today: 4 groups a day (S3's too: Cost Explorer cannot
            # filter services by pattern, so they are left out here), 5 groups a page: 7 billed requests.
            assert first[0]["TimePeriod"] == {"Start": day(-7), "End": day(1)}
            assert len(first) == -(-8 * 4 // 5) == requests["GetCostAndUsage"] == 7
            assert cost_totals(config.storage.path) == {k: (v, 0) for k, v in expected(fake.costs, day(-7)).items()}

            # Cost Explorer restates recent days: yesterday grows, two days ago shrinks; five days ago changes
            # too, but that day was final (older than cost_lookback) and is never asked for again.
            before = {(r.day, r.usage_type): r.amount for r in fake.costs}
            for r in fake.costs:
                if r.usage_type.startswith("USW2-MP") and r.day in (day(-1), day(-2), day(-5)):
                    r.amount = str(Decimal(r.amount) + (Decimal("1.5") if r.day != day(-2) else Decimal("-0.5")))
            clock[0] += 3 * HOUR
            assert "GetCostAndUsage" not in poll()  # cost_interval (6h) not passed yet
            clock[0] += 3 * HOUR + 60
            poll()
            second = fake.calls_of("GetCostAndUsage")[len(first):]
            final_until = (NOW + 6 * HOUR + 60 - 3 * DAY) // DAY * DAY
            assert second[0]["TimePeriod"]["Start"] == datetime.fromtimestamp(final_until, UTC).date().isoformat()
            # total - adjustments is exactly the latest amount seen of each day: the final days as first read,
            # the re-read days as restated; the shrink of two days ago is counted as an adjustment.
            first_day = datetime.fromtimestamp(final_until, UTC).date().isoformat()
            latest = {(r.day, r.usage_type): (r.amount if r.day >= first_day else before[(r.day, r.usage_type)])
                      for r in fake.costs if r.day >= day(-7) and "Bedrock" in r.service}
            want = Counter[str]()
            for (_, usage_type), amount in latest.items():
                want[usage_type] += to_nanos(Decimal(amount))
            totals = cost_totals(config.storage.path)
            assert {line: total - adjusted for (_, line), (total, adjusted) in totals.items()} == dict(want)
            assert {line: adjusted for (_, line), (_, adjusted) in totals.items() if adjusted} == {
                "USW2-MP:USW2_InputTokenCount-Units": to_nanos("0.5")}
        finally:
            asyncio.run(receiver.aclose())


def test_linked_accounts_ask_each_bedrock_service_grouped_by_account(fake: FakeAws) -> None:
    fake.costs = [
        CostRow(day(-1), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "1.5", linked_account="444455556666"),
        CostRow(day(-1), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "2.25", linked_account="777788889999"),
        CostRow(day(-1), "Claude 3 Haiku (Amazon Bedrock Edition)", "USW2-MP:USW2_InputTokenCount-Units", "4",
                linked_account="777788889999"),
        CostRow(day(-1), "Amazon Simple Storage Service", "USE1-TimedStorage-ByteHrs", "3.5"),
    ]
    p = provider(fake, costs=True, linked_accounts=True, backfill="2d")
    result = fetch(p)
    got = {(c.tenancy_id, c.line_item, c.model): c.amount for c in result.costs}
    assert got == {
        ("444455556666", "USE1-Nova2.0Lite-input-tokens", "Nova2.0Lite"): Decimal("1.5"),
        ("777788889999", "USE1-Nova2.0Lite-input-tokens", "Nova2.0Lite"): Decimal("2.25"),
        ("777788889999", "USW2-MP:USW2_InputTokenCount-Units", "Claude 3 Haiku"): Decimal("4"),
    }
    calls = fake.calls_of("GetCostAndUsage")
    assert all(len(c["GroupBy"]) <= 2 for c in calls)
    assert [c.get("Filter", {}).get("Dimensions", {}).get("Values") for c in calls] == [
        None, ["Amazon Bedrock"], ["Claude 3 Haiku (Amazon Bedrock Edition)"]]
    assert p.api_requests["GetCostAndUsage"] == 3  # one query to find the services, one per Bedrock service


def test_cost_tag_value_owns_the_spend_and_untagged_spend_stays_with_the_payer(fake: FakeAws) -> None:
    fake.costs = [
        CostRow(day(-1), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "1.5", tags={"team": "search"}),
        CostRow(day(-1), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "0.75"),
    ]
    result = fetch(provider(fake, costs=True, cost_tag="team", backfill="2d"))
    assert {(c.tenancy_id, c.amount) for c in result.costs} == {("search", Decimal("1.5")), (ACCOUNT, Decimal("0.75"))}
    assert fake.calls_of("GetCostAndUsage")[1]["GroupBy"][1] == {"Type": "TAG", "Key": "team"}


@pytest.mark.parametrize(
    ("operation", "status", "code", "phrase"),
    [
        ("GetMetricData", 403, "AccessDenied", "the IAM policy must allow cloudwatch:GetMetricData"),
        ("GetCallerIdentity", 403, "ExpiredToken", "AWS credentials expired (ExpiredToken) calling GetCallerIdentity"),
    ],
)
def test_denied_or_expired_is_one_log_line_and_other_providers_go_on(
    fake: FakeAws, tmp_path: Path, caplog: pytest.LogCaptureFixture, operation: str, status: int, code: str,
    phrase: str,
) -> None:
    fake.put("us-east-1", "AWS/Bedrock", "InputTokenCount", NOVA, H + 1, 8)
    fake.fail(operation, status, code)
    config = parse_config({"storage": {"path": str(tmp_path / "ledger.db")}, "providers": {
        "demo": {"backfill": "1h", "seed": 1},
        "bedrock/prod": {"regions": ["us-east-1"], "endpoint": fake.url, "max_attempts": 1},
    }})
    receiver = Receiver(config, exporters=[])
    try:
        with caplog.at_level(logging.WARNING):
            outcomes = {name: asyncio.run(receiver.poll(name)) for name in ("demo", "bedrock/prod")}
    finally:
        asyncio.run(receiver.aclose())
    assert outcomes["demo"].ok
    assert not outcomes["bedrock/prod"].ok and outcomes["bedrock/prod"].error_type == "auth"
    lines = [r.getMessage() for r in caplog.records if "failed (auth)" in r.getMessage()]
    # STS fails the poll whole; CloudWatch fails the usage source alone (its cost still read)
    assert len(lines) == 1 and lines[0].startswith((
        "bedrock/prod: poll failed (auth): ", "bedrock/prod: usage source failed (auth)"))
    assert phrase in lines[0] and "\n" not in lines[0] and all(r.exc_info is None for r in caplog.records)


# -- Billed quantities (UsageQuantity) -----------------------------------------------------------------------
def quantity_totals(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """``llm.usage.billed_quantity`` of the ledger by (line item, unit): (total, adjustments) in nano-units."""
    import json

    with Ledger(path, readonly=True) as reader:
        return {(a["llm.cost.line_item"], a["llm.cost.quantity_unit"]): (s.total, s.adjustments)
                for s in reader.snapshot().series if s.metric == "llm.usage.billed_quantity"
                for a in [json.loads(s.attrs)]}


def quantity_rows() -> list[CostRow]:
    """Two days of usage in the units Cost Explorer names: tokens per thousand, Marketplace units, storage."""
    rows = []
    for offset in (-2, -1):
        rows += [
            CostRow(day(offset), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "0.0101516483",
                    quantity=f"{offset + 3}1.234567891", unit="1K tokens"),
            CostRow(day(offset), "Amazon Bedrock", "USE1-Nova2.0Lite-output-tokens", "0.25", quantity="1042",
                    unit="Tokens"),
            CostRow(day(offset), "Claude 3 Haiku (Amazon Bedrock Edition)", "USW2-MP:USW2_InputTokenCount-Units",
                    "1.125", quantity="4500.5", unit="Units"),
            CostRow(day(offset), "Amazon Bedrock", "USE1-Nova2.0Lite-mixed", "0.5", quantity="7"),  # unit N/A
            CostRow(day(offset), "Amazon Simple Storage Service", "USE1-TimedStorage-ByteHrs", "3.5",
                    quantity="99", unit="GB-Mo"),
        ]
    return rows


def test_usage_quantity_is_asked_and_each_record_carries_it_exactly(fake: FakeAws) -> None:
    fake.costs = quantity_rows()
    result = fetch(provider(fake, costs=True, backfill="3d"))
    assert all(c["Metrics"] == ["UnblendedCost", "UsageQuantity"] for c in fake.calls_of("GetCostAndUsage"))
    got = {(c.bucket_start, c.line_item): (c.amount, c.quantity, c.quantity_unit) for c in result.costs}
    yesterday, before = TODAY - DAY, TODAY - 2 * DAY
    assert got == {
        # "1K tokens" is scaled exactly to tokens; "Tokens" is tokens; other units stay as Cost Explorer names them
        (before, "USE1-Nova2.0Lite-input-tokens"): (Decimal("0.0101516483"), Decimal("11234.567891"), "tokens"),
        (yesterday, "USE1-Nova2.0Lite-input-tokens"): (Decimal("0.0101516483"), Decimal("21234.567891"), "tokens"),
        (before, "USE1-Nova2.0Lite-output-tokens"): (Decimal("0.25"), Decimal("1042"), "tokens"),
        (yesterday, "USE1-Nova2.0Lite-output-tokens"): (Decimal("0.25"), Decimal("1042"), "tokens"),
        (before, "USW2-MP:USW2_InputTokenCount-Units"): (Decimal("1.125"), Decimal("4500.5"), "Units"),
        (yesterday, "USW2-MP:USW2_InputTokenCount-Units"): (Decimal("1.125"), Decimal("4500.5"), "Units"),
        # a sum of mixed units (N/A) is no quantity: the cost stays, the quantity is unknown
        (before, "USE1-Nova2.0Lite-mixed"): (Decimal("0.5"), None, None),
        (yesterday, "USE1-Nova2.0Lite-mixed"): (Decimal("0.5"), None, None),
    }


def test_linked_accounts_carry_each_accounts_quantity(fake: FakeAws) -> None:
    fake.costs = [
        CostRow(day(-1), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "1.5", linked_account="444455556666",
                quantity="3", unit="1M tokens"),
        CostRow(day(-1), "Amazon Bedrock", "USE1-Nova2.0Lite-input-tokens", "2.25", linked_account="777788889999",
                quantity="0.000004", unit="1M tokens"),
    ]
    result = fetch(provider(fake, costs=True, linked_accounts=True, backfill="2d"))
    assert {(c.tenancy_id, c.quantity, c.quantity_unit) for c in result.costs} == {
        ("444455556666", Decimal("3000000"), "tokens"), ("777788889999", Decimal("4"), "tokens")}
    assert all(c["Metrics"] == ["UnblendedCost", "UsageQuantity"] for c in fake.calls_of("GetCostAndUsage"))


def test_a_malformed_quantity_rejects_the_poll(fake: FakeAws) -> None:
    fake.costs.append(CostRow(day(-1), "Amazon Bedrock", "USE1-Nova-input-tokens", "1.0"))
    fake.respond("GetCostAndUsage", Response(200, {"ResultsByTime": [{"TimePeriod": {"Start": day(-1)}, "Groups": [
        {"Keys": ["Amazon Bedrock", "USE1-Nova-input-tokens"], "Metrics": {
            "UnblendedCost": {"Amount": "1.5", "Unit": "USD"}, "UsageQuantity": {"Amount": "NaN", "Unit": "Tokens"}}}]}]}))
    error = failure(provider(fake, costs=True))
    assert error.error_type == "bad_response" and "quantity 'NaN' is not a decimal" in str(error)


def test_quantities_reach_the_ledger_exactly_and_restated_days_count_like_cost(tmp_path: Path) -> None:
    with FakeAws(cost_page=3) as fake:
        fake.costs = quantity_rows()
        config = parse_config({"storage": {"path": str(tmp_path / "ledger.db")}, "providers": {"bedrock": {
            "regions": ["us-east-1"], "endpoint": fake.url, "max_attempts": 1, "mantle": False,
            "backfill": "3d", "cost_interval": "1h", "cost_lookback": "72h",
        }}})
        clock = [float(NOW)]
        receiver = Receiver(config, exporters=[], clock=lambda: clock[0])

        def poll() -> None:
            outcome = asyncio.run(receiver.poll("bedrock"))
            assert outcome.ok, outcome

        def want() -> dict[tuple[str, str], int]:
            out: Counter[tuple[str, str]] = Counter()
            for r in fake.costs:
                if "Bedrock" in r.service and r.unit != "N/A":
                    scale = 1000 if r.unit == "1K tokens" else 1
                    unit = "tokens" if "tokens" in r.unit.lower() else r.unit
                    out[(r.usage_type, unit)] += to_nanos(Decimal(r.quantity) * scale)
            return dict(out)

        try:
            poll()
            first = want()
            assert quantity_totals(config.storage.path) == {k: (v, 0) for k, v in first.items()}
            # Cost Explorer restates both days: yesterday's Marketplace usage grows, the day before's input
            # tokens shrink (and their cost with them). The ledger keeps the latest of each day; the shrink is
            # an adjustment, exactly as for the cost.
            for r in fake.costs:
                if r.usage_type.startswith("USW2-MP") and r.day == day(-1):
                    r.quantity, r.amount = "6000.25", "1.5"
                if r.usage_type == "USE1-Nova2.0Lite-input-tokens" and r.day == day(-2):
                    r.quantity, r.amount = "10.000000001", "0.009"
            clock[0] += HOUR + 60
            poll()
            totals = quantity_totals(config.storage.path)
            assert {k: total - adjusted for k, (total, adjusted) in totals.items()} == want()
            assert {k: adjusted for k, (_, adjusted) in totals.items() if adjusted} == {
                ("USE1-Nova2.0Lite-input-tokens", "tokens"): to_nanos(Decimal("11234.567891") - Decimal("10000.000001"))}
            mp = ("USW2-MP:USW2_InputTokenCount-Units", "Units")
            assert totals[mp][0] - first[mp] == to_nanos(Decimal("6000.25") - Decimal("4500.5"))  # the growth
            costs = cost_totals(config.storage.path)
            assert costs[(ACCOUNT, "USE1-Nova2.0Lite-input-tokens")][1] == to_nanos(Decimal("0.0101516483") - Decimal("0.009"))
        finally:
            asyncio.run(receiver.aclose())
