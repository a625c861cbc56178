"""The fast read of usage rows (``reader.UsageReader``, ``Mapper.fast``) against the reference mapping it replaces.

The reference is the per-row loop the provider ran before: each row through the validating mapping
(``Mapper.row``) and the key check (``RowKeys.row``). For every row, valid or malformed, the fast reader must give
the same records (equal; compared in one canonical order, since the buckets it reads whole come out as
``UsageColumns`` blocks, group by group) and the same notes, or fail with the same ``ResponseShapeError``
message (which names the JSON path of the bad field). A seeded generator mixes valid rows with one mutation each
(wrong types, negatives, counts past 2^53 - 1, missing or unhashable group fields, repeated keys, oddities the
provider notes), placed after rows of the same group so that the fast path is the one that meets them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from otel_llm_receiver.errors import ResponseShapeError
from otel_llm_receiver.model import MAX_COUNT, UsageColumns, UsageRecord
from otel_llm_receiver.providers.openai.endpoints import ENDPOINTS_BY_NAME, UsageEndpoint
from otel_llm_receiver.providers.openai.fields import mapping
from otel_llm_receiver.providers.openai.keys import RowKeys
from otel_llm_receiver.providers.openai.normalize import Mapper, Notes, Row
from otel_llm_receiver.providers.openai.reader import UsageReader

HOUR = 3600
START = 1_767_225_600
COMPLETIONS = ENDPOINTS_BY_NAME["completions"]
GROUPED = ("project_id", "model", "batch")
Buckets = list[tuple[int, list[Any]]]

FULL: dict[str, Any] = {  # the 2026 shape, every field
    "object": "organization.usage.completions.result", "input_tokens": 5000, "input_cached_tokens": 1800,
    "input_cache_write_tokens": 200, "input_uncached_tokens": 3000, "output_tokens": 1000,
    "input_text_tokens": 2500, "output_text_tokens": 800, "input_cached_text_tokens": 1500,
    "input_audio_tokens": 300, "input_cached_audio_tokens": 100, "output_audio_tokens": 100,
    "input_image_tokens": 200, "input_cached_image_tokens": 200, "output_image_tokens": 100,
    "num_model_requests": 5, "project_id": "proj_abc", "user_id": None, "api_key_id": None,
    "model": "gpt-4o-mini", "batch": False, "service_tier": None,
}
LIVE_2025: dict[str, Any] = {  # the live January 2025 output: several fields absent
    "object": "organization.usage.completions.result", "input_tokens": 45949, "output_tokens": 282,
    "num_model_requests": 150, "project_id": "proj_abc", "user_id": None, "api_key_id": None,
    "model": "gpt-4o-mini", "batch": None, "input_cached_tokens": 1024, "input_audio_tokens": 0,
    "output_audio_tokens": 0,
}


def canonical(records: list[UsageRecord]) -> list[UsageRecord]:
    """Records in one order whatever order they were read in: by bucket, then identity (unique per bucket)."""
    return sorted(records, key=lambda r: (r.bucket_start, r.tenancy_id, r.model, r.operation,
                                          sorted(r.dimensions.items()), r.sparse))


def reference(mapper: Mapper, result_object: str, grouped: tuple[str, ...], buckets: Buckets
              ) -> tuple[list[UsageRecord], tuple[int, int]]:
    """The per-row loop the provider ran before the fast reader: every row through the validating mapping."""
    keys, notes, out = RowKeys(grouped), Notes(), []
    for i, (start, results) in enumerate(buckets):
        where = f"completions page 1.data[{i}]"
        keys.bucket(start, where)
        for j, row in enumerate(results):
            at = Row(start, HOUR, frozenset(grouped), where, j)
            if type(row) is not dict or row.get("object") != result_object:
                found = mapping(row, at.path).get("object")
                raise ResponseShapeError(f"{at.path}.object: expected {result_object!r}, got {found!r}")
            out.extend(mapper.row(row, at, notes))
            keys.row(start, row, at.path)
    return canonical(out), (notes.uncached_disagrees, notes.modality_unsplit)


def read(mapper: Mapper, result_object: str, grouped: tuple[str, ...], buckets: Buckets
         ) -> tuple[list[UsageRecord], list[UsageColumns], tuple[int, int]]:
    """What the reader hands over: records (rows read one by one), blocks (buckets read whole), notes."""
    notes, out = Notes(), []
    reader = UsageReader(mapper, result_object, grouped, HOUR, notes)
    for i, (start, results) in enumerate(buckets):
        reader.bucket(start, results, f"completions page 1.data[{i}]", out)
    return out, reader.blocks(), (notes.uncached_disagrees, notes.modality_unsplit)


def fast(mapper: Mapper, result_object: str, grouped: tuple[str, ...], buckets: Buckets
         ) -> tuple[list[UsageRecord], tuple[int, int]]:
    out, blocks, notes = read(mapper, result_object, grouped, buckets)
    return canonical(out + [r for block in blocks for r in block.records()]), notes


def outcome(read: Callable[..., Any], *args: Any) -> Any:
    """What a read gives: its records and notes, or the message of the shape error it raised."""
    try:
        return read(*args)
    except ResponseShapeError as exc:
        return f"rejected: {exc}"


def assert_same(endpoint: UsageEndpoint, grouped: tuple[str, ...], buckets: Buckets) -> Any:
    args = (endpoint.mapper, endpoint.result_object, grouped, copy.deepcopy(buckets))
    expected = outcome(reference, *args)
    found = outcome(fast, endpoint.mapper, endpoint.result_object, grouped, copy.deepcopy(buckets))
    assert found == expected
    return found


def counting(mapper: Mapper) -> tuple[Mapper, list[int]]:
    calls = [0]

    def row(*args: Any) -> list[UsageRecord]:
        calls[0] += 1
        return mapper.row(*args)

    return Mapper(row, mapper.fast, mapper.columns), calls


# -- equivalence on chosen rows --------------------------------------------------------------------------------------
def rows_of(row: Mapping[str, Any], groups: int = 3, hours: int = 3) -> Buckets:
    """``hours`` buckets of ``groups`` rows each, every row a copy of ``row`` in its own project."""
    return [(START + h * HOUR, [{**row, "project_id": f"proj_{g}", "output_tokens": row["output_tokens"] + h}
                                for g in range(groups)]) for h in range(hours)]


@pytest.mark.parametrize("row", [FULL, LIVE_2025], ids=["2026", "live-2025"])
def test_valid_rows_give_the_reference_records_and_take_the_fast_path(row: dict[str, Any]) -> None:
    buckets = rows_of(row, groups=3, hours=4)
    found = assert_same(COMPLETIONS, GROUPED, buckets)
    records_, _ = found
    assert len(records_) == 12 * (4 if row is FULL else 3)
    mapper, calls = counting(COMPLETIONS.mapper)
    out, blocks, _ = read(mapper, COMPLETIONS.result_object, GROUPED, buckets)
    # every bucket read whole (the first one's groups validated on the way), as one block per group and record
    assert calls[0] == 0 and out == []
    assert len(blocks) == 3 * (4 if row is FULL else 3)
    assert {tuple(b.starts) for b in blocks} == {tuple(START + h * HOUR for h in range(4))}


def test_a_bucket_that_mixes_null_and_counts_in_a_field_is_read_row_by_row_on_the_fast_path() -> None:
    buckets = rows_of(FULL, groups=3, hours=4)
    buckets[2][1][1].update(input_audio_tokens=None, input_cached_audio_tokens=None, output_audio_tokens=None)
    assert_same(COMPLETIONS, GROUPED, buckets)
    mapper, calls = counting(COMPLETIONS.mapper)
    out, blocks, _ = read(mapper, COMPLETIONS.result_object, GROUPED, buckets)
    assert calls[0] == 0  # every group known by then: Mapper.fast, not the reference
    assert {r.bucket_start for r in out} == {START + 2 * HOUR} and len(out) == 3 * 4 - 1  # no audio for one row
    assert {tuple(b.starts) for b in blocks} == {(START, START + HOUR, START + 3 * HOUR)}


@pytest.mark.parametrize("bad", [{"batch": "yes"}, {"input_tokens": -1}, {"input_uncached_tokens": 1}])
def test_a_new_group_met_in_a_later_bucket_is_read_as_the_reference_reads_it(bad: dict[str, Any]) -> None:
    # its group fields pass the bucket-wide type check (a string is a group value) and are validated on the way
    buckets = rows_of(FULL, groups=3, hours=3)
    buckets[1][1].insert(1, dict(FULL, project_id="proj_new", **bad))
    found = assert_same(COMPLETIONS, GROUPED, buckets)
    if "input_uncached_tokens" in bad:  # accepted, and noted
        assert found[1] == (1, 0)
    else:
        assert isinstance(found, str) and found.startswith("rejected: completions page 1.data[1].results[1].")


@pytest.mark.parametrize(("change", "noted"), [
    ({"input_uncached_tokens": 2999}, (1, 0)),  # disagrees: noted
    ({"output_audio_tokens": 5000}, (0, 1)),  # a modality over its total: counted as text, noted
    ({"input_cached_tokens": None, "input_uncached_tokens": None}, (0, 0)),
    ({"input_cache_write_tokens": None}, (1, 0)),  # input_uncached_tokens no longer adds up
    ({"input_image_tokens": None, "input_cached_image_tokens": None, "output_image_tokens": None}, (0, 0)),
    ({"input_audio_tokens": 0, "input_cached_audio_tokens": 0, "output_audio_tokens": 0}, (0, 0)),
    ({"num_model_requests": MAX_COUNT}, (0, 0)),  # the largest plausible count: kept
    ({"input_tokens": MAX_COUNT, "input_uncached_tokens": MAX_COUNT - 2000}, (0, 0)),
], ids=["uncached-disagrees", "modality-over", "no-cached", "no-cache-write", "no-image", "zero-audio",
        "max-requests", "max-input"])
def test_oddities_of_a_later_row_are_mapped_and_noted_as_the_reference_does(
    change: dict[str, Any], noted: tuple[int, int]
) -> None:
    buckets = rows_of(FULL, groups=2, hours=2)
    buckets[1][1][1].update(change)
    records_, notes = assert_same(COMPLETIONS, GROUPED, buckets)
    assert notes == noted and len(records_) >= 4 * 3


ROW = (1, 1)  # bucket 1, row 1: its group was met in bucket 0, so the fast path meets the mutation


@pytest.mark.parametrize(("change", "says"), [
    ({"input_tokens": "5000"}, "input_tokens: expected an integer, got str"),
    ({"input_tokens": None}, "input_tokens: required integer is missing"),
    ({"output_tokens": True}, "output_tokens: expected an integer, got bool"),
    ({"num_model_requests": 5.0}, "num_model_requests: expected an integer, got float"),
    ({"input_cached_tokens": -1}, "input_cached_tokens: expected a count >= 0"),
    ({"output_image_tokens": MAX_COUNT + 1}, "output_image_tokens: implausible count"),
    ({"num_model_requests": 2**62}, "num_model_requests: implausible count"),
    ({"input_cached_tokens": 4900}, "exceed input_tokens"),
    ({"batch": 0}, "batch: expected a string, boolean or null, got int"),  # == False, and hashes like it
    ({"batch": 1.0}, "batch: expected a boolean or null, got float"),
    ({"batch": "false"}, "batch: expected a boolean or null"),
    ({"model": ["gpt-4o-mini"]}, "model: expected a string or null"),  # unhashable
    ({"project_id": {"id": 1}}, "project_id: expected a string or null"),
    ({"object": "organization.usage.embeddings.result"}, "object: expected"),
], ids=lambda v: str(v)[:40])
def test_a_bad_field_of_a_later_row_is_rejected_naming_its_path(change: dict[str, Any], says: str) -> None:
    buckets = rows_of(FULL, groups=2, hours=2)
    buckets[ROW[0]][1][ROW[1]].update(change)
    found = assert_same(COMPLETIONS, GROUPED, buckets)
    assert isinstance(found, str) and says in found
    assert found.startswith("rejected: completions page 1.data[1].results[1]")


@pytest.mark.parametrize("shape", [FULL, LIVE_2025], ids=["2026", "live-2025"])
def test_cached_tokens_over_the_input_of_a_later_row_are_rejected(shape: dict[str, Any]) -> None:
    # without input_uncached_tokens (the live 2025 shape, or null) nothing else disagrees first
    buckets = rows_of(shape, groups=2, hours=2)
    buckets[1][1][1].update(input_cached_tokens=buckets[1][1][1]["input_tokens"] + 1, input_uncached_tokens=None)
    found = assert_same(COMPLETIONS, GROUPED, buckets)
    assert isinstance(found, str) and found.startswith("rejected: completions page 1.data[1].results[1]: ")
    assert "exceed input_tokens" in found


@pytest.mark.parametrize("field", ["project_id", "model", "batch"])
def test_a_later_row_lacking_a_grouped_field_is_rejected(field: str) -> None:
    buckets = rows_of(FULL, groups=2, hours=2)
    del buckets[1][1][1][field]
    found = assert_same(COMPLETIONS, GROUPED, buckets)
    assert found == f"rejected: completions page 1.data[1].results[1]: grouped by {field} but the row has no such field"


def test_a_repeated_key_in_a_bucket_is_rejected_and_the_same_key_in_another_bucket_is_not() -> None:
    buckets = rows_of(FULL, groups=2, hours=2)
    records_, _ = assert_same(COMPLETIONS, GROUPED, buckets)  # the same groups in two buckets: fine
    assert len(records_) == 16
    buckets[1][1].append(dict(buckets[1][1][0], input_tokens=9999))
    found = assert_same(COMPLETIONS, GROUPED, buckets)
    assert isinstance(found, str) and "a second row for the same group" in found and ".results[2]" in found


def test_a_repeated_bucket_is_rejected() -> None:
    buckets = rows_of(FULL, groups=2, hours=2)
    buckets.append(copy.deepcopy(buckets[0]))
    found = assert_same(COMPLETIONS, GROUPED, buckets)
    assert isinstance(found, str) and "appears twice" in found


def test_a_field_not_grouped_by_is_not_read_whatever_it_holds() -> None:
    # service_tier and user_id are not grouped by here: an unhashable value in them used to end the poll with
    # an unexpected TypeError (the group memo keyed on every group field), not a verdict on the response
    buckets = rows_of(FULL, groups=2, hours=2)
    buckets[0][1][0]["service_tier"] = ["default"]
    buckets[1][1][1]["user_id"] = {"id": "user_1"}
    records_, _ = assert_same(COMPLETIONS, GROUPED, buckets)
    assert len(records_) == 16


def test_not_grouped_by_project_the_project_is_still_validated() -> None:
    grouped = ("model", "batch")
    buckets = rows_of(FULL, groups=1, hours=3)
    records_, _ = assert_same(COMPLETIONS, grouped, buckets)
    assert {r.tenancy_id for r in records_} == {"all"}
    buckets[2][1][0]["project_id"] = 7
    found = assert_same(COMPLETIONS, grouped, buckets)
    assert isinstance(found, str) and "project_id: expected a string or null" in found


# -- the other usage types -------------------------------------------------------------------------------------------
OTHER_ROWS: dict[str, dict[str, Any]] = {
    "embeddings": {"input_tokens": 12, "num_model_requests": 2},
    "images": {"images": 3, "num_model_requests": 2, "size": "1024x1024", "source": "image.generation"},
    "vector_stores": {"usage_bytes": 123456},
    "code_interpreter_sessions": {"num_sessions": 4},
    "web_search_calls": {"num_requests": 7, "num_model_requests": 3},
}


@pytest.mark.parametrize("name", sorted(OTHER_ROWS))
def test_the_other_usage_types_match_the_reference_valid_or_not(name: str) -> None:
    endpoint = ENDPOINTS_BY_NAME[name]
    grouped = tuple(g for g in (*GROUPED, *endpoint.always_group) if g in endpoint.group_fields)
    base = {"object": endpoint.result_object, "project_id": "proj_a", "model": "m", "batch": None,
            **OTHER_ROWS[name]}
    buckets: Buckets = [(START + h * HOUR, [dict(base, project_id=f"proj_{g}") for g in range(2)]) for h in range(3)]
    records_, _ = assert_same(endpoint, grouped, buckets)
    assert len(records_) == 6
    for field in OTHER_ROWS[name]:
        for bad in ("1", -1, MAX_COUNT + 1, None, True, 1.5):
            mutated = copy.deepcopy(buckets)
            mutated[2][1][1][field] = bad
            found = assert_same(endpoint, grouped, mutated)
            if field not in ("size", "source"):
                assert isinstance(found, str) and found.startswith("rejected: ") and field in found


# -- seeded mixes ----------------------------------------------------------------------------------------------------
def _mutations(rng: random.Random, row: dict[str, Any]) -> None:
    """One change to ``row``: valid or not, the reference decides."""
    field = rng.choice(sorted(row))
    kind = rng.randrange(8)
    if kind == 0:
        del row[field]
    elif kind == 1:
        row[field] = rng.choice([None, True, False, 0, 1, 1.0, -1, "x", "", [], {}, MAX_COUNT, MAX_COUNT + 1, 2**64])
    elif kind == 2 and isinstance(row[field], int) and not isinstance(row[field], bool):
        row[field] = rng.randrange(0, 10_000)
    elif kind == 3:
        row["input_uncached_tokens"] = rng.randrange(0, 6000)
    elif kind == 4:
        row[rng.choice(["input_audio_tokens", "output_audio_tokens", "input_cached_image_tokens"])] = rng.randrange(
            0, 3000)
    elif kind == 5:
        row["batch"] = rng.choice([True, False, None])
    elif kind == 6:
        row["model"] = rng.choice(["gpt-4o-mini", "o3", None])
    else:
        row["project_id"] = rng.choice(["proj_0", "proj_1", None])


def test_seeded_mixes_of_valid_and_mutated_rows_read_like_the_reference() -> None:
    outcomes = {"accepted": 0, "rejected": 0}
    for seed in range(300):
        rng = random.Random(seed)
        buckets: Buckets = []
        for h in range(4):
            results: list[Any] = []
            for g in range(4):
                row = copy.deepcopy(rng.choice([FULL, LIVE_2025]))
                row["project_id"] = f"proj_{g % 2}"
                row["model"] = "gpt-4o-mini" if g < 2 else "o3"
                if h > 0 and rng.random() < 0.1:  # after the group's first rows: the fast path meets it first
                    _mutations(rng, row)
                results.append(row)
            buckets.append((START + h * HOUR, results))
        grouped = rng.choice([GROUPED, ("project_id", "model", "batch", "service_tier"), ("model", "project_id"),
                              ("model", "batch", "project_id")])
        found = assert_same(COMPLETIONS, grouped, buckets)
        outcomes["rejected" if isinstance(found, str) else "accepted"] += 1
    assert min(outcomes.values()) >= 50, outcomes  # both ways exercised
