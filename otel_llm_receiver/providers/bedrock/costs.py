"""Bedrock spend from Cost Explorer: ``GetCostAndUsage``, daily, grouped by service and usage type.

Which services are Bedrock: first-party models bill under the service ``Amazon Bedrock``, but Anthropic and
other third-party models bill through AWS Marketplace under their own service names, such as
``Claude 3 Haiku (Amazon Bedrock Edition)``, so a filter on ``Amazon Bedrock`` alone misses most Claude
spend. The rule: a service is Bedrock when its name matches one of ``cost_services`` (shell patterns,
case-insensitive; default ``*Bedrock*``). Cost Explorer cannot filter a dimension by pattern, so the first
query groups by ``SERVICE`` and ``USAGE_TYPE`` over all services and the selection happens here.

Usage types carry a region prefix, the model and the token kind, sometimes with suffixes
(``USE1-Claude4Sonnet-input-tokens-cross-region-global``, ``USW2-Nova2.0Lite-cache-read-input-token-count``);
Marketplace ones name no model (``USW2-MP:USW2_InputTokenCount-Units``), the service name does. Token kinds
are matched by "contains", the model is parsed where the pattern allows, and the raw usage type is always
the line item (``llm.cost.line_item``). Amounts are decimal strings and stay ``Decimal``.

Each query asks for ``UsageQuantity`` beside the cost metric: every group's ``Metrics`` map holds
``{"Amount": "<decimal string>", "Unit": "<unit>"}`` per metric (botocore's ``MetricValue``). Because every
query groups by ``USAGE_TYPE``, a group's quantity is in the one unit of its usage type, so it becomes the
record's billed ``quantity`` (exact ``Decimal``) and ``quantity_unit``: the unit as Cost Explorer names it,
whitespace trimmed, except that a count of tokens (``Tokens``, ``1K tokens``, ``1M Tokens``: any case) is
scaled exactly to ``tokens``, so every provider's token quantities share one unit. Cost Explorer sums usage "without taking into account the units" and says ``N/A`` where
they are mixed; such a quantity (or a missing or empty unit) means nothing and is dropped, the cost kept.

Cost Explorer allows two ``GroupBy`` keys. With ``linked_accounts`` (or ``cost_tag``) the owner needs a third,
so after the first query each selected service is asked again, filtered to it and grouped by ``USAGE_TYPE``
and ``LINKED_ACCOUNT`` (or the tag). Every page of every query is a billed request ($0.01).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from ...errors import ProviderError, ResponseShapeError
from ...model import CostRecord
from .. import shape
from ..descriptors import genai_name
from .aws import CE_REGION

__all__ = ["QUANTITY_METRIC", "CostQuery", "Group", "model_of", "service_selected", "token_kind"]

DAY = 86400
PROVIDER = genai_name("bedrock")
Call = Callable[..., Awaitable[dict[str, Any]]]
#: The metric asked beside the cost metric: the billed quantity of each group, in its usage type's unit.
QUANTITY_METRIC = "UsageQuantity"
#: Units Cost Explorer gives a sum of mixed units (meaningless as a quantity).
_NO_UNIT = frozenset({"", "n/a"})
#: A unit that counts tokens, possibly per thousand or million: "Tokens", "1K tokens", "1 M Tokens".
_TOKEN_UNIT = re.compile(r"^(?:(\d+)\s*([km]?)\s+)?tokens?$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000}

# Most specific first: "cache-read-input-token-count" also contains "input".
_KINDS = (("cacheread", "cache_read"), ("cachewrite", "cache_write"), ("input", "input"), ("output", "output"))
_REGION_PREFIX = re.compile(r"^[A-Z]{2,4}[0-9]?-")
_KIND_AT = re.compile(r"-(?:mantle-)?(?:cache-read|cache-write|input|output)(?:-|_|$)", re.IGNORECASE)
_MARKETPLACE_SUFFIX = re.compile(r"\s*\(Amazon Bedrock Edition\)\s*$", re.IGNORECASE)


def token_kind(usage_type: str) -> str | None:
    """The token type a usage type bills (``gen_ai.token.type``), matched by "contains"; None if not tokens."""
    flat = re.sub(r"[-_\s]", "", usage_type.lower())
    if "token" not in flat:
        return None
    return next((kind for marker, kind in _KINDS if marker in flat), None)


def model_of(service: str, usage_type: str) -> str | None:
    """The model a row bills: from a first-party usage type, or a Marketplace service's name; else None."""
    if "MP:" in usage_type:
        name = _MARKETPLACE_SUFFIX.sub("", service)
        return name if name != service else None
    body = _REGION_PREFIX.sub("", usage_type, count=1)
    match = _KIND_AT.search(body)
    return body[:match.start()] if match and match.start() > 0 else None


def service_selected(service: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(service.lower(), p.lower()) for p in patterns)


class Group(NamedTuple):
    """One group of one day: its keys, the cost (amount, currency) and the billed quantity (None if unknown)."""

    day: int
    keys: tuple[str, ...]
    amount: Decimal
    currency: str
    quantity: Decimal | None
    quantity_unit: str | None


def _day(start: int) -> str:
    return datetime.fromtimestamp(start, UTC).date().isoformat()


def _epoch_day(text: Any) -> int:
    try:
        return int(datetime.combine(date.fromisoformat(str(text)), datetime.min.time(), UTC).timestamp())
    except ValueError as exc:
        raise ProviderError(f"GetCostAndUsage: TimePeriod.Start {text!r} is not a date",
                            error_type="bad_response") from exc


class CostQuery:
    """One cost read: the days ``[start, end)`` (UTC midnights) and how to group and select them."""

    def __init__(
        self,
        *,
        metric: str,
        services: Sequence[str],
        account: str,
        linked_accounts: bool = False,
        tag: str | None = None,
    ) -> None:
        self.metric = metric
        self.services = tuple(services)
        self.account = account
        self.linked_accounts = linked_accounts
        self.tag = tag

    async def read(self, call: Call, start: int, end: int) -> list[CostRecord]:
        period = {"Start": _day(start), "End": _day(end)}
        by_service = [{"Type": "DIMENSION", "Key": "SERVICE"}, {"Type": "DIMENSION", "Key": "USAGE_TYPE"}]
        rows = [r async for r in self._rows(call, period, by_service, None)]
        selected = [g for g in rows if service_selected(g.keys[0], self.services)]
        if not self.linked_accounts and not self.tag:
            return [self._record(g, self.account, g.keys[0], g.keys[1]) for g in selected]
        owner = ({"Type": "TAG", "Key": self.tag} if self.tag
                 else {"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"})
        records: list[CostRecord] = []
        for service in sorted({g.keys[0] for g in selected}):
            only = {"Dimensions": {"Key": "SERVICE", "Values": [service]}}
            group = [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}, owner]
            async for g in self._rows(call, period, group, only):
                records.append(self._record(g, self._owner(g.keys[1]), service, g.keys[0]))
        return records

    def _owner(self, key: str) -> str:
        """The tenancy of a row: the linked account id, or the tag's value (``key$value``; untagged: payer)."""
        if self.tag:
            value = key.partition("$")[2]
            return value or self.account
        return key or self.account

    def _record(self, g: Group, owner: str, service: str, usage_type: str) -> CostRecord:
        kind = token_kind(usage_type)
        return CostRecord(
            provider=PROVIDER, tenancy_id=owner, bucket_start=g.day, bucket_width=DAY, amount=g.amount,
            currency=g.currency, model=model_of(service, usage_type), line_item=usage_type,
            dimensions={"gen_ai.token.type": kind} if kind else {},
            quantity=g.quantity, quantity_unit=g.quantity_unit,
        )

    async def _rows(
        self, call: Call, period: dict[str, str], group: list[dict[str, str]], flt: dict[str, Any] | None
    ) -> AsyncIterator[Group]:
        """Every group of every page, pages followed to the end."""
        seen: set[tuple[int, tuple[str, ...]]] = set()
        token: str | None = None
        while True:
            params: dict[str, Any] = {
                "TimePeriod": period, "Granularity": "DAILY", "Metrics": [self.metric, QUANTITY_METRIC], "GroupBy": group,
            }
            if flt is not None:
                params["Filter"] = flt
            if token:
                params["NextPageToken"] = token
            page = await call("ce", CE_REGION, "GetCostAndUsage", **params)
            for g in _page_rows(page, self.metric, len(group)):
                if (g.day, g.keys) in seen:
                    raise ProviderError(f"GetCostAndUsage: group {list(g.keys)} of {_day(g.day)} came twice",
                                        error_type="bad_response")
                seen.add((g.day, g.keys))
                yield g
            token = page.get("NextPageToken")
            if not token:
                return


def _decimal(value: Any, what: str) -> Decimal:
    """A metric's ``Amount`` (a decimal string) exactly; anything else is one bad_response error."""
    try:
        return shape.decimal(value["Amount"], what, bound=None)
    except ResponseShapeError:
        raise ProviderError(f"GetCostAndUsage: {what} {value['Amount']!r} is not a decimal",
                            error_type="bad_response") from None


def _quantity(metrics: Any) -> tuple[Decimal | None, str | None]:
    """A group's ``UsageQuantity`` and its unit; (None, None) when absent or in mixed units (``N/A``)."""
    value = metrics.get(QUANTITY_METRIC)
    if value is None:
        return None, None
    quantity = _decimal(value, "quantity")
    unit = str(value.get("Unit") or "").strip()
    if unit.lower() in _NO_UNIT:
        return None, None
    tokens = _TOKEN_UNIT.match(unit)
    if tokens:
        per = int(tokens.group(1) or 1) * _SCALE[(tokens.group(2) or "").lower()]
        return quantity * per, "tokens"
    return quantity, unit


def _page_rows(page: Any, metric: str, n_keys: int) -> Iterator[Group]:
    """The groups of one page, validated whole before any is used (a bad field rejects the poll)."""
    results = page.get("ResultsByTime") if isinstance(page, dict) else None
    if not isinstance(results, list):
        raise ProviderError("GetCostAndUsage: the response has no ResultsByTime list", error_type="bad_response")
    out: list[Group] = []
    for result in results:
        try:
            day = _epoch_day(result["TimePeriod"]["Start"])
            groups = result.get("Groups") or []
            for g in groups:
                keys = tuple(str(k) for k in g["Keys"])
                if len(keys) != n_keys:
                    raise ProviderError(f"GetCostAndUsage: group keys {list(keys)} are not {n_keys}",
                                        error_type="bad_response")
                value = g["Metrics"][metric]
                amount = _decimal(value, "amount")
                quantity, unit = _quantity(g["Metrics"])
                out.append(Group(day, keys, amount, str(value.get("Unit") or "USD"), quantity, unit))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProviderError(f"GetCostAndUsage: a result lacks {exc}", error_type="bad_response") from exc
    return iter(out)
