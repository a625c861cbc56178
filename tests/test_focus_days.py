"""FOCUS days of the demo's default run: whole, and with every mandatory quantity and unit price (issue 16).

The ledger is filled by the real scheduler code (``Receiver.poll``: ``poll_window``, the demo provider, the
ledger) with the ``demo`` command's own configuration (``DEMO_CONFIG``: a 336h backfill), at a clock reading of
16:28 UTC, the time of day that exposed a partial first day. The file is written by the real ``focus`` command and
read back with a plain CSV reader. Expected token counts come from the demo's pure functions
(``bucket_as_of``), not from the ledger or the export. Each test runs on SQLite and on PostgreSQL (issue 21),
with the same expected values.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from otel_llm_receiver.cli import DEMO_CONFIG, main
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.focus.formats import timestamp
from otel_llm_receiver.ledger import open_ledger
from otel_llm_receiver.model import Window, first_window_start
from otel_llm_receiver.providers.demo import WORKLOADS, DemoProvider, bucket_as_of
from otel_llm_receiver.scheduler import Receiver

from .support.focus_conformance import check, read_back
from .support.ledger_stores import poll_held, shared_store, storage_section

DAY = 86_400
#: A Wednesday, 16:28 UTC.
NOW = 1_795_000_000 - 1_795_000_000 % DAY + 16 * 3600 + 28 * 60
SEED = 42
MANDATORY_ON_USAGE = ("ConsumedQuantity", "ConsumedUnit", "PricingQuantity", "PricingUnit", "ListUnitPrice")


def demo_config(tmp: Path, store: StorageConfig, env: pytest.MonkeyPatch, variable: str = "LEDGER_DSN") -> Path:
    raw = yaml.safe_load(DEMO_CONFIG)
    raw["storage"] = storage_section(store, env, variable)
    assert raw["providers"]["demo"] == {"backfill": "336h", "seed": SEED}  # the default run, unchanged
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def first_poll(config_path: Path) -> None:
    """One real first poll of the demo instance (the backfill), at ``NOW``."""
    config = parse_config(yaml.safe_load(config_path.read_text()))

    async def go() -> None:
        receiver = Receiver(config, exporters=[], clock=lambda: float(NOW))
        try:
            outcome = await poll_held(receiver, "demo")
            assert outcome.ok, outcome
        finally:
            await receiver.aclose()

    asyncio.run(go())


def export(config: Path, out: Path, since: str = "17d") -> tuple[list[str], list[dict[str, str | None]]]:
    assert main(["focus", "--config", str(config), "--now", str(NOW), "--since", since, "--version", "1.2",
                 "--format", "csv", "--out", str(out)]) == 0
    return read_back(out, "csv")


# The demo's backfill on PostgreSQL takes about a minute on a loaded 2-CPU machine: in the slow suite.
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def demo_export(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], list[dict[str, str | None]]]]:
    tmp = tmp_path_factory.mktemp("demo-focus")
    with shared_store(request.param, request, tmp) as store, pytest.MonkeyPatch.context() as env:
        config = demo_config(tmp, store, env, "DEMO_LEDGER_DSN")
        first_poll(config)
        yield export(config, tmp / "focus.csv")


def whole_day_tokens(day: int) -> dict[tuple[str, str], int]:
    """Every token of each (tenancy, model) in the UTC day, as of ``NOW``, from the demo's own functions."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for start in range(day, day + DAY, 60):
        for w in WORKLOADS:
            values = bucket_as_of(SEED, w, start, 60, NOW)
            if values is not None:
                out[(w.tenancy, w.model)] += sum(values[0].values())
    return dict(out)


def test_no_usage_row_has_a_null_mandatory_quantity_or_unit_price(
    demo_export: tuple[list[str], list[dict[str, str | None]]],
) -> None:
    columns, rows = demo_export
    assert {"SkuPriceDetails", "InvoiceId"} <= set(columns)
    usage = [r for r in rows if r["ChargeCategory"] == "Usage" and r["ChargeClass"] != "Correction"]
    assert len(usage) == len(rows) > 100
    nulls = {(name, r["ChargePeriodStart"]) for r in usage for name in MANDATORY_ON_USAGE if r[name] is None}
    assert nulls == set()
    assert check("1.2", columns, rows) == set()
    for r in usage:
        price, quantity = Decimal(r["ListUnitPrice"] or "x"), Decimal(r["PricingQuantity"] or "x")
        assert Decimal(r["ListCost"] or "x") == price * quantity
        assert r["x_ListPriceSource"] in ("published", "derived")


def test_cost_days_the_token_backfill_does_not_reach_are_money_measured(
    demo_export: tuple[list[str], list[dict[str, str | None]]],
) -> None:
    """The demo's cost report re-reads two days before the backfill: those days have cost and no tokens."""
    _, rows = demo_export
    first_usage_day = NOW - 14 * DAY - (NOW - 14 * DAY) % DAY
    earlier = [r for r in rows if (r["ChargePeriodStart"] or "") < timestamp(first_usage_day)]
    assert {r["ChargePeriodStart"] for r in earlier} == {timestamp(first_usage_day - d * DAY) for d in (1, 2)}
    for r in earlier:
        assert r["x_CostSource"] == "reported"
        assert (r["ConsumedUnit"], r["PricingUnit"], r["ListUnitPrice"]) == ("USD", "USD", "1")
        assert r["ConsumedQuantity"] == r["PricingQuantity"] == r["BilledCost"] == r["ListCost"]
        assert r["x_CoverageStart"] is None


def test_the_first_day_of_tokens_is_whole(demo_export: tuple[list[str], list[dict[str, str | None]]]) -> None:
    """A 336h backfill at 16:28 starts at 00:00 UTC 14 days back: that day's tokens are the whole day's."""
    _, rows = demo_export
    first_usage_day = NOW - 14 * DAY - (NOW - 14 * DAY) % DAY
    days = sorted({r["ChargePeriodStart"] for r in rows if r["ConsumedUnit"] == "Tokens"})
    assert days[0] == timestamp(first_usage_day)
    got: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        if r["ChargePeriodStart"] == timestamp(first_usage_day) and r["ConsumedUnit"] == "Tokens":
            got[(r["SubAccountId"] or "", r["x_Model"] or "")] += int(Decimal(r["ConsumedQuantity"] or "x"))
    assert dict(got) == whole_day_tokens(first_usage_day)
    assert all(r["x_CoverageStart"] is None for r in rows)


def test_a_day_whose_usage_starts_mid_day_is_marked(tmp_path: Path, ledger_store: StorageConfig,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A ledger whose usage starts at 16:28 (an older version's backfill): that day's token rows say so."""
    config = demo_config(tmp_path, ledger_store, monkeypatch)
    day = NOW - 2 * DAY - (NOW - 2 * DAY) % DAY
    provider = DemoProvider(parse_config(yaml.safe_load(config.read_text())).providers[0])
    result = asyncio.run(provider.fetch(Window(day + 16 * 3600 + 28 * 60, NOW)))
    with open_ledger(ledger_store) as ledger:
        ledger.apply("demo", result)
    _, rows = export(config, tmp_path / "focus.csv", since="3d")
    marked = {(r["ChargePeriodStart"], r["x_CoverageStart"]) for r in rows if r["x_CoverageStart"] is not None}
    assert marked == {(timestamp(day), timestamp(day + 16 * 3600))}  # the hour the usage data starts in
    assert {r["ConsumedUnit"] for r in rows if r["x_CoverageStart"] is not None} == {"Tokens"}
    later = [r for r in rows if (r["ChargePeriodStart"] or "") > timestamp(day) and r["ConsumedUnit"] == "Tokens"]
    assert later and all(r["x_CoverageStart"] is None for r in later)


def test_the_first_window_starts_at_midnight_within_what_the_provider_keeps() -> None:
    """A day or more: back to 00:00 UTC; less: unchanged; a provider keeping only N days: the next midnight."""
    midnight = NOW - NOW % DAY
    assert first_window_start(NOW, 336 * 3600) == midnight - 14 * DAY
    assert first_window_start(NOW, DAY) == midnight - DAY
    assert first_window_start(NOW, 6 * 3600) == NOW - 6 * 3600
    assert first_window_start(NOW, 30 * DAY, 30 * DAY) == midnight - 29 * DAY  # never before what it keeps
    assert first_window_start(NOW, 0) == NOW
