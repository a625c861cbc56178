"""The metric catalog is the public interface: docs follow it, the emitter obeys it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from otel_llm_receiver.catalog import CATALOG, MetricDef, load_catalog, render_markdown, render_names
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink

ROOT = Path(__file__).resolve().parent.parent
KIND = {"sum": "sum", "gauge": "gauge", "histogram": "histogram"}


def test_docs_metrics_md_is_generated_from_the_catalog() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == render_markdown(), (
        "docs/metrics.md is stale: run `python -m otel_llm_receiver.catalog > docs/metrics.md`"
    )


def test_names_py_is_generated_from_the_catalog() -> None:
    committed = (ROOT / "otel_llm_receiver" / "names.py").read_text()
    assert committed == render_names(), (
        "otel_llm_receiver/names.py is stale: run `make docs` "
        "(python -m otel_llm_receiver.catalog --names > otel_llm_receiver/names.py)"
    )


def test_names_carry_what_the_ledger_derives_from_the_catalog() -> None:
    from otel_llm_receiver import names

    assert names.MEASURE_OF_METRIC[names.METRIC_TOKENS] == "tokens"
    assert names.MEASURE_OF_METRIC[names.METRIC_COST_NON_USD] == "cost"
    assert set(names.MEASURE_OF_METRIC.values()) <= set(CATALOG.attributes["llm.measure"].enum)
    assert {"llm.usage.storage"} == names.LEVEL_METRICS
    assert {names.METRIC_COST, names.METRIC_COST_NON_USD, names.METRIC_COST_ESTIMATED} == names.MONEY_METRICS
    assert names.MONEY_METRICS | {names.METRIC_BILLED_QUANTITY} == names.NANO_METRICS
    assert {names.METRIC_COST_ESTIMATED} == names.ROLLUP_PICO_METRICS
    assert names.CURRENCY_ATTR == "llm.currency"


_ONE_METRIC = (
    "schema_version: '1.0.0'\nattributes:\n  llm.measure: {{description: d, type: string, enum: [tokens]}}\n"
    "metrics:\n  x:\n    description: d\n    instrument: {instrument}\n    unit: '1'\n    value_type: int\n"
    "    attributes: [llm.measure]\n    prometheus_name: x\n{extra}"
)


@pytest.mark.parametrize(("instrument", "extra", "problem"), [
    ("sum", "    measure: bytes\n", "not a value of llm.measure"),
    ("sum", "    level: true\n", "needs instrument: gauge"),
    ("sum", "    measure: tokens\n    money: true\n", "money: true needs ledger_scale: nano"),
    ("sum", "    measure: tokens\n    ledger_scale: micro\n", "ledger_scale must be nano"),
    ("sum", "    ledger_scale: nano\n", "ledger fields need a measure"),
    ("sum", "    measure: tokens\n    const: tokens\n", "const must look like"),
])
def test_catalog_rejects_inconsistent_ledger_fields(instrument: str, extra: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        load_catalog(_ONE_METRIC.format(instrument=instrument, extra=extra))


def _prometheus_name(m: MetricDef) -> str:
    """The Collector's default otlptranslator naming (see shared reference otel-prometheus.md)."""
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", m.name)
    unit = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}.get(m.unit, m.unit)
    if m.unit.startswith("{"):
        unit = ""
    elif m.unit == "1":
        unit = "ratio" if m.instrument == "gauge" else ""
    if unit and not name.endswith("_" + unit):
        name += "_" + unit
    if m.instrument == "sum" and m.monotonic:
        name += "_total"
    return re.sub("_+", "_", name)


@pytest.mark.parametrize("name", sorted(CATALOG.metrics))
def test_catalog_entry_is_complete_and_consistent(name: str) -> None:
    m = CATALOG.metrics[name]
    assert m.description and m.unit and m.attributes
    assert m.instrument in KIND
    assert m.prometheus_name == _prometheus_name(m)
    if m.instrument == "sum":
        assert m.temporality == "cumulative"
    assert name.startswith(("llm.usage.", "llm.receiver.", "llm.pricing.", "llm.cost.", "llm.budget.", "llm.anomaly.", "llm.attribution."))


def test_catalog_rejects_undefined_attributes() -> None:
    with pytest.raises(ValueError, match="undefined attributes"):
        load_catalog("attributes: {}\nmetrics:\n  x:\n    description: d\n    instrument: sum\n"
                     "    unit: '1'\n    value_type: int\n    attributes: [nope]\n    prometheus_name: x\n")


@pytest.mark.parametrize("version", ["", "1.0", "v1.0.0", None])
def test_catalog_requires_a_semantic_schema_version(version: str | None) -> None:
    line = "" if version is None else f"schema_version: '{version}'\n"
    with pytest.raises(ValueError, match="schema_version"):
        load_catalog(line + "attributes: {}\nmetrics: {}\n")
    assert load_catalog("schema_version: '2.1.0'\nattributes: {}\nmetrics: {}\n").schema_version == "2.1.0"


def test_emitted_metrics_match_the_catalog(tmp_path: Path) -> None:
    """Every metric on the wire is in the catalog with its unit, kind and only its declared attributes."""
    with OTLPSink() as sink:
        config = parse_config({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}}},
            "providers": {"demo": {"backfill": "3d", "seed": 1}},
        })
        receiver = Receiver(config)
        try:
            assert asyncio.run(receiver.run_once()) == 0
            # A second poll with a shrunk bucket would be needed for adjustments; the demo never shrinks,
            # so llm.usage.adjustments is checked in the ledger property test instead.
        finally:
            asyncio.run(receiver.aclose())
        names = sink.metric_names()
        assert names >= {"llm.usage.tokens", "llm.usage.requests", "llm.usage.cost", "llm.receiver.polls",
                         "llm.receiver.poll.duration", "llm.receiver.last_success", "llm.receiver.data.lag",
                         "llm.receiver.records"}
        for name in names:
            m = CATALOG.metrics[name]
            info = sink.metric_info(name)
            assert info.unit == m.unit and info.kind == m.instrument and info.description == m.description
            for key in sink.points(name):
                attrs = {k for k, _ in key}
                assert attrs <= set(m.attributes), f"{name} carries undeclared attributes {attrs - set(m.attributes)}"
                for k, v in key:
                    enum = CATALOG.attributes[k].enum
                    assert not enum or v in enum, f"{name}: {k}={v} is not one of {enum}"
