"""Prices: what one token (or request) of a usage series costs at a given time, and the ledger's schedules.

Provider-reported cost arrives a day late or never (Bedrock, Vertex), so the receiver estimates it from tokens.
This module answers one question, "what is the USD price of one ``unit`` of this series at time ``t``", from
four sources, most specific first:

1. ``pricing.overrides`` in the config (negotiated prices, corrections);
2. ``pricing.catalog_file`` (a user's own catalog, same schema: air-gapped or negotiated prices);
3. ``default_prices.yaml`` in the package: the rules ``genai-prices`` cannot express, each citing its source
   (Anthropic 1-hour cache writes, batch and flex discounts, Anthropic long context);
4. the ``genai-prices`` package's offline data (``Decimal`` prices, with their own history and variants).

An entry either gives prices (USD per million tokens for the token types, USD per request or per unit
otherwise) or a ``multiplier`` applied to the price the other entries resolve to (batch: 0.5). ``when`` selects
entries by the series' attributes (``llm.batch``, ``llm.service_tier``, ``llm.cache.ttl``,
``llm.context_window`` or any other), and ``effective_from`` makes a price apply to buckets from that date on.
A multiplier is skipped when the base price already accounts for its condition (a genai-prices batch variant, or
an entry whose own ``when`` names the same attribute), so no discount is applied twice.

genai-prices' ``input_tokens`` *includes* cache reads and writes, while our ``input`` token type excludes them
(DESIGN.md: token types partition the total). Per-unit prices need no conversion; ``to_genai_usage`` converts
a token breakdown when genai-prices itself computes a price (used by the tests to cross-check our arithmetic).

Exactness: a price is held as an integer number of pico-USD (1e-12) per unit: exact for every price with at
most six decimals per million tokens. The ledger multiplies token deltas by it in integer SQL (see
``ledger.PricingPeriod``), so the estimated cost of a sum is the sum of the estimated costs, to the pico-dollar.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from .names import METRIC_COST_ESTIMATED, METRIC_REQUESTS, METRIC_TOKENS, METRIC_UNPRICED
from .price_entries import (
    PER_MILLION_UNITS,
    PICOS_PER_USD,
    REQUEST_UNIT,
    TOKENS_PER_MTOK,
    PriceEntry,
    load_default_entries,
    parse_price_entries,
)
from .price_entries import glob_match as _glob
from .providers.descriptors import facts_by_genai_name
from .series import PICOS_PER_NANO, PricingPeriod

log = logging.getLogger(__name__)

__all__ = [
    "FAR_FUTURE",
    "PICOS_PER_USD",
    "REQUEST_UNIT",
    "Price",
    "PriceBook",
    "PriceEntry",
    "load_default_entries",
    "parse_price_entries",
    "to_genai_usage",
]

FAR_FUTURE = 2**62
#: Part of ``PriceBook.fingerprint``: bump when the resolution of prices or schedules changes, so every ledger
#: rebuilds its schedules once on its next start.
SCHEDULE_LOGIC = 1


# Our provider names (gen_ai.provider.name) -> genai-prices provider ids, from each provider's provider.yaml;
# others are matched by model name.
GENAI_PROVIDER_IDS: Mapping[str, str] = {
    name: f.genai_prices_id for name, f in facts_by_genai_name().items() if f.genai_prices_id is not None
}
_FALLBACK_PROVIDER_IDS = ("openai", "anthropic", "google")
_GENAI_PRICE_KEYS: Mapping[str, str] = {
    "input": "input_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "output": "output_mtok",
    REQUEST_UNIT: "requests_kcount",
}
_BAND = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)")


# ------------------------------------------------------------------------------------------------- prices
@dataclass(frozen=True, slots=True)
class Price:
    """The resolved price of one unit: exact USD, and where it came from (for docs, logs and ``report``)."""

    usd: Decimal
    source: str

    @property
    def picos(self) -> int:
        return int((self.usd * PICOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def to_genai_usage(tokens: Mapping[str, int]) -> dict[str, int]:
    """Our token partition as genai-prices usage fields: its ``input_tokens`` includes cache reads and writes."""
    cache_read, cache_write = tokens.get("cache_read", 0), tokens.get("cache_write", 0)
    return {
        "input_tokens": tokens.get("input", 0) + cache_read + cache_write,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "output_tokens": tokens.get("output", 0),
    }


def _context_lower_bound(band: str | None) -> int:
    """The lower bound in tokens of a context-window band such as ``200k-1M`` (0 when absent or unreadable)."""
    if not band:
        return 0
    m = _BAND.match(band)
    if m is None:
        return 0
    scale = {"k": 1_000, "m": 1_000_000}.get(m.group(2).lower(), 1)
    return int(Decimal(m.group(1)) * scale)


def _utc(at: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, dt.UTC)


class PriceBook:
    """Resolves prices from overrides, a catalog file, the packaged defaults and genai-prices.

    It is also the ledger's ``SeriesPricer``: ``schedule()`` turns a token or request series into pricing
    periods (estimated cost, or ``llm.pricing.unpriced_tokens`` where no price is known).
    """

    def __init__(
        self,
        entries: Sequence[PriceEntry] = (),
        *,
        defaults: Sequence[PriceEntry] | None = None,
        use_genai_prices: bool = True,
    ) -> None:
        self.entries = sorted([*entries, *(load_default_entries() if defaults is None else defaults)],
                              key=lambda e: e.rank)
        self.use_genai_prices = use_genai_prices
        self._models: dict[tuple[str, str], Any] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._plans: dict[tuple[object, ...], list[tuple[int, int, bool, int]]] = {}
        # The attributes a price can depend on: the ones genai-prices variants read, and every ``when`` key.
        self._relevant = frozenset(PRICE_GAUGE_ATTRIBUTES) | {k for e in self.entries for k in e.when}
        #: The price gauges' prices over time, by gauge key (JSON): kept in the ledger beside the schedules
        #: (``memo_state``/``restore_memo``), so an export of an unchanged book loads no genai-prices data.
        self._gauge_memo: dict[str, list[tuple[int, int, str | None]]] = {}
        self._gauge_memo_dirty = False
        #: The export thread fills the memo while the poll's apply may store it (``memo_state``).
        self._gauge_memo_lock = threading.Lock()

    def fingerprint(self) -> str:
        """What every schedule this book gives depends on, as a digest: the ledger rebuilds its schedules only
        when it changes (``LedgerWriter.set_pricer``), so a start with an unchanged price book loads no price
        data at all.

        It covers the entries (overrides, the catalog file's and the packaged defaults', as parsed, in rank
        order), whether genai-prices is used and that package's installed version (read from its metadata, not
        its data), and ``SCHEDULE_LOGIC``, bumped whenever this module's way of resolving prices changes.
        """
        genai = "off"
        if self.use_genai_prices:
            try:
                genai = importlib.metadata.version("genai-prices")
            except importlib.metadata.PackageNotFoundError:
                genai = "missing"
        text = repr((SCHEDULE_LOGIC, genai, self.entries))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # -- genai-prices ------------------------------------------------------------------------------------
    def _genai_model(self, provider: str, model: str) -> Any:
        key = (provider, model)
        if key not in self._models:
            found = None
            if self.use_genai_prices:
                from genai_prices import data_snapshot  # 0.5 s of data: loaded only when a price is needed

                snapshot = data_snapshot.get_snapshot()
                # A provider genai-prices does not know (demo, a gateway) is matched by model name, then
                # against the model makers whose models such providers serve.
                mapped = GENAI_PROVIDER_IDS.get(provider)
                candidates = [mapped] if mapped else [None, *_FALLBACK_PROVIDER_IDS]
                for provider_id in candidates:
                    try:
                        found = snapshot.find_provider_model(model, None, provider_id, None)[1]
                        break
                    except LookupError:
                        continue
            self._models[key] = found
        return self._models[key]

    def _genai_price(
        self, provider: str, model: str, unit: str, attrs: Mapping[str, str], at: int
    ) -> tuple[Decimal, set[str]] | None:
        """(USD per unit, attributes the price already accounts for) from genai-prices, or None."""
        info = self._genai_model(provider, model)
        if info is None or unit not in _GENAI_PRICE_KEYS:
            return None
        context: dict[str, str] = {}
        handled_by_context: dict[str, str] = {}
        tier = attrs.get("llm.service_tier")
        if tier and tier not in ("batch", "standard"):
            context["service_tier"] = tier
            handled_by_context["service_tier"] = "llm.service_tier"
        if attrs.get("llm.batch") == "true" or tier == "batch":
            context["processing"] = "batch"
            handled_by_context["processing"] = "llm.batch" if attrs.get("llm.batch") == "true" else "llm.service_tier"
        when = _utc(at)
        prices = info.get_prices(when, context or None)
        key = _GENAI_PRICE_KEYS[unit]
        handled: set[str] = set()
        ttl_1h = unit == "cache_write" and attrs.get("llm.cache.ttl") == "1h"
        if ttl_1h and getattr(prices, "cache_write_1h_mtok", None) is not None:
            key = "cache_write_1h_mtok"
            handled.add("llm.cache.ttl")
        value = getattr(prices, key, None)
        if value is None:
            return None
        for variant in info.price_variants or ():
            if variant.constraint is not None and not variant.constraint.active(when):
                continue
            if all(context.get(k) == v for k, v in variant.when.items()) and getattr(variant.prices, key, None) is not None:
                handled.update(handled_by_context[k] for k in variant.when if k in handled_by_context)
        if hasattr(value, "tiers"):  # TieredPrices: long-context rates by input tokens per request
            lower = _context_lower_bound(attrs.get("llm.context_window"))
            price = value.base
            for t in value.tiers:
                if lower >= t.start:
                    price = t.price
            value = price
            handled.add("llm.context_window")
        per = TOKENS_PER_MTOK if unit in PER_MILLION_UNITS else 1000  # requests_kcount: per thousand
        return Decimal(value) / per, handled

    # -- resolution --------------------------------------------------------------------------------------
    def price(self, provider: str, model: str, unit: str, attrs: Mapping[str, str], at: int) -> Price | None:
        """The USD price of one ``unit`` of a series with ``attrs`` for a bucket starting at ``at``."""
        live = [e for e in self.entries if e.effective_from <= at and e.matches(provider, model, attrs)]
        base: Decimal | None = None
        source = ""
        handled: set[str] = set()
        for e in live:  # sorted most specific first
            if unit in e.prices:
                per = TOKENS_PER_MTOK if unit in PER_MILLION_UNITS else 1
                base, source, handled = e.prices[unit] / per, e.source or e.layer, set(e.when)
                break
        if base is None:
            found = self._genai_price(provider, model, unit, attrs, at)
            if found is None:
                return None
            base, handled = found
            source = "genai-prices"
        seen: set[frozenset[tuple[str, str]]] = set()
        for e in live:
            if e.multiplier is None or (e.applies_to and unit not in e.applies_to):
                continue
            condition = frozenset(e.when.items())
            if condition in seen or handled & set(e.when) or (e.prices and unit in e.prices):
                continue
            seen.add(condition)
            base *= e.multiplier
            source += f" x{e.multiplier} ({e.source or e.layer})"
        return Price(base, source)

    def boundaries(self, provider: str, model: str) -> list[int]:
        """Times at which a price of this model may change: effective_from dates and genai-prices' dates."""
        times = {0}
        times.update(e.effective_from for e in self.entries if _glob(e.provider, provider) and _glob(e.model, model))
        info = self._genai_model(provider, model)
        if info is not None:
            constraints = [c.constraint for c in info.prices] if isinstance(info.prices, list) else []
            constraints += [v.constraint for v in info.price_variants or ()]
            for c in constraints:
                start = getattr(c, "start_date", None)
                if start is not None:
                    times.add(int(dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC).timestamp()))
        return sorted(times)

    def schedule(self, metric: str, attrs: dict[str, str]) -> list[PricingPeriod]:
        """The ledger's pricing periods for a usage series (``ledger.SeriesPricer``).

        The periods' prices and bounds depend only on what a price can depend on (``_plan``, memoised), so a
        poll creating thousands of series resolves each distinct (model, unit, pricing attributes) once.
        """
        provider = attrs.get("gen_ai.provider.name", "")
        model = attrs.get("gen_ai.request.model", "")
        if metric == METRIC_TOKENS:
            unit = attrs.get("gen_ai.token.type", "")
        elif metric == METRIC_REQUESTS:
            unit = REQUEST_UNIT
        elif metric.startswith("llm.usage.") and any(metric in e.prices for e in self.entries):
            unit = metric  # another billed unit (e.g. tool requests), priced per unit by an entry
        else:
            return []
        relevant = tuple(sorted((k, v) for k, v in attrs.items() if k in self._relevant))
        key = (metric, provider, model, unit, relevant)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(metric, provider, model, unit, attrs)
        if not plan:
            return []
        estimated = dict(attrs)  # one copy shared by this series' periods (frozen dataclasses, read-only)
        unpriced = {"gen_ai.provider.name": provider, "gen_ai.request.model": model}
        return [PricingPeriod(start, until, METRIC_COST_ESTIMATED, estimated, price, PICOS_PER_NANO)
                if priced else PricingPeriod(start, until, METRIC_UNPRICED, unpriced, 1, 1)
                for start, until, priced, price in plan]

    def _plan(
        self, metric: str, provider: str, model: str, unit: str, attrs: Mapping[str, str]
    ) -> list[tuple[int, int, bool, int]]:
        """(from, until, priced, pico-price) over all time, adjacent periods of the same target and price
        merged: estimated cost where a price is known, unpriced tokens where none is (requests: nothing)."""
        plan: list[tuple[int, int, bool, int]] = []
        for start, until, price in self._prices_over_time(provider, model, unit, attrs):
            if price is not None:
                period = (start, until, True, price.picos)
            elif metric == METRIC_TOKENS:
                self._warn_unpriced(provider, model, unit)
                period = (start, until, False, 1)
            else:
                continue  # most models bill no per-request price: nothing to count
            last = plan[-1] if plan else None
            if last is not None and (last[1], last[2], last[3]) == (start, period[2], period[3]):
                plan[-1] = (last[0], until, last[2], last[3])
            else:
                plan.append(period)
        return plan

    def _prices_over_time(
        self, provider: str, model: str, unit: str, attrs: Mapping[str, str]
    ) -> list[tuple[int, int, Price | None]]:
        """(from, until, price) over all time, between the price data's boundaries."""
        edges = self.boundaries(provider, model)
        return [(start, until, self.price(provider, model, unit, attrs, start))
                for start, until in zip(edges, [*edges[1:], FAR_FUTURE], strict=True)]

    def _warn_unpriced(self, provider: str, model: str, unit: str) -> None:
        """Once per model and unit: a model priced for text but not for, say, audio tokens must not read as a
        model with no price at all."""
        if (provider, model, unit) not in self._warned:
            self._warned.add((provider, model, unit))
            log.warning(
                "no price for %s model %s (%s): its tokens are counted in llm.pricing.unpriced_tokens, not priced at "
                "zero (add a pricing.overrides entry, see docs/pricing.md)", provider, model, unit,
            )

    def token_prices(
        self, series: Iterable[Mapping[str, str]], at: int, attributes: frozenset[str] = frozenset()
    ) -> list[tuple[dict[str, str], Decimal]]:
        """Current USD per-token prices for the token series seen: the ``llm.pricing.token_price`` gauges.

        One gauge per distinct set of ``attributes`` (provider, model, token type, and the pricing attributes
        the catalog declares for the gauge), priced from those attributes alone, so PromQL can join token rates
        with prices on the same labels.
        """
        keep = attributes or PRICE_GAUGE_ATTRIBUTES
        out: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], Decimal]] = {}
        for attrs in series:
            key_attrs = {k: v for k, v in attrs.items() if k in keep}
            key = tuple(sorted(key_attrs.items()))
            if key in out:
                continue
            usd = self._gauge_price(key_attrs, key, at)
            if usd is not None:
                out[key] = (key_attrs, usd)
        return list(out.values())

    def _gauge_price(self, key_attrs: Mapping[str, str], key: tuple[tuple[str, str], ...], at: int) -> Decimal | None:
        """A gauge's price at ``at``: from the memo when it has the gauge, else resolved (and memoised over
        time, between the same boundaries the ledger's schedules use, as exact decimal strings)."""
        memo_key = json.dumps(key, separators=(",", ":"))
        periods = self._gauge_memo.get(memo_key)
        if periods is not None:
            for start, until, usd in periods:
                if start <= at < until:
                    return None if usd is None else Decimal(usd)
        provider, model = key_attrs.get("gen_ai.provider.name", ""), key_attrs.get("gen_ai.request.model", "")
        unit = key_attrs.get("gen_ai.token.type", "")
        edges = self.boundaries(provider, model)
        memo: list[tuple[int, int, str | None]] = []
        for start, until in zip(edges, [*edges[1:], FAR_FUTURE], strict=True):
            found = self.price(provider, model, unit, key_attrs, start)
            memo.append((start, until, None if found is None else str(found.usd)))
        with self._gauge_memo_lock:
            self._gauge_memo[memo_key] = memo
            self._gauge_memo_dirty = True
        price = self.price(provider, model, unit, key_attrs, at)
        return None if price is None else price.usd

    def memo_state(self) -> str | None:
        """The gauge memo as JSON when it gained entries since the last call (the ledger stores it), else None."""
        with self._gauge_memo_lock:
            if not self._gauge_memo_dirty:
                return None
            self._gauge_memo_dirty = False
            return json.dumps(self._gauge_memo, separators=(",", ":"), sort_keys=True)

    def restore_memo(self, state: str) -> None:
        """Take back a memo ``memo_state`` gave, stored under this book's own fingerprint (so still valid)."""
        restored = json.loads(state)
        with self._gauge_memo_lock:
            for key, periods in restored.items():
                self._gauge_memo.setdefault(key, [(int(a), int(b), None if u is None else str(u)) for a, b, u in periods])


#: What selects a price (the gauge's attributes when the catalog does not say): no tenancy.
PRICE_GAUGE_ATTRIBUTES = frozenset({
    "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.token.type", "llm.batch", "llm.service_tier",
    "llm.cache.ttl", "llm.context_window",
})
