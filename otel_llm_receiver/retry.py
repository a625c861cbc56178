"""Backoff: how long to wait before trying again, shared by the scheduler and the providers' HTTP clients.

Exponential with full jitter, capped (by the collection interval, so a failing provider is retried at least
once per interval), and never shorter than a ``Retry-After`` the API sent.
"""

from __future__ import annotations

import math
import random
import time
from contextvars import ContextVar
from email.utils import parsedate_to_datetime

#: HTTP statuses worth retrying: rate limiting, and the server-side failures that are usually transient.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})

#: When the poll in progress must end (``time.monotonic()``), published by the scheduler for the HTTP clients:
#: a retry whose wait (a ``Retry-After``, a backoff) would outlast it ends the poll at once with the API's own
#: error, instead of sleeping into the scheduler's timeout. None outside a poll (no deadline).
POLL_DEADLINE: ContextVar[float | None] = ContextVar("poll_deadline", default=None)

#: The longest any ``Retry-After`` is honoured: one hour (and at most ``RETRY_AFTER_INTERVALS`` intervals).
MAX_RETRY_AFTER = 3600.0
RETRY_AFTER_INTERVALS = 10


def retry_after_cap(collection_interval: float) -> float:
    """The longest wait a ``Retry-After`` may impose on an instance: min(1h, 10 x its collection interval).

    A huge (or infinite) value would otherwise stop the instance for good; the API is asked again after the cap.
    """
    return min(MAX_RETRY_AFTER, RETRY_AFTER_INTERVALS * collection_interval)


def backoff_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failures so far)."""
    exp = min(cap, base * 2 ** max(0, attempt - 1))
    delay = (rng or random).uniform(exp / 2, exp)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date; None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if math.isnan(seconds):
            return None
        return max(0.0, seconds)  # inf (or 1e400) stays inf: the caller caps it (retry_after_cap) and logs it
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
