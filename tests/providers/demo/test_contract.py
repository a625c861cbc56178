"""The demo provider behaves like a real usage API: pure, late, filling in, with a documented spike."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.model import TOKEN_TYPES, Window
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.providers.demo import (
    SPIKE,
    WORKLOADS,
    DemoProvider,
    bucket_as_of,
    cost_records,
    full_bucket,
    usage_records,
)

WED_2026_11_25 = 1795564800  # 2026-11-25 00:00 UTC, a Wednesday


def _provider(**options: object) -> DemoProvider:
    raw = {
        "exporters": {"otlp": {"endpoint": "127.0.0.1:4317"}},
        "providers": {"demo": {"backfill": "6h", **options}},
    }
    provider = create_provider(parse_config(raw).providers[0])
    assert isinstance(provider, DemoProvider)
    return provider


def test_values_are_a_pure_function_of_seed_and_bucket() -> None:
    w = WORKLOADS[0]
    assert full_bucket(42, w, WED_2026_11_25, 60) == full_bucket(42, w, WED_2026_11_25, 60)
    assert full_bucket(42, w, WED_2026_11_25, 60) != full_bucket(43, w, WED_2026_11_25, 60)


def test_bucket_arrives_late_and_fills_in_monotonically() -> None:
    w = WORKLOADS[2]
    start, width = WED_2026_11_25 + 13 * 3600, 60
    assert bucket_as_of(42, w, start, width, start + 10) is None  # not arrived yet
    seen = [bucket_as_of(42, w, start, width, start + t) for t in range(30, 150, 10)]
    totals = [sum(v[0].values()) for v in seen if v is not None]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    final = full_bucket(42, w, start, width)
    assert bucket_as_of(42, w, start, width, start + 2 * width) == final
    assert bucket_as_of(42, w, start, width, start + 10 * width) == final


def test_token_types_partition_the_input() -> None:
    for w in WORKLOADS:
        tokens, requests = full_bucket(7, w, WED_2026_11_25 + 12 * 3600, 3600)
        assert set(tokens) <= set(TOKEN_TYPES)
        assert all(v >= 0 for v in tokens.values())
        input_side = tokens["input"] + tokens.get("cache_read", 0) + tokens.get("cache_write", 0)
        assert tokens.get("cache_read", 0) == int(input_side * w.cache_read_share) or w.cache_read_share == 0
        assert requests == input_side // w.prompt_tokens


def test_the_documented_spike_is_there() -> None:
    _, hour, tenancy, model, _ = SPIKE
    w = next(w for w in WORKLOADS if w.tenancy == tenancy and w.model == model)
    spike_start = WED_2026_11_25 + hour * 3600
    in_spike = sum(full_bucket(42, w, spike_start, 3600)[0].values())
    week_before = sum(full_bucket(42, w, spike_start - 7 * 86400 + 86400, 3600)[0].values())  # Thursday
    hour_before = sum(full_bucket(42, w, spike_start - 3600, 3600)[0].values())
    assert in_spike > 4 * hour_before
    assert in_spike > 4 * week_before
    other = next(x for x in WORKLOADS if x.model != model)
    assert sum(full_bucket(42, other, spike_start, 3600)[0].values()) < 3 * sum(
        full_bucket(42, other, spike_start - 3600, 3600)[0].values()
    )


def test_cost_arrives_daily_and_late() -> None:
    day = WED_2026_11_25
    early = list(cost_records(42, WORKLOADS, Window(day, day + 86400 + 1800)))
    assert not [c for c in early if c.bucket_start == day]
    later = list(cost_records(42, WORKLOADS, Window(day, day + 86400 + 3600)))
    day_costs = [c for c in later if c.bucket_start == day]
    assert len(day_costs) == len(WORKLOADS)
    assert all(c.amount > 0 and c.bucket_width == 86400 and c.currency == "USD" for c in day_costs)


def test_fetch_returns_every_arrived_bucket_of_the_window() -> None:
    provider = _provider(models=["gpt-4o"])
    now = WED_2026_11_25 + 10 * 3600 + 17
    result = asyncio.run(provider.fetch(Window(now - 3600, now)))
    assert {r.model for r in result.usage} == {"gpt-4o"}
    by_start: dict[int, int] = defaultdict(int)
    for r in result.usage:
        by_start[r.bucket_start] += 1
    # 2 workloads use gpt-4o; buckets from the window start to the newest arrived one, each once per workload
    assert set(by_start.values()) == {2}
    assert min(by_start) == now - 3600 - (now - 3600) % 60
    assert max(by_start) == now - now % 60 - 60  # the current minute has not arrived (half a width late)
    assert result.names[("tenancy", "proj-search")] == "Search"
    assert result.complete_until is not None and result.complete_until <= now - 60
    expected = list(usage_records(42, provider.workloads, Window(now - 3600, now), 60))
    assert expected == list(result.usage)


def test_bucket_width_option_must_divide_a_day() -> None:
    import pytest

    from otel_llm_receiver.errors import ProviderError

    with pytest.raises(ProviderError, match="bucket_width"):
        _provider(bucket_width="7m")
