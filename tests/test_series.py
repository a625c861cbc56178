"""The normalise step on its own: records -> series keys and points, with no database anywhere."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from otel_llm_receiver.ledger.writer import plan_points
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.names import (
    METRIC_BILLED_QUANTITY,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_TOKENS,
    METRIC_TOOL_REQUESTS,
)
from otel_llm_receiver.series import canonical_attrs, expand

H = 3600


def usage(start: int, **kw: object) -> UsageRecord:
    fields: dict[str, object] = {
        "provider": "openai", "model": "gpt-x", "operation": "chat", "tenancy_id": "proj_1",
        "bucket_start": start, "bucket_width": H, "tokens": {"input": 10, "output": 3}, "requests": 2,
    }
    return UsageRecord(**{**fields, **kw})  # type: ignore[arg-type]


def test_canonical_attrs_is_sorted_compact_json_whatever_the_input_order() -> None:
    assert canonical_attrs({"b": "2", "a": "é"}) == '{"a":"é","b":"2"}'
    assert canonical_attrs({"a": "é", "b": "2"}) == canonical_attrs({"b": "2", "a": "é"})


def test_usage_record_expands_to_a_series_per_token_type_and_one_for_requests() -> None:
    records = [usage(0), usage(H, dimensions={"llm.batch": "true"}), usage(2 * H)]
    ex = expand(PollResult(usage=records), "acme")
    assert ex.usage_idents[0] == ex.usage_idents[2] != ex.usage_idents[1]  # one identity per distinct series set
    by_type, (req_metric, req_attrs) = ex.usage_keys[ex.usage_idents[0]]
    assert [t for t, _ in by_type] == ["input", "cache_read", "cache_write", "output"]
    assert req_metric == METRIC_REQUESTS
    assert json.loads(req_attrs) == {
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-x", "gen_ai.operation.name": "chat",
        "llm.tenancy.id": "proj_1", "llm.tenant": "acme",
    }
    metric, attrs = dict(by_type)["output"]
    assert metric == METRIC_TOKENS and json.loads(attrs)["gen_ai.token.type"] == "output"
    assert json.loads(ex.usage_keys[ex.usage_idents[1]][1][1])["llm.batch"] == "true"


def test_a_record_without_model_or_operation_leaves_those_attributes_out() -> None:
    record = usage(0, model="", operation="", tokens={}, requests=None, measures={METRIC_TOOL_REQUESTS: 4},
                   tenant="own")
    ex = expand(PollResult(usage=[record]), "acme")
    metric, attrs = ex.measure_keys[(ex.usage_idents[0], METRIC_TOOL_REQUESTS)]
    assert metric == METRIC_TOOL_REQUESTS
    assert json.loads(attrs) == {"gen_ai.provider.name": "openai", "llm.tenancy.id": "proj_1", "llm.tenant": "own"}


def test_non_usd_cost_gets_its_own_metric_and_billed_quantity_drops_the_currency() -> None:
    cost = CostRecord(provider="azure.ai.openai", tenancy_id="sub", bucket_start=0, bucket_width=86400,
                      amount=Decimal("1.5"), currency="eur", quantity=Decimal("1000"), quantity_unit="tokens")
    ex = expand(PollResult(costs=[cost]), "default")
    metric, attrs = ex.cost_keys[ex.cost_idents[0]]
    assert metric == METRIC_COST_NON_USD and json.loads(attrs)["llm.currency"] == "EUR"
    qmetric, qattrs = ex.quantity_keys[(ex.cost_idents[0], "tokens")]
    assert qmetric == METRIC_BILLED_QUANTITY
    assert "llm.currency" not in json.loads(qattrs) and json.loads(qattrs)["llm.cost.quantity_unit"] == "tokens"


def test_an_unknown_measure_is_a_provider_bug_not_a_storage_failure() -> None:
    with pytest.raises(ValueError, match=r"unknown measure 'llm\.usage\.nope'"):
        expand(PollResult(usage=[usage(0, measures={"llm.usage.nope": 1})]), "default")


def test_points_of_new_series_get_the_ids_the_ledger_will_assign_and_old_buckets_are_rejected() -> None:
    result = PollResult(usage=[usage(0), usage(H)])
    plan = plan_points(result, expand(result, "default"), {}, horizon=H, max_id=7)
    assert plan.rejected == 3  # the first record: two token types and requests, before the horizon
    assert plan.rows == []
    assert sorted(plan.new_ids.values()) == [8, 9, 10]
    assert sorted(v for _, _, _, v in plan.pending) == [2, 3, 10]
    assert not plan.repeats
