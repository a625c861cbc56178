"""Chunked polls (issue 20, bounded memory): a long window is fetched and applied a chunk at a time.

A real ``Receiver`` backfills from the fake OpenAI admin API on loopback (every usage type, daily costs). The
window is split on the UTC grid of ``backfill_chunk``; each chunk is one fetch and one ledger transaction, the
cursors move only with the last one, costs are read once (in the first chunk) over the whole window. A usage
failure in chunk k stops the poll there: the chunks before it stay (they count nothing twice when the next poll
applies them again), no cursor moves. A steady-state poll is one fetch and one transaction, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.chunks import POLL_CHUNK, PollChunk, chunk_problem, poll_now, reads_secondary, split
from otel_llm_receiver.config import ConfigError, parse_config
from otel_llm_receiver.model import Window
from otel_llm_receiver.progress import PollProgress
from otel_llm_receiver.scheduler import Receiver
from tests.fakes.api import Request, Response
from tests.fakes.openai import ADMIN_KEY, FakeOpenAI, populate

HOUR, DAY = 3600, 86400
T0 = 1_767_225_600 + 10 * HOUR + 1800  # 2026-01-01 10:30 UTC
DAY0 = T0 - T0 % DAY
NAME = "openai/test"
COMPLETIONS = "/v1/organization/usage/completions"
COSTS = "/v1/organization/costs"


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(now=T0) as api:
        populate(api, DAY0 - 4 * DAY, T0, projects=2, models=2)
        yield api


def make_receiver(tmp_path: Path, fake: FakeOpenAI, clock: list[int], **section: Any) -> Receiver:
    options = {"admin_key": ADMIN_KEY, "endpoint": fake.base_url, "retry_initial_interval": "10ms",
               "backfill": "4d", "cost_backfill": "4d", **section}
    config = parse_config({"storage": {"path": str(tmp_path / "ledger.db")}, "pricing": {"genai_prices": False},
                           "providers": {NAME: options}})
    return Receiver(config, exporters=[], clock=lambda: float(clock[0]))


@pytest.fixture()
def loop() -> Iterator[asyncio.Runner]:
    """One event loop for a test's polls (the provider's HTTP client lives on it) and its close."""
    with asyncio.Runner() as runner:
        yield runner


def ledger_state(path: Path) -> tuple[dict[tuple[str, ...], int], dict[int, int], dict[str, str]]:
    """(chat tokens by project, model, type; start time by series id; cursors by source), read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tokens: dict[tuple[str, ...], int] = defaultdict(int)
        starts: dict[int, int] = {}
        for sid, metric, attrs, start, total, adjustments in conn.execute(
                "SELECT id, metric, attrs, start_time_ns, total, adjustments FROM series"):
            starts[sid] = start
            a = json.loads(attrs)
            if metric == "llm.usage.tokens" and a.get("gen_ai.operation.name") == "chat":
                tokens[(a["llm.tenancy.id"], a["gen_ai.request.model"], a["gen_ai.token.type"])] += total - adjustments
        cursors = dict(conn.execute("SELECT source, value FROM cursors WHERE instance = ?", (NAME,)).fetchall())
    finally:
        conn.close()
    return {k: v for k, v in tokens.items() if v}, starts, cursors


def truth(fake: FakeOpenAI, start: int, end: int) -> dict[tuple[str, ...], int]:
    return {k: v for k, v in fake.tokens(start, end).items() if v}


def requests_to(fake: FakeOpenAI, path: str) -> list[Request]:
    return [r for r in fake.api.requests if r.path == path]


def test_split_cuts_on_the_utc_grid_and_never_splits_a_short_window() -> None:
    assert split(Window(DAY0 - 3 * DAY, T0), DAY) == [
        Window(DAY0 - 3 * DAY, DAY0 - 2 * DAY), Window(DAY0 - 2 * DAY, DAY0 - DAY), Window(DAY0 - DAY, DAY0),
        Window(DAY0, T0)]
    # an unaligned start (a catch-up: cursor - lookback) gives a short first chunk, then whole days
    assert split(Window(DAY0 - DAY - 5 * HOUR, T0), DAY) == [
        Window(DAY0 - DAY - 5 * HOUR, DAY0 - DAY), Window(DAY0 - DAY, DAY0), Window(DAY0, T0)]
    assert split(Window(T0 - DAY, T0), DAY) == [Window(T0 - DAY, T0)]  # one chunk long: not split
    assert split(Window(T0 - 2 * HOUR, T0), DAY) == [Window(T0 - 2 * HOUR, T0)]
    assert len(split(Window(DAY0 - 90 * DAY, T0), DAY)) == 91
    assert split(Window(DAY0, DAY0 + 5 * HOUR), 2 * HOUR) == [
        Window(DAY0, DAY0 + 2 * HOUR), Window(DAY0 + 2 * HOUR, DAY0 + 4 * HOUR), Window(DAY0 + 4 * HOUR, DAY0 + 5 * HOUR)]


def test_providers_see_the_polls_now_and_read_other_sources_in_the_first_chunk_only() -> None:
    whole = Window(DAY0 - 2 * DAY, T0)
    chunk = Window(DAY0 - 2 * DAY, DAY0 - DAY)
    assert poll_now(chunk) == chunk.end and reads_secondary()  # outside a chunked poll: the window's own end
    token = POLL_CHUNK.set(PollChunk(whole, chunk, 0, 3))
    try:
        assert poll_now(chunk) == T0 and reads_secondary()
        POLL_CHUNK.set(PollChunk(whole, Window(DAY0, T0), 2, 3))
        assert poll_now(chunk) == T0 and not reads_secondary()
    finally:
        POLL_CHUNK.reset(token)


@pytest.mark.parametrize(("value", "ok"), [
    ("1d", True), ("1h", True), ("6h", True), ("12h", True), ("7d", True), ("31d", True),
    ("5h", False), ("90m", False), ("30m", False), ("32d", False), ("0s", False), ("25h", False),
])
def test_backfill_chunk_is_validated(tmp_path: Path, value: str, ok: bool) -> None:
    raw = {"storage": {"path": str(tmp_path / "l.db")},
           "providers": {NAME: {"admin_key": ADMIN_KEY, "backfill_chunk": value}}}
    if ok:
        assert parse_config(raw).providers[0].backfill_chunk is not None
        assert chunk_problem(parse_config(raw).providers[0].backfill_chunk or 0) is None
    else:
        with pytest.raises(ConfigError, match=rf"providers\.{NAME}\.backfill_chunk"):
            parse_config(raw)


def test_backfill_is_read_a_chunk_at_a_time_and_lands_exactly(
    tmp_path: Path, fake: FakeOpenAI, loop: asyncio.Runner, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [T0]
    receiver = make_receiver(tmp_path, fake, clock)
    caplog.set_level(logging.INFO, logger="otel_llm_receiver.scheduler")
    try:
        outcome = loop.run(receiver.poll(NAME))
        assert outcome.ok, outcome
        # 4 whole days from 00:00 UTC plus today's 10.5 hours: 5 chunks, one completions request each, on the
        # day grid; the costs are read once, over the whole window (as an unchunked poll reads them).
        starts = [int(r.param("start_time") or 0) for r in requests_to(fake, COMPLETIONS)]
        assert starts == [DAY0 - 4 * DAY, DAY0 - 3 * DAY, DAY0 - 2 * DAY, DAY0 - DAY, DAY0]
        assert [int(r.param("end_time") or 0) for r in requests_to(fake, COMPLETIONS)] == [
            DAY0 - 3 * DAY, DAY0 - 2 * DAY, DAY0 - DAY, DAY0, T0]
        (costs,) = requests_to(fake, COSTS)
        assert (int(costs.param("start_time") or 0), int(costs.param("end_time") or 0)) == (DAY0 - 4 * DAY, T0)
        tokens, _, cursors = ledger_state(tmp_path / "ledger.db")
        assert tokens == truth(fake, DAY0 - 4 * DAY, T0)
        assert cursors == {"poll": str(T0 - T0 % HOUR), "cost": str(T0)}
        (line,) = [r.getMessage() for r in caplog.records if ": poll " in r.getMessage()]
        assert line.startswith(f"{NAME}: poll ok, ") and line.endswith(" in 5 chunks"), line
        # Self-health counted every chunk's points once: the ledger holds exactly that many buckets.
        outcomes = receiver.health.instances[NAME]
        assert outcomes.polls == 1 and outcomes.consecutive_failures == 0
    finally:
        loop.run(receiver.aclose())


def test_a_steady_state_poll_is_one_fetch_and_one_transaction(
    tmp_path: Path, fake: FakeOpenAI, loop: asyncio.Runner, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [T0]
    caplog.set_level(logging.INFO, logger="otel_llm_receiver.scheduler")
    receiver = make_receiver(tmp_path, fake, clock)
    try:
        assert loop.run(receiver.poll(NAME)).ok
        fake.api.requests.clear()
        clock[0] = T0 + 10 * 60
        fake.now = clock[0]
        assert loop.run(receiver.poll(NAME)).ok
        (one,) = requests_to(fake, COMPLETIONS)  # the lookback, in one request
        assert int(one.param("start_time") or 0) == T0 - T0 % HOUR - 2 * HOUR
        tokens, _, _ = ledger_state(tmp_path / "ledger.db")
        assert tokens == truth(fake, DAY0 - 4 * DAY, T0 + HOUR)
        lines = [r.getMessage() for r in caplog.records if ": poll " in r.getMessage()]
        assert len(lines) == 2 and lines[0].endswith(" in 5 chunks") and "chunk" not in lines[1], lines
    finally:
        loop.run(receiver.aclose())


def test_usage_failing_in_a_chunk_stops_the_poll_keeps_earlier_chunks_and_moves_no_cursor(
    tmp_path: Path, fake: FakeOpenAI, loop: asyncio.Runner
) -> None:
    """Chunk 3 of 5 fails (a 400 on completions): chunks 1 and 2 stay applied, chunks 4 and 5 are not read, the
    poll cursor is not written (the costs, read in chunk 1, land with their cursor, as in an unchunked poll whose
    usage failed); the next poll re-reads from the old (absent) cursor, re-applies chunks 1 and 2 (which adds
    nothing: bucket values are absolute) and lands exactly, with the same series start times."""

    def fail_third(request: Request, response: Response) -> None:
        if request.path == COMPLETIONS and request.param("start_time") == str(DAY0 - 3 * DAY):
            fake.api.fail_next(COMPLETIONS, 400)  # the next completions request: chunk 3's

    fake.api.observers.append(fail_third)
    clock = [T0]
    receiver = make_receiver(tmp_path, fake, clock)
    try:
        outcome = loop.run(receiver.poll(NAME))
        assert not outcome.ok and outcome.failed_sources == ("usage",), outcome
        assert len(requests_to(fake, COMPLETIONS)) == 3 and len(requests_to(fake, COSTS)) == 1
        tokens, starts, cursors = ledger_state(tmp_path / "ledger.db")
        assert tokens == truth(fake, DAY0 - 4 * DAY, DAY0 - 2 * DAY)  # exactly chunks 1 and 2
        assert cursors == {"cost": str(T0)}
        assert receiver.health.instances[NAME].consecutive_failures == 1

        fake.api.observers.clear()
        assert loop.run(receiver.poll(NAME)).ok
        tokens, starts_after, cursors = ledger_state(tmp_path / "ledger.db")
        assert tokens == truth(fake, DAY0 - 4 * DAY, T0)
        assert {sid: starts_after[sid] for sid in starts} == starts  # the series of chunks 1-2 kept their start
        assert cursors == {"poll": str(T0 - T0 % HOUR), "cost": str(T0)}
    finally:
        loop.run(receiver.aclose())


def test_a_cost_failure_keeps_every_chunk_of_usage_and_moves_only_the_poll_cursor(
    tmp_path: Path, fake: FakeOpenAI, loop: asyncio.Runner
) -> None:
    fake.api.fail_next(COSTS, 400)
    clock = [T0]
    receiver = make_receiver(tmp_path, fake, clock)
    try:
        outcome = loop.run(receiver.poll(NAME))
        assert outcome.ok and outcome.failed_sources == ("cost",), outcome
        tokens, _, cursors = ledger_state(tmp_path / "ledger.db")
        assert tokens == truth(fake, DAY0 - 4 * DAY, T0)
        assert cursors == {"poll": str(T0 - T0 % HOUR)}
    finally:
        loop.run(receiver.aclose())


def test_a_smaller_chunk_splits_further_and_lands_exactly(tmp_path: Path, fake: FakeOpenAI, loop: asyncio.Runner) -> None:
    clock = [T0]
    receiver = make_receiver(tmp_path, fake, clock, backfill_chunk="6h")
    try:
        assert loop.run(receiver.poll(NAME)).ok
        assert len(requests_to(fake, COMPLETIONS)) == 4 * 4 + 2  # 4 days of 6h chunks, then 00:00-06:00-10:30
        assert len(requests_to(fake, COSTS)) == 1
        tokens, _, _ = ledger_state(tmp_path / "ledger.db")
        assert tokens == truth(fake, DAY0 - 4 * DAY, T0)
    finally:
        loop.run(receiver.aclose())


def test_progress_of_a_chunked_backfill_is_over_the_whole_window_and_names_the_chunk() -> None:
    now = [0.0]
    tracker = PollProgress(NAME, Window(DAY0 - 4 * DAY, T0), interval=5.0, clock=lambda: now[0])
    tracker.chunk(2, 5)
    # a request spans chunk 3 only; its share is still of the whole window: 3 of 4.4 days read
    tracker.begin("completions", DAY0 - 2 * DAY, DAY0 - DAY)
    now[0] = 6.0
    tracker.page("completions", records=10, newest=DAY0 - DAY, start=DAY0 - 2 * DAY, end=DAY0 - DAY)
    (line,) = tracker.lines
    share = round(100 * 3 * DAY / (T0 - (DAY0 - 4 * DAY)))
    assert f": {share}% (through " in line and ", chunk 3 of 5, " in line, line
    tracker.writing()
    tracker.finish()
    assert "chunk" not in tracker.lines[-1] and ": done, " in tracker.lines[-1]
