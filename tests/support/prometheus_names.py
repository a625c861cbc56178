"""The OTLP -> Prometheus name translation the Collector applies, and the metric names a PromQL query uses.

Two jobs, both for checking our Prometheus-facing files against the metric catalog:

* ``prometheus_metric_name`` / ``prometheus_label_name`` re-implement the default translation strategy
  (``UnderscoreEscapingWithSuffixes``) of Prometheus' ``otlptranslator`` package, which the Collector's
  ``prometheus`` and ``prometheusremotewrite`` exporters use, so a test can check every catalog entry's
  ``prometheus_name`` independently of what the catalog says;
* ``metric_names_in`` pulls the metric names out of a PromQL expression (label names, function names,
  keywords and string literals are not metric names), so rules and dashboard panels that name a metric the
  catalog does not have fail by name instead of silently returning nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from otel_llm_receiver.catalog import CATALOG, Catalog, MetricDef

# otlptranslator's unitMap and perUnitMap (metric_namer.go): UCUM units -> Prometheus base-unit words.
_UNIT_WORDS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds", "us": "microseconds",
    "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams",
    "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}
_PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_INVALID = re.compile(r"[^a-zA-Z0-9:]+")


def _tokens(text: str) -> list[str]:
    return [t for t in _INVALID.split(text) if t]


def _unit_suffixes(unit: str) -> tuple[str, str]:
    """(main, per) suffixes; a part with a ``{annotation}`` adds nothing, unknown units are kept as they are."""
    main_raw, _, per_raw = unit.partition("/")
    main_raw, per_raw = main_raw.strip(), per_raw.strip()
    main = _UNIT_WORDS.get(main_raw, main_raw) if main_raw and not re.search(r"[{}]", main_raw) else ""
    per = ""
    if per_raw and not re.search(r"[{}]", per_raw):
        per = "per_" + _PER_UNIT_WORDS.get(per_raw, per_raw)
    return "_".join(_tokens(main)), "_".join(_tokens(per))


def prometheus_metric_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus name of an OTLP metric; ``kind`` is ``counter`` (monotonic sum), ``gauge`` or ``histogram``.

    The unit suffix is skipped when the name already has it as one of its ``_``-separated tokens (anywhere,
    not only at the end); monotonic sums get ``_total``; unit ``1`` adds ``_ratio`` to gauges only.
    """
    tokens = _tokens(name)
    main, per = _unit_suffixes(unit)
    if main and main not in tokens:
        tokens.append(main)
    if per and per != "per_" and per not in tokens:
        tokens.append(per)
    if kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    out = "_".join(tokens)
    return "_" + out if out[:1].isdigit() else out


def prometheus_label_name(attribute: str) -> str:
    """``gen_ai.provider.name`` -> ``gen_ai_provider_name`` (invalid characters become ``_``)."""
    out = re.sub(r"[^a-zA-Z0-9_]", "_", attribute)
    return "key_" + out if out[:1].isdigit() else out


def metric_kind(m: MetricDef) -> str:
    """How the Prometheus exporter types a catalog metric (a non-monotonic sum becomes a gauge)."""
    if m.instrument == "histogram":
        return "histogram"
    return "counter" if m.instrument == "sum" and m.monotonic else "gauge"


def series_names(m: MetricDef) -> tuple[str, ...]:
    """The sample names a catalog metric produces in Prometheus (a histogram has three)."""
    if m.instrument == "histogram":
        return tuple(m.prometheus_name + s for s in ("_bucket", "_sum", "_count"))
    return (m.prometheus_name,)


def catalog_series_names(catalog: Catalog = CATALOG) -> dict[str, MetricDef]:
    """Every Prometheus sample name the catalog's metrics produce -> the metric."""
    return {n: m for m in catalog.metrics.values() for n in series_names(m)}


# ----------------------------------------------------------------------------------------------------- PromQL
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'" + r"|`[^`]*`")
_BRACES = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
     "inf", "nan", "atan2", "start", "end"}
)


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (``__name__`` matchers are not followed)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("{}", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGES.sub("", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?[smhdwy]?\b", " ", text)
    return {t for t in _IDENT.findall(text) if t.lower() not in _KEYWORDS}


def unknown_metrics(exprs: Iterable[str], known: Iterable[str]) -> set[str]:
    """Metric names used in ``exprs`` that are neither catalog series nor in ``known`` (e.g. recorded rules)."""
    allowed = set(catalog_series_names()) | set(known)
    return {n for e in exprs for n in metric_names_in(e) if n not in allowed}


# ------------------------------------------------------------------------------------------------ docs table
def render_names_table(catalog: Catalog = CATALOG) -> str:
    """The generated part of docs/collector.md: every catalog metric and attribute in its Prometheus form."""
    out = [
        "| OTLP metric | Instrument | Unit | Prometheus series | Labels |",
        "|---|---|---|---|---|",
    ]
    for m in catalog.metrics.values():
        kind = metric_kind(m)
        series = ", ".join(f"`{n}`" for n in series_names(m))
        labels = ", ".join(f"`{prometheus_label_name(a)}`" for a in m.attributes)
        out.append(f"| `{m.name}` | {m.instrument} ({kind}) | `{m.unit}` | {series} | {labels} |")
    out += ["", "| Attribute (OTLP) | Label (Prometheus) |", "|---|---|"]
    out += [f"| `{a}` | `{prometheus_label_name(a)}` |" for a in catalog.attributes]
    return "\n".join(out) + "\n"


def rewrite_doc(path: str) -> None:
    """Replace the generated table in ``path`` (between its BEGIN/END markers) with the current one."""
    begin, end = "<!-- BEGIN generated: prometheus names -->\n", "<!-- END generated: prometheus names -->"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + begin + render_names_table() + end + tail)


if __name__ == "__main__":
    import sys

    rewrite_doc(sys.argv[1] if len(sys.argv) > 1 else "docs/collector.md")
