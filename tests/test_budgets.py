"""Budgets: calendar periods in a time zone (month and quarter ends, DST), projection, burn rates, sources."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from otel_llm_receiver import budgets
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import ConfigError
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.signals import Signals

H = 3600
D = 86400
UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, tz: dt.tzinfo = UTC) -> int:
    return int(dt.datetime(*args, tzinfo=tz).timestamp())


@pytest.mark.parametrize(("now", "period", "zone", "start", "end"), [
    # month ends: 31, 28 (2026), 29 (2028, leap) days
    (ts(2026, 1, 31, 23, 59), "month", "UTC", ts(2026, 1, 1), ts(2026, 2, 1)),
    (ts(2026, 2, 1), "month", "UTC", ts(2026, 2, 1), ts(2026, 3, 1)),
    (ts(2028, 2, 29, 12), "month", "UTC", ts(2028, 2, 1), ts(2028, 3, 1)),
    # quarter ends
    (ts(2026, 3, 31, 23, 59, 59), "quarter", "UTC", ts(2026, 1, 1), ts(2026, 4, 1)),
    (ts(2026, 4, 1), "quarter", "UTC", ts(2026, 4, 1), ts(2026, 7, 1)),
    (ts(2026, 12, 31, 12), "quarter", "UTC", ts(2026, 10, 1), ts(2027, 1, 1)),
    # weeks start on Monday; 2026-11-26 is a Thursday
    (ts(2026, 11, 26, 9), "week", "UTC", ts(2026, 11, 23), ts(2026, 11, 30)),
    # In Berlin, 2026-03-31 22:30 UTC is already April 1st (CEST, UTC+2): the next month's period.
    (ts(2026, 3, 31, 22, 30), "month", "Europe/Berlin", ts(2026, 4, 1, tz=BERLIN), ts(2026, 5, 1, tz=BERLIN)),
    (ts(2026, 3, 31, 21, 30), "month", "Europe/Berlin", ts(2026, 3, 1, tz=BERLIN), ts(2026, 4, 1, tz=BERLIN)),
    # Berlin's quarter ending in a DST-changed month, and the DST day itself (23 hours)
    (ts(2026, 3, 15), "quarter", "Europe/Berlin", ts(2026, 1, 1, tz=BERLIN), ts(2026, 4, 1, tz=BERLIN)),
    (ts(2026, 3, 29, 12), "day", "Europe/Berlin", ts(2026, 3, 29, tz=BERLIN), ts(2026, 3, 30, tz=BERLIN)),
])
def test_period_bounds(now: int, period: budgets.Period, zone: str, start: int, end: int) -> None:
    assert budgets.period_bounds(now, period, zone) == (start, end)


def test_dst_changes_the_length_of_local_periods() -> None:
    """Berlin: clocks go forward on 2026-03-29 and back on 2026-10-25."""
    start, end = budgets.period_bounds(ts(2026, 3, 29, 12), "day", "Europe/Berlin")
    assert end - start == 23 * H
    start, end = budgets.period_bounds(ts(2026, 10, 25, 12), "day", "Europe/Berlin")
    assert end - start == 25 * H
    start, end = budgets.period_bounds(ts(2026, 3, 10), "month", "Europe/Berlin")
    assert end - start == 31 * D - H
    # the March period starts at local midnight = 23:00 UTC the day before (CET, UTC+1)
    assert start == ts(2026, 2, 28, 23)


def test_projection_and_burn_rate_maths() -> None:
    start, end = ts(2026, 4, 1), ts(2026, 5, 1)  # 30 days = 720 h
    now = end - 10 * H
    s = budgets.status("b", Decimal(720), (start, end), now, spent=Decimal(100), trailing=Decimal(48),
                       windows={"1h": Decimal(3), "6h": Decimal(3)})
    assert s.projected == Decimal(100) + Decimal(48) / (24 * H) * (10 * H)  # 120: 2 USD/h for 10 more hours
    assert s.projected == 120
    # The even rate is 720 USD / 720 h = 1 USD/h: 3 USD in the last hour burns at 3x, over 6 h at 0.5x.
    assert s.burn_rates == {"1h": Decimal(3), "6h": Decimal("0.5")}
    assert s.utilization == Decimal(100) / 720


def _ledger_with_usage(tmp_path: Path, hours: list[int], tokens_per_hour: int, costs: list[CostRecord]) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.db")
    config = parse_config({"providers": {"demo": {}}, "pricing": {"genai_prices": False, "overrides": [
        {"provider": "acme", "model": "*", "prices": {"input": "2"}}]}})
    ledger.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
    ledger.apply("acme", PollResult(
        usage=[UsageRecord(provider="acme", model="m1", operation="chat", tenancy_id="t1", bucket_start=h,
                           bucket_width=H, tokens={"input": tokens_per_hour}) for h in hours],
        costs=costs,
    ))
    return ledger


def signals_for(raw_budgets: list[dict[str, object]]) -> Signals:
    config = parse_config({"providers": {"demo": {}}, "budgets": raw_budgets})
    return Signals(config.budgets)


def test_budget_from_ledger_rollups_across_a_local_month_end(tmp_path: Path) -> None:
    """Hourly usage from 20:00 UTC on 2026-03-31 on; the Berlin April budget counts from 22:00 UTC only."""
    first = ts(2026, 3, 31, 20)
    hours = [first + i * H for i in range(8)]
    now = first + 8 * H + 600  # 04:10 UTC on April 1st
    ledger = _ledger_with_usage(tmp_path, hours, 500_000, [])  # 1 USD per hour at 2 USD/MTok
    try:
        reading = signals_for([{"name": "april", "amount": 100, "period": "month", "timezone": "Europe/Berlin",
                                "source": "estimated"}]).read(ledger, now)
    finally:
        ledger.close()
    (b,) = reading.budgets
    april_start = ts(2026, 4, 1, tz=BERLIN)
    in_period = [h for h in hours if h >= april_start]
    assert b.period_start == april_start and len(in_period) == 6
    assert b.spent == Decimal(len(in_period))
    assert b.limit == 100 and b.utilization == Decimal(len(in_period)) / 100
    # trailing 24 h of complete hours (all 8 hours, 8 USD) -> 1/3 USD per hour for the time left in April
    assert b.projected == b.spent + Decimal(8) / (24 * H) * (b.period_end - now)
    month_hours = Decimal(b.period_end - b.period_start) / H  # April: 720 h, so 1 USD/h burns at 7.2x
    q = Decimal("1e-18")  # Decimal division rounds at 28 digits
    assert b.burn_rates["1h"].quantize(q) == (Decimal(1) / (Decimal(100) / month_hours)).quantize(q)
    assert b.burn_rates["6h"].quantize(q) == (Decimal(6) / 6 / (Decimal(100) / month_hours)).quantize(q)


def test_best_uses_reported_cost_where_it_exists_and_estimates_the_rest(tmp_path: Path) -> None:
    day = ts(2026, 5, 4)
    hours = [day + i * H for i in range(36)]  # all of May 4th and 12 hours of May 5th
    reported = CostRecord(provider="acme", tenancy_id="t1", bucket_start=day, bucket_width=D,
                          amount=Decimal("30.5"), model="m1")
    now = day + 36 * H + 600
    ledger = _ledger_with_usage(tmp_path, hours, 500_000, [reported])  # estimated: 1 USD per hour
    try:
        sig = signals_for([
            {"name": s, "amount": 1000, "period": "month", "source": s} for s in ("best", "estimated", "reported")
        ] + [{"name": "other-provider", "amount": 1000, "match": {"provider": "nope"}}])
        spent = {b.name: b.spent for b in sig.read(ledger, now).budgets}
    finally:
        ledger.close()
    assert spent == {
        "estimated": Decimal(36),
        "reported": Decimal("30.5"),
        "best": Decimal("30.5") + 12,  # reported May 4th, estimated for the 12 hours reported has not reached
        "other-provider": Decimal(0),
    }


def test_budget_config_problems_name_their_key_paths() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"providers": {"demo": {}}, "budgets": [
            {"name": "a", "amount": "lots", "timezone": "Mars/Olympus", "source": "guess"},
            {"name": "a", "amount": 5, "period": "fortnight", "match": {"team": "x", "colour": "red"}},
            {"amount": 1},
        ]})
    assert err.value.problems == [
        "budgets[0].amount: must be a positive amount in USD, got 'lots'",
        "budgets[0].timezone: unknown time zone 'Mars/Olympus' (use an IANA name such as Europe/Berlin)",
        'budgets[0].source: "guess" is not one of reported, estimated, best',
        'budgets[1].period: "fortnight" is not one of day, week, month, quarter',
        "budgets[1].match.colour: unknown key (valid: provider, tenant, tenancy, model, team, labels)",
        "budgets[1].name: budget 'a' is defined twice",
        "budgets[2].name: is required",
    ]


def test_a_restart_mid_month_loses_nothing(tmp_path: Path) -> None:
    """Spend lives in the ledger's rollups: a new process (new ledger connection, new Signals) sees all of it."""
    month = ts(2026, 7, 1)
    hours = [month + i * H for i in range(10 * 24)]
    ledger = _ledger_with_usage(tmp_path, hours[:120], 500_000, [])  # first process: 120 hours, 1 USD each
    ledger.close()
    config = parse_config({"providers": {"demo": {}}, "pricing": {"genai_prices": False, "overrides": [
        {"provider": "acme", "model": "*", "prices": {"input": "2"}}]}})
    with Ledger(tmp_path / "ledger.db") as restarted:  # second process: re-polls an overlap, then goes on
        restarted.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
        restarted.apply("acme", PollResult(usage=[
            UsageRecord(provider="acme", model="m1", operation="chat", tenancy_id="t1", bucket_start=h,
                        bucket_width=H, tokens={"input": 500_000}) for h in hours[100:]]))
        (b,) = signals_for([{"name": "july", "amount": 1000, "source": "estimated"}]).read(
            restarted, hours[-1] + H + 600).budgets
    assert b.spent == len(hours)
