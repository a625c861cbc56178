"""Usage handed over column-wise (``UsageColumns``) counts exactly what the same usage as records counts.

Why: the OpenAI provider hands most of a backfill to the ledger as blocks of columns, one per group and record
kind, instead of a ``UsageRecord`` per row and kind; the planner turns a block's columns into points without
looking at a row on its own (``PointPlanner._column``). Randomized polls (fixed seeds) of every record feature the
planner reads (token types present or not, requests, measures, sparse zeros of new and of known series, parts of
one bucket, dimensions, tenants, widths, buckets before the pruned horizon) are applied as records under one
instance and as a random mix of records and blocks under another, on both engines: the two instances must end
with the same series, totals, buckets, rollups and pricing, and every poll must report the same outcomes.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.ledger.planner import PointPlanner
from otel_llm_receiver.model import PollResult, UsageColumns, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.series import SeriesKeys

H = 3600
MAR = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp())
NOW_NS = (MAR + 30 * 86400) * 10**9
TOKEN_SETS = (("input", "output"), ("input", "output", "cache_read"), ("input", "output", "cache_read",
              "cache_write"), ("input",), ("input", "cache_read", "output"))  # the last: another order
DIMS = ({}, {"llm.token.modality": "text"}, {"llm.token.modality": "audio"}, {"llm.batch": "true"})


def _book() -> PriceBook:
    config = parse_config({"providers": {"demo": {}}, "pricing": {"genai_prices": False, "overrides": [
        {"provider": "acme", "model": "acme-*", "prices": {"input": "2", "output": "8", "cache_read": "0.5"}},
    ]}})
    return PriceBook(config.pricing.entries, use_genai_prices=False)


def _random_poll(rng: random.Random) -> list[UsageRecord]:
    """Records over a day around MAR, a few identities with many buckets each (as a provider's groups are)."""

    def value() -> int:
        return rng.choice([0, 0, rng.randint(1, 5_000), rng.randint(1, 10**9)])

    out: list[UsageRecord] = []
    for _ in range(rng.randint(1, 8)):
        provider, model = rng.choice([("acme", "acme-1"), ("acme", "acme-2"), ("zeta", "z-1")])
        tenancy, tenant = f"t{rng.randint(1, 3)}", rng.choice([None, None, "other"])
        width = rng.choice([H, H, H, 1800, 86400])
        dims = rng.choice(DIMS)
        sparse = rng.random() < 0.3
        types = rng.choice(TOKEN_SETS)
        requests = rng.random() < 0.5
        measures = ("llm.usage.images",) if rng.random() < 0.2 else ()
        for _ in range(rng.randint(1, 30)):
            start = MAR + rng.randint(-20, 20) * H
            start -= start % width
            out.append(UsageRecord(
                provider, model, "chat", tenancy, start, width, {t: value() for t in types},
                value() if requests else None, tenant, dims, {m: value() for m in measures}, sparse,
            ))
    rng.shuffle(out)
    return out


def _as_columns(rng: random.Random, records: list[UsageRecord]) -> PollResult:
    """The same usage, part as records and the rest as blocks (a block per identity and record shape, cut at
    random), in a random order."""
    kept: list[UsageRecord] = []
    groups: dict[tuple[Any, ...], list[UsageRecord]] = {}
    for r in records:
        if rng.random() < 0.15:
            kept.append(r)
            continue
        shape = (r.provider, r.model, r.operation, r.tenancy_id, r.bucket_width, r.tenant,
                 tuple(r.dimensions.items()), r.sparse, tuple(r.tokens), r.requests is None, tuple(r.measures))
        groups.setdefault(shape, []).append(r)
    blocks: list[UsageColumns] = []
    for rows in groups.values():
        while rows:
            cut = rng.randint(1, len(rows))
            part, rows = rows[:cut], rows[cut:]
            first = part[0]
            blocks.append(UsageColumns(
                first.provider, first.model, first.operation, first.tenancy_id, first.bucket_width,
                [r.bucket_start for r in part], {t: tuple(r.tokens[t] for r in part) for t in first.tokens},
                None if first.requests is None else [r.requests for r in part if r.requests is not None],
                first.tenant, first.dimensions, {m: [r.measures[m] for r in part] for m in first.measures},
                first.sparse,
            ))
    rng.shuffle(blocks)
    return PollResult(usage=kept, usage_columns=blocks)


def _contents(ledger: Ledger, instance: str) -> dict[str, object]:
    """Everything an apply writes for ``instance``, by series key (not id); rollups that add up to zero left out."""
    conn = ledger._conn
    keys = {sid: (metric, attrs) for sid, metric, attrs in conn.execute(
        "SELECT id, metric, attrs FROM series WHERE instance = ?", (instance,))}
    return {
        "series": {(m, a): rest for m, a, *rest in conn.execute(
            "SELECT metric, attrs, total, adjustments, sub_total, sub_adjustments, bucket_width "
            "FROM series WHERE instance = ?", (instance,))},
        "buckets": {(keys[s], b, w): v for s, b, w, v in conn.execute("SELECT * FROM buckets") if s in keys},
        "rollups": {(keys[s], h): v for s, h, v in conn.execute("SELECT * FROM rollups") if s in keys and v != 0},
        "pricing": {(keys[s], f): (u, p, sc) for s, f, u, _, p, sc in conn.execute("SELECT * FROM pricing")
                    if s in keys},
    }


def test_a_block_stands_for_its_records_and_refuses_ragged_columns() -> None:
    block = UsageColumns("openai", "gpt-4o", "chat", "proj", H, [0, H], {"input": [1, 2], "output": (3, 4)},
                         [5, 6], None, {"llm.batch": "false"}, {"llm.usage.images": [0, 7]}, True)
    assert list(block.records()) == [
        UsageRecord("openai", "gpt-4o", "chat", "proj", 0, H, {"input": 1, "output": 3}, 5, None,
                    {"llm.batch": "false"}, {"llm.usage.images": 0}, True),
        UsageRecord("openai", "gpt-4o", "chat", "proj", H, H, {"input": 2, "output": 4}, 6, None,
                    {"llm.batch": "false"}, {"llm.usage.images": 7}, True),
    ]
    result = PollResult(usage=[next(block.records())], usage_columns=[block])
    assert result.usage_count == 3 and len(list(result.usage_records())) == 3
    assert result.newest_bucket_end == 2 * H
    with pytest.raises(ValueError, match="another length"):
        UsageColumns("openai", "m", "chat", "p", H, [0, H], {"input": [1]})
    with pytest.raises(ValueError, match="another length"):
        UsageColumns("openai", "m", "chat", "p", H, [0], requests=[1, 2])


@pytest.mark.parametrize("seed", range(6))
def test_the_planner_gives_blocks_the_points_of_their_records(seed: int) -> None:
    rng = random.Random(seed)
    records = [r for poll in range(3) for r in _random_poll(rng)]
    horizon = MAR - 10 * H
    known = {key: 10 + i for i, key in enumerate(rng.sample(_all_keys(records), 5))}  # a few series known

    def plan(result: PollResult) -> tuple[Counter[tuple[Any, ...]], PointPlanner]:
        planner = PointPlanner(SeriesKeys(), known, "default", horizon, 1000, slice_points=rng.randint(1, 50))
        points = [p for rows in planner.slices(result) for p in rows]
        key_of = {sid: key for key, sid in [*known.items(), *planner.new_ids.items()]}
        assert sorted(planner.new_ids.values()) == list(range(1000, 1000 + len(planner.new_ids)))
        return Counter((key_of[sid], s, w, v) for sid, s, w, v in points), planner

    expected, by_records = plan(PollResult(usage=records))
    found, by_columns = plan(_as_columns(rng, records))
    assert found == expected
    assert set(by_columns.new_ids) == set(by_records.new_ids)
    assert (by_columns.rejected, by_columns.min_width) == (by_records.rejected, by_records.min_width)
    assert by_records.rejected > 0 and expected  # some points were before the horizon, many after


def _all_keys(records: list[UsageRecord]) -> list[tuple[str, str]]:
    planner = PointPlanner(SeriesKeys(), {}, "default", 0, 1)
    for _ in planner.slices(PollResult(usage=records)):
        pass
    return sorted(planner.new_ids)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_records_and_columns_end_with_the_same_ledger(seed: int, make_ledger: Callable[..., Ledger]) -> None:
    rng = random.Random(seed)
    ledger = make_ledger()
    ledger.set_pricer(_book(), now_ns=NOW_NS)
    outcomes: Counter[str] = Counter()
    for poll in range(6):
        records = _random_poll(rng)
        prune = MAR - 12 * H if poll == 4 else None
        a = ledger.apply("records", PollResult(usage=records), now_ns=NOW_NS + poll, prune_before=prune)
        b = ledger.apply("columns", _as_columns(rng, records), now_ns=NOW_NS + poll, prune_before=prune)
        assert (a.outcomes, a.series_created) == (b.outcomes, b.series_created)
        outcomes += a.outcomes
    assert _contents(ledger, "columns") == _contents(ledger, "records")
    # the polls did exercise it all: new series, growth, shrinks, re-reads, buckets past the pruned horizon
    assert {"new", "grown", "shrunk", "unchanged", "rejected"} <= set(outcomes), outcomes
