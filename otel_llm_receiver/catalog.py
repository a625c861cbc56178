"""The metric catalog: ``catalog.yaml`` loaded into typed definitions, and the generator of docs/metrics.md
and of ``names.py``.

``python -m otel_llm_receiver.catalog`` prints docs/metrics.md, ``--names`` prints otel_llm_receiver/names.py
(the name constants every module uses, and what the ledger derives from them); tests fail when either committed
file differs (``make docs`` regenerates both).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal

import yaml


@dataclass(frozen=True, slots=True)
class AttributeDef:
    name: str
    description: str
    type: str
    enum: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    description: str
    instrument: Literal["sum", "gauge", "histogram"]
    unit: str
    value_type: Literal["int", "double"]
    attributes: tuple[str, ...]
    enabled: bool
    prometheus_name: str
    monotonic: bool = False
    temporality: str | None = None
    #: Ledger facts (see catalog.yaml's header): the ``llm.measure`` of a usage counter, a level (gauge kept as
    #: its newest bucket), integer nano-unit storage, money, pico-unit rollups, and the constant's name.
    measure: str | None = None
    level: bool = False
    ledger_scale: Literal["nano"] | None = None
    money: bool = False
    rollup_scale: Literal["pico"] | None = None
    const: str | None = None

    @property
    def const_name(self) -> str:
        """The constant naming this metric in names.py: ``METRIC_`` + the name after ``llm.usage.``."""
        if self.const:
            return self.const
        return "METRIC_" + re.sub(r"[^A-Z0-9]", "_", self.name.removeprefix("llm.usage.").upper())


@dataclass(frozen=True, slots=True)
class Catalog:
    metrics: dict[str, MetricDef]
    attributes: dict[str, AttributeDef]
    #: The instrumentation scope version: changes only with the metrics' semantics, not with each release, so
    #: that an upgrade does not start a second copy of every series (``otel_scope_version`` is a label).
    schema_version: str = "0"


def load_catalog(text: str | None = None) -> Catalog:
    """Parse the catalog (the packaged ``catalog.yaml`` unless ``text`` is given) and check its references."""
    # A safe loader either way; libyaml's (when PyYAML was built with it) parses the 27 KB in 8 ms, not 55 ms.
    raw: dict[str, Any] = yaml.load(
        text if text is not None else files("otel_llm_receiver").joinpath("catalog.yaml").read_text("utf-8"),
        Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader),
    )
    attributes = {
        name: AttributeDef(
            name=name,
            description=" ".join(str(a["description"]).split()),
            type=a["type"],
            enum=tuple(a.get("enum", ())),
            examples=tuple(a.get("examples", ())),
        )
        for name, a in raw["attributes"].items()
    }
    metrics: dict[str, MetricDef] = {}
    for name, m in raw["metrics"].items():
        unknown = [a for a in m["attributes"] if a not in attributes]
        if unknown:
            raise ValueError(f"catalog: metric {name} uses undefined attributes {unknown}")
        metrics[name] = MetricDef(
            name=name,
            description=" ".join(str(m["description"]).split()),
            instrument=m["instrument"],
            unit=str(m["unit"]),
            value_type=m["value_type"],
            attributes=tuple(m["attributes"]),
            enabled=bool(m.get("enabled", True)),
            prometheus_name=m["prometheus_name"],
            monotonic=bool(m.get("monotonic", False)),
            temporality=m.get("temporality"),
            measure=m.get("measure"),
            level=bool(m.get("level", False)),
            ledger_scale=m.get("ledger_scale"),
            money=bool(m.get("money", False)),
            rollup_scale=m.get("rollup_scale"),
            const=m.get("const"),
        )
        _check_ledger_fields(metrics[name], attributes)
    version = raw.get("schema_version")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"catalog: schema_version must be a quoted semantic version, not {version!r}")
    return Catalog(metrics=metrics, attributes=attributes, schema_version=version)


def _check_ledger_fields(m: MetricDef, attributes: dict[str, AttributeDef]) -> None:
    """The ledger derives its sets from these fields (via names.py): a wrong one would miscount silently."""
    measures = attributes["llm.measure"].enum if "llm.measure" in attributes else ()
    problems = []
    if m.measure is not None and m.measure not in measures:
        problems.append(f"measure {m.measure!r} is not a value of llm.measure {list(measures)}")
    if m.measure is not None and m.level:
        problems.append("a level has no measure (it is never summed)")
    if m.level and m.instrument != "gauge":
        problems.append("level: true needs instrument: gauge")
    if m.ledger_scale not in (None, "nano"):
        problems.append(f"ledger_scale must be nano, not {m.ledger_scale!r}")
    if m.money and m.ledger_scale != "nano":
        problems.append("money: true needs ledger_scale: nano")
    if m.rollup_scale not in (None, "pico"):
        problems.append(f"rollup_scale must be pico, not {m.rollup_scale!r}")
    if m.rollup_scale is not None and not m.money:
        problems.append("rollup_scale: pico needs money: true")
    if (m.ledger_scale or m.money or m.rollup_scale) and m.measure is None:
        problems.append("ledger fields need a measure")
    if m.const is not None and not re.fullmatch(r"METRIC_[A-Z0-9_]+", m.const):
        problems.append(f"const must look like METRIC_NAME, not {m.const!r}")
    if problems:
        raise ValueError(f"catalog: metric {m.name}: " + "; ".join(problems))


CATALOG = load_catalog()


def _attr_const(name: str) -> str:
    return "ATTR_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def render_names(catalog: Catalog = CATALOG) -> str:
    """otel_llm_receiver/names.py, generated: metric and attribute name constants and the ledger's sets.

    Modules import names from here, never from the ledger, so a provider or the pricing knows the names without
    reaching storage; adding a measure is one catalog entry.
    """
    def frozen(metrics: list[MetricDef]) -> str:
        return "frozenset({" + ", ".join(m.const_name for m in metrics) + "})"

    ms = list(catalog.metrics.values())
    out = [
        '"""Metric and attribute names from catalog.yaml, and what the ledger derives from them.',
        "",
        "Generated by `make docs` (`python -m otel_llm_receiver.catalog --names`) from otel_llm_receiver/catalog.yaml;",
        "do not edit: change the catalog and regenerate (a test fails while this file is stale).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "# Metrics",
    ]
    consts = [m.const_name for m in ms]
    if len(set(consts)) != len(consts):
        raise ValueError("catalog: two metrics map to one constant name; give one a `const`")
    out += [f'{m.const_name}: Final = "{m.name}"' for m in ms]
    out += ["", "# Attributes"]
    out += [f'{_attr_const(a.name)}: Final = "{a.name}"' for a in catalog.attributes.values()]
    out += [
        "",
        "#: The attribute naming a non-USD amount's ISO 4217 code.",
        f"CURRENCY_ATTR: Final = {_attr_const('llm.currency')}",
        "",
        "# Derived from the metrics' ledger fields",
        "#: What ``llm.measure`` says for a shrink of each usage counter (``UsageRecord.measures`` may name these,",
        "#: or a level).",
        "MEASURE_OF_METRIC: Final = {",
        *[f'    {m.const_name}: "{m.measure}",' for m in ms if m.measure is not None],
        "}",
        "#: Metrics that are levels (a gauge: the newest bucket's value), not flows summed over buckets.",
        f"LEVEL_METRICS: Final = {frozen([m for m in ms if m.level])}",
        "#: Metrics whose ledger values are money (integer nano-units of their currency).",
        f"MONEY_METRICS: Final = {frozen([m for m in ms if m.money])}",
        "#: Metrics whose values are integer nano-units (money, fractional billed quantities).",
        f"NANO_METRICS: Final = {frozen([m for m in ms if m.ledger_scale == 'nano'])}",
        "#: Metrics whose hourly rollups are pico-units (every other money rollup is nano-units, counts are counts).",
        f"ROLLUP_PICO_METRICS: Final = {frozen([m for m in ms if m.rollup_scale == 'pico'])}",
        "",
    ]
    return "\n".join(out)


def render_markdown(catalog: Catalog = CATALOG) -> str:
    """docs/metrics.md, generated: the metric and attribute reference."""
    out = [
        "<!-- Generated from otel_llm_receiver/catalog.yaml by `python -m otel_llm_receiver.catalog`."
        " Do not edit. -->",
        "# Metrics",
        "",
        "Every metric the receiver emits over OTLP, with the name the OpenTelemetry Collector's Prometheus",
        "exporters give it (default `otlptranslator` strategy: dots become `_`, unit suffix, `_total` on",
        "monotonic sums). Attribute keys translate the same way (`gen_ai.provider.name` ->",
        "`gen_ai_provider_name`).",
        "",
        f"Schema version **{catalog.schema_version}**: the OTLP instrumentation scope version (`otel_scope_version`",
        "in Prometheus). It changes only when a metric's meaning changes, not with every release (docs/collector.md).",
        "",
        "| Metric (OTLP) | Prometheus | Instrument | Unit | Enabled | Description |",
        "|---|---|---|---|---|---|",
    ]
    for m in catalog.metrics.values():
        kind = m.instrument + (f", {m.temporality}, monotonic" if m.monotonic else "")
        out.append(
            f"| `{m.name}` | `{m.prometheus_name}` | {kind} | `{m.unit}` | {'yes' if m.enabled else 'no'} "
            f"| {m.description} |"
        )
    out += ["", "## Attributes of each metric", ""]
    for m in catalog.metrics.values():
        out.append(f"- `{m.name}`: " + ", ".join(f"`{a}`" for a in m.attributes))
    out += ["", "## Attributes", "", "| Attribute | Type | Values | Description |", "|---|---|---|---|"]
    for a in catalog.attributes.values():
        values = ", ".join(f"`{v}`" for v in a.enum) or (
            "e.g. " + ", ".join(f"`{v}`" for v in a.examples) if a.examples else ""
        )
        out.append(f"| `{a.name}` | {a.type} | {values} | {a.description} |")
    out += [
        "",
        "Provider instances' `labels` (config) are added to every usage and cost series as extra attributes.",
        "`llm.tenancy.name` is added when the provider's list API resolved the id.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render_names() if sys.argv[1:] == ["--names"] else render_markdown())
