"""Backoff: how long to wait before trying again, shared by the scheduler and the providers' HTTP clients.

Exponential with full jitter, capped (by the collection interval, so a failing provider is retried at least
once per interval), and never shorter than a ``Retry-After`` the API sent.
"""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

#: HTTP statuses worth retrying: rate limiting, and the server-side failures that are usually transient.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


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
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when.timestamp() - (time.time() if now is None else now))
