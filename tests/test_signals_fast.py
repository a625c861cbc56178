"""The money signals' fast path (facts kept per series id, money added up per cell as integers, rollups read
only for groups that can be scored) against the straightforward series-by-series computation
(tests/support/signals_reference.py) on randomized ledgers: a wrong grouping, a lost series, a window summed
over the wrong hours or a stale cached fact changes a number, an exponent or an order, and the ``repr`` of the
whole reading with it.

The same ``Signals`` object reads again as time moves with no new data (across an hour, a UTC day and a month
boundary, the anomaly hour and the burn windows moving) and after new data, new series and renamed tenancies
land: what it keeps by id must never make it differ from a fresh straightforward reading.
"""

from __future__ import annotations

import calendar
import random
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.attribution import Attributor
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.signals import Signals, SignalsReading
from tests.support.signals_reference import ReferenceSignals

H = 3600
D = 86400
#: The data end two hours before 1 March 2027 (UTC): readings cross the day and the month boundary.
MONTH = calendar.timegm((2027, 3, 1, 0, 0, 0))
END = MONTH - 2 * H
DAYS = 25
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "claude-sonnet-4", "some-unpriced-model")
INSTANCES = {"openai": "openai", "anthropic": "anthropic"}  # instance names: the config's provider keys

CONFIG = {
    "providers": {
        "openai": {"admin_key": "k", "labels": {"cost_center": "cc-1"}},
        "anthropic": {"admin_key": "k"},
    },
    "budgets": [
        {"name": "org-month", "amount": 1000, "period": "month", "source": "best"},
        {"name": "openai-quarter", "amount": 5000, "period": "quarter", "timezone": "Europe/Berlin",
         "source": "best", "match": {"provider": "openai"}},
        {"name": "team-day", "amount": 50, "period": "day", "source": "estimated", "match": {"team": "t1"}},
        {"name": "reported-week", "amount": 300, "period": "week", "source": "reported",
         "match": {"tenancy": "Proj*"}},
        {"name": "minis", "amount": 20, "period": "day", "source": "best", "match": {"model": "*-mini"}},
        {"name": "cc", "amount": 70, "period": "month", "source": "estimated", "match": {"labels": {"cost_center": "cc-1"}}},
    ],
    "attribution": {"rules": [
        {"tenancy_regex": "proj-0[0-2]", "team": "t1"},
        {"tenancy": "Proj Four", "team": "t2"},
        {"model": "claude-*", "team": "t3"},
        {"model": "gpt-4o", "team": "t4"},  # teams differ inside a tenancy, with the same budget matches
    ]},
}


def _signals(cls: type[Signals] | type[ReferenceSignals]) -> Signals | ReferenceSignals:
    config = parse_config(CONFIG)
    labels = {p.name: dict(p.labels) for p in config.providers}
    return cls(config.budgets, Attributor(config.attribution.rules), PriceBook(), labels)


def _apply(ledger: Ledger, rng: random.Random, start: int, end: int, keys: list[tuple[str, str, str, int]]) -> None:
    """Hourly usage of every (provider, tenancy, model, first hour) key in ``[start, end)`` with gaps and
    spikes, and daily reported cost per tenancy (USD, some EUR), one apply per provider instance and day."""
    for day in range(start // D * D, end, D):
        for provider, instance in INSTANCES.items():
            usage = []
            for p, tenancy, model, first in keys:
                if p != provider:
                    continue
                for hour in range(max(day, start, first), min(day + D, end), H):
                    if rng.random() < 0.15:
                        continue  # no usage that hour
                    level = rng.randint(1, 5_000) * (40 if rng.random() < 0.02 else 1)
                    usage.append(UsageRecord(
                        provider=provider, model=model, operation="chat", tenancy_id=tenancy, bucket_start=hour,
                        bucket_width=H, tokens={"input": level * 10, "output": level},
                    ))
            costs = [
                CostRecord(provider=provider, tenancy_id=tenancy, bucket_start=day, bucket_width=D,
                           amount=Decimal(rng.randint(0, 900_000)) / 10_000, currency="EUR" if n % 4 == 3 else "USD")
                for n, tenancy in enumerate(sorted({t for p, t, _, _ in keys if p == provider}))
                if rng.random() < 0.9  # the newest day's bucket is still filling in: best mixes the sources
            ]
            names = {("tenancy", "proj-04"): "Proj Four", ("tenancy", "proj-01"): "Proj One"}
            ledger.apply(instance, PollResult(usage=usage, costs=costs, names=names),
                         tenant="acme" if provider == "openai" else "default")


def _keys(rng: random.Random, n: int) -> list[tuple[str, str, str, int]]:
    out = []
    for _ in range(n):
        model = rng.choice(MODELS)
        provider = "anthropic" if model.startswith("claude") else "openai"
        # most keys have weeks of history (scored by week), some days (scored by day), some none yet
        first = END - rng.choice((DAYS * D, DAYS * D, 10 * D, 3 * D)) + rng.randrange(0, 24) * H
        out.append((provider, f"proj-{rng.randrange(6):02d}", model, first // H * H))
    return out


def _same(fast: SignalsReading, reference: SignalsReading) -> None:
    assert fast == reference
    assert repr(fast) == repr(reference)  # Decimal exponents and list orders too


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_signals_equal_the_straightforward_ones_as_time_and_data_move(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    keys = _keys(rng, 14)
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        writer.set_pricer(PriceBook())
        _apply(writer, rng, END - DAYS * D, END, keys)
    fast = _signals(Signals)
    # A reference that lived through the same reads: it keeps the scores of settled hours (older than a day) for
    # its life. While no data lands they are right; after data lands, the fast path re-scores (its scores are
    # kept per ledger generation) and is compared with a fresh reference.
    lived = _signals(ReferenceSignals)
    nows = [END + 30 * 60, END + H + 7 * 60, END + 2 * H + 1, END + 2 * H + 6 * 60, END + 5 * H, END + D + 3 * H]
    with Ledger(path, readonly=True) as ledger:
        readings = []
        for now in nows:  # time moves, no new data: the day and month start, windows and the anomaly hour move
            readings.append(fast.read(ledger, now, peak_days=7))
            _same(readings[-1], _signals(ReferenceSignals).read(ledger, now, peak_days=7))
            _same(readings[-1], lived.read(ledger, now, peak_days=7))
    # The comparison covered every kind of signal, with values, not only their absence.
    for signal in ("anomalies", "coverage", "reconciliation", "token_prices", "period_to_date", "peak"):
        assert any(getattr(r, signal) for r in readings), signal
    assert any(b.spent and b.burn_rates["1h"] for r in readings for b in r.budgets)
    assert {r.period_to_date[0][0]["llm.period"] for r in readings} == {"day"}
    assert sum(usd for a, usd in readings[0].period_to_date if a["llm.period"] == "month") > 0
    assert sum(usd for a, usd in readings[-1].period_to_date if a["llm.period"] == "month") == 0  # March
    # New data: more hours, new series (new keys), a tenancy renamed (its team and budget matches change).
    more = _keys(rng, 4)
    with Ledger(path) as writer:
        writer.set_pricer(PriceBook())
        _apply(writer, rng, END, END + D, keys + more)
        writer.apply("openai", PollResult(names={("tenancy", "proj-02"): "Proj Four"}), tenant="acme")
    with Ledger(path, readonly=True) as ledger:
        for now in (END + D + 30 * 60, END + D + 2 * H):
            reading = fast.read(ledger, now, peak_days=2)
            _same(reading, _signals(ReferenceSignals).read(ledger, now, peak_days=2))
            _same(replace(reading, peak=None), replace(lived.read(ledger, now), peak=None))


def test_an_anomaly_hour_of_the_past_and_a_young_ledger(tmp_path: Path) -> None:
    """Scores of chosen hours (``report``'s) and a ledger whose series have no baseline yet (no rollup read)."""
    rng = random.Random(7)
    path = tmp_path / "ledger.db"
    keys = _keys(rng, 10)
    with Ledger(path) as writer:
        writer.set_pricer(PriceBook())
        _apply(writer, rng, END - DAYS * D, END, keys)
    fast, reference = _signals(Signals), _signals(ReferenceSignals)
    with Ledger(path, readonly=True) as ledger:
        for hour in (END - 3 * H, END - 4 * D, END - 12 * D - 5 * H):
            a, b = fast.anomalies(ledger, hour), reference.anomalies(ledger, hour)
            assert repr(a) == repr(b)
        week_fast = fast.anomalies_between(ledger, END - 2 * D, END)
        assert week_fast and repr(week_fast) == repr(reference.anomalies_between(ledger, END - 2 * D, END))
    young = tmp_path / "young.db"
    with Ledger(young) as writer:
        writer.set_pricer(PriceBook())
        _apply(writer, rng, END - 2 * D, END, [(p, t, m, END - 2 * D) for p, t, m, _ in keys])
    with Ledger(young, readonly=True) as ledger:
        reading = fast.read(ledger, END + H)
        assert reading.anomalies == [] and reading.budgets
        _same(reading, reference.read(ledger, END + H))


@pytest.mark.parametrize("seed", [11, 12])
def test_late_data_between_reads_at_the_same_time_is_seen(tmp_path: Path, seed: int) -> None:
    """Readings kept while the ledger is unchanged (same ``now``, same hour grid) must follow late data: rows for
    an hour two days back (a settled anomaly hour), for the current hour, a rename and a rollup prune, each
    landing between two reads at the same instant, are in the next reading exactly as a fresh reference reads."""
    rng = random.Random(seed)
    keys = _keys(rng, 10)
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        writer.set_pricer(PriceBook())
        _apply(writer, rng, END - DAYS * D, END, keys)
    fast = _signals(Signals)
    now = END + 20 * 60
    late_hour = END - 2 * D + 5 * H
    with Ledger(path, readonly=True) as ledger, Ledger(path) as writer:
        writer.set_pricer(PriceBook())
        first = fast.read(ledger, now, peak_days=7)
        _same(first, _signals(ReferenceSignals).read(ledger, now, peak_days=7))
        _same(fast.read(ledger, now, peak_days=7), first)  # unchanged: kept, and still right
        old_scores = repr(fast.anomalies(ledger, late_hour))
        steps = [
            # a spike arriving late for a settled hour, for every key that has data then
            [UsageRecord(provider=p, model=m, operation="chat", tenancy_id=t, bucket_start=late_hour,
                         bucket_width=H, tokens={"input": 9_000_000, "output": 900_000})
             for p, t, m, first_hour in keys if first_hour <= late_hour and p == "openai"],
            # usage of the hour still filling in (budgets' "spent", period to date)
            [UsageRecord(provider=p, model=m, operation="chat", tenancy_id=t, bucket_start=END, bucket_width=H,
                         tokens={"input": rng.randint(1, 99_999), "output": 7}) for p, t, m, _ in keys[:5]],
        ]
        for usage in steps:
            by_instance: dict[str, list[UsageRecord]] = {}
            for record in usage:
                by_instance.setdefault(INSTANCES[record.provider], []).append(record)
            for instance, records in by_instance.items():
                writer.apply(instance, PollResult(usage=records), tenant="acme" if instance == "openai" else "default")
            reading = fast.read(ledger, now, peak_days=7)
            _same(reading, _signals(ReferenceSignals).read(ledger, now, peak_days=7))
        assert reading != first
        assert repr(fast.anomalies(ledger, late_hour)) != old_scores  # the settled hour was scored again
        writer.apply("openai", PollResult(names={("tenancy", "proj-03"): "Proj Four"}), tenant="acme")
        _same(fast.read(ledger, now, peak_days=7), _signals(ReferenceSignals).read(ledger, now, peak_days=7))
        assert writer.prune_rollups(END - 20 * D) > 0
        _same(fast.read(ledger, now, peak_days=7), _signals(ReferenceSignals).read(ledger, now, peak_days=7))


@pytest.mark.parametrize("by_token_type", [False, True])
def test_series_that_differ_only_in_their_token_type(tmp_path: Path, by_token_type: bool) -> None:
    """Series of one key that differ only in their token type share their parsed attributes and facts
    (``Signals._derive``) unless a budget looks at the token type: then input and output cost are told apart
    (a budget of input cost only), and the reading still equals the straightforward one."""
    rng = random.Random(21)
    keys = _keys(rng, 12)
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        writer.set_pricer(PriceBook())
        _apply(writer, rng, END - 3 * D, END, keys)
    config = dict(CONFIG)
    if by_token_type:
        config["budgets"] = [*CONFIG["budgets"], {  # type: ignore[list-item]
            "name": "inputs", "amount": 40, "period": "month", "source": "estimated",
            "match": {"labels": {"gen_ai.token.type": "input"}}}]
    parsed = parse_config(config)
    labels = {p.name: dict(p.labels) for p in parsed.providers}
    fast = Signals(parsed.budgets, Attributor(parsed.attribution.rules), PriceBook(), labels)
    reference = ReferenceSignals(parsed.budgets, Attributor(parsed.attribution.rules), PriceBook(), labels)
    with Ledger(path, readonly=True) as ledger:
        reading = fast.read(ledger, END + H, peak_days=2)
        _same(reading, reference.read(ledger, END + H, peak_days=2))
    assert len({attrs["gen_ai.token.type"] for attrs, _ in reading.token_prices}) == 2  # input and output
    if by_token_type:
        spent = {b.name: b.spent for b in reading.budgets}
        assert 0 < spent["inputs"] < spent["cc"]  # the input cost alone: less than all of the estimated cost
