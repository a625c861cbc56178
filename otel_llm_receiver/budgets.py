"""Budget maths: calendar periods in a time zone, projection and burn rates. Pure functions of numbers.

Periods are calendar-aligned in the budget's time zone (``day``, ``week`` from Monday, ``month``, ``quarter``):
their bounds are local midnights converted to UTC with ``zoneinfo``, so a period containing a DST change is an
hour shorter or longer, and months have their real lengths. ``signals.py`` reads the spend from the ledger's
hourly rollups; this module only turns amounts into the gauges (docs/budgets.md has the worked example).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

from .signals_config import Period

__all__ = ["BURN_WINDOWS", "PROJECTION_WINDOW", "BudgetStatus", "period_bounds", "status"]

HOUR = 3600
#: Burn-rate windows (seconds): a fast and a slow one, as multi-window burn-rate alerts use.
BURN_WINDOWS: dict[str, int] = {"1h": HOUR, "6h": 6 * HOUR}
#: The trailing window whose average spend rate the projection extrapolates.
PROJECTION_WINDOW = 24 * HOUR


def _local_midnight(day: dt.date, zone: ZoneInfo) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def period_bounds(now: int, period: Period, timezone: str = "UTC") -> tuple[int, int]:
    """``[start, end)`` in Unix seconds of the calendar period containing ``now`` in ``timezone``."""
    zone = ZoneInfo(timezone)
    today = dt.datetime.fromtimestamp(now, zone).date()
    if period == "day":
        first, after = today, today + dt.timedelta(days=1)
    elif period == "week":
        first = today - dt.timedelta(days=today.weekday())
        after = first + dt.timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = (first + dt.timedelta(days=32)).replace(day=1)
    else:  # quarter
        first = today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1)
        after = (first + dt.timedelta(days=95)).replace(day=1)
    return _local_midnight(first, zone), _local_midnight(after, zone)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget's gauges at one moment (USD as exact ``Decimal``, ratios as ``Decimal`` too)."""

    name: str
    limit: Decimal
    spent: Decimal
    projected: Decimal
    burn_rates: dict[str, Decimal]  # window name -> ratio
    period_start: int
    period_end: int

    @property
    def utilization(self) -> Decimal:
        return self.spent / self.limit


def status(
    name: str,
    limit: Decimal,
    bounds: tuple[int, int],
    now: int,
    spent: Decimal,
    trailing: Decimal,
    windows: dict[str, Decimal],
) -> BudgetStatus:
    """The gauges from the amounts the ledger gave.

    ``spent``: period to date; ``trailing``: the last ``PROJECTION_WINDOW``; ``windows``: spend in each burn
    window. Projection: ``spent + trailing / 24h * (period end - now)``. Burn rate over window ``w``:
    ``(spend in w / w) / (limit / period length)``: 1 means spending exactly the budget by the period's end.
    """
    start, end = bounds
    length = Decimal(end - start)
    left = Decimal(max(end - now, 0))
    projected = spent + trailing / PROJECTION_WINDOW * left
    even_rate = limit / length  # USD per second that exactly uses the budget
    burn = {w: (windows[w] / BURN_WINDOWS[w]) / even_rate for w in windows}
    return BudgetStatus(name, limit, spent, projected, burn, start, end)
