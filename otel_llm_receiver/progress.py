"""Progress of a long poll (a backfill): how far each source got, pages and records so far, and an ETA.

A first poll may page through days of data for minutes; without a word in the log it looks hung. The scheduler
makes one ``PollProgress`` per backfill poll and publishes it in ``POLL_PROGRESS`` (a context variable, like
``retry.POLL_DEADLINE``), so the shared paging helpers report each page without any provider passing it around:
OpenAI's ``pages.buckets``, Anthropic's report pager and the demo's day pages. Providers without a paging hook
(Azure OpenAI, Bedrock, Vertex AI) report only their answered API calls (``ApiClient``, the AWS and Cloud
Monitoring wrappers): their line shows those and the elapsed time, no share and no ETA. A steady-state poll gets no
tracker, so it logs its one result line and nothing else.

"How far" is the newest bucket end a source has reached against that source's window; the poll's figure is the
least advanced source seen so far (a source not yet started is not counted). The ETA is the time taken so far
stretched by the share still to go.

A long poll read in chunks (``chunks.py``) has one tracker for its whole window: each request spans one chunk,
so a source's share is taken against the poll's window, not the request's, and the line names the chunk in
flight (``chunk 12 of 91``); the stage goes to "writing" only for the last chunk's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from .durations import format_duration
from .model import Window

log = logging.getLogger(__name__)

#: Default seconds between two progress lines of one backfill (``progress_interval``).
DEFAULT_INTERVAL = 5.0

#: Where a backfill is: pages coming in, every page read and the ledger transaction running, or landed.
Stage = Literal["reading", "writing", "done"]

#: How far (seconds) beyond ``lookback`` a poll's window must reach to count as a catch-up (a backfill).
CATCH_UP = 86400

#: The tracker of the poll in progress, published by the scheduler for the paging helpers; None outside a
#: backfill (a steady-state poll reports nothing).
POLL_PROGRESS: ContextVar[PollProgress | None] = ContextVar("poll_progress", default=None)


@dataclass(frozen=True, slots=True)
class SourceState:
    """One source's progress: its window, the newest bucket end reached (None before its first page)."""

    source: str
    start: int
    end: int
    newest: int | None
    pages: int
    records: int

    @property
    def fraction(self) -> float:
        """Share of the source's window read, 0..1 (the growing last bucket may end past ``end``: capped)."""
        if self.newest is None:
            return 0.0
        if self.end <= self.start:
            return 1.0
        return min(1.0, max(0.0, (self.newest - self.start) / (self.end - self.start)))


@dataclass(frozen=True, slots=True)
class ProgressState:
    """A snapshot of one poll's progress, safe to hand to another thread (the demo's summary)."""

    instance: str
    window: Window
    elapsed: float
    sources: tuple[SourceState, ...]
    #: API calls answered so far (every provider: shown when no source reports pages)
    requests: int = 0
    #: "reading" (pages coming in), "writing" (every page read, the ledger transaction running) or "done"
    stage: Stage = "reading"
    #: a chunked poll (``chunks.py``): the chunk being read (0-based) and how many there are; 1 when unchunked
    chunk: int = 0
    chunks: int = 1

    @property
    def pages(self) -> int:
        return sum(s.pages for s in self.sources)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.sources)

    @property
    def fraction(self) -> float | None:
        """The least advanced source's share; None before any source reported (no paging hook)."""
        return min((s.fraction for s in self.sources), default=None)

    @property
    def reached(self) -> int | None:
        """The date the least advanced source reached (the bucket end it got to, capped at its window end)."""
        least = min(self.sources, key=lambda s: s.fraction, default=None)
        if least is None or least.newest is None:
            return None
        return min(least.newest, least.end)

    @property
    def eta(self) -> float | None:
        """Seconds still to go at the pace so far; None when nothing is known yet (or while the ledger writes:
        its pace is not that of the pages), 0 once done."""
        if self.stage == "done":
            return 0.0
        if self.stage == "writing":
            return None
        f = self.fraction
        if f is None or f <= 0.0:
            return None
        return self.elapsed * (1.0 - f) / f

    def line(self) -> str:
        """One log line: instance, overall share and date, pages, records, elapsed, ETA, then each source."""
        head = f"{self.instance}: backfill {_day(self.window.start)}..{_day(self.window.end)}"
        f = self.fraction
        if self.stage == "writing":
            where = "all pages read, writing to the ledger"
        elif self.stage == "done":
            where = "done"
        elif f is None:
            where = f"no page progress reported by this provider yet, {self.requests:,} API calls answered"
        else:
            reached = self.reached
            where = f"{f:.0%}" + (f" (through {_day(reached)})" if reached is not None else "")
        if self.chunks > 1 and self.stage != "done":
            where += f", chunk {self.chunk + 1} of {self.chunks}"
        eta = self.eta
        text = (f"{head}: {where}, {self.pages:,} page{'s' if self.pages != 1 else ''}, {self.records:,} records, "
                f"{_seconds(self.elapsed)} elapsed, ETA {_seconds(eta) if eta is not None else 'unknown'}")
        if self.sources:
            text += "; " + ", ".join(
                f"{s.source} {s.fraction:.0%} ({s.pages:,} pages, {s.records:,} records)" for s in self.sources)
        return text


class PollProgress:
    """What the paging code of one backfill poll reported, and the periodic log line about it."""

    def __init__(
        self,
        instance: str,
        window: Window,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance = instance
        self.window = window
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last_line = self.started
        self._sources: dict[str, SourceState] = {}
        self._stage: Stage = "reading"
        self._requests = 0
        self._chunk = 0
        self._chunks = 1
        #: every line logged, in order (the last one is what ``/health`` or a test may want to see)
        self.lines: list[str] = []

    def begin(self, source: str, start: int | None = None, end: int | None = None) -> None:
        """A source starts reading ``[start, end)`` (default: the poll's window); its share counts from now on.

        In a chunked poll a request spans one chunk only: the share is of the poll's whole window."""
        if self._chunks > 1:
            start, end = None, None
        if source not in self._sources:
            self._sources[source] = SourceState(
                source, self.window.start if start is None else start, self.window.end if end is None else end,
                None, 0, 0)

    def chunk(self, index: int, count: int) -> None:
        """A chunked poll (``chunks.py``) starts reading chunk ``index`` of ``count``: pages come in again."""
        self._chunk, self._chunks = index, count
        self._stage = "reading"

    def page(self, source: str, *, records: int, newest: int | None,
             start: int | None = None, end: int | None = None) -> None:
        """One page of ``source`` arrived: ``records`` rows, its newest bucket ending at ``newest``."""
        self.begin(source, start, end)
        s = self._sources[source]
        reached = s.newest if newest is None else max(newest, s.newest or newest)
        self._sources[source] = SourceState(s.source, s.start, s.end, reached, s.pages + 1, s.records + records)
        self.tick()

    def request(self) -> None:
        """One API call answered (any provider: the HTTP client, the AWS and Cloud Monitoring wrappers)."""
        self._requests += 1
        self.tick()

    def writing(self) -> None:
        """Every page is read; what is left is the ledger transaction (of the last chunk, when chunked)."""
        self._stage = "writing"

    def finish(self) -> None:
        """The backfill landed: a last line with the final counts, when any progress line was logged (a
        backfill quicker than one interval stays as quiet as a steady-state poll)."""
        self._stage = "done"
        if self.lines:
            self._log()

    def state(self) -> ProgressState:
        return ProgressState(self.instance, self.window, max(0.0, self.clock() - self.started),
                             tuple(self._sources.values()), self._requests, self._stage, self._chunk, self._chunks)

    def tick(self) -> None:
        """Log a line when ``interval`` has passed (by ``clock``) since the last one (or the start)."""
        now = self.clock()
        if now - self._last_line < self.interval:
            return
        self._last_line = now
        self._log()

    def _log(self) -> None:
        state = self.state()
        line = state.line()
        self.lines.append(line)
        f = state.fraction
        eta = state.eta
        log.info(line, extra={
            "instance": self.instance, "progress_pct": None if f is None else round(100 * f, 1),
            "pages": state.pages, "records": state.records, "elapsed_s": round(state.elapsed, 3),
            "eta_s": None if eta is None else round(eta, 1), "reached_unix": state.reached,
        })

    async def run(self) -> None:
        """The timer: a tick every ``interval`` seconds while the poll runs (cancelled when it ends), so a
        long request or a long ledger write still shows a line."""
        while True:
            await asyncio.sleep(self.interval)
            self.tick()


def report_page(source: str, *, records: int, newest: int | None,
                start: int | None = None, end: int | None = None) -> None:
    """For paging helpers: one page of ``source`` arrived (a no-op outside a backfill poll)."""
    tracker = POLL_PROGRESS.get()
    if tracker is not None:
        tracker.page(source, records=records, newest=newest, start=start, end=end)


def report_request() -> None:
    """For API clients: one call answered (a no-op outside a backfill poll)."""
    tracker = POLL_PROGRESS.get()
    if tracker is not None:
        tracker.request()


def report_begin(source: str, start: int | None = None, end: int | None = None) -> None:
    """For paging helpers: ``source`` starts reading ``[start, end)`` (a no-op outside a backfill poll)."""
    tracker = POLL_PROGRESS.get()
    if tracker is not None:
        tracker.begin(source, start, end)


def is_backfill(window: Window, *, first_poll: bool, lookback: float, collection_interval: float) -> bool:
    """Whether a poll reads far more than a steady-state poll does: the first poll, or a catch-up after an
    outage whose window reaches more than a day (plus two collection intervals) beyond ``lookback``.

    A steady-state window is ``lookback`` plus the time since the cursor, and the cursor trails ``now`` by up
    to one bucket (an hour, a day with daily buckets) plus an interval: that much is never a backfill.
    """
    return first_poll or window.end - window.start > lookback + CATCH_UP + 2 * collection_interval


def _day(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _seconds(s: float) -> str:
    return format_duration(float(round(s)))


__all__ = ["DEFAULT_INTERVAL", "POLL_PROGRESS", "PollProgress", "ProgressState", "SourceState",
           "is_backfill", "report_begin", "report_page", "report_request"]
