"""Claude Code analytics (``GET /v1/organizations/usage_report/claude_code``) -> ``llm.usage.code.*`` records.

One request covers one UTC day (``starting_at=YYYY-MM-DD``) and returns one record per actor (a user's email or an
API key's name) and environment, with the day's sessions, lines added and removed, commits, pull requests, tool
accept / reject counts and per-model tokens. They become counters of their own: Claude Code traffic on API keys is
already in the Messages usage report, so its tokens go to ``llm.usage.code.tokens``, never into
``llm.usage.tokens``. The actor is personal data and unbounded: it is an attribute only with dimension ``actor``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ...errors import ResponseShapeError
from ...model import UsageRecord
from ...names import (
    METRIC_CODE_COMMITS,
    METRIC_CODE_LINES,
    METRIC_CODE_PULL_REQUESTS,
    METRIC_CODE_SESSIONS,
    METRIC_CODE_TOKENS,
    METRIC_CODE_TOOL_ACTIONS,
)
from .. import shape
from .reports import PROVIDER, optional_text, page_cursor

DAY = 86400
#: ``model_breakdown[].tokens`` field -> our token type (``cache_creation`` is the cache write).
CODE_TOKEN_TYPES: Mapping[str, str] = {
    "input": "input", "output": "output", "cache_read": "cache_read", "cache_creation": "cache_write",
}


def day_param(day: int) -> str:
    return datetime.fromtimestamp(day, UTC).strftime("%Y-%m-%d")


def parse_code_page(body: Any, what: str) -> tuple[list[Mapping[str, Any]], bool, str | None]:
    """One page of the Claude Code report: (records, has_more, next_page)."""
    root = shape.as_object(body, what)
    data = shape.as_list(root.get("data"), f"{what}.data")
    records = [shape.as_object(r, f"{what}.data[{i}]") for i, r in enumerate(data)]
    has_more, next_page = page_cursor(root, what)
    return records, has_more, next_page


def _actor(row: Mapping[str, Any], path: str) -> str:
    actor = shape.as_object(row.get("actor"), f"{path}.actor")
    kind = actor.get("type")
    field = {"user_actor": "email_address", "api_actor": "api_key_name"}.get(kind if isinstance(kind, str) else "")
    if field is None:
        raise ResponseShapeError(f"{path}.actor.type: expected user_actor or api_actor, got {kind!r}")
    value = optional_text(actor, field, f"{path}.actor")
    if not value:
        raise ResponseShapeError(f"{path}.actor.{field}: missing")
    return value


def code_records(row: Mapping[str, Any], path: str, day: int, *, with_actor: bool) -> list[UsageRecord]:
    """The records of one Claude Code report row for the UTC day starting at ``day``."""
    date = row.get("date")
    if not isinstance(date, str) or date[:10] != day_param(day):
        raise ResponseShapeError(f"{path}.date: expected {day_param(day)}, got {date!r}")
    tenancy = optional_text(row, "organization_id", path) or "default"
    dims: dict[str, str] = {}
    for field, attribute in (("customer_type", "llm.code.customer_type"), ("terminal_type", "llm.code.terminal_type")):
        value = optional_text(row, field, path)
        if value is not None:
            dims[attribute] = value
    actor = _actor(row, path)
    if with_actor:
        dims["llm.code.actor"] = actor

    def record(extra: Mapping[str, str], metric: str, value: int, model: str = "") -> UsageRecord:
        return UsageRecord(
            provider=PROVIDER, model=model, operation="", tenancy_id=tenancy, bucket_start=day, bucket_width=DAY,
            dimensions={**dims, **extra}, measures={metric: value},
        )

    core = shape.as_object(row.get("core_metrics"), f"{path}.core_metrics")
    lines = shape.as_object(core.get("lines_of_code"), f"{path}.core_metrics.lines_of_code")
    records = [
        record({}, METRIC_CODE_SESSIONS, shape.count(core.get("num_sessions"), f"{path}.core_metrics.num_sessions")),
        record({}, METRIC_CODE_COMMITS,
               shape.count(core.get("commits_by_claude_code"), f"{path}.core_metrics.commits_by_claude_code")),
        record({}, METRIC_CODE_PULL_REQUESTS,
               shape.count(core.get("pull_requests_by_claude_code"),
                           f"{path}.core_metrics.pull_requests_by_claude_code")),
    ]
    for change in ("added", "removed"):
        n = shape.count(lines.get(change), f"{path}.core_metrics.lines_of_code.{change}")
        records.append(record({"llm.code.change": change}, METRIC_CODE_LINES, n))
    tools = row.get("tool_actions")
    for tool, raw in (shape.as_object(tools, f"{path}.tool_actions").items() if tools is not None else ()):
        counts = shape.as_object(raw, f"{path}.tool_actions.{tool}")
        for decision in ("accepted", "rejected"):
            n = shape.count(counts.get(decision), f"{path}.tool_actions.{tool}.{decision}")
            records.append(record({"gen_ai.tool.name": tool, "llm.code.decision": decision},
                                  METRIC_CODE_TOOL_ACTIONS, n))
    for i, raw in enumerate(shape.as_list(row.get("model_breakdown") or [], f"{path}.model_breakdown")):
        item_path = f"{path}.model_breakdown[{i}]"
        item = shape.as_object(raw, item_path)
        model = optional_text(item, "model", item_path) or "unknown"
        tokens = shape.as_object(item.get("tokens"), f"{item_path}.tokens")
        for field, token_type in CODE_TOKEN_TYPES.items():
            n = shape.count(tokens.get(field, 0), f"{item_path}.tokens.{field}")
            records.append(record({"gen_ai.token.type": token_type}, METRIC_CODE_TOKENS, n, model=model))
    return records


__all__ = ["CODE_TOKEN_TYPES", "code_records", "day_param", "parse_code_page"]
