"""Anomaly scores: a robust z-score of an hour against the same hour in the past. Pure functions of numbers.

For the newest complete hour ``h`` of a series (cost or tokens per provider, model and tenancy) the baseline is
the same hour of the week in the last ``WEEKS`` weeks (``h - k * 168h``); with fewer than ``MIN_WEEKS`` of them
it falls back to the same hour of the day in the last ``DAYS`` days (``h - k * 24h``), and with fewer than
``MIN_DAYS`` of those no score is emitted. Hours with no usage count as zero once the series existed.

    score = (x - median) / scale,   scale = max(1.4826 * MAD, FLOOR * median, EPSILON)

``1.4826 * MAD`` estimates the standard deviation of normal data without letting the anomalies themselves
inflate it; the floor keeps a near-constant baseline (MAD ~ 0) from turning a 2% wobble into a huge score.
Thresholds belong in alert rules (docs/anomalies.md): the gauge is only the score.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["DAYS", "FLOOR", "MIN_DAYS", "MIN_WEEKS", "WEEKS", "baseline_hours", "robust_z"]

HOUR = 3600
WEEK = 168 * HOUR
DAY = 24 * HOUR
WEEKS = 4
MIN_WEEKS = 3
DAYS = 7
MIN_DAYS = 5
MAD_TO_SIGMA = 1.4826
FLOOR = 0.05  # the scale is at least 5% of the median
EPSILON = 1e-9


def baseline_hours(hour: int, first_hour: int) -> list[int]:
    """The past hours to compare ``hour`` with, given that the series' first rollup is at ``first_hour``.

    That first hour is left out: a series (or a backfill) usually starts part-way through it.
    """
    weeks = [hour - k * WEEK for k in range(1, WEEKS + 1) if hour - k * WEEK > first_hour]
    if len(weeks) >= MIN_WEEKS:
        return weeks
    days = [hour - k * DAY for k in range(1, DAYS + 1) if hour - k * DAY > first_hour]
    return days if len(days) >= MIN_DAYS else []


def robust_z(value: float, history: Sequence[float]) -> float | None:
    """The robust z-score of ``value`` against ``history``; None when there is no history."""
    if not history:
        return None
    median = statistics.median(history)
    mad = statistics.median(abs(v - median) for v in history)
    scale = max(MAD_TO_SIGMA * mad, FLOOR * abs(median), EPSILON)
    return (value - median) / scale
