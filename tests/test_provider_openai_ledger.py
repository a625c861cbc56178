"""The ledger and emitter features the OpenAI provider added: other measures, sparse records, levels, quantities.

They are exercised end to end by the contract tests; these pin each one down on its own.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from opentelemetry.sdk.metrics.export import Gauge, Sum

from otel_llm_receiver.emitter import MetricsBuilder, make_resource
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord

H = 3600


def usage(start: int, *, tokens: dict[str, int] | None = None, measures: dict[str, int] | None = None,
          sparse: bool = False, modality: str = "audio") -> UsageRecord:
    return UsageRecord("openai", "m", "chat", "proj", start, H, tokens or {}, None, None,
                       {"llm.token.modality": modality}, measures or {}, sparse)


def totals(ledger: Ledger) -> dict[tuple[str, str], tuple[int, int, int | None]]:
    return {(s.metric, s.attrs): (s.total, s.adjustments, s.level) for s in ledger.snapshot().series}


def test_sparse_zeros_create_no_series_but_overwrite_an_existing_bucket(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.apply("i", PollResult(usage=[usage(0, tokens={"input": 0, "output": 0}, sparse=True)]))
        assert totals(ledger) == {}
        ledger.apply("i", PollResult(usage=[usage(0, tokens={"input": 5, "output": 0}, sparse=True)]))
        (total, adjustments, _), = [v for (m, a), v in totals(ledger).items() if '"input"' in a]
        assert (total, adjustments) == (5, 0)
        ledger.apply("i", PollResult(usage=[usage(0, tokens={"input": 0, "output": 0}, sparse=True)]))
        (total, adjustments, _), = [v for (m, a), v in totals(ledger).items() if '"input"' in a]
        assert total - adjustments == 0  # the correction to zero was applied, not ignored
        ledger.apply("i", PollResult(usage=[usage(0, tokens={"input": 0}, modality="text")]))
        assert any('"text"' in a for _, a in totals(ledger))  # a plain record's zero does create its series


def test_measures_are_their_own_series_and_levels_report_the_newest_bucket(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.apply("i", PollResult(usage=[
            usage(0, measures={"llm.usage.images": 2, "llm.usage.storage": 100}),
            usage(H, measures={"llm.usage.images": 3, "llm.usage.storage": 70}),
        ]))
        ledger.apply("i", PollResult(usage=[usage(H, measures={"llm.usage.images": 4, "llm.usage.storage": 90})]))
        by_metric = {m: v for (m, _), v in totals(ledger).items()}
        assert by_metric["llm.usage.images"] == (6, 0, None)
        assert by_metric["llm.usage.storage"][2] == 90  # the level: the newest bucket's latest value
        data = MetricsBuilder(make_resource("test")).build(ledger.snapshot(), None, 1)
    metrics = {m.name: m.data for m in data.resource_metrics[0].scope_metrics[0].metrics}
    assert isinstance(metrics["llm.usage.storage"], Gauge)
    assert [p.value for p in metrics["llm.usage.storage"].data_points] == [90]
    assert isinstance(metrics["llm.usage.images"], Sum)
    assert [p.value for p in metrics["llm.usage.images"].data_points] == [6]
    assert "llm.usage.adjustments" not in metrics  # a level going down is not an adjustment


def test_billed_quantities_are_exact_and_beside_their_cost(tmp_path: Path) -> None:
    cost = CostRecord("openai", "proj", 0, 86400, Decimal("0.06"), "USD", line_item="Text tokens",
                      quantity=Decimal("10000.5"), quantity_unit="tokens")
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.apply("i", PollResult(costs=[cost]))
        data = MetricsBuilder(make_resource("test")).build(ledger.snapshot(), None, 1)
    metrics = {m.name: m.data for m in data.resource_metrics[0].scope_metrics[0].metrics}
    (quantity,) = metrics["llm.usage.billed_quantity"].data_points
    assert quantity.value == 10000.5
    assert quantity.attributes["llm.cost.quantity_unit"] == "tokens"
    assert quantity.attributes["llm.cost.line_item"] == "Text tokens"
    (money,) = metrics["llm.usage.cost"].data_points
    assert money.value == 0.06 and "llm.cost.quantity_unit" not in money.attributes
