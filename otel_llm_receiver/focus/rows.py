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

A reported cost with no quantity at all (no billed quantity, no usage of its token types that day: a day the
token backfill does not reach, a storage fee) is **money-measured**: ConsumedQuantity = PricingQuantity = the
amount, in units of its currency (``USD``), at a ListUnitPrice of 1. FOCUS 1.0 and 1.2 require both quantities
on every Usage row that is not a correction, and the money is the only measure the ledger has of such a charge.

List prices come from the same ``PriceBook`` that prices the ledger: ListUnitPrice is the published price per
PricingUnit where one price explains the charge (one token type, one price that day; ``x_ListPriceSource`` =
``published``) and ListCost = ListUnitPrice x PricingQuantity. Elsewhere (several token types in one charge, a
meter that names no model, a currency other than USD, a price changed mid-day) no published price explains it,
and FOCUS still requires a ListUnitPrice: it is **derived**, BilledCost / PricingQuantity (``derived``), rounded
to what a 12-place decimal can hold beside the quantity, and ListCost = ListUnitPrice x PricingQuantity, which
is BilledCost whenever the division is exact and within that rounding otherwise.

``x_CoverageStart`` marks a day whose usage data the ledger holds only from some hour on (the instance's first
day of usage, or a day its rollups were pruned into): the hour the usage starts, on the rows whose quantity
comes from that usage. Backfills start at 00:00 UTC (``model.first_window_start``), so it is rare.
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
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

from ..attribution import COST_CENTER, TEAM, Attributor
from ..ledger import Ledger
from ..model import TOKEN_TYPES
from ..names import (
    CURRENCY_ATTR,
    METRIC_BILLED_QUANTITY,
    METRIC_COST,
    METRIC_COST_ESTIMATED,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_TOKENS,
)
from ..pricing import REQUEST_UNIT, PriceBook
from ..series import canonical_attrs
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
#: Decimal places a file keeps (Parquet ``decimal128(38, 12)``): a derived unit price x quantity must fit in them.
DECIMAL_PLACES: Final = 12
#: ``x_ListPriceSource``: the price catalog's list price, or BilledCost / PricingQuantity where none explains it.
PUBLISHED: Final = "published"
DERIVED: Final = "derived"
_NANO: Final = Decimal(1).scaleb(-9)
_PICO: Final = Decimal(1).scaleb(-12)
#: Attributes that have columns of their own; any other goes to x_Dimensions.
_COLUMN_ATTRS: Final = frozenset({
    "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.operation.name", "gen_ai.token.type", "llm.tenant",
    "llm.tenancy.id", "llm.tenancy.name", "llm.cost.line_item", CURRENCY_ATTR, "cloud.region", "llm.publisher",
    "llm.cost.quantity_unit",
})
#: Attributes of a cost series that say which usage it is about (the rest must agree with the usage's, if any).
_MATCH_KEYS: Final = frozenset({
    "gen_ai.provider.name", "llm.tenancy.id", "llm.tenant", "gen_ai.request.model", "llm.cost.line_item",
    CURRENCY_ATTR, "gen_ai.token.type",
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
    _usage_starts: dict[str, int] | None = None

    def usage_starts(self, ledger: Ledger) -> Mapping[str, int]:
        """Per instance, the first hour of usage (tokens, requests) the ledger's rollups hold: where its usage
        data starts (a backfill's start, or the retention's edge). Read once per context (one export or pass)."""
        if self._usage_starts is None:
            starts: dict[str, int] = {}
            for instance, _, _, _, first, _ in ledger.rollup_series((METRIC_TOKENS, METRIC_REQUESTS)).values():
                starts[instance] = min(first, starts.get(instance, first))
            self._usage_starts = starts
        return self._usage_starts

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

    starts = ctx.usage_starts(ledger)
    rows: list[Row] = []
    for instance, metric, attrs, nanos in costs:
        rows.append(_reported_row(ctx, day, instance, metric, attrs, nanos, billed, by_owner, starts.get(instance)))
    for (instance, metric, _), entry in usage.items():
        if instance in reported_instances or entry.estimated is None:
            continue
        rows.append(_estimated_row(ctx, day, instance, metric, entry, starts.get(instance)))
    rows = [r for r in rows if r["BilledCost"] or r["ConsumedQuantity"]]
    rows.sort(key=lambda r: (r["BillingAccountId"], r["x_ChargeKey"]))
    return rows


def _reported_row(
    ctx: RowContext, day: int, instance: str, metric: str, attrs: dict[str, str], nanos: int,
    billed: Mapping[tuple[str, AttrKey], tuple[str, int]], by_owner: Mapping[tuple[str, ...], Sequence[_Usage]],
    usage_start: int | None,
) -> Row:
    cost = _decimal(nanos, _NANO)
    currency = attrs.get(CURRENCY_ATTR, "USD")
    types = token_types_of(attrs)
    model = attrs.get("gen_ai.request.model") or model_of_line_item(attrs.get("llm.cost.line_item", ""))
    q = _Quantities(cost, currency)
    found = billed.get((instance, attr_key(attrs, CURRENCY_ATTR)))
    matched: list[_Usage] = []
    if types and model:
        owner = (instance, attrs.get("gen_ai.provider.name", ""), attrs.get("llm.tenant", ""),
                 attrs.get("llm.tenancy.id", ""), model)
        # A cost split the usage also has (Anthropic's cache TTL, a service tier) must agree where both say.
        extra = [(k, v) for k, v in attrs.items() if k not in _MATCH_KEYS]
        matched = [u for u in by_owner.get(owner, ()) if u.attrs.get("gen_ai.token.type") in types
                   and all(u.attrs.get(k, v) == v for k, v in extra)]
    if found is not None and _UNITS.get(found[0].lower(), "") != TOKEN_UNIT:
        q.quantity, q.unit = _decimal(found[1], _NANO), _UNITS.get(found[0].lower(), found[0])  # unknown units as the provider names them
        q.pricing_quantity, q.pricing_unit = q.quantity, q.unit
    elif found is not None or matched:
        tokens = _decimal(found[1], _NANO) if found is not None else Decimal(sum(u.quantity for u in matched))
        q.quantity, q.unit = tokens, TOKEN_UNIT
        q.pricing_quantity, q.pricing_unit = (tokens / TOKENS_PER_PRICING_UNIT).normalize(), TOKEN_PRICING_UNIT
        if found is None:
            q.coverage_start = usage_start  # the tokens are the ledger's usage: partial where it is
        if currency == "USD" and matched:
            prices = {ctx.unit_price(u.attrs, u.attrs["gen_ai.token.type"], day) for u in matched}
            if len(prices) == 1 and None not in prices and len({u.attrs["gen_ai.token.type"] for u in matched}) == 1:
                (price,) = prices
                assert price is not None
                q.publish((price * TOKENS_PER_PRICING_UNIT).normalize())
    token_type = types[0] if len(types) == 1 else None
    meter = TOKEN_METERS[token_type] if token_type else (
        TOKEN_UNIT if types else attrs.get("llm.cost.line_item") or "Usage")
    item = attrs.get("llm.cost.line_item")
    description = f"{item or meter}{f' ({model})' if model and model not in (item or '') else ''}, reported"
    return _row(ctx, day, instance, metric, attrs, "reported", q, meter, token_type, description, model=model)


def _estimated_row(
    ctx: RowContext, day: int, instance: str, metric: str, entry: _Usage, usage_start: int | None,
) -> Row:
    attrs = entry.attrs
    cost = _decimal(entry.estimated or 0, _PICO)
    token_type = attrs.get("gen_ai.token.type") if metric == METRIC_TOKENS else None
    q = _Quantities(cost, "USD", coverage_start=usage_start)
    if token_type:
        unit, pricing_unit, meter = TOKEN_UNIT, TOKEN_PRICING_UNIT, TOKEN_METERS.get(token_type, token_type)
        per = TOKENS_PER_PRICING_UNIT
        price = ctx.unit_price(attrs, token_type, day)
    else:
        unit, pricing_unit, meter, per = "Requests", "Requests", "Requests", 1
        price = ctx.unit_price(attrs, REQUEST_UNIT, day)
    if entry.quantity:
        q.quantity, q.unit = Decimal(entry.quantity), unit
        q.pricing_quantity, q.pricing_unit = (q.quantity / per).normalize(), pricing_unit
        # A published unit price only where it explains the cost exactly (not on a day the price changed mid-day).
        if price is not None and (price * per).normalize() * q.pricing_quantity == cost:
            q.publish((price * per).normalize())
    model = attrs.get("gen_ai.request.model")
    description = f"{meter}{f' ({model})' if model else ''}, estimated from list prices"
    return _row(ctx, day, instance, METRIC_COST_ESTIMATED, attrs, "estimated", q, meter, token_type, description,
                model=model)


@dataclass
class _Quantities:
    """A row's money, quantities and list price, completed by ``settle`` so that no mandatory one is null."""

    cost: Decimal
    currency: str
    quantity: Decimal | None = None
    unit: str | None = None
    pricing_quantity: Decimal | None = None
    pricing_unit: str | None = None
    list_unit_price: Decimal | None = None
    list_cost: Decimal | None = None
    price_source: str = DERIVED
    coverage_start: int | None = None

    def publish(self, unit_price: Decimal) -> None:
        """A list price from the catalog: ListCost is unit price x quantity (it may differ from BilledCost)."""
        assert self.pricing_quantity is not None
        self.list_unit_price = unit_price
        self.list_cost = (unit_price * self.pricing_quantity).normalize()
        self.price_source = PUBLISHED

    def settle(self) -> None:
        """Fill what the data left null: a charge with no quantity (or none to divide by) is measured in its own
        money; a charge with no published price gets one derived from its cost (see the module docstring)."""
        if self.pricing_quantity is None or (not self.pricing_quantity and self.cost):
            self.quantity = self.pricing_quantity = self.cost
            self.unit = self.pricing_unit = self.currency
            self.coverage_start = None  # not the usage's quantity: nothing partial about it
            self.list_unit_price = self.list_cost = None
        if self.list_unit_price is None:
            self.list_unit_price, self.list_cost = derived_price(self.cost, self.pricing_quantity)
            self.price_source = DERIVED


def derived_price(cost: Decimal, quantity: Decimal) -> tuple[Decimal, Decimal]:
    """(ListUnitPrice, ListCost) of a charge no published price explains: cost / quantity, rounded to the places
    that keep ListUnitPrice x quantity within ``DECIMAL_PLACES``; ListCost is that product (= cost when exact)."""
    if not quantity:
        return Decimal(0), Decimal(0)  # no quantity and no cost (a zero-cost charge is dropped anyway)
    exponent = quantity.normalize().as_tuple().exponent
    places = DECIMAL_PLACES + min(int(exponent), 0) if isinstance(exponent, int) else DECIMAL_PLACES
    price = (cost / quantity).quantize(Decimal(1).scaleb(-max(places, 0)), rounding=ROUND_HALF_EVEN).normalize()
    return price, (price * quantity).normalize()


def _row(
    ctx: RowContext, day: int, instance: str, metric: str, attrs: Mapping[str, str], source: str, q: _Quantities,
    meter: str, token_type: str | None, description: str, *, model: str | None,
) -> Row:
    q.settle()
    static = ctx.static(instance, metric, attrs, source, meter, token_type, model)
    period_start, period_end = _month(day)
    row = dict(static.columns)
    row.update({
        "BilledCost": q.cost,
        "BillingCurrency": q.currency,
        "BillingPeriodEnd": period_end,
        "BillingPeriodStart": period_start,
        "ChargeDescription": description,
        "ChargePeriodEnd": day + DAY,
        "ChargePeriodStart": day,
        "ConsumedQuantity": q.quantity,
        "ConsumedUnit": q.unit,
        "ContractedCost": q.cost,
        "EffectiveCost": q.cost,
        "ListCost": q.list_cost,
        "ListUnitPrice": q.list_unit_price,
        "PricingQuantity": q.pricing_quantity,
        "PricingUnit": q.pricing_unit,
        "x_ChargeKey": charge_key(instance, metric, static.canonical, day),
        "x_CoverageStart": q.coverage_start if q.coverage_start is not None and day < q.coverage_start < day + DAY
        else None,
        "x_ListPriceSource": q.price_source,
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
        "InvoiceId": None,  # the usage and cost APIs name no invoice (Recommended, 1.2+)
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
        "SkuPriceDetails": None,  # a token price has no SKU properties beyond the SkuMeter (1.1+; may be null)
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
