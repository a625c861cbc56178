"""The ledger and emitter features the OpenAI provider added: other measures, sparse records, levels, quantities.

They are exercised end to end by the contract tests; these pin each one down on its own.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from otel_llm_receiver.builder import MetricsBuilder, make_resource
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord

H = 3600


def usage(start: int, *, tokens: dict[str, int] | None = None, measures: dict[str, int] | None = None,
          sparse: bool = False, modality: str = "audio") -> UsageRecord:
    return UsageRecord("openai", "m", "chat", "proj", start, H, tokens or {}, None, None,
                       {"llm.token.modality": modality}, measures or {}, sparse)


def totals(ledger: Ledger) -> dict[tuple[str, str], tuple[int, int, int | None]]:
    return {(s.metric, s.attrs): (s.total, s.adjustments, s.level) for s in ledger.snapshot().series}


def exported(ledger: Ledger) -> dict[str, Any]:
    """metric name -> the OTLP ``Metric`` message the builder sends for it."""
    export = MetricsBuilder(make_resource("test")).build(ledger.export_rows(), None, 1)
    return {m.name: m for r in export.requests() for m in r.resource_metrics[0].scope_metrics[0].metrics}


def attributes(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


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
        metrics = exported(ledger)
    assert metrics["llm.usage.storage"].WhichOneof("data") == "gauge"
    assert [p.as_int for p in metrics["llm.usage.storage"].gauge.data_points] == [90]
    assert metrics["llm.usage.images"].WhichOneof("data") == "sum"
    assert [p.as_int for p in metrics["llm.usage.images"].sum.data_points] == [6]
    assert "llm.usage.adjustments" not in metrics  # a level going down is not an adjustment


def test_billed_quantities_are_exact_and_beside_their_cost(tmp_path: Path) -> None:
    cost = CostRecord("openai", "proj", 0, 86400, Decimal("0.06"), "USD", line_item="Text tokens",
                      quantity=Decimal("10000.5"), quantity_unit="tokens")
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.apply("i", PollResult(costs=[cost]))
        metrics = exported(ledger)
    (quantity,) = metrics["llm.usage.billed_quantity"].sum.data_points
    assert quantity.as_double == 10000.5
    assert attributes(quantity)["llm.cost.quantity_unit"] == "tokens"
    assert attributes(quantity)["llm.cost.line_item"] == "Text tokens"
    (money,) = metrics["llm.usage.cost"].sum.data_points
    assert money.as_double == 0.06 and "llm.cost.quantity_unit" not in attributes(money)
