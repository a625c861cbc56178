"""Contract tests: the real ``anthropic`` provider, scheduler windows and ledger against the loopback fake API.

Every total is computed by the test from the fake's own data (``truth_*``), never pasted, and compared exactly:
tokens by type and cache TTL, web-search requests, and reported cost to the last fraction of a cent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import ConfigError
from otel_llm_receiver.providers.anthropic import AnthropicProvider
from tests.fakes.anthropic import (
    ADMIN_KEY,
    COST_PATH,
    DAY,
    HOUR,
    MINUTE,
    OVERLOADED,
    RATE_LIMITED,
    USAGE_PATH,
    WORKSPACES_PATH,
    FakeAnthropic,
    Group,
    counts,
)
from tests.fakes.api import Request, Response
from tests.support.anthropic_harness import Harness, nonzero

NOW = int(datetime(2026, 11, 20, 10, 17, tzinfo=UTC).timestamp())
SONNET = "claude-sonnet-4-20250514"
PROD = Group("wrkspc_01Prod", SONNET)


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        api.populate(NOW - 20 * HOUR, NOW - 2 * MINUTE, seed=11, every=20 * MINUTE)
        yield api


def run(tmp_path: Path, fake: FakeAnthropic, scenario: Callable[[Harness], Awaitable[None]], **options: object
        ) -> Harness:
    """Run ``scenario`` on one event loop (the provider's HTTP client lives on it) and close the receiver."""
    harness = Harness(tmp_path, fake, NOW, **options)

    async def go() -> None:
        try:
            await scenario(harness)
        finally:
            await harness.close()

    asyncio.run(go())
    return harness


def assert_exact(h: Harness, fake: FakeAnthropic) -> None:
    assert h.tokens() == nonzero(fake.truth_tokens())
    assert h.tool_requests() == nonzero(fake.truth_tool_requests())
    assert h.cost_usd() == nonzero(fake.truth_cost_usd())


# -- the happy path ------------------------------------------------------------------------------------------------
def test_first_poll_backfills_tokens_by_type_and_ttl_tools_cost_and_names(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    async def scenario(h: Harness) -> None:
        outcome = await h.poll()
        assert outcome.ok, outcome

    h = run(tmp_path, fake, scenario)
    assert_exact(h, fake)
    tokens = h.tokens()
    # Both cache TTLs and the default workspace (null workspace_id) arrived as such.
    assert {k[3] for k in tokens if k[2] == "cache_write"} == {"5m", "1h"}
    assert any(k[0] == "default" for k in tokens)
    assert h.names() == {"default": "Default Workspace", "wrkspc_01Prod": "Production",
                         "wrkspc_02Research": "Research", "wrkspc_03Old": "Old Experiments"}
    # Bounded attributes carry the price-changing dimensions, and the tenant is the configured one.
    attrs = [a for a, _, _ in h.series("llm.usage.tokens")]
    assert {a.get("llm.service_tier") for a in attrs} == {"standard", "batch", "priority", "flex"}
    assert {a.get("llm.context_window") for a in attrs} == {"0-200k", "200k-1M"}
    assert {a.get("llm.inference_geo") for a in attrs} == {"global", "us"}
    assert all(a["llm.tenant"] == "acme" and a["gen_ai.provider.name"] == "anthropic" for a in attrs)
    assert all("llm.api_key.id" not in a for a in attrs)  # opt-in only
    # The request: always bucket_width, the limit allowed for it, the dimensions, both headers.
    (usage,) = fake.api.requests_to(USAGE_PATH)
    assert usage.param("bucket_width") == "1h" and usage.param("limit") == "168"
    assert usage.params("group_by[]") == ["workspace_id", "model", "service_tier", "context_window",
                                          "inference_geo"]
    assert usage.headers["x-api-key"] == ADMIN_KEY and usage.headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in usage.headers
    assert usage.param("starting_at") == "2026-11-19T00:00:00Z"  # 24h backfill, from 00:00 UTC: a whole day
    assert usage.param("ending_at") == "2026-11-20T11:00:00Z"  # includes the growing current hour
    (cost,) = fake.api.requests_to(COST_PATH)
    assert cost.params("group_by[]") == ["workspace_id", "description"] and cost.param("bucket_width") == "1d"
    assert cost.param("starting_at") == "2026-11-13T00:00:00Z"  # 7d cost backfill, whole days
    (workspaces,) = fake.api.requests_to(WORKSPACES_PATH)
    assert workspaces.param("include_archived") == "true"


def test_cost_keeps_model_token_type_ttl_and_cost_type(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok

    h = run(tmp_path, fake, scenario)
    items = {(a.get("gen_ai.request.model"), a["llm.cost.line_item"], a.get("llm.cache.ttl"))
             for a, _, _ in h.series("llm.usage.cost")}
    assert (SONNET, "input", None) in items
    assert (SONNET, "cache_write", "5m") in items and (SONNET, "cache_write", "1h") in items
    assert (None, "web_search", None) in items  # a non-token cost: no model
    # Priority Tier spend is not in the cost report: its workspace/model has tokens but no cost row.
    priority = [a for a, _, _ in h.series("llm.usage.cost") if a.get("llm.service_tier") == "priority"]
    assert priority == [] and any(a.get("llm.service_tier") == "priority"
                                  for a, _, _ in h.series("llm.usage.tokens"))


# -- exactly once across polls -------------------------------------------------------------------------------------
def test_growing_bucket_late_row_shrink_and_restated_cost_day(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok
        assert_exact(h, fake)
        h.now += 5 * MINUTE
        fake.add(NOW + 1 * MINUTE, PROD, counts(uncached_input_tokens=111, ephemeral_1h_input_tokens=7))  # grows
        fake.add(NOW - 90 * MINUTE, PROD, counts(output_tokens=222, web_search_requests=2))  # a late row
        research = Group("wrkspc_02Research", "claude-opus-4-1-20250805", context_window="200k-1M",
                         inference_geo="us")
        minute = next(m for m, g, c in fake.events() if g == research and m >= NOW - 60 * MINUTE
                      and c.output_tokens >= 10)
        fake.remove(minute, research, counts(output_tokens=10))  # a correction: the bucket shrinks
        fake.restate_cost(NOW - DAY, "1.1")  # yesterday's cost restated upwards
        assert (await h.poll()).ok
        assert_exact(h, fake)
        assert h.adjustments("llm.usage.tokens") == 10
        fake.restate_cost(NOW - DAY, "0.9")  # ...and down again: a shrink of reported cost
        h.now += 5 * MINUTE
        assert (await h.poll()).ok
        assert_exact(h, fake)
        assert h.adjustments("llm.usage.cost") > 0
        before = h.series("llm.usage.tokens")
        h.now += 5 * MINUTE
        assert (await h.poll()).ok  # nothing changed: nothing added
        assert h.series("llm.usage.tokens") == before

    run(tmp_path, fake, scenario)


def test_restart_mid_sequence_changes_nothing(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok
        fake.add(NOW - 30 * MINUTE, PROD, counts(cache_read_input_tokens=1000))
        await h.restart()  # a new process: cold name cache, same ledger
        h.now += 5 * MINUTE
        assert (await h.poll()).ok
        assert_exact(h, fake)
        totals = h.series("llm.usage.tokens")
        await h.restart()
        assert (await h.poll()).ok  # the same window again after a restart adds nothing
        assert h.series("llm.usage.tokens") == totals
        assert_exact(h, fake)

    run(tmp_path, fake, scenario)


@pytest.mark.parametrize(("width", "limit"), [("1m", "1440"), ("1h", "168"), ("1d", "31")])
def test_every_bucket_width_sends_its_page_limit_and_sums_the_same(
    tmp_path: Path, fake: FakeAnthropic, width: str, limit: str
) -> None:
    async def scenario(h: Harness) -> None:
        h.now = NOW + 30  # mid-minute: the 1m report spans 1441 buckets
        assert (await h.poll()).ok

    h = run(tmp_path, fake, scenario, bucket_width=width)
    assert h.tokens() == nonzero(fake.truth_tokens())
    requests = fake.api.requests_to(USAGE_PATH)
    assert {r.param("limit") for r in requests} == {limit}
    assert {r.param("bucket_width") for r in requests} == {width}
    if width == "1m":  # 24h of minutes is 1441 buckets: the second page is followed
        assert len(requests) == 2 and requests[1].param("page")


def test_paging_to_the_end_of_every_report_and_the_workspace_list(tmp_path: Path) -> None:
    with FakeAnthropic(max_page_buckets=5, max_page_workspaces=1) as fake:
        fake.populate(NOW - 20 * HOUR, NOW - 2 * MINUTE, seed=5)

        async def scenario(h: Harness) -> None:
            assert (await h.poll()).ok

        h = run(tmp_path, fake, scenario)
        assert_exact(h, fake)
        assert len(fake.api.requests_to(USAGE_PATH)) == 7  # 35 hourly buckets (from 00:00 UTC), 5 a page
        assert len(fake.api.requests_to(COST_PATH)) == 2  # 8 days, 5 a page
        assert [r.param("after_id") for r in fake.api.requests_to(WORKSPACES_PATH)] == [
            None, "wrkspc_01Prod", "wrkspc_02Research"]
        assert h.names()["wrkspc_03Old"] == "Old Experiments"  # archived, on the last page


def test_left_out_group_fields_parse_like_nulls(tmp_path: Path) -> None:
    with FakeAnthropic(omit_ungrouped=True) as fake:
        fake.populate(NOW - 6 * HOUR, NOW - 2 * MINUTE, seed=3)

        async def scenario(h: Harness) -> None:
            assert (await h.poll()).ok

        h = run(tmp_path, fake, scenario, dimensions=["workspace", "model"])
        assert_exact(h, fake)
        assert all("llm.service_tier" not in a for a, _, _ in h.series("llm.usage.tokens"))


def test_api_key_and_speed_are_opt_in_with_console_and_beta_header(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok

    h = run(tmp_path, fake, scenario, dimensions=["workspace", "model", "api_key", "speed"])
    assert_exact(h, fake)
    keys = {a["llm.api_key.id"] for a, _, _ in h.series("llm.usage.tokens")}
    assert keys == {"apikey_01", "console"}  # null api_key_id: Console / Workbench usage
    assert {a["llm.speed"] for a, _, _ in h.series("llm.usage.tokens")} == {"standard"}
    assert fake.api.requests_to(USAGE_PATH)[0].headers["anthropic-beta"] == "fast-mode-2026-02-01"


def test_unknown_enum_values_pass_through(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.add(NOW - HOUR, Group("wrkspc_01Prod", SONNET, service_tier="flex_discount", inference_geo="eu",
                               context_window="1M-2M"), counts(uncached_input_tokens=5, output_tokens=1))

    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok

    h = run(tmp_path, fake, scenario)
    assert_exact(h, fake)
    assert any(a.get("llm.service_tier") == "flex_discount" and a.get("llm.inference_geo") == "eu"
               and a.get("llm.context_window") == "1M-2M" for a, _, _ in h.series("llm.usage.tokens"))


# -- failures ------------------------------------------------------------------------------------------------------
def test_429_honours_retry_after_and_529_is_retried(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.api.fail_next(USAGE_PATH, 429, retry_after="1", body=RATE_LIMITED)
    fake.api.fail_next(COST_PATH, 529, count=2, body=OVERLOADED)

    async def scenario(h: Harness) -> None:
        t0 = time.monotonic()
        assert (await h.poll()).ok
        assert time.monotonic() - t0 >= 1.0  # waited out Retry-After

    h = run(tmp_path, fake, scenario)
    assert_exact(h, fake)
    assert len(fake.api.requests_to(USAGE_PATH)) == 2 and len(fake.api.requests_to(COST_PATH)) == 3


@pytest.mark.parametrize(
    ("path", "status", "body", "error_type", "says"),
    [
        (USAGE_PATH, 500, None, "server_error", "HTTP 500"),
        (COST_PATH, 529, OVERLOADED, "server_error", "Overloaded"),
        (USAGE_PATH, 200, b'{"data": [', "bad_response", "not JSON"),
        (USAGE_PATH, 200, b'{"data": [{"starting_at": "2026-11-20T09:00:00Z", "ending_at": "2026-11-20T10:00:00Z",'
                          b' "results": [{"uncached_input_tokens": "12", "cache_read_input_tokens": 0,'
                          b' "output_tokens": 0, "cache_creation": {"ephemeral_5m_input_tokens": 0,'
                          b' "ephemeral_1h_input_tokens": 0}}]}], "has_more": false, "next_page": null}',
         "bad_response", "results[0].uncached_input_tokens"),
        (COST_PATH, 200, b'{"data": [{"starting_at": "2026-11-19T00:00:00Z", "ending_at": "2026-11-20T00:00:00Z",'
                         b' "results": [{"amount": 12.5, "currency": "USD"}]}], "has_more": false}',
         "bad_response", "results[0].amount"),
        (USAGE_PATH, 200, b'{"data": [], "has_more": true, "next_page": null}', "bad_response", "next_page"),
    ],
    ids=["5xx-exhausted", "529-exhausted", "malformed-json", "wrong-typed-tokens", "float-amount", "no-next-page"],
)
def test_a_bad_poll_writes_nothing(
    tmp_path: Path, fake: FakeAnthropic, path: str, status: int, body: bytes | None, error_type: str, says: str
) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok
        before = (h.series("llm.usage.tokens"), h.series("llm.usage.cost"))
        fake.add(NOW + MINUTE, PROD, counts(uncached_input_tokens=1_000_000))  # would show if written
        h.now += 5 * MINUTE
        fake.api.fail_next(path, status, count=5, body=body)
        outcome = await h.poll()
        # the report that failed writes nothing; the other one is a separate source and lands (issue 16.10)
        source, metric = ("usage", "llm.usage.tokens") if path == USAGE_PATH else ("cost", "llm.usage.cost")
        assert outcome.failed_sources == (source,) and outcome.ok == (source != "usage")
        failing = h.receiver.health.statuses()[0].failing_sources[source]
        assert failing.error_type == error_type and says in failing.error
        assert h.series(metric) == before[0 if source == "usage" else 1]
        fake.api.clear()
        assert (await h.poll()).ok  # the next good poll catches up exactly
        assert_exact(h, fake)

    run(tmp_path, fake, scenario, max_retries=2)


def test_a_bad_second_page_discards_the_good_first_page(tmp_path: Path) -> None:
    with FakeAnthropic(max_page_buckets=5) as fake:
        fake.populate(NOW - 20 * HOUR, NOW - 2 * MINUTE, seed=5)
        original = fake.api._routes[("GET", USAGE_PATH)]
        calls: list[int] = []

        def flaky(request: Request) -> Response:
            calls.append(1)
            response = original(request)
            if len(calls) == 2:
                response.body["data"][0]["results"].append({"uncached_input_tokens": -1})
            return response

        fake.api.route("GET", USAGE_PATH, flaky)

        async def scenario(h: Harness) -> None:
            outcome = await h.poll()
            assert not outcome.ok and outcome.error_type == "bad_response"
            assert h.series("llm.usage.tokens") == []

        run(tmp_path, fake, scenario)


def test_wrong_key_is_an_auth_error_without_retries_or_the_key(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        outcome = await h.poll()
        assert not outcome.ok and outcome.error_type == "auth"
        message = h.receiver.health.statuses()[0].last_error or ""
        assert "HTTP 401" in message and "sk-ant-admin" in message and "wrong-key" not in message

    run(tmp_path, fake, scenario, admin_key="sk-ant-api03-wrong-key-0000")
    assert len(fake.api.requests) == 2  # one 401 per report (separate sources), never retried


def test_a_failed_workspace_lookup_never_blocks_usage(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.api.fail_next(WORKSPACES_PATH, 500, count=10)

    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok
        assert h.names() == {"default": "Default Workspace"}
        fake.api.clear()
        h.now += 5 * MINUTE
        assert (await h.poll()).ok  # a failed lookup is retried on the next poll
        assert h.names()["wrkspc_01Prod"] == "Production"

    h = run(tmp_path, fake, scenario)
    assert_exact(h, fake)


def test_names_are_cached_for_names_ttl(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        for _ in range(3):
            assert (await h.poll()).ok
        fake.workspaces[0]["name"] = "Production (renamed)"
        provider = h.receiver.providers["anthropic/test"]
        assert isinstance(provider, AnthropicProvider)
        provider._names_at = -1e12  # the TTL ran out
        assert (await h.poll()).ok
        assert h.names()["wrkspc_01Prod"] == "Production (renamed)"

    run(tmp_path, fake, scenario, names_ttl="1h")
    assert len(fake.api.requests_to(WORKSPACES_PATH)) == 2


# -- config --------------------------------------------------------------------------------------------------------
def test_config_is_checked_with_key_paths() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"anthropic/x": {"bucket_width": "2h", "dimensions": ["workspace", "user"]}}})
    text = str(info.value)
    assert "providers.anthropic/x.admin_key" in text
    assert "providers.anthropic/x.bucket_width" in text
    assert "providers.anthropic/x.dimensions" in text


def test_required_dimensions_and_cost_window_limits_fail_the_poll_as_config(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    async def scenario(h: Harness) -> None:
        outcome = await h.poll()
        assert not outcome.ok and outcome.error_type == "config"
        message = h.receiver.health.statuses()[0].last_error or ""
        assert "dimensions: must include model" in message and "cost_lookback: must be at most 7d" in message

    run(tmp_path, fake, scenario, dimensions=["workspace"], cost_lookback="30d")
    assert fake.api.requests == []


def test_the_shipped_example_config_is_valid() -> None:
    from otel_llm_receiver.config import load_config

    example = Path(__file__).resolve().parents[3] / "examples" / "anthropic.yaml"
    config = load_config(str(example), environ={"ANTHROPIC_ADMIN_KEY": ADMIN_KEY})
    (provider,) = config.providers
    assert provider.type == "anthropic" and provider.options["bucket_width"] == "1h"
    assert ADMIN_KEY not in config.describe()


def test_data_lag_comes_from_the_newest_usage_bucket_with_rows(tmp_path: Path) -> None:
    with FakeAnthropic() as fake:
        fake.add(NOW - 3 * HOUR - 10 * MINUTE, PROD, counts(uncached_input_tokens=5))  # newest data: 07:07

        async def scenario(h: Harness) -> None:
            assert (await h.poll()).ok
            (status,) = h.receiver.health.statuses()
            # The 07:00-08:00 bucket, not the empty current hour nor today's cost day (which "ends" tomorrow).
            assert status.newest_bucket_end == NOW - NOW % HOUR - 2 * HOUR
            fake.add(NOW - MINUTE, PROD, counts(uncached_input_tokens=5))
            assert (await h.poll()).ok
            assert h.receiver.health.statuses()[0].newest_bucket_end == NOW  # a growing bucket: capped at now

        run(tmp_path, fake, scenario)


def test_a_stalled_api_times_out_and_is_retried_then_classified(tmp_path: Path, fake: FakeAnthropic) -> None:
    stall = threading.Event()
    fake.api.fail_next(USAGE_PATH, 200, count=2, hang=stall)

    async def scenario(h: Harness) -> None:
        try:
            outcome = await h.poll()
        finally:
            stall.set()
        assert not outcome.ok and outcome.error_type == "timeout"
        assert h.series("llm.usage.tokens") == []

    run(tmp_path, fake, scenario, timeout="200ms", max_retries=1)
    assert len(fake.api.requests_to(USAGE_PATH)) == 2  # the first try and one retry


def test_a_cost_outage_while_usage_lands_is_re_read_from_the_cost_cursor(tmp_path: Path, fake: FakeAnthropic) -> None:
    """Usage and cost are separate sources (issue 16.10): four days of failing cost reports do not stop usage, and
    the first good cost read reaches back to cost_lookback before the cost source's own last success, not the
    usage cursor's, so no cost day of the outage is skipped."""
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok
        fake.api.fail_next(COST_PATH, 500, count=1000)
        for _ in range(4):
            h.now += DAY
            outcome = await h.poll()
            assert outcome.ok and outcome.failed_sources == ("cost",)
        fake.api.clear()
        h.now += HOUR
        assert (await h.poll()).ok
        last = [r for r in fake.api.requests if r.path == COST_PATH][-1]
        first_day = (NOW - 72 * HOUR) - (NOW - 72 * HOUR) % DAY
        assert dict(last.query)["starting_at"] == datetime.fromtimestamp(first_day, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    run(tmp_path, fake, scenario, max_retries=0)


def test_check_reports_what_the_provider_refuses_with_key_paths() -> None:
    """Issue 19.3: ``AnthropicOptions.validate()`` lines come out of ``check`` under their key paths."""
    from otel_llm_receiver.providers import provider_problems
    from otel_llm_receiver.providers.anthropic.options import AnthropicOptions

    config = parse_config({"providers": {"anthropic/prod": {
        "admin_key": "sk-ant-admin-test-0", "dimensions": ["workspace"], "cost_backfill": "30d"}}})
    assert provider_problems(config.providers) == [
        "providers.anthropic/prod.dimensions: must include model",
        "providers.anthropic/prod.cost_backfill: must be at most 7d (the ledger's revision horizon for cost days)",
    ]
    options = AnthropicOptions.from_config(config.providers[0])
    assert (options.max_retries, options.cost_lookback, options.sources) == (4, 3 * 86400.0, ("messages", "cost"))
    assert AnthropicOptions(admin_key="k", dimensions=()).dimensions == AnthropicOptions().dimensions
