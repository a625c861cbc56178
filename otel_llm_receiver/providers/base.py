"""The provider contract (DESIGN.md, "The provider contract").

A provider turns a time window into canonical records: HTTP (or SDK) calls, paging, retries and the API's shape
live in its module; no OpenTelemetry, no SQL, no global state. The scheduler owns windows, cursors, timeouts
and the ledger, so adding a provider is filling in this form:

* ``TYPE`` — the config key (``openai`` in ``providers: {openai/prod: ...}``);
* ``OPTIONS_TYPE`` — its options as a frozen dataclass (``providers/options.py``: defaults written once, a
  ``validate()`` whose problems ``check`` reports with their key paths); ``OPTIONS`` is its ``schema()``
  (a provider not yet typed writes ``OPTIONS`` by hand and keeps ``OPTIONS_TYPE`` None);
* ``DEFAULT_LOOKBACK`` / ``DEFAULT_BACKFILL`` / ``MAX_BACKFILL`` — how far each poll re-reads, how far the first
  poll reaches back, and what the API allows at most;
* ``REVISION_HORIZON`` — how old a bucket can be and still change (older bucket rows are pruned);
* ``fetch(window)`` — the records for every complete or partial bucket that overlaps ``window``.

Optional: a provider with sources of their own rhythm (a daily cost API polled every 6 h beside hourly usage)
keeps their cursors in ``PollResult.cursors``, saved in the poll's transaction, and gets them back through
``restore(cursors)`` before its first poll and after any failed one, so a restart or a rolled-back poll
neither loses nor repeats that work. Every API
request it makes is counted in ``api_requests`` by operation (``llm.receiver.provider_requests``): some APIs
bill per request, and users should see what polling costs.

Sources: usage and cost (and Anthropic's Claude Code analytics) are separate ``SOURCES``, read so that the
failure of one never blocks the others (``read_source``): the poll returns what landed, names the sources it
read in ``PollResult.polled_sources`` and the failed ones in ``failed_sources``, and a failed source's cursor
does not move. Each source's polls are counted by ``llm.data.source`` in ``llm.receiver.polls``.

``check --connect`` calls ``probe()``: authenticate and read one small page of every source, nothing kept. The
default fetches a one-hour window and reports each of ``data_sources`` from the poll's ``failed_sources``;
a provider with more to check (a names API, one line per endpoint) overrides it.

Failures are raised as ``ProviderError`` with an ``error_type``; anything else a provider raises is a bug that
the scheduler still contains (counted as ``bad_response``), never a crash of the receiver.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from ..config_parse import Option
from ..config_providers import ProviderConfig
from ..errors import ERROR_TYPES, ErrorType, ProviderError
from ..model import COST, USAGE, PollResult, SourceFailure, Window
from .options import ProviderOptions

T = TypeVar("T")

HOUR = 3600
DAY = 86400
#: How far back a ``probe()`` reads: enough for one small page of every source, little enough to be cheap.
PROBE_WINDOW = HOUR


@dataclass(frozen=True)
class ProbeResult:
    """One ``check --connect`` line: a source (or API) of an instance, and what was read or why it failed."""

    source: str
    what: str = ""
    error: ProviderError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Provider(ABC):
    """Base class of every provider module's provider."""

    TYPE: ClassVar[str]
    OPTIONS_TYPE: ClassVar[type[ProviderOptions] | None] = None
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    DEFAULT_LOOKBACK: ClassVar[float] = 2 * HOUR
    DEFAULT_BACKFILL: ClassVar[float] = DAY
    MAX_BACKFILL: ClassVar[float | None] = None
    REVISION_HORIZON: ClassVar[float] = 2 * DAY
    #: The sources this provider reads (``llm.data.source``): ``usage``, ``cost``, ``claude_code``.
    SOURCES: ClassVar[tuple[str, ...]] = (USAGE,)

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.name = config.name
        #: API requests made, by operation (bounded: operation names come from code, never from data);
        #: drained by the scheduler after every poll, successful or not.
        self.api_requests: Counter[str] = Counter()

    def restore(self, cursors: Mapping[str, str]) -> None:
        """The cursors this instance saved (``PollResult.cursors``, plus ``poll``), before the first poll.

        Called again after a failed poll, whose cursors were rolled back with its data: set every cursor from
        ``cursors`` and reset those absent to their initial state, so nothing uncommitted survives in memory.
        """
        return None

    @property
    def data_sources(self) -> tuple[str, ...]:
        """The sources this instance reads (its config may turn some off): a whole failed poll fails them all."""
        return self.SOURCES

    @property
    def lookback(self) -> float:
        return self.config.lookback if self.config.lookback is not None else self.DEFAULT_LOOKBACK

    @property
    def backfill(self) -> float:
        backfill = self.config.backfill if self.config.backfill is not None else self.DEFAULT_BACKFILL
        return min(backfill, self.MAX_BACKFILL) if self.MAX_BACKFILL is not None else backfill

    @abstractmethod
    async def fetch(self, window: Window) -> PollResult:
        """Records for every bucket overlapping ``window`` (``window.end`` is "now" for this poll)."""

    async def aclose(self) -> None:
        """Release connections; called once when the receiver stops."""
        return None

    async def probe(self) -> list[ProbeResult]:
        """One result per source: a poll of the last ``PROBE_WINDOW`` whose records are discarded.

        The poll itself already reads its sources apart (``read_source``), so a source that failed is in
        ``failed_sources`` with the provider's own message (which names the missing role or key); a poll that
        failed as a whole (authentication, discovery) fails every source with the same error.
        """
        now = int(time.time())
        try:
            result = await self.fetch(Window(now - PROBE_WINDOW, now))
        except ProviderError as exc:
            return [ProbeResult(source, error=exc) for source in self.data_sources]
        counts = {USAGE: result.usage_count, COST: len(result.costs)}
        out = []
        for source in self.data_sources:
            failure = result.failed_sources.get(source)
            if failure is not None:
                error = ProviderError(failure.message, provider=self.name, error_type=_error_type(failure.error_type))
                out.append(ProbeResult(source, error=error))
            elif result.polled_sources and source not in result.polled_sources:
                out.append(ProbeResult(source, "not read: nothing to read for it yet (e.g. no account found)"))
            elif source in counts:
                out.append(ProbeResult(source, f"read, {counts[source]} record(s) in the probe window"))
            else:
                out.append(ProbeResult(source, "read"))
        return out


def _error_type(name: str) -> ErrorType:
    """A ``SourceFailure``'s error type back as the ``ErrorType`` it was made from."""
    return next((t for t in ERROR_TYPES if t == name), "bad_response")


async def read_source(source: str, read: Awaitable[T], failed: dict[str, SourceFailure]) -> T | None:
    """Await one source's read; on a ``ProviderError`` note it in ``failed`` and return None, so the other
    sources of the poll still land. Anything else (a bug) still fails the whole poll."""
    try:
        return await read
    except ProviderError as exc:
        failed[source] = SourceFailure(exc.error_type, str(exc), exc.retry_after)
        return None
