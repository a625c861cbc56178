"""FOCUS rows of one UTC day, read from the ledger's hourly rollups.

Grain: provider instance x series x UTC day, where a series is what the ledger keeps apart (provider, tenant,
tenancy, model, token type or cost line item, and the bounded dimensions that change a price). Rollups are
hourly sums of the latest bucket values, so a day is the sum of its 24 hours and a restated bucket changes
exactly its own day; daily cost buckets land in the hour their day starts.

Where the money comes from (``x_CostSource``):

* ``reported``: the provider's billing API (``llm.usage.cost`` in USD, ``llm.usage.cost.non_usd`` in its own
  ``llm.currency``). BilledCost = EffectiveCost = ContractedCost = the reported amount, in its own BillingCurrency.
* ``estimated``: tokens x list price (``llm.usage.cost.estimated``, USD, exact to the pico-dollar), for
  instances that reported no cost for that day (usage-only providers, or a day whose cost has not arrived).
  An instance's day is either reported or estimated, never both, so a sum of BilledCost never counts a day
  twice.

Quantities: a reported charge takes what the provider billed (``llm.usage.billed_quantity``) when it says, else
the tokens of the usage series of the same tenancy and model of the token type(s) its line item names; an
estimated charge takes the tokens (or requests) it was priced from. Tokens are ConsumedQuantity in ``Tokens``
and PricingQuantity in ``1000000 Tokens`` (the unit list prices are quoted in).

List prices come from the same ``PriceBook`` that prices the ledger: ListUnitPrice is the price per PricingUnit
where one price explains the charge (one token type, one price that day) and ListCost = ListUnitPrice x
PricingQuantity. Elsewhere ListUnitPrice is null and ListCost = BilledCost, as FOCUS requires of a ListCost with
no unit price (it is Mandatory and never null).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from ..attribution import COST_CENTER, TEAM, Attributor
from ..ledger import (
    METRIC_BILLED_QUANTITY,
    METRIC_COST,
    METRIC_COST_ESTIMATED,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_TOKENS,
    Ledger,
    canonical_attrs,
)
from ..model import TOKEN_TYPES
from ..pricing import REQUEST_UNIT, PriceBook
from .providers import facts, publisher_of, service_provider_of

DAY: Final = 86_400
Row = dict[str, Any]
AttrKey = tuple[tuple[str, str], ...]

#: Every metric a day's rows are built from (one rollup query per day).
METRICS: Final = (
    METRIC_COST, METRIC_COST_NON_USD, METRIC_COST_ESTIMATED, METRIC_TOKENS, METRIC_REQUESTS, METRIC_BILLED_QUANTITY,
)
TOKEN_METERS: Final = {
    "input": "Input Tokens", "cache_read": "Cache Read Tokens", "cache_write": "Cache Write Tokens",
    "output": "Output Tokens",
}
TOKEN_UNIT: Final = "Tokens"
TOKEN_PRICING_UNIT: Final = "1000000 Tokens"
TOKENS_PER_PRICING_UNIT: Final = 1_000_000
_NANO: Final = Decimal(1).scaleb(-9)
_PICO: Final = Decimal(1).scaleb(-12)
#: Attributes that have columns of their own; any other goes to x_Dimensions.
_COLUMN_ATTRS: Final = frozenset({
    "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.operation.name", "gen_ai.token.type", "llm.tenant",
    "llm.tenancy.id", "llm.tenancy.name", "llm.cost.line_item", "llm.currency", "cloud.region", "llm.publisher",
    "llm.cost.quantity_unit",
})
#: Attributes of a cost series that say which usage it is about (the rest must agree with the usage's, if any).
_MATCH_KEYS: Final = frozenset({
    "gen_ai.provider.name", "llm.tenancy.id", "llm.tenant", "gen_ai.request.model", "llm.cost.line_item",
    "llm.currency", "gen_ai.token.type",
})
#: Billed units as the providers name them -> FOCUS unit format (UnitFormat: plural count units, capitalized).
_UNITS: Final = {"tokens": "Tokens", "token": "Tokens", "requests": "Requests", "request": "Requests",
                 "images": "Images", "image": "Images", "characters": "Characters", "seconds": "Seconds"}


@dataclass
class RowContext:
    """What turns ledger series into rows besides the ledger: names, attribution, list prices."""

    names: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    attributor: Attributor = field(default_factory=lambda: Attributor(()))
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    prices: PriceBook | None = None
    _price_cache: dict[tuple[AttrKey, str, int], Decimal | None] = field(default_factory=dict)
    _edges: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    _statics: dict[tuple[object, ...], _Static] = field(default_factory=dict)

    def static(self, instance: str, metric: str, attrs: Mapping[str, str], source: str, meter: str,
               token_type: str | None, model: str | None) -> _Static:
        """The day-independent columns of a series' rows, built once per series (bounded cache)."""
        key = (instance, metric, attr_key(attrs), source, meter, token_type, model)
        found = self._statics.get(key)
        if found is None:
            if len(self._statics) > 100_000:
                self._statics.clear()
            found = self._statics[key] = _static(self, instance, attrs, source, meter, token_type, model)
        return found

    def unit_price(self, attrs: Mapping[str, str], unit: str, at: int) -> Decimal | None:
        """USD per ``unit`` for a series at ``at``: cached per series and price period, not per day."""
        if self.prices is None:
            return None
        provider = attrs.get("gen_ai.provider.name", "")
        model = attrs.get("gen_ai.request.model", "")
        edges = self._edges.get((provider, model))
        if edges is None:
            edges = self._edges[(provider, model)] = self.prices.boundaries(provider, model)
        period = edges[max(bisect.bisect_right(edges, at) - 1, 0)]
        key = (attr_key(attrs), unit, period)
        if key not in self._price_cache:
            if len(self._price_cache) > 200_000:  # bounded, whatever the number of series
                self._price_cache.clear()
            found = self.prices.price(provider, model, unit, attrs, at)
            self._price_cache[key] = None if found is None else found.usd
        return self._price_cache[key]


def attr_key(attrs: Mapping[str, str], without: str = "") -> AttrKey:
    """A series' attributes as a hashable key, optionally without one attribute.

    The ledger hands attributes back in their canonical order (sorted keys), so their items are the key as
    they come; every key compared here is made from such attributes.
    """
    if without:
        return tuple((k, v) for k, v in attrs.items() if k != without)
    return tuple(attrs.items())


def _decimal(units: int, scale: Decimal) -> Decimal:
    return (Decimal(units) * scale).normalize() if units else Decimal(0)


def charge_key(instance: str, metric: str, attrs: str, day: int) -> str:
    """A stable id of a row's key, so downstream tools can upsert restated days."""
    return hashlib.sha256(f"{instance}\x1f{metric}\x1f{attrs}\x1f{day}".encode()).hexdigest()[:32]


def token_types_of(attrs: Mapping[str, str]) -> tuple[str, ...]:
    """The token types a cost series is about: its ``gen_ai.token.type``, or what its line item names
    (``input``, ``Cache Read``, ``USE1-Claude4Sonnet-output-tokens``, ``tokens`` for all of them); () when it
    names none (a storage fee, an unrecognised meter)."""
    if "gen_ai.token.type" in attrs:
        return (attrs["gen_ai.token.type"],)
    item = attrs.get("llm.cost.line_item", "")
    if item in TOKEN_TYPES:
        return (item,)
    text = item.lower().replace("-", "").replace("_", "").replace(" ", "")
    if text in ("tokens", "token"):
        return TOKEN_TYPES
    for words, kind in ((("cacheread", "cachedinput", "cachehit"), "cache_read"),
                        (("cachewrite", "cachecreation"), "cache_write"),
                        (("input", "prompt"), "input"), (("output", "completion"), "output")):
        if any(w in text for w in words):
            return (kind,)
    return ()


def model_of_line_item(item: str) -> str | None:
    """The model a ``<model>, <kind>`` line item names (OpenAI's costs API: ``gpt-4o-2024-08-06, input``)."""
    model, sep, kind = item.partition(", ")
    return model.strip() if sep and model.strip() and kind.strip() else None


@dataclass
class _Usage:
    """One usage series' day: its tokens (or requests) and estimated cost (pico-USD, None when unpriced)."""

    attrs: dict[str, str]
    quantity: int = 0
    estimated: int | None = None


def day_rows(ledger: Ledger, day: int, ctx: RowContext) -> list[Row]:
    """Every FOCUS row of the UTC day starting at ``day`` (Unix seconds), in a stable order.

    Rows are version-independent dicts (every column of every version); ``schema.columns`` picks a version's.
    """
    costs: list[tuple[str, str, dict[str, str], int]] = []
    usage: dict[tuple[str, str, AttrKey], _Usage] = {}  # (instance, metric, attributes)
    billed: dict[tuple[str, AttrKey], tuple[str, int]] = {}  # (instance, cost attrs w/o currency) -> (unit, nanos)
    reported_instances: set[str] = set()
    for instance, metric, attrs, value in ledger.rollup_sums_between(day, day + DAY, METRICS):
        if metric in (METRIC_COST, METRIC_COST_NON_USD):
            costs.append((instance, metric, attrs, value))
            reported_instances.add(instance)
        elif metric == METRIC_BILLED_QUANTITY:
            unit = attrs.get("llm.cost.quantity_unit", "unknown")
            billed[(instance, attr_key(attrs, "llm.cost.quantity_unit"))] = (unit, value)
        else:
            source = METRIC_TOKENS if metric == METRIC_COST_ESTIMATED and "gen_ai.token.type" in attrs else metric
            if metric == METRIC_COST_ESTIMATED and source != METRIC_TOKENS:
                source = METRIC_REQUESTS
            key = (instance, source, attr_key(attrs))
            entry = usage.get(key)
            if entry is None:
                entry = usage[key] = _Usage(attrs)
            if metric == METRIC_COST_ESTIMATED:
                entry.estimated = value
            else:
                entry.quantity = value
    # Token series by (instance, provider, tenant, tenancy, model): what a reported charge's quantity comes from.
    by_owner: dict[tuple[str, ...], list[_Usage]] = defaultdict(list)
    for (instance, metric, _), entry in usage.items():
        if metric == METRIC_TOKENS:
            a = entry.attrs
            by_owner[(instance, a.get("gen_ai.provider.name", ""), a.get("llm.tenant", ""),
                      a.get("llm.tenancy.id", ""), a.get("gen_ai.request.model", ""))].append(entry)

    rows: list[Row] = []
    for instance, metric, attrs, nanos in costs:
        rows.append(_reported_row(ctx, day, instance, metric, attrs, nanos, billed, by_owner))
    for (instance, metric, _), entry in usage.items():
        if instance in reported_instances or entry.estimated is None:
            continue
        rows.append(_estimated_row(ctx, day, instance, metric, entry))
    rows = [r for r in rows if r["BilledCost"] or r["ConsumedQuantity"]]
    rows.sort(key=lambda r: (r["BillingAccountId"], r["x_ChargeKey"]))
    return rows


def _reported_row(
    ctx: RowContext, day: int, instance: str, metric: str, attrs: dict[str, str], nanos: int,
    billed: Mapping[tuple[str, AttrKey], tuple[str, int]], by_owner: Mapping[tuple[str, ...], Sequence[_Usage]],
) -> Row:
    cost = _decimal(nanos, _NANO)
    currency = attrs.get("llm.currency", "USD")
    types = token_types_of(attrs)
    model = attrs.get("gen_ai.request.model") or model_of_line_item(attrs.get("llm.cost.line_item", ""))
    quantity: Decimal | None = None
    unit: str | None = None
    pricing_quantity: Decimal | None = None
    pricing_unit: str | None = None
    list_unit_price: Decimal | None = None
    list_cost = cost
    found = billed.get((instance, attr_key(attrs, "llm.currency")))
    matched: list[_Usage] = []
    if types and model:
        owner = (instance, attrs.get("gen_ai.provider.name", ""), attrs.get("llm.tenant", ""),
                 attrs.get("llm.tenancy.id", ""), model)
        # A cost split the usage also has (Anthropic's cache TTL, a service tier) must agree where both say.
        extra = [(k, v) for k, v in attrs.items() if k not in _MATCH_KEYS]
        matched = [u for u in by_owner.get(owner, ()) if u.attrs.get("gen_ai.token.type") in types
                   and all(u.attrs.get(k, v) == v for k, v in extra)]
    if found is not None and _UNITS.get(found[0].lower(), "") != TOKEN_UNIT:
        quantity, unit = _decimal(found[1], _NANO), _UNITS.get(found[0].lower(), found[0])  # unknown units as the provider names them
        pricing_quantity, pricing_unit = quantity, unit
    elif found is not None or matched:
        tokens = _decimal(found[1], _NANO) if found is not None else Decimal(sum(u.quantity for u in matched))
        quantity, unit = tokens, TOKEN_UNIT
        pricing_quantity, pricing_unit = (tokens / TOKENS_PER_PRICING_UNIT).normalize(), TOKEN_PRICING_UNIT
        if currency == "USD" and matched:
            prices = {ctx.unit_price(u.attrs, u.attrs["gen_ai.token.type"], day) for u in matched}
            if len(prices) == 1 and None not in prices and len({u.attrs["gen_ai.token.type"] for u in matched}) == 1:
                (price,) = prices
                assert price is not None
                list_unit_price = (price * TOKENS_PER_PRICING_UNIT).normalize()
                list_cost = (list_unit_price * pricing_quantity).normalize()
    token_type = types[0] if len(types) == 1 else None
    meter = TOKEN_METERS[token_type] if token_type else (
        TOKEN_UNIT if types else attrs.get("llm.cost.line_item") or "Usage")
    item = attrs.get("llm.cost.line_item")
    description = f"{item or meter}{f' ({model})' if model and model not in (item or '') else ''}, reported"
    return _row(ctx, day, instance, metric, attrs, "reported", cost, currency, list_cost, list_unit_price,
                quantity, unit, pricing_quantity, pricing_unit, meter, token_type, description, model=model)


def _estimated_row(ctx: RowContext, day: int, instance: str, metric: str, entry: _Usage) -> Row:
    attrs = entry.attrs
    cost = _decimal(entry.estimated or 0, _PICO)
    token_type = attrs.get("gen_ai.token.type") if metric == METRIC_TOKENS else None
    quantity: Decimal | None = Decimal(entry.quantity) if entry.quantity else None
    if token_type:
        unit, pricing_unit, meter = TOKEN_UNIT, TOKEN_PRICING_UNIT, TOKEN_METERS.get(token_type, token_type)
        per = TOKENS_PER_PRICING_UNIT
        price = ctx.unit_price(attrs, token_type, day)
    else:
        unit, pricing_unit, meter, per = "Requests", "Requests", "Requests", 1
        price = ctx.unit_price(attrs, REQUEST_UNIT, day)
    pricing_quantity = None if quantity is None else (quantity / per).normalize()
    list_unit_price = None if price is None else (price * per).normalize()
    # A unit price only where it explains the cost exactly (not on a day the list price changed mid-day).
    if list_unit_price is not None and (pricing_quantity is None or list_unit_price * pricing_quantity != cost):
        list_unit_price = None
    model = attrs.get("gen_ai.request.model")
    description = f"{meter}{f' ({model})' if model else ''}, estimated from list prices"
    return _row(ctx, day, instance, METRIC_COST_ESTIMATED, attrs, "estimated", cost, "USD", cost, list_unit_price,
                quantity, unit if quantity is not None else None, pricing_quantity,
                pricing_unit if pricing_quantity is not None else None, meter, token_type, description,
                model=model)


def _row(
    ctx: RowContext, day: int, instance: str, metric: str, attrs: Mapping[str, str], source: str, cost: Decimal,
    currency: str, list_cost: Decimal, list_unit_price: Decimal | None, quantity: Decimal | None,
    unit: str | None, pricing_quantity: Decimal | None, pricing_unit: str | None, meter: str,
    token_type: str | None, description: str, *, model: str | None,
) -> Row:
    static = ctx.static(instance, metric, attrs, source, meter, token_type, model)
    period_start, period_end = _month(day)
    row = dict(static.columns)
    row.update({
        "BilledCost": cost,
        "BillingCurrency": currency,
        "BillingPeriodEnd": period_end,
        "BillingPeriodStart": period_start,
        "ChargeDescription": description,
        "ChargePeriodEnd": day + DAY,
        "ChargePeriodStart": day,
        "ConsumedQuantity": quantity,
        "ConsumedUnit": unit,
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "ListCost": list_cost,
        "ListUnitPrice": list_unit_price,
        "PricingQuantity": pricing_quantity,
        "PricingUnit": pricing_unit,
        "x_ChargeKey": charge_key(instance, metric, static.canonical, day),
    })
    return row


@dataclass(frozen=True, slots=True)
class _Static:
    """The columns of a series' rows that do not change from day to day (names, tags, SKU, ...)."""

    canonical: str
    columns: Mapping[str, Any]


def _static(
    ctx: RowContext, instance: str, attrs: Mapping[str, str], source: str, meter: str, token_type: str | None,
    model: str | None,
) -> _Static:
    provider = attrs.get("gen_ai.provider.name", "")
    who = facts(provider)
    tenancy = attrs.get("llm.tenancy.id")
    tenancy_name = ctx.names.get((instance, "tenancy", tenancy)) if tenancy else None
    team = ctx.attributor.attributes(attrs, tenancy_name, ctx.labels.get(instance))
    tags = {"team": team[TEAM], **({"cost_center": team[COST_CENTER]} if COST_CENTER in team else {})} if team else None
    region = attrs.get("cloud.region")
    dims = {k: v for k, v in attrs.items() if k not in _COLUMN_ATTRS}
    charge = token_type or attrs.get("llm.cost.line_item") or meter
    sku = f"{provider}/{model or '-'}/{charge}"
    publisher = publisher_of(provider, {**attrs, "gen_ai.request.model": model or ""})
    return _Static(canonical_attrs(dict(attrs)), {
        "BillingAccountId": instance,
        "BillingAccountName": attrs.get("llm.tenant") or instance,
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeFrequency": "Usage-Based",
        "HostProviderName": who.host_provider,
        "InvoiceIssuerName": who.invoice_issuer,
        "ProviderName": who.provider_name,
        "PublisherName": publisher,
        "RegionId": region,
        "RegionName": region,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": who.service_name,
        "ServiceProviderName": service_provider_of(provider, publisher),
        "ServiceSubcategory": "Generative AI",
        "SkuId": sku,
        "SkuMeter": meter,
        "SkuPriceId": sku,
        "SubAccountId": tenancy,
        "SubAccountName": (tenancy_name or tenancy) if tenancy else None,
        "Tags": None if tags is None else json.dumps(tags, sort_keys=True, separators=(",", ":")),
        "x_CostSource": source,
        "x_Dimensions": json.dumps(dims, sort_keys=True, separators=(",", ":")) if dims else None,
        "x_Model": model,
        "x_Operation": attrs.get("gen_ai.operation.name"),
        "x_TokenType": token_type,
    })


@functools.lru_cache(maxsize=4096)
def _month(day: int) -> tuple[int, int]:
    """The calendar month (UTC) holding ``day``: the billing period of every provider we read."""
    d = dt.datetime.fromtimestamp(day, dt.UTC)
    start = dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.UTC)
    return int(start.timestamp()), int(end.timestamp())
