"""The Anthropic field mapping, row by row: token partition, cache TTLs, tools, cost units and line items."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_llm_receiver.errors import ResponseShapeError as ShapeError
from otel_llm_receiver.model import from_nanos, to_nanos
from otel_llm_receiver.providers.anthropic.reports import (
    Bucket,
    amount_in_units,
    cost_record,
    parse_report_page,
    parse_time,
    usage_records,
)

DAY_BUCKET = Bucket(1754006400, 1754092800, [], "usage_report.data[0]")  # 2025-08-01, the docs' example day
DIMS = ("workspace", "model", "service_tier", "context_window", "inference_geo")


def docs_usage_row(**overrides: Any) -> dict[str, Any]:
    """The first result row of the usage report reference's example response."""
    row: dict[str, Any] = {
        "uncached_input_tokens": 1500,
        "cache_creation": {"ephemeral_1h_input_tokens": 1000, "ephemeral_5m_input_tokens": 500},
        "cache_read_input_tokens": 200, "output_tokens": 500, "server_tool_use": {"web_search_requests": 10},
        "api_key_id": "apikey_01Rj2N8SVvo6BePZj99NhmiT", "workspace_id": "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ",
        "model": "claude-sonnet-4-20250514", "service_tier": "standard", "context_window": "0-200k",
        "inference_geo": "global",
    }
    row.update(overrides)
    return row


def token_sum(records: list[Any]) -> dict[tuple[str, str | None], int]:
    out: dict[tuple[str, str | None], int] = {}
    for r in records:
        for token_type, n in r.tokens.items():
            key = (token_type, r.dimensions.get("llm.cache.ttl"))
            out[key] = out.get(key, 0) + n
    return out


def test_the_docs_example_row_maps_each_token_once() -> None:
    records = usage_records(DAY_BUCKET, docs_usage_row(), "row", DIMS)
    assert token_sum(records) == {("input", None): 1500, ("cache_read", None): 200, ("output", None): 500,
                                  ("cache_write", "5m"): 500, ("cache_write", "1h"): 1000}
    assert sum(token_sum(records).values()) == 1500 + 1000 + 500 + 200 + 500
    (tool,) = [r for r in records if r.measures]
    assert tool.measures == {"llm.usage.tool_requests": 10} and tool.dimensions["gen_ai.tool.name"] == "web_search"
    assert all(r.tenancy_id == "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ" for r in records)
    # token records are `chat`; server-tool requests `execute_tool`, as OpenAI's web search (issue 16.11)
    assert {(r.operation, bool(r.measures)) for r in records} == {("chat", False), ("execute_tool", True)}
    assert all(r.bucket_start == DAY_BUCKET.start and r.bucket_width == 86400 for r in records)
    assert records[0].dimensions == {"llm.service_tier": "standard", "llm.context_window": "0-200k",
                                     "llm.inference_geo": "global"}


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=5, max_size=5))
def test_the_four_token_types_partition_every_reported_token(values: list[int]) -> None:
    uncached, read, w5, w1, out = values
    row = docs_usage_row(uncached_input_tokens=uncached, cache_read_input_tokens=read, output_tokens=out,
                         cache_creation={"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1})
    sums = token_sum(usage_records(DAY_BUCKET, row, "row", DIMS))
    assert sum(sums.values()) == sum(values)  # nothing subtracted, nothing counted twice
    assert sums[("cache_write", "5m")] + sums[("cache_write", "1h")] == w5 + w1


def test_null_and_left_out_group_fields_parse_the_same() -> None:
    nulls = docs_usage_row(workspace_id=None, api_key_id=None, service_tier=None, context_window=None,
                           inference_geo=None)
    missing = {k: v for k, v in nulls.items() if v is not None}
    a = usage_records(DAY_BUCKET, nulls, "row", (*DIMS, "api_key"))
    b = usage_records(DAY_BUCKET, missing, "row", (*DIMS, "api_key"))
    assert a == b
    assert a[0].tenancy_id == "default"  # the default workspace has no id
    assert a[0].dimensions == {"llm.api_key.id": "console"}  # Console / Workbench usage has no key


def test_server_tool_use_may_be_absent_and_new_counters_pass_through() -> None:
    row = docs_usage_row()
    del row["server_tool_use"]
    assert not any(r.measures for r in usage_records(DAY_BUCKET, row, "row", DIMS))
    row["server_tool_use"] = {"web_search_requests": 1, "web_fetch_requests": 4, "note": "ignored"}
    tools = {r.dimensions["gen_ai.tool.name"]: r.measures["llm.usage.tool_requests"]
             for r in usage_records(DAY_BUCKET, row, "row", DIMS) if r.measures}
    assert tools == {"web_search": 1, "web_fetch": 4}


@pytest.mark.parametrize(
    ("field", "value"),
    [("uncached_input_tokens", "1500"), ("output_tokens", -1), ("output_tokens", True), ("output_tokens", 1.5),
     ("cache_creation", None), ("cache_creation", {"ephemeral_5m_input_tokens": 1}), ("model", 7),
     ("server_tool_use", {"web_search_requests": "3"})],
)
def test_wrong_typed_fields_are_rejected_with_their_path(field: str, value: Any) -> None:
    with pytest.raises(ShapeError, match=r"^row\." + field):
        usage_records(DAY_BUCKET, docs_usage_row(**{field: value}), "row", DIMS)


def test_cost_amount_is_a_decimal_string_in_cents_converted_exactly() -> None:
    assert amount_in_units("123.78912", "USD", "r") == (Decimal("1.2378912"), "USD")
    # The reference's own example says "123.45" is "$1.23": cents, shown rounded. We keep every fraction.
    assert amount_in_units("123.45", "USD", "r")[0] == Decimal("1.2345")
    assert amount_in_units("0.000001", "USD", "r")[0] == Decimal("1E-8")
    assert from_nanos(to_nanos(amount_in_units("123.78912", "USD", "r")[0])) == Decimal("1.2378912")
    for bad in ("abc", "NaN", "-1", 1.5, None):
        with pytest.raises(ShapeError, match=r"^r\.amount"):
            amount_in_units(bad, "USD", "r")
    with pytest.raises(ShapeError, match=r"^r\.currency"):
        amount_in_units("1", "XTS", "r")


@pytest.mark.parametrize(
    ("token_type", "cost_type", "line_item", "ttl"),
    [("uncached_input_tokens", "tokens", "input", None), ("output_tokens", "tokens", "output", None),
     ("cache_read_input_tokens", "tokens", "cache_read", None),
     ("cache_creation.ephemeral_5m_input_tokens", "tokens", "cache_write", "5m"),
     ("cache_creation.ephemeral_1h_input_tokens", "tokens", "cache_write", "1h"),
     ("some_future_tokens", "tokens", "some_future_tokens", None),
     (None, "web_search", "web_search", None), (None, "code_execution", "code_execution", None),
     (None, "session_usage", "session_usage", None)],
)
def test_cost_rows_keep_model_and_token_or_cost_type(
    token_type: str | None, cost_type: str, line_item: str, ttl: str | None
) -> None:
    row = {"currency": "USD", "amount": "250", "workspace_id": None, "description": "x", "cost_type": cost_type,
           "context_window": "0-200k" if token_type else None, "token_type": token_type,
           "model": "claude-sonnet-4-20250514" if token_type else None,
           "service_tier": "standard" if token_type else None}
    record = cost_record(DAY_BUCKET, row, "row", DIMS)
    assert record.line_item == line_item and record.dimensions.get("llm.cache.ttl") == ttl
    assert record.amount == Decimal("2.5") and record.source == "reported" and record.tenancy_id == "default"
    assert record.model == row["model"]


def test_report_envelope_checks() -> None:
    ok = {"data": [{"starting_at": "2025-08-01T00:00:00Z", "ending_at": "2025-08-02T00:00:00Z", "results": []}],
          "has_more": False, "next_page": None}
    assert parse_report_page(ok, "r", 86400).buckets[0].start == DAY_BUCKET.start
    misaligned = {**ok, "data": [{"starting_at": "2025-08-01T01:00:00Z", "ending_at": "2025-08-02T01:00:00Z",
                                  "results": []}]}
    with pytest.raises(ShapeError, match="aligned"):
        parse_report_page(misaligned, "r", 86400)
    with pytest.raises(ShapeError, match="has_more"):
        parse_report_page({"data": []}, "r", 3600)
    with pytest.raises(ShapeError, match="no UTC offset"):
        parse_time("2025-08-01T00:00:00", "t")
    assert parse_time("2025-08-01T02:00:00+02:00", "t") == DAY_BUCKET.start


def docs_code_row(**overrides: Any) -> dict[str, Any]:
    """A Claude Code report record shaped like the reference's example."""
    row: dict[str, Any] = {
        "date": "2025-09-01", "actor": {"type": "user_actor", "email_address": "developer@company.com"},
        "organization_id": "dc9f6c26-b22c-4831-8d01-0446bada88f1", "customer_type": "api", "terminal_type": "vscode",
        "core_metrics": {"num_sessions": 5, "lines_of_code": {"added": 1543, "removed": 892},
                         "commits_by_claude_code": 12, "pull_requests_by_claude_code": 2},
        "tool_actions": {"edit_tool": {"accepted": 45, "rejected": 5}, "write_tool": {"accepted": 8, "rejected": 1}},
        "model_breakdown": [{"model": "claude-sonnet-4-5-20250929",
                             "tokens": {"input": 100000, "output": 35000, "cache_read": 10000, "cache_creation": 5000},
                             "estimated_cost": {"currency": "USD", "amount": 1025}}],
    }
    row.update(overrides)
    return row


CODE_DAY = 1756684800  # 2025-09-01


def test_a_claude_code_record_maps_to_code_counters() -> None:
    from otel_llm_receiver.providers.anthropic.claude_code import code_records

    records = code_records(docs_code_row(), "row", CODE_DAY, with_actor=False)
    by_metric: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for r in records:
        ((metric, value),) = r.measures.items()
        extra = tuple(sorted((k, v) for k, v in r.dimensions.items() if not k.startswith("llm.code.customer")
                             and k != "llm.code.terminal_type"))
        by_metric[(metric, extra)] = value
        assert r.bucket_start == CODE_DAY and r.bucket_width == 86400 and not r.tokens
        assert r.dimensions["llm.code.customer_type"] == "api" and "llm.code.actor" not in r.dimensions
    assert by_metric[("llm.usage.code.sessions", ())] == 5
    assert by_metric[("llm.usage.code.lines", (("llm.code.change", "removed"),))] == 892
    assert by_metric[("llm.usage.code.tool_actions", (("gen_ai.tool.name", "edit_tool"),
                                                      ("llm.code.decision", "rejected")))] == 5
    assert by_metric[("llm.usage.code.tokens", (("gen_ai.token.type", "cache_write"),))] == 5000
    assert sum(v for (m, _), v in by_metric.items() if m == "llm.usage.code.tokens") == 150000
    with_actor = code_records(docs_code_row(actor={"type": "api_actor", "api_key_name": "ci"}), "row", CODE_DAY,
                              with_actor=True)
    assert {r.dimensions["llm.code.actor"] for r in with_actor} == {"ci"}


@pytest.mark.parametrize(
    ("overrides", "says"),
    [({"date": "2025-09-02"}, "row.date"), ({"actor": {"type": "user_actor"}}, "row.actor.email_address"),
     ({"core_metrics": {"num_sessions": 1}}, "row.core_metrics.lines_of_code"),
     ({"tool_actions": {"edit_tool": {"accepted": "1", "rejected": 0}}}, "row.tool_actions.edit_tool.accepted")],
)
def test_bad_claude_code_records_are_rejected_with_their_path(overrides: dict[str, Any], says: str) -> None:
    from otel_llm_receiver.providers.anthropic.claude_code import code_records

    with pytest.raises(ShapeError, match="^" + says.replace(".", r"\.")):
        code_records(docs_code_row(**overrides), "row", CODE_DAY, with_actor=False)
