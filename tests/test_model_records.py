"""``model.usage_record``, the hot-path builder of ``UsageRecord``, against the constructor it stands in for.

The builder sets the record's slots directly; it is only right while it makes exactly the object the dataclass's
own ``__init__`` makes. Randomized records (fixed seed) of every field kind are built both ways and compared by
type, equality, hash-relevant fields, repr, pickling and immutability.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
from typing import Any

import pytest

from otel_llm_receiver.model import USAGE_RECORD_FIELDS, UsageRecord, usage_record


def random_args(rng: random.Random) -> tuple[Any, ...]:
    def maybe(value: Any) -> Any:
        return value if rng.random() < 0.7 else None

    tokens = {t: rng.randrange(0, 2**53) for t in rng.sample(["input", "cache_read", "cache_write", "output"],
                                                             rng.randrange(0, 5))}
    dims = {f"llm.d{i}": rng.choice(["a", "b", "ü", ""]) for i in range(rng.randrange(0, 3))}
    measures = {"llm.usage.images": rng.randrange(0, 100)} if rng.random() < 0.3 else {}
    return (rng.choice(["openai", "anthropic"]), rng.choice(["gpt-4o", "", "o3"]), rng.choice(["chat", ""]),
            rng.choice(["proj_a", "all", "unknown"]), rng.randrange(-2**40, 2**40), rng.choice([60, 3600, 86400]),
            tokens, maybe(rng.randrange(0, 1000)), maybe(rng.choice(["acme", "t"])), dims, measures,
            rng.random() < 0.5)


def test_fields_are_the_builders_parameters() -> None:
    assert tuple(f.name for f in dataclasses.fields(UsageRecord)) == USAGE_RECORD_FIELDS
    assert usage_record.__code__.co_varnames[:len(USAGE_RECORD_FIELDS)] == USAGE_RECORD_FIELDS


@pytest.mark.parametrize("seed", range(5))
def test_built_records_are_the_constructors(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        args = random_args(rng)
        built, constructed = usage_record(*args), UsageRecord(*args)
        assert type(built) is UsageRecord
        assert built == constructed and hash(repr(built)) == hash(repr(constructed))
        assert dataclasses.astuple(built) == dataclasses.astuple(constructed) == args
        assert pickle.loads(pickle.dumps(built)) == constructed
        assert dataclasses.replace(built, model="other") == dataclasses.replace(constructed, model="other")


def test_built_records_stay_frozen() -> None:
    record = usage_record(*random_args(random.Random(7)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.model = "other"  # type: ignore[misc]
