"""The normalise step: records -> series and points with canonical attributes, no database (DESIGN.md).

A series is a metric with a fixed attribute set, identified by ``canonical_attrs``. ``expand`` gives every
record's series keys (metric, canonical attrs JSON), built once per distinct record identity; the ledger writer
maps those keys to its ids. ``pricing`` builds ``PricingPeriod`` schedules for the ledger's ``SeriesPricer``
seam; neither side needs the other's module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from .model import TOKEN_TYPES, PollResult
from .names import (
    CURRENCY_ATTR,
    LEVEL_METRICS,
    MEASURE_OF_METRIC,
    METRIC_BILLED_QUANTITY,
    METRIC_COST,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_TOKENS,
)

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


@dataclass(slots=True)
class Expansion:
    """Records -> series keys -> rows, with attribute JSON built once per distinct record identity.

    Providers return many buckets of few series, so the per-point work is a dict lookup and a tuple; the
    JSON encoding and the series lookup happen once per identity, not once per point.
    """

    usage_idents: list[tuple[object, ...]] = field(default_factory=list)  # one per usage record, in order
    cost_idents: list[tuple[object, ...]] = field(default_factory=list)  # one per cost record, in order
    usage_keys: dict[tuple[object, ...], tuple[list[tuple[str, tuple[str, str]]], tuple[str, str]]] = field(
        default_factory=dict)
    cost_keys: dict[tuple[object, ...], tuple[str, str]] = field(default_factory=dict)
    usage_bases: dict[tuple[object, ...], dict[str, str]] = field(default_factory=dict)
    measure_keys: dict[tuple[tuple[object, ...], str], tuple[str, str]] = field(default_factory=dict)
    quantity_keys: dict[tuple[tuple[object, ...], str], tuple[str, str]] = field(default_factory=dict)


def expand(result: PollResult, tenant: str) -> Expansion:
    """The series keys of every record of ``result`` (``tenant`` for records that name none).

    Raises ``ValueError`` for a measure that is neither a usage counter nor a level (a provider bug).
    """
    ex = Expansion()
    # Providers share one dimensions dict among the records of a group: sort each distinct dict once. (The
    # records hold the dicts alive for this whole call, so their ids are stable keys.)
    sorted_dims: dict[int, tuple[tuple[str, str], ...]] = {}
    for r in result.usage:
        dims: tuple[tuple[str, str], ...] = ()
        if r.dimensions:
            dims = sorted_dims.get(id(r.dimensions)) or sorted_dims.setdefault(
                id(r.dimensions), tuple(sorted(r.dimensions.items())))
        ident = (r.provider, r.model, r.operation, r.tenancy_id, r.tenant or tenant, dims)
        ex.usage_idents.append(ident)
        if ident not in ex.usage_keys:
            base = {
                "gen_ai.provider.name": r.provider,
                "llm.tenancy.id": r.tenancy_id,
                "llm.tenant": r.tenant or tenant,
                **dict(dims),
            }
            if r.model:  # measures that belong to no model (e.g. Claude Code sessions) leave these out
                base["gen_ai.request.model"] = r.model
            if r.operation:
                base["gen_ai.operation.name"] = r.operation
            by_type: list[tuple[str, tuple[str, str]]] = [
                (t, (METRIC_TOKENS, canonical_attrs({**base, "gen_ai.token.type": t}))) for t in TOKEN_TYPES
            ]
            ex.usage_keys[ident] = (by_type, (METRIC_REQUESTS, canonical_attrs(base)))
            ex.usage_bases[ident] = base
        for metric in r.measures:
            if metric not in MEASURE_OF_METRIC and metric not in LEVEL_METRICS:
                # a provider bug, not a storage failure: the scheduler counts it as bad_response
                raise ValueError(f"unknown measure {metric!r} in a usage record (not a usage counter or level)")
            if (ident, metric) not in ex.measure_keys:
                ex.measure_keys[(ident, metric)] = (metric, canonical_attrs(ex.usage_bases[ident]))
    for c in result.costs:
        dims = tuple(sorted(c.dimensions.items())) if c.dimensions else ()
        currency = c.currency.upper()
        cost_ident = (c.provider, c.tenancy_id, c.tenant or tenant, c.model, c.line_item, currency, dims)
        ex.cost_idents.append(cost_ident)
        if cost_ident not in ex.cost_keys:
            base = {
                "gen_ai.provider.name": c.provider,
                "llm.tenancy.id": c.tenancy_id,
                "llm.tenant": c.tenant or tenant,
                **dict(dims),
            }
            if c.model:
                base["gen_ai.request.model"] = c.model
            if c.line_item:
                base["llm.cost.line_item"] = c.line_item
            if currency != "USD":
                base[CURRENCY_ATTR] = currency
            metric = METRIC_COST if currency == "USD" else METRIC_COST_NON_USD
            ex.cost_keys[cost_ident] = (metric, canonical_attrs(base))
        if c.quantity is not None and (cost_ident, c.quantity_unit or "") not in ex.quantity_keys:
            # What was billed for the money, per unit: the cost series' attributes (less currency) and the unit.
            quantity_attrs = {k: v for k, v in json.loads(ex.cost_keys[cost_ident][1]).items() if k != CURRENCY_ATTR}
            quantity_attrs["llm.cost.quantity_unit"] = c.quantity_unit or "unknown"
            ex.quantity_keys[(cost_ident, c.quantity_unit or "")] = (
                METRIC_BILLED_QUANTITY, canonical_attrs(quantity_attrs))
    return ex


