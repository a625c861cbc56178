"""The normalise step: records -> series and points with canonical attributes, no database (DESIGN.md).

A series is a metric with a fixed attribute set, identified by ``canonical_attrs``. ``SeriesKeys`` gives a
record identity's series keys (metric, canonical attrs JSON), encoded once per identity and kept across polls;
the ledger writer maps those keys to its ids. ``pricing`` builds ``PricingPeriod`` schedules for the ledger's ``SeriesPricer``
seam; neither side needs the other's module.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, Final, Protocol, TypeAlias

from .model import TOKEN_TYPES, CostRecord, UsageRecord
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


#: ``json.dumps(attrs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, built once: ``dumps`` with
#: these arguments makes a new encoder on every call, half the cost of encoding a small attribute set.
_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_attrs(attrs: dict[str, str]) -> str:
    """The series identity of an attribute set: compact JSON with sorted keys (stable across versions)."""
    return _CANONICAL.encode(attrs)


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


#: A series' identity in the ledger: (metric, canonical attributes JSON).
SeriesKey: TypeAlias = tuple[str, str]
#: What identifies a usage record's series set: provider, model, operation, tenancy, tenant, sorted dimensions.
UsageIdent: TypeAlias = tuple[str, str, str, str, str, tuple[tuple[str, str], ...]]
#: The same for a cost record: provider, tenancy, tenant, model, line item, currency, sorted dimensions.
CostIdent: TypeAlias = tuple[str, str, str, str | None, str | None, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class UsageKeys:
    """The series of one usage identity: one per token type (in ``TOKEN_TYPES`` order) and requests."""

    tokens: tuple[tuple[str, SeriesKey], ...]
    requests: SeriesKey


@dataclass(slots=True)
class SeriesKeys:
    """Record identity -> series keys, each attribute set encoded to JSON once for the life of the cache.

    Why a cache that outlives a poll: every poll re-reads the same few thousand series (the lookback), and
    encoding their attributes was most of a steady-state apply. The keys are a pure function of the identity
    (no database), so a cached key can never be stale; the ledger maps keys to ids on its own, and forgets
    those ids when a transaction fails. Bounded: cleared when it holds more than ``limit`` identities (more
    than any bounded-cardinality configuration has), so a churn of identities cannot grow it for ever.
    """

    limit: int = 200_000
    usage_keys: dict[UsageIdent, UsageKeys] = field(default_factory=dict)
    measure_keys: dict[tuple[UsageIdent, str], SeriesKey] = field(default_factory=dict)
    cost_keys: dict[CostIdent, SeriesKey] = field(default_factory=dict)
    quantity_keys: dict[tuple[CostIdent, str], SeriesKey] = field(default_factory=dict)

    def _room(self, cache: dict[Any, Any]) -> None:
        if len(cache) >= self.limit:
            cache.clear()

    def usage(self, ident: UsageIdent) -> UsageKeys:
        """The token-type and request series of a usage identity."""
        keys = self.usage_keys.get(ident)
        if keys is None:
            base = _usage_base(ident)
            keys = UsageKeys(
                tuple((t, (METRIC_TOKENS, attrs)) for t, attrs in zip(TOKEN_TYPES, _token_attrs(base), strict=True)),
                (METRIC_REQUESTS, canonical_attrs(base)),
            )
            self._room(self.usage_keys)
            self.usage_keys[ident] = keys
        return keys

    def measure(self, ident: UsageIdent, metric: str) -> SeriesKey:
        """The series of another usage measure (``UsageRecord.measures``): the record's attributes, its metric.

        Raises ``ValueError`` for a measure that is neither a usage counter nor a level (a provider bug).
        """
        key = self.measure_keys.get((ident, metric))
        if key is None:
            check_measure(metric)
            key = (metric, canonical_attrs(_usage_base(ident)))
            self._room(self.measure_keys)
            self.measure_keys[(ident, metric)] = key
        return key

    def cost(self, ident: CostIdent) -> SeriesKey:
        """The money series of a cost identity (USD in ``llm.usage.cost``, other currencies in their own)."""
        key = self.cost_keys.get(ident)
        if key is None:
            currency = ident[5]
            base = _cost_base(ident)
            if currency != "USD":
                base[CURRENCY_ATTR] = currency
            key = (METRIC_COST if currency == "USD" else METRIC_COST_NON_USD, canonical_attrs(base))
            self._room(self.cost_keys)
            self.cost_keys[ident] = key
        return key

    def quantity(self, ident: CostIdent, unit: str | None) -> SeriesKey:
        """What was billed for the money, per unit: the cost series' attributes (less currency) and the unit."""
        key = self.quantity_keys.get((ident, unit or ""))
        if key is None:
            attrs = _cost_base(ident)
            attrs["llm.cost.quantity_unit"] = unit or "unknown"
            key = (METRIC_BILLED_QUANTITY, canonical_attrs(attrs))
            self._room(self.quantity_keys)
            self.quantity_keys[(ident, unit or "")] = key
        return key


_TOKEN_TYPE = "gen_ai.token.type"
_TOKEN_TYPE_PIECES: Final = tuple(f"{encode_basestring(_TOKEN_TYPE)}:{encode_basestring(t)}" for t in TOKEN_TYPES)


def _token_attrs(base: dict[str, str]) -> list[str]:
    """``canonical_attrs({**base, "gen_ai.token.type": t})`` for every token type ``t``, in ``TOKEN_TYPES`` order.

    Why not four ``canonical_attrs`` calls: a poll that creates thousands of series encoded the same base
    attributes four times each. Here they are sorted and encoded once, and each token type's piece is put in its
    sorted place, the same text ``json`` writes (``sort_keys`` sorts the keys as ``sorted`` does; strings are
    escaped by the same function). Anything but plain strings, or a base that has the key already, takes the
    plain path.
    """
    if _TOKEN_TYPE in base or not all(type(k) is str and type(v) is str for k, v in base.items()):
        return [canonical_attrs({**base, _TOKEN_TYPE: t}) for t in TOKEN_TYPES]
    keys = sorted(base)
    cut = bisect.bisect(keys, _TOKEN_TYPE)
    before = "".join(f"{encode_basestring(k)}:{encode_basestring(base[k])}," for k in keys[:cut])
    after = "".join(f",{encode_basestring(k)}:{encode_basestring(base[k])}" for k in keys[cut:])
    return ["{" + before + piece + after + "}" for piece in _TOKEN_TYPE_PIECES]


def check_measure(metric: str) -> None:
    """Refuse a measure that is neither a usage counter nor a level: a provider bug, not a storage failure
    (the scheduler counts it as ``bad_response``)."""
    if metric not in MEASURE_OF_METRIC and metric not in LEVEL_METRICS:
        raise ValueError(f"unknown measure {metric!r} in a usage record (not a usage counter or level)")


def usage_ident(r: UsageRecord, tenant: str) -> UsageIdent:
    """The identity of a usage record's series set (``tenant`` when the record names none)."""
    dims = tuple(sorted(r.dimensions.items())) if r.dimensions else ()
    return (r.provider, r.model, r.operation, r.tenancy_id, r.tenant or tenant, dims)


def cost_ident(c: CostRecord, tenant: str) -> CostIdent:
    """The identity of a cost record's series (``tenant`` when the record names none)."""
    dims = tuple(sorted(c.dimensions.items())) if c.dimensions else ()
    return (c.provider, c.tenancy_id, c.tenant or tenant, c.model, c.line_item, c.currency.upper(), dims)


def _usage_base(ident: UsageIdent) -> dict[str, str]:
    provider, model, operation, tenancy, tenant, dims = ident
    base = {"gen_ai.provider.name": provider, "llm.tenancy.id": tenancy, "llm.tenant": tenant, **dict(dims)}
    if model:  # measures that belong to no model (e.g. Claude Code sessions) leave these out
        base["gen_ai.request.model"] = model
    if operation:
        base["gen_ai.operation.name"] = operation
    return base


def _cost_base(ident: CostIdent) -> dict[str, str]:
    provider, tenancy, tenant, model, line_item, _currency, dims = ident
    base = {"gen_ai.provider.name": provider, "llm.tenancy.id": tenancy, "llm.tenant": tenant, **dict(dims)}
    if model:
        base["gen_ai.request.model"] = model
    if line_item:
        base["llm.cost.line_item"] = line_item
    return base
