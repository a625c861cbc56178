"""Contract: the real ``openai`` provider and the real ledger against the fake OpenAI admin API on loopback.

Polls run through ``Receiver.poll`` (the scheduler's window, cursor and prune logic, one ledger transaction
per poll) with a clock the test moves. After every sequence of polls the ledger's totals (``total -
adjustments``) must equal the fake's ground truth exactly: tokens by type and modality, requests, images,
characters, seconds, sessions, tool calls, bytes stored, and cost to the last decimal.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import from_nanos
from otel_llm_receiver.scheduler import PollOutcome, Receiver
from tests.fakes.api import Response
from tests.fakes.openai import ADMIN_KEY, FakeOpenAI, populate

HOUR, DAY = 3600, 86400
T0 = 1_767_225_600 + 10 * HOUR + 1800  # 2026-01-01 10:30 UTC
NAME = "openai/test"


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(page_buckets=7) as api:
        yield api


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> float:
        return float(self.t)


def receiver(tmp_path: Path, fake: FakeOpenAI, clock: Clock, **options: Any) -> Receiver:
    # the provider's own requests and paging, read in one fetch (chunked polls: tests/test_backfill_chunks.py)
    section = {"admin_key": ADMIN_KEY, "endpoint": fake.base_url, "retry_initial_interval": "10ms",
               "backfill_chunk": "31d", **options}
    config = parse_config({"storage": {"path": str(tmp_path / "ledger.db")}, "providers": {NAME: section}})
    return Receiver(config, exporters=[], clock=clock)


def poll(tmp_path: Path, fake: FakeOpenAI, clock: Clock, **options: Any) -> PollOutcome:
    """One poll by a fresh Receiver (so every poll is also a restart: nothing carries over but the ledger)."""
    r = receiver(tmp_path, fake, clock, **options)

    async def go() -> PollOutcome:
        try:
            return await r.poll(NAME)
        finally:
            await r.aclose()

    return asyncio.run(go())


def ledger_totals(tmp_path: Path) -> dict[str, dict[tuple[str, ...], Any]]:
    """Per metric, ``total - adjustments`` summed by a metric-specific key (the latest value of every bucket)."""
    out: dict[str, dict[tuple[str, ...], Any]] = defaultdict(lambda: defaultdict(int))
    with Ledger(tmp_path / "ledger.db", readonly=True) as ledger:
        snap = ledger.snapshot()
    for s in snap.series:
        if s.metric in ("llm.usage.cost.estimated", "llm.pricing.unpriced_tokens"):
            continue  # derived by the ledger's pricing from the token series checked here
        a = json.loads(s.attrs)
        value: Any = s.total - s.adjustments
        base = (a["llm.tenancy.id"], a.get("gen_ai.request.model", ""))
        if s.metric == "llm.usage.tokens" and a["gen_ai.operation.name"] != "chat":
            out["input_tokens"][(a["gen_ai.operation.name"], *base, a["gen_ai.token.type"])] += value
        elif s.metric == "llm.usage.tokens":
            out["tokens"][(*base, a["gen_ai.token.type"])] += value
            out["modality"][(*base, a["gen_ai.token.type"], a["llm.token.modality"])] += value
        elif s.metric == "llm.usage.requests":
            out["requests"][(a["gen_ai.operation.name"], *base)] += value
        elif s.metric in ("llm.usage.cost", "llm.usage.cost.non_usd"):  # non-USD spend has a metric of its own
            out["cost"][(a["llm.tenancy.id"], a.get("llm.cost.line_item", ""), a.get("llm.currency", "USD"))] += value
        elif s.metric == "llm.usage.storage":
            out["storage"][(a["llm.tenancy.id"],)] = s.level
        else:
            out[s.metric][(*base, a.get("gen_ai.tool.name", ""))] += value
    out["cost"] = {k: from_nanos(v) for k, v in out["cost"].items()}
    return out


def drop_zero(d: dict[Any, Any]) -> dict[Any, Any]:
    return {k: v for k, v in d.items() if v}


def assert_exact(tmp_path: Path, fake: FakeOpenAI, start: int, end: int, *, cost_start: int) -> None:
    got = ledger_totals(tmp_path)
    assert drop_zero(got["tokens"]) == drop_zero(fake.tokens(start, end))
    if fake.shape == "2026":
        want = {(p, m, t, mod): n for (p, m, t, mod), n in fake.tokens(start, end, by_modality=True).items()}
        assert drop_zero(got["modality"]) == drop_zero(want)
    input_tokens = {("embeddings", *k, "input"): v
                    for k, v in fake.measure("embeddings", "input_tokens", start, end).items()}
    input_tokens |= {("moderation", *k, "input"): v
                     for k, v in fake.measure("moderations", "input_tokens", start, end).items()}
    assert drop_zero(got["input_tokens"]) == drop_zero(input_tokens)
    requests = {("chat", *k): v for k, v in fake.requests("completions", start, end).items()}
    requests |= {("embeddings", *k): v for k, v in fake.requests("embeddings", start, end).items()}
    requests |= {("moderation", *k): v for k, v in fake.requests("moderations", start, end).items()}
    requests |= {("image_generation", *k): v for k, v in fake.requests("images", start, end).items()}
    requests |= {("text_to_speech", *k): v for k, v in fake.requests("audio_speeches", start, end).items()}
    requests |= {("transcription", *k): v for k, v in fake.requests("audio_transcriptions", start, end).items()}
    assert drop_zero(got["requests"]) == drop_zero(requests)
    for metric, usage_type, field_name, tool in (
        ("llm.usage.images", "images", "images", ""),
        ("llm.usage.characters", "audio_speeches", "characters", ""),
        ("llm.usage.audio.duration", "audio_transcriptions", "seconds", ""),
        ("llm.usage.sessions", "code_interpreter_sessions", "num_sessions", "code_interpreter"),
    ):
        want_measure = {(*k, tool): v for k, v in fake.measure(usage_type, field_name, start, end).items()}
        assert drop_zero(got[metric]) == drop_zero(want_measure), metric
    tools = {(p, "", "file_search"): v for (p, _), v in fake.measure("file_search_calls", "num_requests", start, end).items()}
    tools |= {(*k, "web_search"): v for k, v in fake.measure("web_search_calls", "num_requests", start, end).items()}
    assert drop_zero(got["llm.usage.tool_requests"]) == drop_zero(tools)
    assert got["storage"] == {(p,): n for p, n in fake.storage(start, end, HOUR).items()}
    assert drop_zero(got["cost"]) == drop_zero(fake.costs(cost_start, end))


# --------------------------------------------------------------------------------------------------------------
def test_backfill_then_growth_late_rows_shrink_and_restated_cost_stay_exact(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    first_start = T0 - DAY
    populate(fake, first_start - 6 * DAY, T0)  # a week of data; the first poll reads 24h usage, 7d cost
    clock = Clock(T0)
    assert poll(tmp_path, fake, clock).ok
    usage_start = first_start - first_start % DAY  # a backfill of a day or more starts at 00:00 UTC
    cost_start = (T0 - 7 * DAY) - (T0 - 7 * DAY) % DAY
    assert_exact(tmp_path, fake, usage_start, T0, cost_start=cost_start)

    # Between polls: the partial 10:00 bucket grows, a late row lands in the 09:00 bucket, an earlier bucket
    # shrinks (a correction), and yesterday's cost is restated (finalised) upwards, another's downwards.
    dims = {"project_id": "proj_000", "model": "gpt-test-0", "batch": False, "service_tier": "default"}
    fake.add_usage("completions", T0 + 600, dims, text_in=700, text_cached=300, audio_in=11, text_out=50, requests=3)
    fake.add_usage("completions", T0 - HOUR, {**dims, "model": "gpt-test-9"}, text_in=123, text_out=4, requests=1)
    fake.set_usage("completions", T0 - 2 * HOUR, dims, text_in=1, text_cached=0, cache_write=0, audio_in=0,
                   audio_cached=0, text_out=1, audio_out=0, requests=1)
    fake.add_usage("images", T0 + 700, {"project_id": "proj_001", "model": "gpt-image-1", "size": "1024x1024",
                                          "source": "image.generation"}, images=5, num_model_requests=2)
    yesterday = T0 - T0 % DAY - DAY
    fake.set_cost(yesterday, {"project_id": "proj_000", "line_item": "gpt-test-0, input"}, "1234.567891",
                  quantity="99", quantity_unit="tokens")
    fake.set_cost(yesterday, {"project_id": "proj_001", "line_item": "Image models"}, "0.01", as_string=True)
    clock.t = T0 + 15 * 60
    fake_end = clock.t
    assert poll(tmp_path, fake, clock).ok
    assert_exact(tmp_path, fake, usage_start, fake_end, cost_start=cost_start)
    assert any("shrank" in r.getMessage() for r in caplog.records)

    # A third poll with nothing new adds nothing, and a poll an hour later picks up the next bucket.
    before = ledger_totals(tmp_path)
    assert poll(tmp_path, fake, clock).ok
    assert ledger_totals(tmp_path) == before
    fake.add_usage("embeddings", T0 + HOUR + 60, {"project_id": "proj_002", "model": "text-embedding-3-small"},
                   input_tokens=77, num_model_requests=1)
    clock.t = T0 + HOUR + 300
    assert poll(tmp_path, fake, clock).ok
    assert_exact(tmp_path, fake, usage_start, clock.t, cost_start=cost_start)


def test_requests_are_aligned_paged_within_limits_and_grouped(tmp_path: Path, fake: FakeOpenAI) -> None:
    populate(fake, T0 - DAY, T0, projects=1, models=1)
    assert poll(tmp_path, fake, Clock(T0)).ok
    completions = fake.api.requests_to("/v1/organization/usage/completions")
    # 24h back from 10:30, from 00:00 UTC (a backfill of a day or more starts on a day boundary, so the first
    # day is whole) -> from 00:00 yesterday: 35 hourly buckets, 7 per page here -> 5 pages.
    assert len(completions) == 5
    first = completions[0]
    assert int(first.param("start_time") or 0) == T0 - DAY - (T0 - DAY) % DAY
    assert first.param("bucket_width") == "1h"
    assert first.param("limit") == "35"
    assert first.params("group_by") == ["project_id", "model", "batch"]
    assert [r.param("page") is None for r in completions] == [True, False, False, False, False]
    (costs, *more) = fake.api.requests_to("/v1/organization/costs")
    assert more == [] or all(r.param("page") for r in more)
    assert costs.param("bucket_width") == "1d" and int(costs.param("limit") or 0) <= 180
    assert costs.params("group_by") == ["project_id", "line_item"]
    assert int(costs.param("start_time") or 0) % DAY == 0
    images = fake.api.requests_to("/v1/organization/usage/images")[0]
    assert images.params("group_by") == ["project_id", "model", "size", "source"]
    (projects,) = fake.api.requests_to("/v1/organization/projects")
    assert projects.param("include_archived") == "true"
    for request in fake.api.requests:
        assert request.headers["authorization"] == f"Bearer {ADMIN_KEY}"


def test_a_daily_width_backfill_and_a_minute_width_both_stay_exact(tmp_path: Path) -> None:
    for width, step in (("1d", HOUR), ("1m", 60)):
        path = tmp_path / width
        path.mkdir()
        with FakeOpenAI() as fake:
            populate(fake, T0 - 2 * HOUR, T0, projects=2, models=2, step=step)
            clock = Clock(T0)
            assert poll(path, fake, clock, bucket_width=width, backfill="2h").ok
            w = {"1d": DAY, "1m": 60}[width]
            start = (T0 - 2 * HOUR) - (T0 - 2 * HOUR) % w
            got = ledger_totals(path)
            assert drop_zero(got["tokens"]) == drop_zero(fake.tokens(start, T0))
            limits = {r.param("limit") for r in fake.api.requests_to("/v1/organization/usage/completions")}
            assert limits == ({"1"} if width == "1d" else {"120"})


def test_old_2024_shape_parses_and_partitions_exactly(tmp_path: Path) -> None:
    with FakeOpenAI(shape="2024") as fake:
        populate(fake, T0 - 5 * HOUR, T0, projects=2, models=2)
        assert poll(tmp_path, fake, Clock(T0), backfill="5h").ok
        rows = [r for b in json.loads(_last_body(fake, "completions"))["data"] for r in b["results"]]
        assert rows and "input_cache_write_tokens" not in rows[0] and "service_tier" not in rows[0]
        got = ledger_totals(tmp_path)
        start = T0 - 5 * HOUR - 1800
        assert drop_zero(got["tokens"]) == drop_zero(fake.tokens(start, T0))
        assert not any(t == "cache_write" for (_, _, t) in got["tokens"])


def _last_body(fake: FakeOpenAI, usage_type: str) -> str:
    import urllib.request

    req = fake.api.requests_to(f"/v1/organization/usage/{usage_type}")[-1]
    query = "&".join(f"{k}={v}" for k, v in req.query if k != "page")
    request = urllib.request.Request(f"{fake.base_url}{req.path}?{query}",
                                     headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return str(resp.read().decode())


# --------------------------------------------------------------------------------------------------- failures
def test_a_bad_response_writes_nothing_and_names_the_field(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    populate(fake, T0 - DAY, T0, projects=2, models=1)
    clock = Clock(T0)
    assert poll(tmp_path, fake, clock).ok
    before = ledger_totals(tmp_path)
    fake.add_usage("embeddings", T0 + 60, {"project_id": "proj_000", "model": "text-embedding-3-small"},
                   input_tokens=10**6, num_model_requests=1)
    clock.t = T0 + 300
    # Each break targets completions: requests to other endpoints that a failed poll abandoned may still be
    # answered by the server afterwards, and must not take the next break.
    for break_it, expected in (
        (lambda: fake.corrupt_next("completions", "input_tokens", "12"), "input_tokens: expected an integer"),
        (lambda: fake.api.fail_next("/v1/organization/usage/completions", 200, body=b'{"object": "page", "da'),
         "not JSON"),
        (lambda: fake.corrupt_next("completions", "object", "organization.usage.embeddings.result"), ".object"),
        (lambda: fake.corrupt_next("completions", "batch", "no"), "batch: expected a boolean"),
    ):
        break_it()
        caplog.clear()
        outcome = poll(tmp_path, fake, clock)
        assert not outcome.ok and outcome.error_type == "bad_response"
        assert expected in caplog.text
        assert ledger_totals(tmp_path) == before  # nothing of the poll reached the ledger
    assert poll(tmp_path, fake, clock).ok  # the next good poll brings it all
    assert_exact(tmp_path, fake, T0 - DAY - (T0 - DAY) % DAY, clock.t, cost_start=(T0 - 7 * DAY) - (T0 - 7 * DAY) % DAY)


def test_a_429_storm_delays_but_loses_nothing_and_5xx_is_retried(tmp_path: Path, fake: FakeOpenAI) -> None:
    populate(fake, T0 - DAY, T0, projects=2, models=1)
    fake.api.fail_next("/v1/organization/usage/completions", 429, count=3, retry_after="0.05")
    fake.api.fail_next("/v1/organization/costs", 503, count=2)
    assert poll(tmp_path, fake, Clock(T0)).ok
    assert len(fake.api.requests_to("/v1/organization/usage/completions")) == 5 + 3  # 5 pages from 00:00 UTC
    assert_exact(tmp_path, fake, T0 - DAY - (T0 - DAY) % DAY, T0, cost_start=(T0 - 7 * DAY) - (T0 - 7 * DAY) % DAY)


def test_errors_are_classified(tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    populate(fake, T0 - HOUR, T0, projects=1, models=1)
    project_key = "sk-proj-test-not-an-admin-key-000"
    outcome = poll(tmp_path, fake, Clock(T0), admin_key=project_key)
    assert (outcome.ok, outcome.error_type) == (False, "auth")
    assert "Admin API key" in caplog.text and project_key not in caplog.text
    fake.api.fail_next("/v1/organization/usage/embeddings", 400)
    assert poll(tmp_path, fake, Clock(T0)).error_type == "config"
    fake.api.fail_next("/v1/organization/usage/embeddings", 429, count=10, retry_after="3600")
    outcome = poll(tmp_path, fake, Clock(T0))
    assert (outcome.error_type, outcome.retry_after) == ("rate_limited", 600.0)  # capped: 10 x 60s interval
    fake.api.clear()
    fake.api.fail_next("/v1/organization/usage/embeddings", 500, count=10)
    assert poll(tmp_path, fake, Clock(T0), max_retries=1).error_type == "server_error"
    with Ledger(tmp_path / "ledger.db", readonly=True) as ledger:
        metrics = {s.metric for s in ledger.snapshot().series}
    # no failed usage read wrote anything; the cost source, separate, landed while usage failed (issue 16.10)
    assert "llm.usage.cost" in metrics and not metrics & {"llm.usage.tokens", "llm.usage.requests"}


def test_names_cover_archived_projects_are_cached_and_a_failed_lookup_never_blocks_usage(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(130):  # more than one page of 100
        fake.add_project(f"proj_x{i:03d}", f"Extra {i}", archived=i % 2 == 0)
    populate(fake, T0 - HOUR, T0, projects=3, models=1)
    fake.api.fail_next("/v1/organization/projects", 500, count=10)
    outcome = poll(tmp_path, fake, Clock(T0), max_retries=0)
    assert outcome.ok
    assert "project names lookup failed" in caplog.text
    assert ledger_totals(tmp_path)["tokens"]
    fake.api.clear()
    r = receiver(tmp_path, fake, Clock(T0 + 60))

    async def two_polls() -> None:
        try:
            assert (await r.poll(NAME)).ok
            assert (await r.poll(NAME)).ok  # within names_ttl: no second lookup
        finally:
            await r.aclose()

    asyncio.run(two_polls())
    assert len(fake.api.requests_to("/v1/organization/projects")) == 2  # two pages, once
    with Ledger(tmp_path / "ledger.db", readonly=True) as ledger:
        names = {i: n for (_, _, i), n in ledger.snapshot().names.items()}
    assert names["proj_002"] == "Project 2"  # archived, still named
    assert names["proj_x128"] == "Extra 128" and len(names) == 133


def test_opt_in_dimensions_and_project_filter_are_sent_and_mapped(tmp_path: Path, fake: FakeOpenAI) -> None:
    dims = {"project_id": "proj_a", "model": "gpt-4o", "batch": True, "service_tier": "flex",
            "user_id": "user-1", "api_key_id": "key_1"}
    fake.add_usage("completions", T0 - 600, dims, text_in=10, text_out=5, requests=1)
    fake.add_usage("completions", T0 - 600, {**dims, "api_key_id": "key_2"}, text_in=1, text_out=1, requests=1)
    fake.set_cost(T0 - T0 % DAY, {"project_id": "proj_a", "line_item": "x", "api_key_id": "key_1"}, "1.5")
    options = {"dimensions": ["project", "model", "batch", "service_tier", "api_key", "user"],
               "project_ids": ["proj_a"], "backfill": "1h"}
    assert poll(tmp_path, fake, Clock(T0), **options).ok
    req = fake.api.requests_to("/v1/organization/usage/completions")[0]
    assert req.params("group_by") == ["project_id", "model", "batch", "service_tier", "api_key_id", "user_id"]
    assert req.params("project_ids") == ["proj_a"]
    assert fake.api.requests_to("/v1/organization/costs")[0].params("group_by") == [
        "project_id", "line_item", "api_key_id"]
    with Ledger(tmp_path / "ledger.db", readonly=True) as ledger:
        attrs = [json.loads(s.attrs) for s in ledger.snapshot().series if s.metric == "llm.usage.requests"]
    assert {a["llm.api_key.id"] for a in attrs} == {"key_1", "key_2"}
    assert {(a["llm.batch"], a["llm.service_tier"], a["llm.user.id"]) for a in attrs} == {("true", "flex", "user-1")}


def test_non_usd_cost_is_kept_apart_and_logged(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    day = T0 - T0 % DAY - DAY
    # Served as a JSON number literal with more digits than a binary float keeps: must arrive exact.
    fake.set_cost(day, {"project_id": "proj_a", "line_item": "x"}, "123456789.123456789")
    fake.set_cost(day, {"project_id": "proj_b", "line_item": "x"}, "7.5", currency="eur")
    with caplog.at_level(logging.WARNING):
        assert poll(tmp_path, fake, Clock(T0), usage_endpoints=["embeddings"]).ok
    assert ledger_totals(tmp_path)["cost"] == {("proj_a", "x", "USD"): Decimal("123456789.123456789"),
                                               ("proj_b", "x", "EUR"): Decimal("7.5")}
    assert "EUR are kept apart from USD" in caplog.text
    with Ledger(tmp_path / "ledger.db", readonly=True) as ledger:
        metrics = {s.metric for s in ledger.snapshot().series}
    assert {"llm.usage.cost", "llm.usage.cost.non_usd"} <= metrics  # EUR never in the USD metric


def test_a_cursor_that_does_not_advance_or_an_off_grid_bucket_is_a_bad_response(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = {"object": "page", "data": [], "has_more": True, "next_page": "page_same"}
    fake.api.route("GET", "/v1/organization/usage/embeddings", lambda req: Response(200, stuck))
    outcome = poll(tmp_path, fake, Clock(T0), usage_endpoints=["embeddings"], costs=False)
    assert outcome.error_type == "bad_response" and "does not advance" in caplog.text
    assert len(fake.api.requests_to("/v1/organization/usage/embeddings")) == 2  # no endless loop

    start = T0 - DAY - 1800
    off_grid = {"object": "page", "has_more": False, "next_page": None, "data": [
        {"object": "bucket", "start_time": start + 60, "end_time": start + HOUR, "results": []}]}
    fake.api.route("GET", "/v1/organization/usage/embeddings", lambda req: Response(200, off_grid))
    outcome = poll(tmp_path, fake, Clock(T0), usage_endpoints=["embeddings"], costs=False)
    assert outcome.error_type == "bad_response" and "not on the 3600s grid" in caplog.text


def test_a_restart_between_polls_changes_nothing(tmp_path: Path) -> None:
    """The same polls, once by one long-lived receiver and once with a restart before every poll: same ledger."""
    dims = {"project_id": "proj_000", "model": "gpt-test-0", "batch": False, "service_tier": "default"}

    def step(fake: FakeOpenAI, number: int) -> int:
        """Change the fake before poll ``number``; returns that poll's clock."""
        if number == 0:
            populate(fake, T0 - 6 * HOUR, T0, projects=2, models=2)
            return T0
        if number == 1:
            fake.add_usage("completions", T0 + 60, dims, text_in=50, audio_out=3, requests=1)
            fake.set_usage("completions", T0 - HOUR, dims, text_in=2, text_cached=0, cache_write=0, audio_in=0,
                           audio_cached=0, text_out=1, audio_out=0, requests=1)
            return T0 + 600
        return T0 + HOUR

    def series(path: Path) -> set[tuple[str, str, int, int]]:
        with Ledger(path / "ledger.db", readonly=True) as ledger:
            return {(s.metric, s.attrs, s.total, s.adjustments) for s in ledger.snapshot().series}

    restarted, kept = tmp_path / "restarted", tmp_path / "kept"
    restarted.mkdir()
    kept.mkdir()
    with FakeOpenAI(page_buckets=7) as fake:
        for number in range(3):
            assert poll(restarted, fake, Clock(step(fake, number)), backfill="6h").ok
    with FakeOpenAI(page_buckets=7) as fake:
        clock = Clock(T0)
        r = receiver(kept, fake, clock, backfill="6h")

        async def polls() -> None:
            try:
                for number in range(3):
                    clock.t = step(fake, number)
                    assert (await r.poll(NAME)).ok
            finally:
                await r.aclose()

        asyncio.run(polls())
    assert series(restarted) == series(kept)
    assert any(adjustments for _, _, _, adjustments in series(kept))  # the correction was seen as a shrink


def test_no_grouping_reports_the_organisation_total(tmp_path: Path, fake: FakeOpenAI) -> None:
    populate(fake, T0 - 3 * HOUR, T0, projects=3, models=2)
    assert poll(tmp_path, fake, Clock(T0), dimensions=[], backfill="3h", usage_endpoints=["completions"]).ok
    assert fake.api.requests_to("/v1/organization/usage/completions")[0].params("group_by") == []
    want: dict[str, int] = defaultdict(int)
    for (_, _, token_type), n in fake.tokens(T0 - 3 * HOUR - 1800, T0).items():
        want[token_type] += n
    got = ledger_totals(tmp_path)["tokens"]
    assert {k: v for k, v in got.items() if v} == {("all", "", t): n for t, n in want.items() if n}
