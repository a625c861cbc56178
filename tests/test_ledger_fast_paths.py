"""The apply's shortcuts count exactly what its general path counts, on randomized polls (fixed seeds).

Why: ranges of series a poll creates go from ``staged`` straight to buckets, totals, rollups and pricing, and
changed hourly points from ``incoming`` straight to them, skipping the ``deltas`` table the general path groups
per series and hour. ``LedgerWriter.fast_paths = False`` makes every range take the general path (here on
SQLite; the shortcuts run on both engines); both ledgers get the same polls and must end with the same series totals (and sub-unit remainders), buckets, refined
regions, rollups and pricing schedules, and report the same outcomes for every poll. The planner's points are
also compared with a plain record-by-record mapping through ``SeriesKeys``.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.ledger.planner import PointPlanner
from otel_llm_receiver.model import TOKEN_TYPES, PollResult, UsageColumns, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.series import SeriesKey, SeriesKeys, usage_ident

H = 3600
MAR = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp())
NOW_NS = (MAR + 30 * 86400) * 10**9


def _book() -> PriceBook:
    """Priced acme models with a price change at MAR (two periods per series), and an unpriced provider."""
    config = parse_config({"providers": {"demo": {}}, "pricing": {"genai_prices": False, "overrides": [
        {"provider": "acme", "model": "acme-*", "prices": {"input": "2", "output": "8", "cache_read": "0.5"}},
        {"provider": "acme", "model": "acme-*", "effective_from": "2026-03-01",
         "prices": {"input": "1", "output": "7.5", "cache_read": "0.25"}},
    ]}})
    return PriceBook(config.pricing.entries, use_genai_prices=False)


def _random_poll(rng: random.Random, poll: int, *, hourly: bool = False) -> list[UsageRecord]:
    """Records over a dozen hours around MAR: new and known series, parts of one bucket, grown, shrunk and
    unchanged buckets, zeros (sparse or not), and in some polls sub-hour or wider buckets (width changes).

    ``hourly``: every bucket an hour on the hour and a new model in every poll. Each new acme series prices
    into an estimated-cost series of its own, created with it; zeta series, in odd polls only, into an unpriced
    series they share, as do acme's cache writes (no price): in odd polls only; in even ones every new series'
    target is its own."""
    widths = [H] * 6 + ([1800, 7200] if poll % 3 == 2 and not hourly else [])
    models = [("acme", "acme-1"), ("acme", "acme-2"), ("zeta", "z-1")]
    if hourly:
        models = [("acme", "acme-1"), ("acme", "acme-2"), ("acme", f"acme-p{poll}")]
        models += [("zeta", "z-1"), ("zeta", f"z-p{poll % 4}")] if poll % 2 else []
    token_types = [t for t in TOKEN_TYPES if not hourly or poll % 2 or t != "cache_write"]
    out: list[UsageRecord] = []
    for _ in range(rng.randint(5, 60)):
        provider, model = rng.choice(models)
        width = rng.choice(widths)
        start = MAR + rng.randint(-8, 8) * H
        start -= start % width
        tokens: dict[str, int] = {t: rng.choice([0, rng.randint(1, 5_000), rng.randint(1, 5_000_000)])
                  for t in rng.sample(token_types, rng.randint(1, len(token_types)))}
        out.append(UsageRecord(
            provider, model, "chat", f"t{rng.randint(1, 2 + poll)}", start, width, tokens,
            requests=rng.choice([None, 0, rng.randint(1, 50)]), sparse=rng.random() < 0.2,
        ))
        if rng.random() < 0.1:  # a second part of the same bucket
            out.append(UsageRecord(provider, model, "chat", out[-1].tenancy_id, start, width,
                                   {"input": rng.randint(0, 100)}))
    return out


def _contents(ledger: Ledger) -> dict[str, object]:
    """Everything an apply writes, by series key (not id), rollups without rows that add up to zero."""
    conn = ledger._conn
    keys = {sid: (metric, attrs) for sid, metric, attrs in conn.execute("SELECT id, metric, attrs FROM series")}
    return {
        "series": {(m, a): rest for m, a, *rest in conn.execute(
            "SELECT metric, attrs, total, adjustments, sub_total, sub_adjustments, bucket_width, start_time_ns, "
            "updated_ns FROM series")},
        "buckets": {(keys[s], b, w): v for s, b, w, v in conn.execute("SELECT * FROM buckets")},
        "refined": {(keys[s], b, w): v for s, b, w, v in conn.execute("SELECT * FROM refined")},
        "rollups": {(keys[s], h): v for s, h, v in conn.execute("SELECT * FROM rollups") if v != 0},
        "pricing": {(keys[s], f): (u, keys[t], p, sc) for s, f, u, t, p, sc in conn.execute("SELECT * FROM pricing")},
    }


@pytest.mark.parametrize(("seed", "hourly"), [(1, False), (2, False), (3, False), (4, False), (7, True), (8, True)])
def test_the_shortcuts_count_what_the_general_path_counts(
    tmp_path: Path, seed: int, hourly: bool, make_ledger: Callable[..., Ledger]
) -> None:
    """The shortcuts on each engine, against the general path on SQLite. ``hourly`` polls take PostgreSQL's
    plain inserts for new series (buckets, rollups and, where each target is the series' own, priced rollups)."""
    rng = random.Random(seed)
    fast = make_ledger()
    with Ledger(tmp_path / "general.db") as general:
        general.fast_paths = False
        for ledger in (fast, general):
            ledger.set_pricer(_book(), now_ns=NOW_NS)
        outcomes: Counter[str] = Counter()
        for poll in range(8):
            result = PollResult(usage=_random_poll(rng, poll, hourly=hourly))
            prune = MAR - 6 * H if poll == 6 else None
            a = fast.apply("acme", result, now_ns=NOW_NS + poll, prune_before=prune)
            b = general.apply("acme", result, now_ns=NOW_NS + poll, prune_before=prune)
            assert (a.outcomes, a.series_created) == (b.outcomes, b.series_created)
            assert _contents(fast) == _contents(general)
            outcomes += a.outcomes
    # The polls did exercise what the shortcuts skip: new series, growth, shrinks, untouched re-reads.
    assert {"new", "grown", "shrunk", "unchanged"} <= set(outcomes)


def _plain_points(records: list[UsageRecord], keys: SeriesKeys) -> Counter[tuple[SeriesKey, int, int, int]]:
    """Each record's points by series key, the obvious way: every token type, then requests; a sparse record's
    zero makes a point only for a series the ledger has (here: none, not even one an earlier point created)."""
    out: Counter[tuple[SeriesKey, int, int, int]] = Counter()
    for r in records:
        usage_keys = keys.usage(usage_ident(r, "default"))
        found = [(key, r.tokens[t]) for t, key in usage_keys.tokens if t in r.tokens]
        if r.requests is not None:
            found.append((usage_keys.requests, r.requests))
        for key, value in found:
            if value or not r.sparse:
                out[(key, r.bucket_start, r.bucket_width, value)] += 1
    return out


@pytest.mark.parametrize("seed", [5, 6])
def test_the_planner_gives_each_record_its_points_and_new_ids_in_first_seen_order(seed: int) -> None:
    rng = random.Random(seed)
    records = [r for poll in range(3) for r in _random_poll(rng, poll)]
    keys = SeriesKeys()
    planner = PointPlanner(keys, {}, "default", 0, 1000, slice_points=17)
    points = [p for rows in planner.slices(PollResult(usage=records)) for p in rows]
    key_of = {sid: key for key, sid in planner.new_ids.items()}
    assert sorted(planner.new_ids.values()) == list(range(1000, 1000 + len(planner.new_ids)))
    assert Counter((key_of[sid], s, w, v) for sid, s, w, v in points) == _plain_points(records, SeriesKeys())
    first_seen = list(dict.fromkeys(key_of[sid] for sid, _, _, _ in points))
    assert first_seen == list(planner.new_ids)
    assert planner.min_width == min(H, *(r.bucket_width for r in records)) == 1800  # sub-hour: grouped paths


def _planned(result: PollResult) -> tuple[PointPlanner, list[tuple[int, int, int, int]]]:
    planner = PointPlanner(SeriesKeys(), {}, "default", 0, 1, slice_points=23)
    return planner, [p for rows in planner.slices(result) for p in rows]


def _keys_distinct(points: list[tuple[int, int, int, int]]) -> bool:
    return len({(sid, start, width) for sid, start, width, _ in points}) == len(points)


@pytest.mark.parametrize("seed", [5, 6, 9])
def test_the_planner_says_distinct_only_where_no_two_points_share_a_key(seed: int) -> None:
    """``PointPlanner.distinct`` lets PostgreSQL stage a poll's points without summing parts of one bucket: it
    must never be True for a poll where two points share a key (their parts would be counted as two buckets),
    and it is True for the usual poll, each identity's records in increasing bucket starts."""
    rng = random.Random(seed)
    for poll in range(6):
        records = _random_poll(rng, poll)
        planner, points = _planned(PollResult(usage=records))
        assert _keys_distinct(points) or not planner.distinct
        # The same records, one per identity and start, in start order: as providers report them.
        firsts = {(r.provider, r.model, r.tenancy_id, r.bucket_start): r for r in reversed(records)}
        ordered = sorted(firsts.values(), key=lambda r: r.bucket_start)
        planner, points = _planned(PollResult(usage=ordered))
        assert planner.distinct and _keys_distinct(points)
        # Column-wise, the same: a block per identity, rows in start order.
        blocks = [UsageColumns(r.provider, r.model, r.operation, r.tenancy_id, r.bucket_width, [r.bucket_start],
                               {t: [v] for t, v in r.tokens.items()}) for r in ordered]
        planner, points = _planned(PollResult(usage_columns=blocks))
        assert planner.distinct and _keys_distinct(points)


def test_two_identities_of_one_series_or_an_identity_going_back_are_not_distinct() -> None:
    """A dimension naming a series attribute makes two identities one series: their points of one bucket share a
    key although neither identity repeats a start. A start at or before one the identity had may repeat a key."""
    a = UsageRecord("acme", "m1", "chat", "t1", MAR, H, {"input": 5})
    b = UsageRecord("acme", "", "chat", "t1", MAR, H, {"input": 7}, dimensions={"gen_ai.request.model": "m1"})
    planner, points = _planned(PollResult(usage=[a, b]))
    assert not _keys_distinct(points) and not planner.distinct
    later = UsageRecord("acme", "m1", "chat", "t1", MAR + H, H, {"input": 1})
    assert _planned(PollResult(usage=[a, later]))[0].distinct
    assert not _planned(PollResult(usage=[later, a]))[0].distinct
    block = UsageColumns("acme", "m1", "chat", "t1", H, [MAR - H, MAR], {"input": [1, 2]})
    assert _planned(PollResult(usage=[a], usage_columns=[block]))[0].distinct is False
    assert _planned(PollResult(usage_columns=[block]))[0].distinct
    assert not _planned(PollResult(usage_columns=[replace(block, starts=[MAR, MAR])]))[0].distinct
    unchecked = PointPlanner(SeriesKeys(), {}, "default", 0, 1, check_distinct=False)  # SQLite: no use for it
    assert list(unchecked.slices(PollResult(usage=[a, later]))) and not unchecked.distinct
