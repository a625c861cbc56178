"""Anthropic Admin API responses -> canonical records: shape checks and the field mapping, nothing else.

Pure functions over decoded JSON, so that every mapping rule (docs/providers/anthropic.md) is testable without a
server. A response that does not match the documented shape raises ``ResponseShapeError`` naming the field (JSON path)
that was wrong; the provider turns it into one ``bad_response`` for the whole poll, so nothing from a bad
response reaches the ledger.

The token mapping partitions the input exactly once (DESIGN.md): the usage report already splits input into
``uncached_input_tokens``, ``cache_read_input_tokens`` and ``cache_creation.{ephemeral_5m,ephemeral_1h}_input_tokens``,
so nothing is subtracted. Cache writes become ``cache_write`` records of their own, split by ``llm.cache.ttl``,
because the two lifetimes are priced differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ...errors import ResponseShapeError
from ...model import CostRecord, UsageRecord, plausible_amount
from ...names import METRIC_TOOL_REQUESTS
from .. import shape
from ..descriptors import genai_name

PROVIDER = genai_name("anthropic")
OPERATION = "chat"  # the Messages API: the GenAI conventions' `chat`
#: Server-tool requests (web search, web fetch): the GenAI conventions' `execute_tool`, as OpenAI's tool calls.
TOOL_OPERATION = "execute_tool"
DEFAULT_WORKSPACE = "default"  # the reports' null workspace_id is the organisation's default workspace
CONSOLE_KEY = "console"  # null api_key_id: Console / Workbench usage, which has no API key
UNKNOWN_MODEL = "unknown"

#: Config dimension -> (``group_by[]`` value and result field, attribute). ``workspace`` and ``model`` are the
#: tenancy and the model themselves; the others become bounded attributes of their own.
DIMENSIONS: Mapping[str, tuple[str, str | None]] = {
    "workspace": ("workspace_id", None),
    "model": ("model", None),
    "service_tier": ("service_tier", "llm.service_tier"),
    "context_window": ("context_window", "llm.context_window"),
    "inference_geo": ("inference_geo", "llm.inference_geo"),
    "speed": ("speed", "llm.speed"),
    "api_key": ("api_key_id", "llm.api_key.id"),
}

#: Cost report ``token_type`` -> our token type (and cache TTL for cache writes). Unknown types pass through.
COST_TOKEN_TYPES: Mapping[str, tuple[str, str | None]] = {
    "uncached_input_tokens": ("input", None),
    "cache_read_input_tokens": ("cache_read", None),
    "cache_creation.ephemeral_5m_input_tokens": ("cache_write", "5m"),
    "cache_creation.ephemeral_1h_input_tokens": ("cache_write", "1h"),
    "output_tokens": ("output", None),
}

#: Digits after the decimal point of each currency's lowest unit (ISO 4217). The cost report says its amounts are
#: "in lowest currency units (e.g. cents)" and its currency is "currently always USD".
MINOR_UNIT_DIGITS: Mapping[str, int] = {"USD": 2, "EUR": 2, "GBP": 2, "CAD": 2, "AUD": 2, "JPY": 0}

_MAX_ATTRIBUTE_LEN = 200


@dataclass(frozen=True, slots=True)
class Bucket:
    """One ``data[]`` entry of a report: ``[start, end)`` in Unix seconds and its raw result rows."""

    start: int
    end: int
    results: Sequence[Mapping[str, Any]]
    path: str


@dataclass(frozen=True, slots=True)
class ReportPage:
    buckets: list[Bucket]
    has_more: bool
    next_page: str | None


class RowKeys:
    """The (bucket, group) keys of one report's response, all pages: no key may repeat, none may be missing.

    A report row is identified by its bucket and the value of every ``group_by[]`` field the request asked for;
    the API documents no case where repeated keys are to be summed. A repeated key would be counted twice; a row
    lacking a grouped field would be counted under a default (the default workspace, an unknown model) and again
    once the field comes back. Both reject the whole response. A present ``null`` is kept: the reports document
    it (``workspace_id`` null for the default workspace, ``api_key_id`` null for Console usage). Bucket
    repetition is checked by the pager (``_report``). A cost report row is keyed by the cost line it becomes
    (``identity``: workspace, model, line item, attributes) besides its grouped fields, since rows of one
    ``description`` differ by ``service_tier``, ``context_window``, ... and two rows of one line would add up.
    """

    def __init__(self, grouped: Sequence[str]) -> None:
        self.grouped = tuple(grouped)
        self._rows: set[tuple[Any, ...]] = set()

    def row(self, start: int, row: Mapping[str, Any], path: str, identity: tuple[Any, ...] = ()) -> None:
        missing = [g for g in self.grouped if g not in row]
        if missing:
            raise ResponseShapeError(f"{path}: grouped by {', '.join(missing)} but the row has no such field")
        wrong = [g for g in self.grouped if row[g] is not None and not isinstance(row[g], str)]
        if wrong:  # a field not otherwise read (e.g. the cost report's description) is still part of the key
            kind = type(row[wrong[0]]).__name__
            raise ResponseShapeError(f"{path}.{wrong[0]}: expected a string or null, got {kind}")
        key = (start, *[row[g] for g in self.grouped], *identity)
        if key in self._rows:
            shown = ", ".join(f"{g}={row[g]!r}" for g in self.grouped)
            raise ResponseShapeError(
                f"{path}: a second row for the same group ({shown}) in one bucket (would count twice)")
        self._rows.add(key)


# -- primitives ----------------------------------------------------------------------------------------------------
def optional_text(row: Mapping[str, Any], key: str, path: str) -> str | None:
    """A group field: a string (at most an attribute's length), or null / absent when not grouped by it."""
    return shape.optional_text(row.get(key), f"{path}.{key}", max_len=_MAX_ATTRIBUTE_LEN)


def parse_time(value: Any, path: str) -> int:
    """An RFC 3339 timestamp as Unix seconds (the reports always send a UTC offset: one missing is malformed)."""
    return shape.timestamp(value, path, offset_required=True)


# -- envelopes ------------------------------------------------------------------------------------------------------
def parse_report_page(body: Any, what: str, width: int) -> ReportPage:
    """One page of ``usage_report/messages`` or ``cost_report``: time buckets of exactly ``width`` seconds."""
    root = shape.as_object(body, what)
    buckets: list[Bucket] = []
    for i, raw in enumerate(shape.as_list(root.get("data"), f"{what}.data")):
        path = f"{what}.data[{i}]"
        entry = shape.as_object(raw, path)
        start = parse_time(entry.get("starting_at"), f"{path}.starting_at")
        end = parse_time(entry.get("ending_at"), f"{path}.ending_at")
        if end - start != width or start % width:
            raise ResponseShapeError(
                f"{path}: bucket [{entry.get('starting_at')}, {entry.get('ending_at')}) is not one aligned "
                f"{width}s bucket"
            )
        rows = shape.as_list(entry.get("results"), f"{path}.results")
        results = [shape.as_object(r, f"{path}.results[{j}]") for j, r in enumerate(rows)]
        buckets.append(Bucket(start, end, results, path))
    has_more, next_page = page_cursor(root, what)
    return ReportPage(buckets, has_more, next_page)


def page_cursor(root: Mapping[str, Any], what: str) -> tuple[bool, str | None]:
    """A report page's ``has_more`` and ``next_page`` (None when there is no more), checked."""
    has_more = root.get("has_more")
    if not isinstance(has_more, bool):
        raise ResponseShapeError(f"{what}.has_more: expected a boolean, got {shape.describe(has_more)}")
    next_page = root.get("next_page")
    if next_page is not None and not isinstance(next_page, str):
        raise ResponseShapeError(f"{what}.next_page: expected a string or null, got {shape.describe(next_page)}")
    if has_more and not next_page:
        raise ResponseShapeError(f"{what}.next_page: has_more is true but there is no next_page token")
    return has_more, next_page if has_more else None


def parse_workspaces_page(body: Any) -> tuple[dict[str, str], bool, str | None]:
    """One page of ``GET /v1/organizations/workspaces``: ({id: name}, has_more, last_id)."""
    what = "workspaces"
    root = shape.as_object(body, what)
    names: dict[str, str] = {}
    for i, raw in enumerate(shape.as_list(root.get("data"), f"{what}.data")):
        item = shape.as_object(raw, f"{what}.data[{i}]")
        ident, name = item.get("id"), item.get("name")
        if not isinstance(ident, str) or not ident:
            raise ResponseShapeError(f"{what}.data[{i}].id: expected a string, got {shape.describe(ident)}")
        if not isinstance(name, str):
            raise ResponseShapeError(f"{what}.data[{i}].name: expected a string, got {shape.describe(name)}")
        names[ident] = name
    has_more = root.get("has_more")
    if not isinstance(has_more, bool):
        raise ResponseShapeError(f"{what}.has_more: expected a boolean, got {shape.describe(has_more)}")
    last_id = root.get("last_id")
    if has_more and (not isinstance(last_id, str) or not last_id):
        raise ResponseShapeError(f"{what}.last_id: has_more is true but last_id is {shape.describe(last_id)}")
    return names, has_more, last_id if isinstance(last_id, str) else None


# -- rows -----------------------------------------------------------------------------------------------------------
def _attributes(row: Mapping[str, Any], path: str, dimensions: Sequence[str]) -> dict[str, str]:
    """The bounded attributes of a row: each configured dimension the row carries (null = not grouped)."""
    attrs: dict[str, str] = {}
    for dim in dimensions:
        field, attribute = DIMENSIONS.get(dim, ("", None))  # e.g. `actor` belongs to the Claude Code report
        if attribute is None:
            continue
        value = optional_text(row, field, path)
        if value is None and dim == "api_key":
            value = CONSOLE_KEY
        if value is not None:
            attrs[attribute] = value
    return attrs


def usage_records(
    bucket: Bucket, row: Mapping[str, Any], path: str, dimensions: Sequence[str]
) -> list[UsageRecord]:
    """The records of one ``usage_report/messages`` result row.

    One record for ``input`` / ``cache_read`` / ``output``, one ``cache_write`` record per cache TTL, and one
    ``llm.usage.tool_requests`` record per server tool counter. Zeros are kept: a bucket that drops back to zero
    must reach the ledger as a shrink, not vanish.
    """
    tenancy = optional_text(row, "workspace_id", path) or DEFAULT_WORKSPACE
    model = optional_text(row, "model", path) or UNKNOWN_MODEL
    dims = _attributes(row, path, dimensions)
    tokens = {
        "input": shape.count(row.get("uncached_input_tokens"), f"{path}.uncached_input_tokens"),
        "cache_read": shape.count(row.get("cache_read_input_tokens"), f"{path}.cache_read_input_tokens"),
        "output": shape.count(row.get("output_tokens"), f"{path}.output_tokens"),
    }
    cache = shape.as_object(row.get("cache_creation"), f"{path}.cache_creation")
    writes = {
        "5m": shape.count(cache.get("ephemeral_5m_input_tokens"), f"{path}.cache_creation.ephemeral_5m_input_tokens"),
        "1h": shape.count(cache.get("ephemeral_1h_input_tokens"), f"{path}.cache_creation.ephemeral_1h_input_tokens"),
    }

    def record(extra: Mapping[str, str], operation: str = OPERATION, **values: Any) -> UsageRecord:
        return UsageRecord(
            provider=PROVIDER, model=model, operation=operation, tenancy_id=tenancy, bucket_start=bucket.start,
            bucket_width=bucket.end - bucket.start, dimensions={**dims, **extra}, **values,
        )

    records = [record({}, tokens=tokens)]
    records += [record({"llm.cache.ttl": ttl}, tokens={"cache_write": n}) for ttl, n in writes.items()]
    tools = row.get("server_tool_use")
    if tools is not None:
        for key, value in shape.as_object(tools, f"{path}.server_tool_use").items():
            if not key.endswith("_requests"):
                continue  # a future non-count field: not ours to guess at
            count = shape.count(value, f"{path}.server_tool_use.{key}")
            tool = key.removesuffix("_requests")
            records.append(record({"gen_ai.tool.name": tool}, TOOL_OPERATION, measures={METRIC_TOOL_REQUESTS: count}))
    return records


def amount_in_units(amount: Any, currency: Any, path: str) -> tuple[Decimal, str]:
    """A cost row's ``amount`` (a decimal string in the currency's lowest unit) as an exact amount of currency."""
    if not isinstance(currency, str) or currency.upper() not in MINOR_UNIT_DIGITS:
        raise ResponseShapeError(f"{path}.currency: unsupported currency {shape.describe(currency)}")
    if isinstance(amount, bool) or not isinstance(amount, str | int):
        raise ResponseShapeError(f"{path}.amount: expected a decimal string, got {shape.describe(amount)}")
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise ResponseShapeError(f"{path}.amount: {shape.describe(amount)} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ResponseShapeError(f"{path}.amount: {shape.describe(amount)} is not a finite non-negative amount")
    code = currency.upper()
    units = value.scaleb(-MINOR_UNIT_DIGITS[code])
    if not plausible_amount(units):
        raise ResponseShapeError(f"{path}.amount: implausible amount {shape.describe(amount)} (bound: 2^60 nano-units)")
    return units, code


def cost_identity(record: CostRecord) -> tuple[Any, ...]:
    """The cost line a cost report row becomes: two rows of one line in one bucket would be added up."""
    return (record.tenancy_id, record.model, record.line_item, tuple(sorted(record.dimensions.items())))


def cost_record(bucket: Bucket, row: Mapping[str, Any], path: str, dimensions: Sequence[str]) -> CostRecord:
    """The record of one ``cost_report`` result row, keeping its model and token type or cost type."""
    amount, currency = amount_in_units(row.get("amount"), row.get("currency"), path)
    tenancy = optional_text(row, "workspace_id", path) or DEFAULT_WORKSPACE
    model = optional_text(row, "model", path)
    cost_type = optional_text(row, "cost_type", path)
    token_type = optional_text(row, "token_type", path)
    dims = _attributes(row, path, [d for d in dimensions if d != "api_key"])  # not a cost report grouping
    line_item = cost_type
    if token_type is not None:
        line_item, ttl = COST_TOKEN_TYPES.get(token_type, (token_type, None))
        if ttl is not None:
            dims["llm.cache.ttl"] = ttl
    elif line_item is None:
        line_item = optional_text(row, "description", path)
    return CostRecord(
        provider=PROVIDER, tenancy_id=tenancy, bucket_start=bucket.start, bucket_width=bucket.end - bucket.start,
        amount=amount, currency=currency, model=model, line_item=line_item, source="reported", dimensions=dims,
    )


__all__ = [
    "COST_TOKEN_TYPES",
    "DEFAULT_WORKSPACE",
    "DIMENSIONS",
    "Bucket",
    "ReportPage",
    "RowKeys",
    "amount_in_units",
    "cost_identity",
    "cost_record",
    "optional_text",
    "page_cursor",
    "parse_report_page",
    "parse_time",
    "parse_workspaces_page",
    "usage_records",
]
