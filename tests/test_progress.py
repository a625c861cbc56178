"""Progress of long backfills (issue 18.10): the real ``openai`` provider pages through the fake OpenAI admin API on
loopback while a manual clock, moved by the fake as it serves each page, decides when a progress line is due.

No sleeps: a line is logged when the injected clock has moved ``progress_interval`` since the last one, and the
fake moves it by a fixed step per page it serves (before the client sees the page).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import Window
from otel_llm_receiver.progress import POLL_PROGRESS, PollProgress, is_backfill
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.providers.azure_openai import AzureOpenAIProvider
from otel_llm_receiver.scheduler import Receiver
from otel_llm_receiver.summary import render_summary
from tests.fakes.anthropic import ADMIN_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic import COST_PATH, USAGE_PATH, FakeAnthropic
from tests.fakes.api import Request, Response
from tests.fakes.azure import FakeAccount, FakeAzure, FixedTokenCredential
from tests.fakes.openai import ADMIN_KEY, FakeOpenAI, populate

HOUR, DAY = 3600, 86400
T0 = 1_767_225_600 + 10 * HOUR + 1800  # 2026-01-01 10:30 UTC
NAME = "openai/test"
PRICING = "otel_llm_receiver.pricing"  # "no price for gpt-test-0": the fake's models are unpriced, once a model
AZURE_SUB = "00000000-0000-0000-0000-0000000000a1"
PAGED = ("/v1/organization/usage/", "/v1/organization/costs")


class ManualClock:
    """A clock only the test moves (from the fake's server thread, hence the lock)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds

    def __call__(self) -> float:
        with self._lock:
            return self.t


class PageCounter:
    """Observes the fake: counts the pages and result rows it serves and moves the clock ``step`` per page."""

    def __init__(self, clock: ManualClock, step: float) -> None:
        self.clock, self.step = clock, step
        self.pages = self.rows = 0

    def __call__(self, request: Request, response: Response) -> None:
        if response.status != 200 or not request.path.startswith(PAGED):
            return
        body = json.loads(response.raw) if response.raw is not None else response.body
        self.pages += 1
        self.rows += sum(len(bucket["results"]) for bucket in body["data"])
        self.clock.advance(self.step)


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(page_buckets=6) as api:
        yield api


def make_receiver(tmp_path: Path, fake: FakeOpenAI, window_clock: list[int], progress_clock: ManualClock) -> Receiver:
    section = {"admin_key": ADMIN_KEY, "endpoint": fake.base_url, "retry_initial_interval": "10ms",
               "backfill": "3d", "cost_backfill": "3d", "usage_endpoints": ["completions", "embeddings"]}
    config = parse_config({"storage": {"path": str(tmp_path / "ledger.db")}, "progress_interval": "5s",
                           "providers": {NAME: section}})
    return Receiver(config, exporters=[], clock=lambda: float(window_clock[0]), progress_clock=progress_clock)


def progress_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "otel_llm_receiver.progress"]


SOURCE = re.compile(r"(\w+) (\d+)% \(([\d,]+) pages, ([\d,]+) records\)")


def test_backfill_logs_progress_then_a_steady_poll_logs_one_line(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    populate(fake, T0 - 4 * DAY, T0 + HOUR, projects=2, models=2)
    clock = ManualClock()
    counter = PageCounter(clock, step=2.0)
    fake.api.observers.append(counter)
    now = [T0]
    receiver = make_receiver(tmp_path, fake, now, clock)
    caplog.set_level(logging.INFO, logger="otel_llm_receiver")

    async def go() -> tuple[bool, bool]:
        try:
            first = await receiver.poll(NAME)
            served.extend((counter.pages, counter.rows))
            backfill_lines = progress_records(caplog)
            caplog.clear()
            now[0] += 60  # one collection interval later: a steady-state poll
            counter.step = 10.0  # every page now "takes" two progress intervals: a tracker would speak
            second = await receiver.poll(NAME)
            steady.extend(caplog.records)
            lines.extend(backfill_lines)
            return first.ok, second.ok
        finally:
            await receiver.aclose()

    served: list[int] = []
    lines: list[logging.LogRecord] = []
    steady: list[logging.LogRecord] = []
    assert asyncio.run(go()) == (True, True)
    assert served[0] > 20  # a multi-page backfill: 3 days of hourly buckets, 6 a page, per endpoint

    texts = [r.getMessage() for r in lines]
    assert len(texts) >= 5, texts
    for text in texts:
        assert text.startswith(f"{NAME}: backfill 2025-12-29 00:00 UTC..2026-01-01 10:30 UTC: ")
        assert re.search(r"[\d,]+ pages?, [\d,]+ records, \S+ elapsed, ETA \S+", text), text
        assert {m.group(1) for m in SOURCE.finditer(text)} <= {"completions", "embeddings", "costs"}
    during = texts[:-1]
    assert all(re.search(r": \d+%( \(through 20\d\d-\d\d-\d\d \d\d:\d\d UTC\))?, ", t) for t in during), during
    assert sum("(through 20" in t for t in during) >= 3, during
    assert sum(bool(re.search(r"ETA \d+\w", t)) for t in during) >= 3, during
    # numbers only grow: overall pages and records, and each source's share, pages and records
    pages = [r.__dict__["pages"] for r in lines]
    records = [r.__dict__["records"] for r in lines]
    assert pages == sorted(pages) and records == sorted(records)
    assert pages[0] < pages[-1]
    seen: dict[str, tuple[int, int, int]] = {}
    for text in texts:
        for m in SOURCE.finditer(text):
            now_at = (int(m.group(2)), int(m.group(3).replace(",", "")), int(m.group(4).replace(",", "")))
            before = seen.get(m.group(1), (0, 0, 0))
            assert all(a >= b for a, b in zip(now_at, before, strict=True)), (m.group(1), before, now_at)
            seen[m.group(1)] = now_at
    assert set(seen) == {"completions", "embeddings", "costs"}
    # the last line: done, with every page and row the fake served
    last = lines[-1]
    assert ": done, " in texts[-1] and "ETA 0s" in texts[-1]
    assert (last.__dict__["pages"], last.__dict__["records"]) == tuple(served)
    assert last.__dict__["progress_pct"] == 100.0
    assert all(v[0] == 100 for v in seen.values())
    assert not receiver.progress  # the tracker is gone with its poll

    # steady state: exactly one line, the poll's result
    assert [r.getMessage().split(",")[0] for r in steady] == [f"{NAME}: poll ok"], [r.getMessage() for r in steady]


def test_a_quick_backfill_stays_as_quiet_as_a_steady_poll(
    tmp_path: Path, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    populate(fake, T0 - 4 * DAY, T0 + HOUR, projects=1, models=1)
    clock = ManualClock()  # never moves: the whole backfill takes less than one progress interval
    receiver = make_receiver(tmp_path, fake, [T0], clock)
    caplog.set_level(logging.INFO, logger="otel_llm_receiver")

    async def go() -> bool:
        try:
            return (await receiver.poll(NAME)).ok
        finally:
            await receiver.aclose()

    assert asyncio.run(go())
    assert [r.getMessage().split(",")[0] for r in caplog.records if r.name != PRICING] == [f"{NAME}: poll ok"]


def test_backfill_is_the_first_poll_or_a_catch_up() -> None:
    steady = Window(T0 - 2 * HOUR - HOUR - 60, T0)  # lookback, plus a cursor one hourly bucket behind
    assert not is_backfill(steady, first_poll=False, lookback=2 * HOUR, collection_interval=60)
    daily = Window(T0 - 2 * HOUR - DAY - 60, T0)  # daily buckets: the cursor trails by up to a day
    assert not is_backfill(daily, first_poll=False, lookback=2 * HOUR, collection_interval=60)
    assert is_backfill(steady, first_poll=True, lookback=2 * HOUR, collection_interval=60)
    outage = Window(T0 - 2 * HOUR - 2 * DAY, T0)  # two days down: a catch-up
    assert is_backfill(outage, first_poll=False, lookback=2 * HOUR, collection_interval=60)


def test_a_provider_without_a_paging_hook_shows_its_answered_calls() -> None:
    """Azure OpenAI (Monitor metrics, Cost Management) has no paging hook: the line counts the calls the shared
    HTTP client got answered, and says that no share or ETA is known."""
    fake = FakeAzure()
    answered: list[Request] = []
    fake.api.observers.append(lambda req, resp: answered.append(req) if resp.status < 300 else None)
    try:
        fake.add_account(FakeAccount(AZURE_SUB, "rg-ai", "aoai-prod", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
        config = parse_config({"providers": {"azure_openai/test": {
            "management_endpoint": fake.base_url, "subscriptions": [AZURE_SUB], "cost_query_spacing": "0s",
            "retry_initial_interval": "10ms"}}})
        azure = AzureOpenAIProvider(config.providers[0], credential=FixedTokenCredential())
        window = Window(T0 - 7 * DAY, T0)
        clock = ManualClock()
        tracker = PollProgress("azure_openai/test", window, interval=5, clock=clock)

        async def go() -> None:
            published = POLL_PROGRESS.set(tracker)
            try:
                await azure.fetch(window)
            finally:
                POLL_PROGRESS.reset(published)
                await azure.aclose()

        asyncio.run(go())
    finally:
        fake.close()
    clock.advance(6)
    tracker.tick()
    (line,) = tracker.lines
    calls = len(answered)
    assert calls > 0
    assert line == (
        "azure_openai/test: backfill 2025-12-25 10:30 UTC..2026-01-01 10:30 UTC: no page progress reported by "
        f"this provider yet, {calls} API calls answered, 0 pages, 0 records, 6s elapsed, ETA unknown")


def test_eta_follows_the_pace_so_far() -> None:
    clock = ManualClock()
    window = Window(T0 - 4 * DAY, T0)
    tracker = PollProgress(NAME, window, interval=5, clock=clock)
    tracker.begin("costs", T0 - 4 * DAY, T0)
    clock.advance(30)
    tracker.page("completions", records=120, newest=T0 - 3 * DAY)  # a quarter in 30s: 90s to go
    state = tracker.state()
    assert state.fraction == 0.0  # costs has not reported a page yet: the least advanced source
    tracker.page("costs", records=4, newest=T0)
    state = tracker.state()
    assert state.fraction == 0.25 and state.eta == 90.0 and state.reached == T0 - 3 * DAY
    assert state.pages == 2 and state.records == 124
    assert state.line().startswith(f"{NAME}: backfill 2025-12-28 10:30 UTC..2026-01-01 10:30 UTC: 25% "
                                        "(through 2025-12-29 10:30 UTC), 2 pages, 124 records, 30s elapsed, "
                                        "ETA 1m30s; ")


def test_demo_summary_shows_a_backfill_in_flight(tmp_path: Path) -> None:
    clock = ManualClock()
    tracker = PollProgress("demo", Window(T0 - 14 * DAY, T0), interval=5, clock=clock)
    clock.advance(12)
    tracker.page("usage", records=5000, newest=T0 - 7 * DAY)
    with Ledger(tmp_path / "ledger.db") as ledger:
        text = render_summary(ledger, T0, progress=[tracker.state()])
        quiet = render_summary(ledger, T0)
    assert "backfill in progress:" in text
    assert ("demo: backfill 2025-12-18 10:30 UTC..2026-01-01 10:30 UTC: 50% (through 2025-12-25 10:30 UTC), "
            "1 page, 5,000 records, 12s elapsed, ETA 12s") in text
    assert "backfill" not in quiet


def test_anthropic_reports_and_the_demo_report_their_pages(tmp_path: Path) -> None:
    """The other paging hooks: Anthropic's report pager (usage, cost, Claude Code) and the demo's day pages."""
    now = int(datetime(2026, 11, 20, 10, 17, tzinfo=UTC).timestamp())
    with FakeAnthropic(max_page_buckets=5) as fake:
        fake.populate(now - 20 * HOUR, now - 120, seed=5)
        fake.populate_code(now - now % DAY - 2 * DAY, 3)
        config = parse_config({"providers": {"anthropic/p": {
            "admin_key": ANTHROPIC_KEY, "endpoint": fake.base_url, "retry_initial_interval": "10ms",
            "sources": ["messages", "cost", "claude_code"]}}})
        anthropic = create_provider(config.providers[0])
        window = Window(now - now % DAY, now)
        tracker = PollProgress("anthropic/p", window, clock=ManualClock())

        async def go() -> None:
            published = POLL_PROGRESS.set(tracker)
            try:
                await anthropic.fetch(window)
            finally:
                POLL_PROGRESS.reset(published)
                await anthropic.aclose()

        asyncio.run(go())
        sources = {s.source: s for s in tracker.state().sources}
        assert set(sources) == {"usage_report", "cost_report", "claude_code"}
        assert sources["usage_report"].pages == len(fake.api.requests_to(USAGE_PATH)) > 1
        assert sources["cost_report"].pages == len(fake.api.requests_to(COST_PATH))
        assert all(s.fraction == 1.0 and s.records > 0 for s in sources.values()), sources

    demo = create_provider(parse_config({"providers": {"demo": {"bucket_width": "1h"}}}).providers[0])
    window = Window(T0 - T0 % DAY - 14 * DAY, T0)
    tracker = PollProgress("demo", window, clock=ManualClock())

    async def demo_fetch() -> int:
        published = POLL_PROGRESS.set(tracker)
        try:
            return len((await demo.fetch(window)).usage)
        finally:
            POLL_PROGRESS.reset(published)

    records = asyncio.run(demo_fetch())
    (usage,) = tracker.state().sources
    assert (usage.source, usage.pages, usage.records, usage.fraction) == ("usage", 15, records, 1.0)
