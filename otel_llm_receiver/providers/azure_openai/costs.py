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

Billed quantity: the query also sums ``UsageQuantity`` (an answer column of that name), the meter's usage in
the meter's unit of measure. The unit is not among the two groupings (``ResourceId``, ``Meter``), so a second
query per scope groups the same accounts and days by ``Meter`` and ``UnitOfMeasure``; a meter has one unit of
measure. A token meter's unit (``1K``, ``1M``, ``1K Tokens``: Azure OpenAI meters are priced per thousand or
million tokens) scales the quantity exactly to ``tokens``; any other unit is kept as Azure names it. A meter
whose unit the second answer lacks (or gives twice) keeps its cost and no quantity. If the unit query itself is
refused as invalid (a 400: a scope or agreement that cannot group by ``UnitOfMeasure``), costs are still recorded,
without quantities, and a warning is logged.
Matching: a row's ``ResourceId`` is compared with the discovered accounts in ``normalize_resource_id`` form
(lower-cased, one leading ``/``: Cost Management lower-cases ids and has been seen to drop the slash). A row
that matches no account is never dropped: it is kept under the short tenancy form of the account id it names
(``sub/rg/account``), else under the normalised resource id itself, else (no ResourceId) under the query's
scope, and counted in ``CostRead.unmatched`` (``llm.receiver.unmatched_records``) with one warning per read.
Answers are decoded with exact decimals (``parse_float=Decimal``): money and quantities are never floats.

Cost Management throttles hard (a few queries per scope per minute, per-tenant QPU budgets): queries go one
at a time, at least ``spacing`` seconds apart per scope (pages included), and a 429 waits for the longest of
``Retry-After`` and the ``x-ms-ratelimit-microsoft.costmanagement-*-retry-after`` headers (``providers.http``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

from ...errors import ProviderError, ResponseShapeError
from ...model import CostRecord, Window
from .. import shape
from ..base import DAY
from ..http import ApiClient
from .discovery import Account, account_of, normalize_resource_id, same_origin_path
from .metrics import PROVIDER_NAME

log = logging.getLogger(__name__)
T = TypeVar("T")

COST_API_VERSION = "2023-11-01"
#: Column names of the cost amount, by query type (ActualCost answers ``Cost``; older ``Usage`` ``PreTaxCost``).
COST_COLUMNS = ("cost", "pretaxcost")
GROUPINGS = ("ResourceId", "Meter")
#: The aggregated column of the billed quantity (the answer names its column after it).
QUANTITY_COLUMN = "UsageQuantity"
#: The groupings of the unit query: a meter's unit of measure.
UNIT_GROUPINGS = ("Meter", "UnitOfMeasure")
#: A token meter's unit of measure: "1K", "1M", "1K Tokens", "10K", "Tokens".
_TOKEN_UNIT = re.compile(r"^(?:(\d+)\s*([km]?))?\s*(?:tokens?)?$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000}

#: One answer row: (day, resource id normalised, meter, amount, currency, quantity or None).
CostRow = tuple[int, str, str, Decimal, str, Decimal | None]


class CostRead(NamedTuple):
    """What one cost read produced: its records, and how many answer rows matched no discovered account
    (kept, under their own resource id: see the module docstring)."""

    records: list[CostRecord]
    unmatched: int


def unmatched_tenancy(resource: str, scope: str) -> str:
    """``llm.tenancy.id`` of a cost row whose (normalised) resource id matches no discovered account."""
    if resource == "/":
        return normalize_resource_id(scope)
    account = account_of(resource)
    return account.tenancy_id if account is not None else resource


def cost_window(now: int, lookback: float) -> Window:
    """Whole UTC days from the one ``lookback`` before ``now`` through today (today's partial day included)."""
    start = int(now - lookback)
    return Window(start - start % DAY, now - now % DAY + DAY)


def query_body(window: Window, accounts: Sequence[Account], *, units: bool = False) -> dict[str, Any]:
    """The Query API request body for ``window`` (whole days) and these accounts: cost and quantity by account
    and meter, or (``units``) the unit of measure of each meter."""
    def day(ts: int) -> str:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    quantity = {"totalQuantity": {"name": QUANTITY_COLUMN, "function": "Sum"}}
    return {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {"from": day(window.start), "to": day(window.end - 1)},
        "dataset": {
            "granularity": "Daily",
            "aggregation": quantity if units else {"totalCost": {"name": "Cost", "function": "Sum"}, **quantity},
            "grouping": [{"type": "Dimension", "name": g} for g in (UNIT_GROUPINGS if units else GROUPINGS)],
            "filter": {"dimensions": {"name": "ResourceId", "operator": "In",
                                      "values": sorted(a.key for a in accounts)}},
        },
    }


def token_scale(meter: str, unit: str) -> int | None:
    """How many tokens one unit of a token meter is (``1K`` -> 1000); None when the meter does not bill tokens."""
    if "token" not in meter.lower():
        return None
    match = _TOKEN_UNIT.match(unit.strip())
    if not match or not (match.group(1) or "token" in unit.lower()):
        return None
    return int(match.group(1) or 1) * _SCALE[(match.group(2) or "").lower()]


def billed_quantity(meter: str, quantity: Decimal | None, unit: str | None) -> tuple[Decimal | None, str | None]:
    """A meter's quantity and unit as recorded: token meters in tokens (exactly), others as Azure names them."""
    if quantity is None or not unit or not unit.strip():
        return None, None
    scale = token_scale(meter, unit)
    return (quantity * scale, "tokens") if scale is not None else (quantity, unit.strip())


def _number(value: object, what: str) -> Decimal:
    """A cost or quantity cell: any finite number, exactly (no bound: a quantity is not money)."""
    try:
        return shape.decimal(value, what, bound=None)
    except ResponseShapeError:
        raise ResponseShapeError(f"{what} {value!r} is not a number") from None


def _columns(props: dict[str, Any]) -> tuple[dict[str, int], list[Any]]:
    columns, rows = props.get("columns"), props.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ResponseShapeError("properties.columns and properties.rows must be lists")
    index: dict[str, int] = {}
    for i, col in enumerate(columns):
        name = shape.text(col.get("name") if isinstance(col, dict) else None, f"properties.columns[{i}].name")
        index[name.lower()] = i
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ResponseShapeError(f"properties.rows[{r}] does not have one value per column")
    return index, rows


def _properties(body: Any) -> dict[str, Any]:
    props = body.get("properties") if isinstance(body, dict) else None
    if not isinstance(props, dict):
        raise ResponseShapeError("properties: the answer has no properties object")
    return props


def parse_units(body: Any) -> tuple[list[tuple[str, set[str]]], object]:
    """The unit query's answer as (meter, units of measure seen) pairs, and its nextLink."""
    props = _properties(body)
    index, rows = _columns(props)
    missing = [c for c in ("meter", "unitofmeasure") if c not in index]
    if missing:
        raise ResponseShapeError(f"properties.columns lacks {', '.join(missing)}")
    units: dict[str, set[str]] = defaultdict(set)
    for r, row in enumerate(rows):
        meter, unit = row[index["meter"]], row[index["unitofmeasure"]]
        if not isinstance(unit, str) or (meter is not None and not isinstance(meter, str)):
            raise ResponseShapeError(f"properties.rows[{r}] needs Meter and UnitOfMeasure strings")
        if unit.strip():
            units[meter if meter else "unknown"].add(unit.strip())
    return list(units.items()), props.get("nextLink")


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
    raise ResponseShapeError(f"UsageDate {value!r} is not a date")


def parse_table(body: Any) -> tuple[list[CostRow], object]:
    """Rows of a Query answer as ``(day, resource id normalised, meter, amount, currency, quantity)``, and its
    nextLink. ``quantity`` is None when the answer has no ``UsageQuantity`` column."""
    props = _properties(body)
    index, rows = _columns(props)
    cost_col = next((index[c] for c in COST_COLUMNS if c in index), None)
    missing = [c for c in ("usagedate", "resourceid", "meter", "currency") if c not in index]
    if cost_col is None or missing:
        raise ResponseShapeError(f"properties.columns lacks {', '.join(missing or ['Cost'])}")
    quantity_col = index.get(QUANTITY_COLUMN.lower())
    out: list[CostRow] = []
    for r, row in enumerate(rows):
        value = _number(row[cost_col], f"properties.rows[{r}] cost")
        quantity = None if quantity_col is None else _number(row[quantity_col], f"properties.rows[{r}] quantity")
        resource, meter, currency = row[index["resourceid"]], row[index["meter"]], row[index["currency"]]
        if not isinstance(resource, str) or not isinstance(currency, str) or not currency.strip():
            raise ResponseShapeError(f"properties.rows[{r}] needs ResourceId and Currency strings")
        try:
            day = parse_usage_date(row[index["usagedate"]])
        except ResponseShapeError as exc:
            raise ResponseShapeError(f"properties.rows[{r}]: {exc}") from None
        meter_name = meter if isinstance(meter, str) and meter else "unknown"
        out.append((day, normalize_resource_id(resource), meter_name, value, currency.strip().upper(), quantity))
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

    async def costs(self, accounts: Sequence[Account], window: Window) -> CostRead:
        tenancies = {a.key: a.tenancy_id for a in accounts}
        sums: dict[tuple[int, str, str, str], Decimal] = defaultdict(Decimal)
        quantities: dict[tuple[int, str, str, str], Decimal | None] = {}
        units: dict[str, set[str]] = defaultdict(set)
        unmatched: dict[str, int] = defaultdict(int)  # tenancy -> rows that matched no account
        for scope, members in self.scopes_for(accounts):
            if not members:
                continue
            for day, resource, meter, amount, currency, quantity in await self._query(
                    scope, query_body(window, members), parse_table, "cost"):
                if not window.start <= day < window.end:
                    continue
                tenancy = tenancies.get(resource)
                if tenancy is None:  # never dropped: kept under its own id, counted, and said once below
                    tenancy = unmatched_tenancy(resource, scope)
                    unmatched[tenancy] += 1
                key = (day, tenancy, meter, currency)
                sums[key] += amount
                # Rows of one key add up; one row without a quantity makes the sum unknown.
                if key in quantities:
                    before = quantities[key]
                    quantities[key] = None if before is None or quantity is None else before + quantity
                else:
                    quantities[key] = quantity
            for meter, seen in await self._units(scope, window, members):
                units[meter] |= seen
        if unmatched:
            log.warning("%s: %d cost row(s) matched no discovered account and are kept under their own resource "
                        "id: %s", self.provider, sum(unmatched.values()), ", ".join(sorted(unmatched)))
        records = []
        for (day, tenancy, meter, currency), amount in sorted(sums.items()):
            unit = next(iter(units[meter])) if len(units.get(meter, ())) == 1 else None
            quantity, quantity_unit = billed_quantity(meter, quantities.get((day, tenancy, meter, currency)), unit)
            records.append(CostRecord(
                provider=PROVIDER_NAME, tenancy_id=tenancy, bucket_start=day, bucket_width=DAY,
                amount=amount, currency=currency, line_item=meter, quantity=quantity, quantity_unit=quantity_unit,
            ))
        return CostRead(records, sum(unmatched.values()))

    async def _units(self, scope: str, window: Window, members: Sequence[Account]) -> list[tuple[str, set[str]]]:
        """Each meter's unit(s) of measure at ``scope``; none (costs kept, no quantities) if the query is refused."""
        try:
            return await self._query(scope, query_body(window, members, units=True), parse_units, "unit")
        except ProviderError as exc:
            if exc.error_type != "config":
                raise  # a malformed answer, throttling or an outage fail the read like any other query
            log.warning("%s: the unit-of-measure query at %s was refused, costs are kept without quantities: %s",
                        self.provider, scope, exc)
            return []

    async def _query(
        self, scope: str, body: dict[str, Any], parse: Callable[[Any], tuple[list[T], object]], what: str
    ) -> list[T]:
        """Every row of one query, each page parsed before its nextLink is followed (none for a 204)."""
        rows: list[T] = []
        path: str | None = f"{scope}/providers/Microsoft.CostManagement/query"
        params: dict[str, str] | None = {"api-version": COST_API_VERSION}
        pages = 0
        while path is not None:
            await self.pacer.wait(scope)
            try:
                answer = await self.client.request_json(
                    "POST", path, params=params, json_body=body, operation="costmanagement.query", decimals=True,
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
                page, link = parse(answer)
            except ResponseShapeError as exc:
                raise ProviderError(f"{what} query at {scope}, page {pages}: {exc}", provider=self.provider,
                                    error_type="bad_response") from None
            rows += page
            path = same_origin_path(link, self.client, self.provider)
            params = None  # the nextLink carries api-version and $skiptoken
        return rows


__all__ = ["COST_API_VERSION", "CostRead", "CostReader", "Pacer", "billed_quantity", "cost_window", "parse_table",
           "parse_units", "parse_usage_date", "query_body", "token_scale",
           "unmatched_tenancy"]
