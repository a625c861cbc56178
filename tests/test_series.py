"""The normalise step on its own: records -> series keys and points, with no database anywhere."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from otel_llm_receiver.ledger.planner import PointPlanner
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.names import (
    METRIC_BILLED_QUANTITY,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_TOKENS,
    METRIC_TOOL_REQUESTS,
)
from otel_llm_receiver.series import SeriesKeys, canonical_attrs, cost_ident, usage_ident

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
    idents = [usage_ident(r, "acme") for r in records]
    assert idents[0] == idents[2] != idents[1]  # one identity per distinct series set
    keys = SeriesKeys()
    by_type, (req_metric, req_attrs) = keys.usage(idents[0]).tokens, keys.usage(idents[0]).requests
    assert [t for t, _ in by_type] == ["input", "cache_read", "cache_write", "output"]
    assert req_metric == METRIC_REQUESTS
    assert json.loads(req_attrs) == {
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-x", "gen_ai.operation.name": "chat",
        "llm.tenancy.id": "proj_1", "llm.tenant": "acme",
    }
    metric, attrs = dict(by_type)["output"]
    assert metric == METRIC_TOKENS and json.loads(attrs)["gen_ai.token.type"] == "output"
    assert json.loads(keys.usage(idents[1]).requests[1])["llm.batch"] == "true"


def test_a_record_without_model_or_operation_leaves_those_attributes_out() -> None:
    record = usage(0, model="", operation="", tokens={}, requests=None, measures={METRIC_TOOL_REQUESTS: 4},
                   tenant="own")
    metric, attrs = SeriesKeys().measure(usage_ident(record, "acme"), METRIC_TOOL_REQUESTS)
    assert metric == METRIC_TOOL_REQUESTS
    assert json.loads(attrs) == {"gen_ai.provider.name": "openai", "llm.tenancy.id": "proj_1", "llm.tenant": "own"}


def test_non_usd_cost_gets_its_own_metric_and_billed_quantity_drops_the_currency() -> None:
    cost = CostRecord(provider="azure.ai.openai", tenancy_id="sub", bucket_start=0, bucket_width=86400,
                      amount=Decimal("1.5"), currency="eur", quantity=Decimal("1000"), quantity_unit="tokens")
    keys, ident = SeriesKeys(), cost_ident(cost, "default")
    metric, attrs = keys.cost(ident)
    assert metric == METRIC_COST_NON_USD and json.loads(attrs)["llm.currency"] == "EUR"
    qmetric, qattrs = keys.quantity(ident, "tokens")
    assert qmetric == METRIC_BILLED_QUANTITY
    assert "llm.currency" not in json.loads(qattrs) and json.loads(qattrs)["llm.cost.quantity_unit"] == "tokens"


def test_an_unknown_measure_is_a_provider_bug_not_a_storage_failure() -> None:
    planner = PointPlanner(SeriesKeys(), {}, "default", 0, 1)
    with pytest.raises(ValueError, match=r"unknown measure 'llm\.usage\.nope'"):
        list(planner.slices(PollResult(usage=[usage(0, measures={"llm.usage.nope": 1})])))


def test_points_of_new_series_get_the_ids_the_ledger_will_assign_and_old_buckets_are_rejected() -> None:
    result = PollResult(usage=[usage(0), usage(H)])
    planner = PointPlanner(SeriesKeys(), {}, "default", H, 8)
    points = [p for rows in planner.slices(result) for p in rows]
    assert planner.rejected == 3  # the first record: two token types and requests, before the horizon
    assert sorted(planner.new_ids.values()) == [8, 9, 10]
    assert sorted(v for _, _, _, v in points) == [2, 3, 10]
    assert {sid for sid, _, _, _ in points} == {8, 9, 10}


def test_known_series_keep_their_ids_and_points_come_in_bounded_slices() -> None:
    """The planner hands points over a slice at a time (bounded memory); known series need no new id."""
    keys = SeriesKeys()
    ident = usage_ident(usage(0), "default")
    known = {key: i + 1 for i, (_, key) in enumerate(keys.usage(ident).tokens)}
    known[keys.usage(ident).requests] = 99
    planner = PointPlanner(keys, known, "default", 0, 100, slice_points=7)
    slices = list(planner.slices(PollResult(usage=[usage(h * H) for h in range(10)])))
    assert [len(s) for s in slices] == [9, 9, 9, 3]  # 3 points a record; handed over once 7 are reached
    points = [p for s in slices for p in s]
    assert planner.new_ids == {}
    assert {(sid, v) for sid, _, _, v in points} == {(1, 10), (4, 3), (99, 2)}  # input, output, requests


def test_series_keys_are_encoded_once_per_identity() -> None:
    keys = SeriesKeys()
    ident = usage_ident(usage(0, dimensions={"b": "2", "a": "1"}), "default")
    first = keys.usage(ident)
    assert keys.usage(usage_ident(usage(H, dimensions={"a": "1", "b": "2"}), "default")) is first
    assert len(keys.usage_keys) == 1


def test_token_series_keys_are_the_canonical_json_of_their_attributes() -> None:
    """``SeriesKeys.usage`` encodes the base attributes once and splices each token type in: the text must be
    exactly ``canonical_attrs`` of the full attribute set, or a poll would create a second series. Random
    dimension names and values (fixed seed) sort before, between and after ``gen_ai.token.type``, with quotes,
    backslashes, control characters and non-ASCII text; a dimension named like the token type takes the
    plain path."""
    rng = random.Random(20)
    alphabet = ['a', 'z', 'g', '.', '_', '"', '\\', '\n', '\x01', 'é', '日', '😀', ' ', '{', ':', ',', 'gen_ai.t']
    for _ in range(500):
        dims = {"".join(rng.choices(alphabet, k=rng.randint(1, 6))): "".join(rng.choices(alphabet, k=rng.randint(0, 6)))
                for _ in range(rng.randint(0, 5))}
        if rng.random() < 0.05:
            dims["gen_ai.token.type"] = "x"
        record = usage(0, dimensions=dims, model=rng.choice(["m", ""]), tenancy_id=rng.choice(["t", "ü\"t"]))
        ident = usage_ident(record, "default")
        keys = SeriesKeys().usage(ident)
        base = {"gen_ai.provider.name": record.provider, "llm.tenancy.id": record.tenancy_id,
                "llm.tenant": "default", **dims}
        if record.model:
            base["gen_ai.request.model"] = record.model
        base["gen_ai.operation.name"] = record.operation
        assert keys.requests == (METRIC_REQUESTS, canonical_attrs(base))
        assert [attrs for _, (_, attrs) in keys.tokens] == [
            canonical_attrs({**base, "gen_ai.token.type": t}) for t, _ in keys.tokens]
        assert [t for t, _ in keys.tokens] == ["input", "cache_read", "cache_write", "output"]
