"""The money signals on both ledger engines (SQLite and PostgreSQL): every gauge of a reading equals the
straightforward series-by-series computation (tests/support/signals_reference.py), on a seeded randomized ledger
with two provider instances, six budgets, attribution rules, scored anomalies and reported cost; and the same
``Signals`` object, reading again after each further poll (new hours, new series, a late restatement of an old
day's usage and reported cost, a rename), equals a fresh computation: what it keeps between reads (per-series
facts, per-cell sums, scores) never makes it differ.

Why both engines: the signals' SQL is translated for PostgreSQL (ledger/postgres/dialect.py), whose integer sums,
NULL handling and row order differ from SQLite's; the readings must be the same numbers, exponents and orders.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from decimal import Decimal

from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.signals import Signals
from tests.support.ledger_reads import _rows
from tests.support.signals_reference import ReferenceSignals
from tests.test_signals_fast import END, INSTANCES, D, H, _apply, _keys, _same, _signals

DAYS = 24


def _restate(writer: Ledger, rng: random.Random, keys: list[tuple[str, str, str, int]], day: int) -> None:
    """A late restatement of one settled day: every usage bucket of the openai keys that day and its reported
    cost get new values (the buckets are absolute, so the rollups move by the difference)."""
    usage = [
        UsageRecord(provider=p, model=m, operation="chat", tenancy_id=t, bucket_start=hour, bucket_width=H,
                    tokens={"input": rng.randint(1, 90_000), "output": rng.randint(1, 9_000)})
        for p, t, m, first in keys if p == "openai"
        for hour in range(max(day, first), day + D, 3 * H)
    ]
    costs = [CostRecord(provider="openai", tenancy_id=t, bucket_start=day, bucket_width=D,
                        amount=Decimal(rng.randint(1, 900_000)) / 10_000)
             for t in sorted({t for p, t, _, _ in keys if p == "openai"})]
    writer.apply(INSTANCES["openai"], PollResult(usage=usage, costs=costs), tenant="acme")


def _coarsen(writer: Ledger, keys: list[tuple[str, str, str, int]], start: int) -> None:
    """A bucket-width change that moves value between hours and changes no total: each openai key's hourly
    buckets of ``[start, start + 3h)`` re-reported as one 3-hour bucket of exactly their sum. The totals do not
    move, the hourly rollups do (everything lands in the first hour), and a reading kept from before must see it."""
    by_key: dict[tuple[str, str], dict[str, int]] = {}
    for metric, attrs, value in _rows(
        writer,
        "SELECT s.metric, s.attrs, sum(b.value) FROM buckets AS b JOIN series AS s ON s.id = b.series_id "
        "WHERE s.instance = ? AND s.metric = 'llm.usage.tokens' AND b.bucket_start >= ? AND b.bucket_start < ? "
        "GROUP BY s.id, s.metric, s.attrs", (INSTANCES["openai"], start, start + 3 * H),
    ):
        a = json.loads(attrs)
        assert metric == "llm.usage.tokens"
        by_key.setdefault((a["llm.tenancy.id"], a["gen_ai.request.model"]), {})[a["gen_ai.token.type"]] = int(value)
    assert by_key, "no hourly buckets to coarsen"
    usage = [
        UsageRecord(provider="openai", model=m, operation="chat", tenancy_id=t, bucket_start=start,
                    bucket_width=3 * H, tokens=by_key[(t, m)])
        for p, t, m, _ in keys if p == "openai" and (t, m) in by_key
    ]
    writer.apply(INSTANCES["openai"], PollResult(usage=usage), tenant="acme")


def test_signals_equal_the_reference_on_both_engines_as_polls_land(make_ledger: Callable[..., Ledger]) -> None:
    rng = random.Random(20)
    keys = _keys(rng, 12)
    writer = make_ledger()
    writer.set_pricer(PriceBook())
    _apply(writer, rng, END - DAYS * D, END, keys)
    reader = make_ledger(readonly=True)
    fast = _signals(Signals)
    now = END + 25 * 60
    first = fast.read(reader, now, peak_days=3)
    _same(first, _signals(ReferenceSignals).read(reader, now, peak_days=3))
    for signal in ("anomalies", "coverage", "reconciliation", "token_prices", "period_to_date", "peak"):
        assert getattr(first, signal), signal  # every kind of gauge is compared with values, not only absent
    assert any(b.spent and b.burn_rates["6h"] for b in first.budgets)
    more = _keys(rng, 3)
    polls: list[Callable[[], None]] = [
        # the next hours of every key, and new keys (new series) of both instances
        lambda: _apply(writer, rng, END, END + 3 * H, keys + more),
        # a late restatement of a settled day (its reconciliation, anomaly baselines and budgets' spend move)
        lambda: _restate(writer, rng, keys, END - 3 * D),
        # a bucket-width change in the hour of the last read: value moves between hours, no total moves
        lambda: _coarsen(writer, keys, END),
        # one instance only: its current hour for a few keys (the other instance's generation does not move)
        lambda: writer.apply(INSTANCES["anthropic"], PollResult(usage=[
            UsageRecord(provider=p, model=m, operation="chat", tenancy_id=t, bucket_start=END + 3 * H,
                        bucket_width=H, tokens={"input": 77_000, "output": 700})
            for p, t, m, _ in keys + more if p == "anthropic"]), tenant="default"),
        # a rename: teams and budget matches of that tenancy's series change
        lambda: writer.apply(INSTANCES["openai"], PollResult(names={("tenancy", "proj-03"): "Proj Four"}),
                             tenant="acme"),
    ]
    readings = [first]
    for step, poll in enumerate(polls):
        poll()
        at = now + (step + 1) * H // 2  # time moves too, within and across hours
        reading = fast.read(reader, at, peak_days=3)
        _same(reading, _signals(ReferenceSignals).read(reader, at, peak_days=3))
        _same(fast.read(reader, at, peak_days=3), reading)  # nothing landed: the kept reading is still right
        assert reading != readings[-1]
        readings.append(reading)
