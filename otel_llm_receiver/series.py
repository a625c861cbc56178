"""Series identity and the pricing contract: what the ledger and its neighbours agree on, without storage.

A series is a metric with a fixed attribute set, identified by ``canonical_attrs``. ``pricing`` builds
``PricingPeriod`` schedules for the ledger's ``SeriesPricer`` seam; neither side needs the other's module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

#: Estimated cost is priced in pico-units (1e-12 USD per token, exact for any price with at most six decimals
#: per million tokens): totals are nano-units plus a sub-nano remainder (``series.sub_total``), and its hourly
#: rollups are kept in pico-units, so a sum of hours equals the total exactly.
PICOS_PER_NANO: Final = 1000


def canonical_attrs(attrs: dict[str, str]) -> str:
    """The series identity of an attribute set: compact JSON with sorted keys (stable across versions)."""
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class PricingPeriod:
    """Where a usage series' deltas go while ``valid_from <= bucket hour < valid_until``.

    Each delta of the usage series (tokens, requests) times ``price`` is added to the target series
    (``target_metric`` with ``target_attrs``), of which ``scale`` sub-units make one unit of its total: estimated
    cost uses pico-USD per token with scale 1000 (totals in nano-USD); unpriced tokens use price 1, scale 1.
    """

    valid_from: int
    valid_until: int
    target_metric: str
    target_attrs: dict[str, str]
    price: int
    scale: int


class SeriesPricer(Protocol):
    """Gives the pricing schedule of a usage series (``pricing.PriceBook`` is one); the ledger knows no prices."""

    def schedule(self, metric: str, attrs: dict[str, str]) -> Sequence[PricingPeriod]: ...
