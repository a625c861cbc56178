"""On both engines (``ledger_store``): a start with an unchanged price book keeps the ledger's pricing schedules (issue 20: start-up); a changed
one rebuilds them, a page of series at a time, and the new prices apply to the next deltas."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.ledger import Ledger, open_ledger
from otel_llm_receiver.ledger import writer as ledger_writer
from otel_llm_receiver.model import PollResult, UsageRecord
from tests.test_pricing import ACME, book_from, estimated_picos, picos

H = 3600
JAN = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())


def usage(start: int, tokens: dict[str, int], *, model: str = "acme-1") -> UsageRecord:
    return UsageRecord(provider="acme", model=model, operation="chat", tenancy_id="t1", bucket_start=start,
                       bucket_width=H, tokens=tokens)


def schedules(ledger: Ledger) -> list[tuple[int, ...]]:
    return [tuple(r) for r in ledger._conn.execute(
        "SELECT series_id, valid_from, valid_until, target_id, price, scale FROM pricing ORDER BY 1, 2")]


def test_an_unchanged_price_book_keeps_the_schedules_and_a_changed_one_rebuilds_them(ledger_store: StorageConfig) -> None:
    with open_ledger(ledger_store) as ledger:
        assert ledger.set_pricer(book_from([ACME])) == 0  # nothing to price yet, but the book is recorded
        assert ledger.pricing_rebuilds == 1
        ledger.apply("acme", PollResult(usage=[usage(JAN, {"input": 1_000_000, "output": 10})]))
        built = schedules(ledger)
        assert len(built) == 2
    with open_ledger(ledger_store) as ledger:  # restarted, same overrides: no rebuild, the very same rows
        assert ledger.set_pricer(book_from([ACME])) == 0
        assert ledger.pricing_rebuilds == 0
        assert schedules(ledger) == built
        ledger.apply("acme", PollResult(usage=[usage(JAN, {"input": 2_000_000, "output": 10})]))
        assert estimated_picos(ledger)["input"] == picos("1.25", 2_000_000)
    dearer = {**ACME, "prices": {**ACME["prices"], "input": "2.5"}}  # type: ignore[dict-item]
    with open_ledger(ledger_store) as ledger:  # restarted with a changed override: rebuilt, the next delta at the new price
        assert ledger.set_pricer(book_from([dearer])) == 2
        assert ledger.pricing_rebuilds == 1
        assert schedules(ledger) != built
        ledger.apply("acme", PollResult(usage=[usage(JAN, {"input": 3_000_000, "output": 10})]))
        assert estimated_picos(ledger)["input"] == picos("1.25", 2_000_000) + picos("2.5", 1_000_000)


def test_a_changed_catalog_file_rebuilds(tmp_path: Path, ledger_store: StorageConfig) -> None:
    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.pricing import PriceBook

    catalog = tmp_path / "catalog.yaml"

    def book(input_price: str) -> PriceBook:
        catalog.write_text(f"- provider: acme\n  model: acme-*\n  prices: {{input: '{input_price}'}}\n")
        config = parse_config({"providers": {"demo": {}},
                               "pricing": {"catalog_file": str(catalog), "genai_prices": False}})
        return PriceBook(config.pricing.entries, use_genai_prices=False)

    with open_ledger(ledger_store) as ledger:
        ledger.set_pricer(book("1"))
        ledger.apply("acme", PollResult(usage=[usage(JAN, {"input": 1_000_000})]))
    with open_ledger(ledger_store) as ledger:
        ledger.set_pricer(book("1"))
        assert ledger.pricing_rebuilds == 0
    with open_ledger(ledger_store) as ledger:
        ledger.set_pricer(book("4"))
        assert ledger.pricing_rebuilds == 1
        ledger.apply("acme", PollResult(usage=[usage(JAN, {"input": 2_000_000})]))
        assert estimated_picos(ledger) == {"input": picos("1", 1_000_000) + picos("4", 1_000_000)}


def test_series_created_without_a_pricer_are_priced_by_the_next_start(ledger_store: StorageConfig) -> None:
    with open_ledger(ledger_store) as ledger:
        ledger.set_pricer(book_from([ACME]))
    with open_ledger(ledger_store) as ledger:  # a tool that writes without prices (no set_pricer)
        ledger.apply("acme", PollResult(usage=[usage(JAN, {"input": 1_000_000})]))
        assert schedules(ledger) == []
    with open_ledger(ledger_store) as ledger:  # same book as recorded, but a series lacks its schedule: rebuilt
        assert ledger.set_pricer(book_from([ACME])) == 1
        assert len(schedules(ledger)) == 1


def test_a_rebuild_reads_the_series_in_pages(ledger_store: StorageConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [usage(JAN, {"input": 1_000 + i}, model=f"acme-{i}") for i in range(7)]
    with open_ledger(ledger_store) as ledger:
        ledger.set_pricer(book_from([ACME]))
        ledger.apply("acme", PollResult(usage=records))
        built = schedules(ledger)
    monkeypatch.setattr(ledger_writer, "PRICING_PAGE", 2)  # 7 series: 4 pages
    dearer = {**ACME, "prices": {"input": "2.5"}}
    with open_ledger(ledger_store) as ledger:
        assert ledger.set_pricer(book_from([dearer])) == 7
        rebuilt = schedules(ledger)
        assert [r[:4] for r in rebuilt] == [r[:4] for r in built]  # same series and targets, new price
        assert {r[4] for r in rebuilt} == {picos("2.5", 1)}


def test_run_once_on_an_unchanged_ledger_loads_no_price_data_and_exports_the_same_prices(tmp_path: Path) -> None:
    from tests.support.otlp_sink import OTLPSink
    from tests.test_cli import _demo_config, _loaded, _modules_after

    prices = []
    for _ in range(3):  # the first run builds the schedules; each later one finds the same price book
        with OTLPSink() as sink:  # a sink per run: each run's own gauges
            config = _demo_config(tmp_path / "config.yaml", tmp_path / "l.db", sink.grpc_endpoint)
            proc, modules = _modules_after("run", "--config", str(config), "--once", cwd=tmp_path)
            assert proc.returncode == 0 and "poll ok" in proc.stderr, proc.stderr
            gauges = sink.number_points("llm.pricing.token_price")
        assert gauges
        prices.append(({k: p.value for k, p in gauges.items()}, _loaded(modules, {"genai_prices"})))
    assert prices[0][1] == ["genai_prices"]  # the first start priced the new ledger's series
    assert prices[1][1] == prices[2][1] == []  # later starts read the schedules and gauge prices it kept
    assert prices[0][0] == prices[1][0] == prices[2][0]


def test_an_estimated_cost_beyond_64_bits_is_refused_and_nothing_is_applied(ledger_store: StorageConfig) -> None:
    from otel_llm_receiver.errors import LedgerError
    from otel_llm_receiver.ledger import METRIC_TOKENS
    from tests.support.ledger_reads import exact_totals

    with open_ledger(ledger_store) as ledger:
        ledger.set_pricer(book_from([{"provider": "acme", "model": "acme-*", "prices": {"input": "9000000"}}]))
        with pytest.raises(LedgerError, match="64-bit"):  # 2M tokens x 9 USD: 1.8e19 pico-USD
            ledger.apply("acme", PollResult(usage=[usage(JAN, {"input": 2_000_000})]))
        assert exact_totals(ledger, METRIC_TOKENS) == []
