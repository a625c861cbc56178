"""Chunked polls: a long window (a backfill, a catch-up after an outage) read and applied in bounded parts.

A 90-day backfill fetched as one ``PollResult`` holds every record of the 90 days in memory at once (issue 20:
887 MiB for 676k OpenAI records). The scheduler therefore splits a window longer than the instance's
``backfill_chunk`` (default one day) into consecutive sub-windows on the UTC grid of that size, so a boundary
never cuts a bucket (every bucket width of every provider divides a day, and a chunk is a whole number of
days or divides a day). Each chunk is fetched, then applied as one ledger transaction; only the last chunk's
transaction moves the poll's cursor (and the provider's own cursors). A crash between chunks leaves the old
cursor, so the next poll re-reads the whole window and applies its chunks again: bucket values are absolute
(DESIGN.md invariant 1), so a re-applied chunk counts nothing twice.

While a chunk is fetched the scheduler publishes it in ``POLL_CHUNK`` (a context variable, like
``retry.POLL_DEADLINE``), so a provider can tell its chunk from the poll's whole window:

* ``poll_now(window)`` is the poll's "now" (``window.end`` outside a chunked poll): a provider that models
  data as of a time (the demo's partial buckets) must use it, not the chunk's end;
* ``reads_secondary()`` is True in the first chunk only (and outside a chunked poll): sources other than
  usage (daily costs, Claude Code analytics), whose reach is set by their own lookback from "now", are read
  once per poll, in its first chunk, over ``whole_window(window)`` and as of ``poll_now(window)``, exactly as
  an unchunked poll reads them. The first, not the last: a usage failure in any chunk ends the poll, and the
  other sources must land all the same (a failing usage API never costs the cost data, as in an unchunked
  poll). Their cursors, like every cursor, are written with the poll's final transaction.

A steady-state poll (a window no longer than a chunk) is one chunk: ``POLL_CHUNK`` stays None, and it runs
exactly as before (one fetch, one transaction).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .model import Window

#: Default chunk of a long poll: a day of buckets (2,500 hourly series: 60k rows) keeps a backfill's peak
#: memory well under 300 MiB, whatever its length.
DEFAULT_CHUNK = 86_400
HOUR = 3_600
DAY = 86_400
#: ``backfill_chunk`` bounds: an hour (a very large organisation at minute buckets) to 31 days.
MIN_CHUNK = HOUR
MAX_CHUNK = 31 * DAY


@dataclass(frozen=True, slots=True)
class PollChunk:
    """The chunk being fetched: its window, its place among the poll's chunks and the poll's whole window."""

    whole: Window
    window: Window
    index: int
    count: int

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


#: The chunk of a chunked poll being fetched; None outside one (a steady-state poll, a probe, a test).
POLL_CHUNK: ContextVar[PollChunk | None] = ContextVar("poll_chunk", default=None)


def chunk_problem(seconds: float) -> str | None:
    """Why ``seconds`` is not a valid ``backfill_chunk`` (None when it is): from 1h to 31d, a whole number of
    days or a whole number of hours that divides a day, so chunk boundaries fall on every bucket grid."""
    if seconds < MIN_CHUNK or seconds > MAX_CHUNK:
        return f"must be from 1h to 31d, not {seconds:g}s"
    s = int(seconds)
    if s != seconds or (s % DAY and (s % HOUR or DAY % s)):
        return (f"must be a whole number of days, or of hours dividing a day (1h, 2h, 3h, 4h, 6h, 8h, 12h), "
                f"not {seconds:g}s")
    return None


def split(window: Window, size: int) -> list[Window]:
    """``window`` as consecutive sub-windows cut on the UTC grid of ``size`` seconds; the window itself (one
    chunk) when it is no longer than ``size``, so a steady-state poll is never split."""
    if size <= 0 or window.end - window.start <= size:
        return [window]
    chunks: list[Window] = []
    start = window.start
    while start < window.end:
        end = min(start - start % size + size, window.end)
        chunks.append(Window(start, end))
        start = end
    return chunks


def poll_now(window: Window) -> int:
    """The poll's "now": the end of its whole window (``window.end`` outside a chunked poll)."""
    chunk = POLL_CHUNK.get()
    return chunk.whole.end if chunk is not None else window.end


def whole_window(window: Window) -> Window:
    """The whole window of the poll this fetch belongs to (``window`` itself outside a chunked poll)."""
    chunk = POLL_CHUNK.get()
    return chunk.whole if chunk is not None else window


def reads_secondary() -> bool:
    """Whether this fetch reads the sources other than usage: always, except in a chunk after the first."""
    chunk = POLL_CHUNK.get()
    return chunk is None or chunk.index == 0


__all__ = ["DEFAULT_CHUNK", "MAX_CHUNK", "MIN_CHUNK", "POLL_CHUNK", "PollChunk", "chunk_problem", "poll_now",
           "reads_secondary", "split", "whole_window"]
