"""The price book, attribution rules and money signals a config implies, built in one place.

``run``, ``report`` and ``focus`` must price, attribute and budget the same way: three hand-built copies of this
stack had already drifted once (one forgot provider labels). Building it here keeps them one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .attribution import Attributor
from .config import Config
from .pricing import PriceBook
from .signals import Signals

__all__ = ["MoneyStack", "money_stack"]


@dataclass(frozen=True)
class MoneyStack:
    """What every command prices, attributes and budgets with."""

    prices: PriceBook
    attributor: Attributor
    labels: Mapping[str, Mapping[str, str]]  # provider instance -> its `labels:` (attribution input)
    signals: Signals


def money_stack(config: Config) -> MoneyStack:
    """The stack for ``config``: its price overrides (and genai-prices unless turned off), rules and budgets."""
    prices = PriceBook(config.pricing.entries, use_genai_prices=config.pricing.genai_prices)
    attributor = Attributor(config.attribution.rules)
    labels = {p.name: dict(p.labels) for p in config.providers}
    return MoneyStack(prices, attributor, labels, Signals(config.budgets, attributor, prices, labels))
