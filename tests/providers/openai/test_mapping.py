"""The OpenAI row -> record mapping, checked on the spec's own examples and on the shapes that must fail.

The token partition is the product's promise: input + cache_read + cache_write + output equals every token
once. The spec's examples (openapi.yaml @ f85dbe2, UsageCompletionsResult) are used verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from otel_llm_receiver.errors import ResponseShapeError as ShapeError
from otel_llm_receiver.model import UsageRecord
from otel_llm_receiver.providers.openai.fields import decimal
from otel_llm_receiver.providers.openai.normalize import Notes, Row, completions, cost

AT = Row(1_730_419_200, 86400, frozenset({"project_id", "model", "batch", "service_tier"}), "completions.data[0]", 0)

# The x-oaiMeta example of UsageCompletionsResult in the current spec.
SPEC_EXAMPLE: dict[str, Any] = {
    "object": "organization.usage.completions.result", "input_tokens": 5000, "input_cached_tokens": 1800,
    "input_cache_write_tokens": 200, "input_uncached_tokens": 3000, "output_tokens": 1000,
    "input_text_tokens": 2500, "output_text_tokens": 800, "input_cached_text_tokens": 1500,
    "input_audio_tokens": 300, "input_cached_audio_tokens": 100, "output_audio_tokens": 100,
    "input_image_tokens": 200, "input_cached_image_tokens": 200, "output_image_tokens": 100,
    "num_model_requests": 5, "project_id": "proj_abc", "user_id": "user-abc", "api_key_id": "key_abc",
    "model": "gpt-4o-mini-2024-07-18", "batch": False, "service_tier": "default",
}
# The shape of the live January 2025 output (openai-cookbook completions_usage_api.ipynb).
LIVE_2025: dict[str, Any] = {
    "object": "organization.usage.completions.result", "input_tokens": 45949, "output_tokens": 282,
    "num_model_requests": 150, "project_id": "proj_abc", "user_id": None, "api_key_id": None,
    "model": "gpt-4o-mini-2024-07-18", "batch": None, "input_cached_tokens": 1024, "input_audio_tokens": 0,
    "output_audio_tokens": 0,
}


def run(row: Mapping[str, Any], notes: Notes | None = None) -> list[UsageRecord]:
    return list(completions(row, AT, notes or Notes()))


def by_type(records: list[UsageRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        for t, n in r.tokens.items():
            out[t] = out.get(t, 0) + n
    return out


def by_modality(records: list[UsageRecord]) -> dict[tuple[str, str], int]:
    return {(r.dimensions["llm.token.modality"], t): n for r in records if r.tokens for t, n in r.tokens.items()}


def test_the_spec_example_partitions_every_token_once() -> None:
    records = run(SPEC_EXAMPLE)
    totals = by_type(records)
    assert totals == {"input": 3000, "cache_read": 1800, "cache_write": 200, "output": 1000}
    assert sum(totals.values()) == SPEC_EXAMPLE["input_tokens"] + SPEC_EXAMPLE["output_tokens"]
    assert by_modality(records) == {
        ("text", "input"): 2500, ("text", "cache_read"): 1500, ("text", "cache_write"): 200, ("text", "output"): 800,
        ("audio", "input"): 300, ("audio", "cache_read"): 100, ("audio", "output"): 100,
        ("image", "input"): 200, ("image", "cache_read"): 200, ("image", "output"): 100,
    }
    (requests,) = [r for r in records if r.requests is not None]
    assert requests.requests == 5 and "llm.token.modality" not in requests.dimensions
    assert requests.dimensions == {"llm.batch": "false", "llm.service_tier": "default"}
    assert {r.tenancy_id for r in records} == {"proj_abc"} and {r.model for r in records} == {"gpt-4o-mini-2024-07-18"}
    assert [r.sparse for r in records if r.tokens] == [False, True, True]


def test_the_live_2025_shape_parses_and_subtracts_cached_from_input() -> None:
    records = run(LIVE_2025)
    assert by_type(records) == {"input": 45949 - 1024, "cache_read": 1024, "output": 282}
    assert by_modality(records)[("audio", "input")] == 0  # reported, as a sparse zero
    assert "llm.batch" not in records[0].dimensions  # null batch: no attribute


def test_old_audio_semantics_keep_the_type_partition_exact() -> None:
    # 2024-12..2026-07: input_audio_tokens "including cached"; cached audio sits inside input_cached_tokens.
    row = {**LIVE_2025, "input_tokens": 1000, "input_cached_tokens": 300, "input_audio_tokens": 120,
           "output_tokens": 50, "output_audio_tokens": 20}
    records = run(row)
    assert by_type(records) == {"input": 700, "cache_read": 300, "output": 50}
    assert by_modality(records)[("audio", "input")] == 120


def test_uncached_disagreement_is_noted_and_input_tokens_stays_the_total() -> None:
    notes = Notes()
    records = run({**SPEC_EXAMPLE, "input_uncached_tokens": 2999}, notes)
    assert notes.uncached_disagrees == 1
    assert by_type(records)["input"] == 3000


def test_modalities_larger_than_their_totals_fall_back_to_text_without_losing_a_token() -> None:
    notes = Notes()
    records = run({**SPEC_EXAMPLE, "output_audio_tokens": 5000}, notes)
    assert notes.modality_unsplit == 1
    assert by_type(records) == {"input": 3000, "cache_read": 1800, "cache_write": 200, "output": 1000}
    assert by_modality(records)[("audio", "output")] == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"input_tokens": "5000"}, "input_tokens: expected an integer, got str"),
    ({"input_tokens": None}, "input_tokens: required integer is missing"),
    ({"output_tokens": True}, "output_tokens: expected an integer, got bool"),
    ({"input_cached_tokens": -1}, "input_cached_tokens: expected a count >= 0"),
    ({"input_cached_tokens": 4900}, "exceed input_tokens"),
    ({"model": 7}, "model: expected a string or null"),
    ({"batch": "false"}, "batch: expected a boolean or null"),
])
def test_wrong_shapes_name_their_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ShapeError, match=message) as info:
        run({**SPEC_EXAMPLE, **change})
    assert str(info.value).startswith("completions.data[0].results[0]")


COST_AT = Row(1_730_419_200, 86400, frozenset({"project_id", "line_item"}), "costs.data[0]", 0)


@pytest.mark.parametrize(("value", "expected"), [
    (Decimal("0.06"), "0.06"),  # a JSON number, decoded exactly
    (7, "7"),
    ("12.50", "12.50"),  # the live string quirk
    ("0.1739150000000000000000000000", "0.173915"),
    (Decimal("123456789.123456789123"), "123456789.123456789123"),  # more digits than a float holds
])
def test_cost_amounts_are_exact_decimals(value: Any, expected: str) -> None:
    row = {"object": "organization.costs.result", "amount": {"value": value, "currency": "usd"},
           "line_item": "Text tokens", "project_id": "proj_abc", "quantity": 10000, "quantity_unit": "tokens"}
    record = cost(row, COST_AT, Notes())
    assert record is not None
    assert record.amount == Decimal(expected) and record.currency == "USD"
    assert record.quantity == 10000 and record.quantity_unit == "tokens"
    assert record.dimensions == {"llm.cost.source": "reported"}


def test_a_json_number_body_decodes_to_decimal_without_a_float() -> None:
    body = json.loads('{"value": 0.1000000000000000055511151231257827}', parse_float=Decimal)
    assert decimal(body["value"], "v") == Decimal("0.1000000000000000055511151231257827")


@pytest.mark.parametrize(("amount", "message"), [
    ({"value": "abc", "currency": "usd"}, "amount.value: expected a number"),
    ({"value": "NaN", "currency": "usd"}, "expected a finite number"),
    ({"value": None, "currency": "usd"}, "amount.value: expected a number"),
    ({}, "amount.value: expected a number"),
    ({"value": "-1.00", "currency": "usd"}, "negative amount"),
    ({"value": "1.00"}, "amount.currency: required string"),
    ("1.00", "amount: expected an object"),
])
def test_bad_costs_are_rejected(amount: Any, message: str) -> None:
    row = {"object": "organization.costs.result", "amount": amount, "line_item": None, "project_id": None}
    with pytest.raises(ShapeError, match=message):
        cost(row, COST_AT, Notes())


def test_non_usd_is_kept_in_its_own_currency_and_noted() -> None:
    notes = Notes()
    row = {"object": "organization.costs.result", "amount": {"value": "3", "currency": "eur"},
           "line_item": None, "project_id": "proj_abc"}
    record = cost(row, COST_AT, notes)
    assert record is not None and record.currency == "EUR"
    assert notes.currencies == {"EUR"}


def test_a_cost_row_without_amount_is_skipped_and_counted() -> None:
    notes = Notes()
    assert cost({"object": "organization.costs.result", "line_item": None, "project_id": None}, COST_AT, notes) is None
    assert notes.costs_without_amount == 1
