"""Prices and estimated cost: exact arithmetic, price history, dimension-selected prices, unpriced models."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import ConfigError
from otel_llm_receiver.ledger import METRIC_COST_ESTIMATED, METRIC_TOKENS, METRIC_UNPRICED, Ledger
from otel_llm_receiver.model import PollResult, UsageRecord
from otel_llm_receiver.pricing import PICOS_PER_USD, PriceBook, PriceEntry, to_genai_usage
from tests.support.ledger_reads import exact_totals

H = 3600
D = 86400
JAN = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
MAR = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp())
MTOK = Decimal(1_000_000)


def record(start: int, tokens: dict[str, int], *, model: str = "acme-1", provider: str = "acme",
           width: int = H, dims: dict[str, str] | None = None, requests: int | None = None) -> UsageRecord:
    return UsageRecord(provider=provider, model=model, operation="chat", tenancy_id="t1", bucket_start=start,
                       bucket_width=width, tokens=tokens, requests=requests, dimensions=dims or {})


def book_from(overrides: list[dict[str, object]], *, genai: bool = False) -> PriceBook:
    config = parse_config({"providers": {"demo": {}}, "pricing": {"overrides": overrides, "genai_prices": genai}})
    return PriceBook(config.pricing.entries, use_genai_prices=config.pricing.genai_prices)


ACME = {"provider": "acme", "model": "acme-*",
        "prices": {"input": "1.25", "cache_read": "0.125", "cache_write": "1.5625", "output": "7.5"}}


def estimated_picos(ledger: Ledger) -> dict[str, int]:
    """Token type -> exact estimated cost (pico-USD), summed over series."""
    out: dict[str, int] = {}
    for _, attrs, total, _ in exact_totals(ledger, METRIC_COST_ESTIMATED):
        key = attrs.get("gen_ai.token.type", "request")
        out[key] = out.get(key, 0) + total
    return out


def picos(usd_per_mtok: str, tokens: int) -> int:
    exact = Decimal(usd_per_mtok) / MTOK * tokens * PICOS_PER_USD
    assert exact == exact.to_integral_value()
    return int(exact)


def test_estimated_cost_is_exact_and_survives_restart_and_re_polls(tmp_path: Path) -> None:
    book = book_from([ACME])
    path = tmp_path / "ledger.db"
    tokens = {"input": 1_234_567, "cache_read": 7, "cache_write": 3, "output": 999_999}
    with Ledger(path) as ledger:
        ledger.set_pricer(book)
        ledger.apply("acme", PollResult(usage=[record(JAN, tokens)]))
        first = estimated_picos(ledger)
    prices = ACME["prices"]
    assert isinstance(prices, dict)
    expected = {t: picos(prices[t], n) for t, n in tokens.items()}
    assert first == expected
    # A restarted receiver re-polls the same bucket (nothing added), then the bucket grows (only the growth).
    with Ledger(path) as ledger:
        ledger.set_pricer(book)
        ledger.apply("acme", PollResult(usage=[record(JAN, tokens)]))
        assert estimated_picos(ledger) == expected
        grown = {**tokens, "output": tokens["output"] + 1}
        ledger.apply("acme", PollResult(usage=[record(JAN, grown)]))
        after = estimated_picos(ledger)
        assert after["output"] - expected["output"] == picos("7.5", 1)
        # What goes on the wire: whole nano-USD totals, the sub-nano remainder kept in the ledger.
        wire = sorted(s.total for s in ledger.snapshot().series if s.metric == METRIC_COST_ESTIMATED)
        assert wire == sorted(t // 1000 for _, _, t, _ in exact_totals(ledger, METRIC_COST_ESTIMATED))


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=6),
       price=st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False))
def test_estimated_cost_of_a_sum_is_the_sum_of_estimated_costs(
    tmp_path_factory: pytest.TempPathFactory, parts: list[int], price: Decimal
) -> None:
    """One bucket reported in growing steps (each poll adds a part) prices exactly like the final value at once,
    and like each part in its own bucket."""
    book = book_from([{"provider": "acme", "model": "*", "prices": {"output": str(price)}}])
    base = tmp_path_factory.mktemp("prop")
    with Ledger(base / "steps.db") as steps, Ledger(base / "once.db") as once, Ledger(base / "split.db") as split:
        for led in (steps, once, split):
            led.set_pricer(book)
        running = 0
        for part in parts:
            running += part
            steps.apply("acme", PollResult(usage=[record(JAN, {"output": running})]))
        once.apply("acme", PollResult(usage=[record(JAN, {"output": running})]))
        split.apply("acme", PollResult(usage=[record(JAN + i * H, {"output": p}) for i, p in enumerate(parts)]))
        expected = int(price * PICOS_PER_USD / MTOK * running)
        assert estimated_picos(steps) == estimated_picos(once) == estimated_picos(split) == {"output": expected}


def test_price_history_applies_from_effective_from(tmp_path: Path) -> None:
    book = book_from([
        {"provider": "acme", "model": "acme-1", "prices": {"input": "2"}},
        {"provider": "acme", "model": "acme-1", "effective_from": "2026-03-01", "prices": {"input": "1"}},
    ])
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.set_pricer(book)
        before, after = record(MAR - H, {"input": 1_000_000}), record(MAR, {"input": 1_000_000})
        ledger.apply("acme", PollResult(usage=[before, after]))
        assert estimated_picos(ledger) == {"input": 3 * PICOS_PER_USD}
        # A late revision of a February bucket is priced at February's price, not today's.
        ledger.apply("acme", PollResult(usage=[record(MAR - H, {"input": 1_500_000})]))
        assert estimated_picos(ledger) == {"input": 4 * PICOS_PER_USD}
        hourly = {h: v for _, _, _, h, v in ledger.rollup_hours([MAR - H, MAR], [METRIC_COST_ESTIMATED])}
        assert hourly == {MAR - H: 3 * PICOS_PER_USD, MAR: 1 * PICOS_PER_USD}


def test_genai_prices_input_includes_cache_reads_converted_at_the_boundary() -> None:
    """Our ``input`` excludes cache reads and writes; genai-prices' ``input_tokens`` includes them."""
    tokens = {"input": 10_000, "cache_read": 40_000, "cache_write": 5_000, "output": 2_000}
    book = PriceBook()
    at = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp())
    ours = Decimal(0)
    for token_type, n in tokens.items():
        price = book.price("anthropic", "claude-sonnet-4-20250514", token_type, {}, at)
        assert price is not None and price.source == "genai-prices"
        ours += price.usd * n
    when = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    theirs = calc_price(Usage(**to_genai_usage(tokens)), "claude-sonnet-4-20250514", provider_id="anthropic",
                        genai_request_timestamp=when).total_price
    assert ours == theirs
    # Handing genai-prices our uncached input as its input_tokens is wrong: here an error, ...
    with pytest.raises(ValueError, match="cannot exceed input_tokens"):
        calc_price(Usage(input_tokens=10_000, cache_read_tokens=40_000, output_tokens=2_000),
                   "claude-sonnet-4-20250514", provider_id="anthropic", genai_request_timestamp=when)
    # ... and with fewer cache reads a silent under-count (the cache reads are taken out of input twice).
    small = {"input": 10_000, "cache_read": 4_000}
    right = calc_price(Usage(**to_genai_usage(small)), "claude-sonnet-4-20250514", provider_id="anthropic",
                       genai_request_timestamp=when).total_price
    wrong = calc_price(Usage(input_tokens=10_000, cache_read_tokens=4_000), "claude-sonnet-4-20250514",
                       provider_id="anthropic", genai_request_timestamp=when).total_price
    assert right - wrong == Decimal("3") / MTOK * 4_000
    assert to_genai_usage(tokens)["input_tokens"] == sum(tokens.values()) - tokens["output"]


@pytest.mark.parametrize(("provider", "model", "unit", "dims", "usd_per_mtok"), [
    # genai-prices has a 1-hour cache-write price for Claude Sonnet 4: used as is, no multiplier on top.
    ("anthropic", "claude-sonnet-4-20250514", "cache_write", {"llm.cache.ttl": "1h"}, "6"),
    ("anthropic", "claude-sonnet-4-20250514", "cache_write", {"llm.cache.ttl": "5m"}, "3.75"),
    # Long context is not in genai-prices for Sonnet 4: the packaged rule (input 2x, output 1.5x).
    ("anthropic", "claude-sonnet-4-20250514", "input", {"llm.context_window": "200k-1M"}, "6"),
    ("anthropic", "claude-sonnet-4-20250514", "output", {"llm.context_window": "200k-1M"}, "22.5"),
    ("anthropic", "claude-sonnet-4-20250514", "output", {"llm.context_window": "0-200k"}, "15"),
    # ... and only for the models that price long context so (Opus 4 has no 1M window; 4.6 serves it flat)
    ("anthropic", "claude-opus-4-20250514", "output", {"llm.context_window": "200k-1M"}, "75"),
    ("anthropic", "claude-sonnet-4-6", "output", {"llm.context_window": "200k-1M"}, "15"),
    # Batch before genai-prices knew batch variants: the packaged 50% rule.
    ("openai", "gpt-4o-2024-08-06", "input", {"llm.batch": "true"}, "1.25"),
    ("openai", "gpt-4o-2024-08-06", "output", {"llm.batch": "false"}, "10"),
    ("anthropic", "claude-sonnet-4-20250514", "output", {"llm.service_tier": "batch"}, "7.5"),
    ("openai", "gpt-5", "input", {"llm.service_tier": "flex"}, "0.625"),
])
def test_dimensions_select_the_price(provider: str, model: str, unit: str, dims: dict[str, str],
                                     usd_per_mtok: str) -> None:
    at = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp())
    price = PriceBook().price(provider, model, unit, dims, at)
    assert price is not None and price.usd * MTOK == Decimal(usd_per_mtok)


def test_a_discount_is_never_applied_twice() -> None:
    """After genai-prices gained OpenAI batch variants, the packaged 50% rule steps aside."""
    later = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())
    price = PriceBook().price("openai", "gpt-4o", "input", {"llm.batch": "true"}, later)
    assert price is not None and price.usd * MTOK == Decimal("1.25") and price.source == "genai-prices"


def test_multipliers_and_ttl_rule_on_override_prices(tmp_path: Path) -> None:
    """A model only the overrides know still gets the 1-hour cache-write and batch rules from the defaults."""
    book = book_from([{"provider": "anthropic", "model": "claude-private", "prices": {"cache_write": "4", "input": "3"}}])
    records = [
        UsageRecord(provider="anthropic", model="claude-private", operation="chat", tenancy_id="w", bucket_start=JAN,
                    bucket_width=H, tokens={"cache_write": 1_000_000}, dimensions={"llm.cache.ttl": ttl})
        for ttl in ("5m", "1h")
    ] + [UsageRecord(provider="anthropic", model="claude-private", operation="chat", tenancy_id="w",
                     bucket_start=JAN, bucket_width=H, tokens={"input": 1_000_000},
                     dimensions={"llm.service_tier": "batch"})]
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.set_pricer(book)
        ledger.apply("anthropic", PollResult(usage=records))
        by = {(a.get("llm.cache.ttl"), a["gen_ai.token.type"]): t for _, a, t, _ in
              exact_totals(ledger, METRIC_COST_ESTIMATED)}
    assert by == {("5m", "cache_write"): 4 * PICOS_PER_USD, ("1h", "cache_write"): picos("6.4", 1_000_000),
                  (None, "input"): picos("1.5", 1_000_000)}


def test_unknown_models_are_counted_not_priced_at_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    book = book_from([ACME])
    with Ledger(tmp_path / "l.db") as ledger, caplog.at_level(logging.WARNING, "otel_llm_receiver.pricing"):
        ledger.set_pricer(book)
        for start in (JAN, JAN + H):
            ledger.apply("acme", PollResult(usage=[
                record(start, {"input": 100, "output": 10}, model="mystery-7b"),
                record(start, {"input": 5}, model="acme-1"),
            ]))
        unpriced = exact_totals(ledger, METRIC_UNPRICED)
        estimated = exact_totals(ledger, METRIC_COST_ESTIMATED)
    assert [(a, t) for _, a, t, _ in unpriced] == [
        ({"gen_ai.provider.name": "acme", "gen_ai.request.model": "mystery-7b"}, 220)]
    assert {a["gen_ai.request.model"] for _, a, _, _ in estimated} == {"acme-1"}
    # Once per token type over both polls, naming it: a model priced for some types must not read as unpriced.
    warnings = sorted(r.getMessage().split(":")[0] for r in caplog.records if "mystery-7b" in r.getMessage())
    assert warnings == ["no price for acme model mystery-7b (input)", "no price for acme model mystery-7b (output)"]


def test_a_price_added_later_prices_new_deltas(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(path) as ledger:
        ledger.set_pricer(book_from([]))
        ledger.apply("acme", PollResult(usage=[record(JAN, {"input": 1_000_000})]))
        assert exact_totals(ledger, METRIC_COST_ESTIMATED) == []
    with Ledger(path) as ledger:  # restarted with an override for the model
        ledger.set_pricer(book_from([ACME]))
        ledger.apply("acme", PollResult(usage=[record(JAN, {"input": 3_000_000})]))
        assert estimated_picos(ledger) == {"input": picos("1.25", 2_000_000)}
        assert exact_totals(ledger, METRIC_UNPRICED)[0][2] == 1_000_000


def test_bucket_width_change_is_priced_like_its_tokens(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.set_pricer(book_from([ACME]))
        ledger.apply("acme", PollResult(usage=[record(JAN + i * 60, {"output": 100}, width=60) for i in range(60)]))
        ledger.apply("acme", PollResult(usage=[record(JAN, {"output": 7_000}, width=H)]))  # coarser, larger
        tokens = sum(t for _, a, t, _ in exact_totals(ledger, METRIC_TOKENS))
        assert tokens == 7_000
        assert estimated_picos(ledger) == {"output": picos("7.5", 7_000)}


def test_per_request_prices(tmp_path: Path) -> None:
    book = book_from([{"provider": "acme", "model": "*", "prices": {"request": "0.0004", "input": "1"}}])
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.set_pricer(book)
        ledger.apply("acme", PollResult(usage=[record(JAN, {"input": 10}, requests=25)]))
        assert estimated_picos(ledger) == {"input": picos("1", 10), "request": 25 * 400_000_000}


def test_pricing_config_problems_name_their_key_paths(tmp_path: Path) -> None:
    catalog = tmp_path / "prices.yaml"
    catalog.write_text("- model: x\n  prices: {input: -1}\n")
    with pytest.raises(ConfigError) as err:
        parse_config({"providers": {"demo": {}}, "pricing": {
            "catalog_file": str(catalog),
            "overrides": [{"model": "m", "effective_from": "March", "prices": {"output": "0.1234567"}},
                          {"model": "m", "when": {"llm.batch": True}}],
            "genai": False}})
    assert err.value.problems == [
        f"pricing.catalog_file ({catalog})[0].prices.input: must be a non-negative number (USD), got -1",
        "pricing.overrides[0].effective_from: must be a date such as 2026-01-01 (UTC), got 'March'",
        "pricing.overrides[0].prices.output: 0.1234567 has more precision than the ledger keeps "
        "(per million tokens: at most 6 decimals)",
        "pricing.overrides[1]: needs prices, a multiplier, or both",
        "pricing.genai: unknown key (valid: genai_prices, catalog_file, overrides)",
    ]


def test_catalog_file_pins_prices_below_overrides(tmp_path: Path) -> None:
    catalog = tmp_path / "prices.yaml"
    catalog.write_text("- provider: openai\n  model: gpt-4o*\n  prices: {input: 2.00, output: 8}\n")
    config = parse_config({"providers": {"demo": {}}, "pricing": {
        "catalog_file": str(catalog), "overrides": [{"model": "gpt-4o", "prices": {"output": "9"}}]}})
    book = PriceBook(config.pricing.entries)
    price = {u: book.price("openai", "gpt-4o", u, {}, JAN) for u in ("input", "output", "cache_read")}
    assert {u: p.usd * MTOK for u, p in price.items() if p} == {
        "input": Decimal(2), "output": Decimal(9), "cache_read": Decimal("1.25")}
    assert [e.layer for e in config.pricing.entries] == ["override", "catalog_file"]
    assert isinstance(config.pricing.entries[0], PriceEntry)


def test_other_billed_units_are_priced_per_unit_by_entries() -> None:
    """A provider's extra counter (e.g. server tool requests) is priced when an entry names its metric."""
    book = book_from([{"provider": "anthropic", "model": "*", "prices": {"llm.usage.tool_requests": "0.01"}}])
    attrs = {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-x", "gen_ai.tool.name": "web_search"}
    (period,) = book.schedule("llm.usage.tool_requests", attrs)
    assert (period.target_metric, period.price, period.target_attrs) == (
        METRIC_COST_ESTIMATED, int(Decimal("0.01") * PICOS_PER_USD), attrs)
    assert book.schedule("llm.usage.other_counter", attrs) == []
