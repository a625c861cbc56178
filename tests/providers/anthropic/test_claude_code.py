"""The optional Claude Code analytics source: one UTC day per request, counters of their own, exact totals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic import CLAUDE_CODE_PATH, DAY, HOUR, MINUTE, FakeAnthropic
from tests.providers.anthropic.test_contract import NOW, assert_exact
from tests.support.anthropic_harness import Harness, code_totals

SOURCES = ["messages", "cost", "claude_code"]
TODAY = NOW - NOW % DAY


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        api.populate(NOW - 6 * HOUR, NOW - 2 * MINUTE, seed=2, every=30 * MINUTE)
        api.populate_code(TODAY - 3 * DAY, 4, seed=9)
        yield api


def run(tmp_path: Path, fake: FakeAnthropic, scenario: Callable[[Harness], Awaitable[None]], **options: object
        ) -> Harness:
    harness = Harness(tmp_path, fake, NOW, **options)

    async def go() -> None:
        try:
            await scenario(harness)
        finally:
            await harness.close()

    asyncio.run(go())
    return harness


def test_claude_code_days_become_their_own_counters_exactly(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok
        assert code_totals(h) == fake.truth_code()
        fake.add_code(NOW, "ada@example.com", sessions=2, added=40, commits=1,
                      tools={"edit_tool": (3, 1)}, models={"claude-opus-4-1-20250805": (100, 20, 0, 5)})
        await h.restart()
        h.now += 10 * MINUTE
        assert (await h.poll()).ok  # today's record grew (a new model too); a restart in between
        assert code_totals(h) == fake.truth_code()

    h = run(tmp_path, fake, scenario, sources=SOURCES)
    assert_exact(h, fake)  # the Messages usage totals are untouched by Claude Code tokens
    days = [r.param("starting_at") for r in fake.api.requests_to(CLAUDE_CODE_PATH)]
    assert days[:8] == [f"2026-11-{d:02d}" for d in range(13, 21)]  # first poll: the 7-day daily backfill
    assert days[8:] == ["2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20"]  # then cost_lookback (72h)
    assert {r.param("limit") for r in fake.api.requests_to(CLAUDE_CODE_PATH)} == {"1000"}
    attrs = [a for a, _, _ in h.series("llm.usage.code.sessions")]
    assert attrs and all("llm.code.actor" not in a and "gen_ai.request.model" not in a for a in attrs)
    assert {a["llm.code.terminal_type"] for a in attrs} == {"vscode", "iTerm.app", "non-interactive"}


def test_actor_is_opt_in_and_pages_are_followed(tmp_path: Path) -> None:
    with FakeAnthropic(max_page_buckets=2) as fake:
        fake.populate_code(TODAY - DAY, 2, seed=4)

        async def scenario(h: Harness) -> None:
            assert (await h.poll()).ok

        h = run(tmp_path, fake, scenario, sources=["claude_code"],
                dimensions=["workspace", "model", "actor"])
        assert code_totals(h) == fake.truth_code()
        actors = {a["llm.code.actor"] for a, _, _ in h.series("llm.usage.code.commits")}
        assert actors == {"ada@example.com", "grace@example.com", "linus@example.com", "ci-bot"}
        pages = [r for r in fake.api.requests_to(CLAUDE_CODE_PATH) if r.param("starting_at") == "2026-11-19"]
        assert len(pages) == 2 and pages[1].param("page")  # 4 records, 2 a page


def test_default_sources_leave_claude_code_alone(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.poll()).ok

    h = run(tmp_path, fake, scenario)
    assert fake.api.requests_to(CLAUDE_CODE_PATH) == [] and h.series("llm.usage.code.sessions") == []


def test_a_bad_claude_code_record_fails_its_source_only(tmp_path: Path, fake: FakeAnthropic) -> None:
    body = (b'{"data": [{"date": "2026-11-13", "actor": {"type": "robot", "name": "x"}, "core_metrics": {}}],'
            b' "has_more": false, "next_page": null}')
    fake.api.fail_next(CLAUDE_CODE_PATH, 200, body=body)

    async def scenario(h: Harness) -> None:
        outcome = await h.poll()
        assert outcome.ok and outcome.failed_sources == ("claude_code",)  # usage and cost landed
        failing = h.receiver.health.statuses()[0].failing_sources["claude_code"]
        assert failing.error_type == "bad_response" and "actor.type" in failing.error
        assert h.series("llm.usage.tokens") != [] and h.series("llm.usage.code.sessions") == []

    run(tmp_path, fake, scenario, sources=SOURCES)
