"""Anomaly scores: robust z-score maths, baseline selection, and detection on the demo's week."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from otel_llm_receiver import anomalies
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import Window
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.providers.demo import SPIKE
from otel_llm_receiver.signals import Anomaly, Signals

H = 3600
D = 86400
W = 7 * D


def test_robust_z_uses_median_and_mad() -> None:
    history = [10.0, 11.0, 9.0, 10.0, 12.0, 10.0, 95.0]  # one outlier in the baseline does not move it
    median = statistics.median(history)
    mad = statistics.median(abs(v - median) for v in history)
    assert (median, mad) == (10.0, 1.0)
    z = anomalies.robust_z(16.0, history)
    assert z == pytest.approx((16.0 - median) / max(1.4826 * mad, 0.05 * median))
    assert anomalies.robust_z(16.0, []) is None
    # A flat baseline (MAD 0) is floored at 5% of the median instead of dividing by zero.
    assert anomalies.robust_z(105.0, [100.0] * 5) == pytest.approx(1.0)


def test_baseline_prefers_weeks_then_days_and_needs_history() -> None:
    hour = 100 * W
    assert anomalies.baseline_hours(hour, hour - 5 * W) == [hour - k * W for k in range(1, 5)]
    # two weeks only: fall back to the last 7 days
    assert anomalies.baseline_hours(hour, hour - 2 * W - H) == [hour - k * D for k in range(1, 8)]
    # five days (the series' first hour is left out: it is usually partial) -> enough; four -> no score
    assert anomalies.baseline_hours(hour, hour - 5 * D - H) == [hour - k * D for k in range(1, 6)]
    assert anomalies.baseline_hours(hour, hour - 5 * D) == []


@pytest.fixture(scope="module")
def demo_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, int]:
    """Two weeks of the demo's usage (its default 1-minute buckets), so the last week has a baseline of past days."""
    config = parse_config({"providers": {"demo": {"seed": 42}}})
    provider = create_provider(config.providers[0])
    now = 1_795_000_000 // H * H + 1_800  # a fixed Wednesday 11:30 UTC: the spike is 7 days minus 2.5 h back
    result = asyncio.run(provider.fetch(Window(now - 2 * W, now)))
    ledger = Ledger(tmp_path_factory.mktemp("demo") / "ledger.db")
    ledger.set_pricer(PriceBook())
    ledger.apply("demo", result)
    return ledger, now


def test_demo_spike_scores_above_4_and_nothing_else_above_3(demo_ledger: tuple[Ledger, int]) -> None:
    """Precision and recall on the demo week, at the alert thresholds 3 and 4 (quoted in docs/anomalies.md)."""
    ledger, now = demo_ledger
    signals = Signals()
    week = signals.anomalies_between(ledger, now - W, now - H)
    weekday, hour_of_day, tenancy, model, _ = SPIKE
    def key(a: Anomaly) -> tuple[int, str, str, str]:
        return (a.hour, a.signal, a.tenancy_id, a.model)

    truth = {
        key(a) for a in week
        if a.tenancy_id == tenancy and a.model == model
        and (a.hour // D + 3) % 7 == weekday and a.hour % D // H == hour_of_day
    }
    assert len(truth) == 2  # cost and tokens of the one spike hour, both scored (enough history)
    hours = {a.hour for a in week}
    assert len(hours) == 7 * 24  # every hour of the demo week got scores
    for threshold in (3.0, 4.0):
        flagged = {key(a) for a in week if a.score > threshold}
        true_positives = flagged & truth
        precision = len(true_positives) / len(flagged)
        recall = len(true_positives) / len(truth)
        assert (precision, recall) == (1.0, 1.0), (threshold, flagged)
    spike = min(a.score for a in week if key(a) in truth)
    others = max(a.score for a in week if key(a) not in truth)
    assert spike > 4 and others <= 3


def test_the_reading_reports_the_peak_of_the_week(demo_ledger: tuple[Ledger, int]) -> None:
    ledger, now = demo_ledger
    reading = Signals().read(ledger, now, peak_days=7)
    assert reading.peak is not None and reading.peak.model == SPIKE[3] and reading.peak.score > 4
    assert reading.hour == (now - 300) // H * H - H
    assert {a.signal for a in reading.anomalies} == {"cost", "tokens"}
