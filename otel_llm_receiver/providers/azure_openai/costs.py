"""Daily spend per account and meter from the Cost Management Query API (api-version 2023-11-01).

``POST {scope}/providers/Microsoft.CostManagement/query`` with an ``ActualCost``, ``Daily``, ``Custom``
time-period query. The API allows at most two groupings; we take ``ResourceId`` (who spent: the account, our
tenancy) and ``Meter`` (on what: e.g. "gpt-4o-0806 Inp glbl Tokens", our line item); the model and the
deployment are not Cost Management dimensions. The query is filtered to the accounts discovery found.

The answer is a table: ``properties.columns[{name, type}]`` and ``properties.rows[][]``, read by column name
(the order is not documented), with ``Currency`` always among the columns and ``UsageDate`` a number
``YYYYMMDD``. ``properties.nextLink`` (carrying a ``$skiptoken``) is POSTed with the same body until it is
empty; a 204 means no data. Amounts stay in their billing currency: the ledger files non-USD amounts under
``llm.usage.cost.non_usd``.

Cost Management throttles hard (a few queries per scope per minute, per-tenant QPU budgets): queries go one
at a time, at least ``spacing`` seconds apart per scope (pages included), and a 429 waits for the longest of
``Retry-After`` and the ``x-ms-ratelimit-microsoft.costmanagement-*-retry-after`` headers (``providers.http``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from ...errors import ProviderError
from ...model import CostRecord, Window
from ..base import DAY
from ..http import ApiClient
from .discovery import Account, same_origin_path
from .metrics import PROVIDER_NAME

log = logging.getLogger(__name__)

COST_API_VERSION = "2023-11-01"
#: Column names of the cost amount, by query type (ActualCost answers ``Cost``; older ``Usage`` ``PreTaxCost``).
COST_COLUMNS = ("cost", "pretaxcost")
GROUPINGS = ("ResourceId", "Meter")


def cost_window(now: int, lookback: float) -> Window:
    """Whole UTC days from the one ``lookback`` before ``now`` through today (today's partial day included)."""
    start = int(now - lookback)
    return Window(start - start % DAY, now - now % DAY + DAY)


def query_body(window: Window, accounts: Sequence[Account]) -> dict[str, Any]:
    """The Query API request body for ``window`` (whole days) and these accounts."""
    def day(ts: int) -> str:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {"from": day(window.start), "to": day(window.end - 1)},
        "dataset": {
            "granularity": "Daily",
            "aggregation": {"totalCost": {"name": "Cost", "function": "Sum"}},
            "grouping": [{"type": "Dimension", "name": g} for g in GROUPINGS],
            "filter": {"dimensions": {"name": "ResourceId", "operator": "In",
                                      "values": sorted(a.key for a in accounts)}},
        },
    }


def parse_usage_date(value: object) -> int:
    """``UsageDate`` (``20261120`` as a number, or an ISO date string) as the day's start in Unix seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
        text = str(int(value))
        if len(text) == 8:
            return int(datetime.datetime.strptime(text, "%Y%m%d").replace(tzinfo=datetime.UTC).timestamp())
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.UTC)
            return int(parsed.timestamp()) // DAY * DAY
    raise ValueError(f"UsageDate {value!r} is not a date")


def parse_table(body: Any) -> tuple[list[tuple[int, str, str, Decimal, str]], object]:
    """Rows of a Query answer as ``(day, resource id lower-cased, meter, amount, currency)``, and its nextLink."""
    props = body.get("properties") if isinstance(body, dict) else None
    if not isinstance(props, dict):
        raise ValueError("the answer has no properties object")
    columns, rows = props.get("columns"), props.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ValueError("properties.columns and properties.rows must be lists")
    index: dict[str, int] = {}
    for i, col in enumerate(columns):
        name = col.get("name") if isinstance(col, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"properties.columns[{i}].name is not a string")
        index[name.lower()] = i
    cost_col = next((index[c] for c in COST_COLUMNS if c in index), None)
    missing = [c for c in ("usagedate", "resourceid", "meter", "currency") if c not in index]
    if cost_col is None or missing:
        raise ValueError(f"properties.columns lacks {', '.join(missing or ['Cost'])}")
    out = []
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ValueError(f"properties.rows[{r}] does not have one value per column")
        amount = row[cost_col]
        if isinstance(amount, bool) or not isinstance(amount, int | float | str):
            raise ValueError(f"properties.rows[{r}] cost {amount!r} is not a number")
        try:
            value = Decimal(str(amount))
        except InvalidOperation:
            raise ValueError(f"properties.rows[{r}] cost {amount!r} is not a number") from None
        if not value.is_finite():
            raise ValueError(f"properties.rows[{r}] cost {amount!r} is not a number")
        resource, meter, currency = row[index["resourceid"]], row[index["meter"]], row[index["currency"]]
        if not isinstance(resource, str) or not isinstance(currency, str) or not currency.strip():
            raise ValueError(f"properties.rows[{r}] needs ResourceId and Currency strings")
        try:
            day = parse_usage_date(row[index["usagedate"]])
        except ValueError as exc:
            raise ValueError(f"properties.rows[{r}]: {exc}") from None
        meter_name = meter if isinstance(meter, str) and meter else "unknown"
        out.append((day, resource.lower().rstrip("/"), meter_name, value, currency.strip().upper()))
    return out, props.get("nextLink")


class Pacer:
    """At least ``spacing`` seconds between two queries to one scope (Cost Management's per-scope limit)."""

    def __init__(
        self,
        spacing: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.spacing = spacing
        self.clock = clock
        self.sleep = sleep
        self._last: dict[str, float] = {}

    async def wait(self, scope: str) -> None:
        last = self._last.get(scope)
        if last is not None:
            delay = last + self.spacing - self.clock()
            if delay > 0:
                await self.sleep(delay)
        self._last[scope] = self.clock()


class CostReader:
    """Runs the cost query of every scope in turn and turns the rows into ``CostRecord``s."""

    def __init__(self, client: ApiClient, *, provider: str, scopes: Sequence[str], pacer: Pacer) -> None:
        self.client = client
        self.provider = provider
        self.scopes = tuple(s.rstrip("/") for s in scopes)
        self.pacer = pacer

    def scopes_for(self, accounts: Sequence[Account]) -> list[tuple[str, list[Account]]]:
        """Each scope with the accounts it holds: the configured scopes, or every account's subscription."""
        if self.scopes:
            return [(s, [a for a in accounts if a.key.startswith(s.lower() + "/")]) for s in self.scopes]
        by_sub: dict[str, list[Account]] = defaultdict(list)
        for a in accounts:
            by_sub[f"/subscriptions/{a.subscription}"].append(a)
        return sorted(by_sub.items())

    async def costs(self, accounts: Sequence[Account], window: Window) -> list[CostRecord]:
        by_key = {a.key: a for a in accounts}
        sums: dict[tuple[int, str, str, str], Decimal] = defaultdict(Decimal)
        for scope, members in self.scopes_for(accounts):
            if not members:
                continue
            for day, resource, meter, amount, currency in await self._query(scope, query_body(window, members)):
                if resource in by_key and window.start <= day < window.end:
                    sums[(day, resource, meter, currency)] += amount
        return [
            CostRecord(
                provider=PROVIDER_NAME, tenancy_id=by_key[resource].tenancy_id, bucket_start=day, bucket_width=DAY,
                amount=amount, currency=currency, line_item=meter,
            )
            for (day, resource, meter, currency), amount in sorted(sums.items())
        ]

    async def _query(self, scope: str, body: dict[str, Any]) -> list[tuple[int, str, str, Decimal, str]]:
        rows: list[tuple[int, str, str, Decimal, str]] = []
        path: str | None = f"{scope}/providers/Microsoft.CostManagement/query"
        params: dict[str, str] | None = {"api-version": COST_API_VERSION}
        pages = 0
        while path is not None:
            await self.pacer.wait(scope)
            try:
                answer = await self.client.request_json(
                    "POST", path, params=params, json_body=body, operation="costmanagement.query"
                )
            except ProviderError as exc:
                if exc.error_type == "auth":
                    raise ProviderError(f"{exc} (needs Cost Management Reader on {scope})",
                                        provider=self.provider, error_type="auth") from None
                raise
            pages += 1
            if answer is None:  # 204 No Content: no cost data for this query
                break
            try:
                page, link = parse_table(answer)
            except ValueError as exc:
                raise ProviderError(f"cost query at {scope}, page {pages}: {exc}", provider=self.provider,
                                    error_type="bad_response") from None
            rows += page
            path = same_origin_path(link, self.client, self.provider)
            params = None  # the nextLink carries api-version and $skiptoken
        return rows


__all__ = ["COST_API_VERSION", "CostReader", "Pacer", "cost_window", "parse_table", "parse_usage_date",
           "query_body"]
