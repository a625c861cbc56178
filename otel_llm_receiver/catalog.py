"""The metric catalog: ``catalog.yaml`` loaded into typed definitions, and the generator of docs/metrics.md.

``python -m otel_llm_receiver.catalog`` prints docs/metrics.md; a test fails when the committed file differs.
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


@dataclass(frozen=True, slots=True)
class Catalog:
    metrics: dict[str, MetricDef]
    attributes: dict[str, AttributeDef]
    #: The instrumentation scope version: changes only with the metrics' semantics, not with each release, so
    #: that an upgrade does not start a second copy of every series (``otel_scope_version`` is a label).
    schema_version: str = "0"


def load_catalog(text: str | None = None) -> Catalog:
    """Parse the catalog (the packaged ``catalog.yaml`` unless ``text`` is given) and check its references."""
    raw: dict[str, Any] = yaml.safe_load(
        text if text is not None else files("otel_llm_receiver").joinpath("catalog.yaml").read_text("utf-8")
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
        )
    version = raw.get("schema_version")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"catalog: schema_version must be a quoted semantic version, not {version!r}")
    return Catalog(metrics=metrics, attributes=attributes, schema_version=version)


CATALOG = load_catalog()


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
    sys.stdout.write(render_markdown())
