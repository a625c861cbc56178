"""The ledger's history as OpenMetrics, the series the Collector's Prometheus exporter would have exposed.

Why: Prometheus only knows what it scraped, so dashboards opened right after a backfill show totals but no
rates, per-day charts or trends. ``history`` polls every provider once (the backfill lands in the ledger the
receiver will keep using), then writes, for each hour the ledger's rollups cover, what an export at that hour
would have carried, in Prometheus form: ``promtool tsdb create-blocks-from openmetrics`` turns it into blocks
(the compose stack does this before Prometheus starts), and the live scrape continues the very same series.

* The series come from the receiver's own ``MetricsBuilder`` (attributes, tenancy names, teams, grouping) and
  ``Signals`` (budgets, anomalies, coverage, period to date, prices); nothing is re-derived.
* A counter's value at hour ``H`` is its final total less the rollups of hours starting at or after ``H``, so the
  last sample (at ``now``) is exactly what ``run --once`` exports from the same ledger. Between the hours a
  sample every 5 minutes (``_fill``) keeps short ``rate()`` windows and instant queries answering.
* Gauges at ``H`` are ``Signals.read`` as of ``H`` over the final ledger: a day's reported cost may show a little
  earlier than it did live. Self-health is left out: no receiver ran then, and the live scrape brings it.
* Names and labels follow the Collector's prometheus exporter (``UnderscoreEscapingWithSuffixes``): the catalog's
  ``prometheus_name``, attribute keys with invalid characters as ``_``, ``job`` / ``instance`` from the resource,
  ``otel_scope_name`` / ``otel_scope_version`` from the scope.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from .attribution import Attributor
from .builder import MetricsBuilder, make_resource
from .catalog import CATALOG
from .config import Config
from .ledger import LEVEL_METRICS, PICOS_PER_NANO, ROLLUP_PICO_METRICS, ExportRows, Ledger, open_ledger
from .pricing import PriceBook
from .signals import Signals, gauge_metrics

HOUR = 3600
STEP = 300  # seconds between samples in the written history (well under Prometheus' 5-minute lookback)
NANOS = 1_000_000_000


def prometheus_label(key: str) -> str:
    """An attribute key as the exporter's label namer writes it (``gen_ai.provider.name`` -> ``gen_ai_provider_name``)."""
    out = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return "key_" + out if out[:1].isdigit() else out


def _text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class _Family:
    kind: str  # counter or gauge
    help: str
    samples: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = field(default_factory=dict)


@dataclass
class History:
    """Prometheus samples per family, added one export at a time (timestamps rising)."""

    families: dict[str, _Family] = field(default_factory=dict)

    def add(self, request: ExportMetricsServiceRequest, at: int) -> None:
        """The samples the Collector's prometheus exporter serves for ``request``, stamped ``at``."""
        for rm in request.resource_metrics:
            resource = {kv.key: _text(kv.value) for kv in rm.resource.attributes}
            job = resource.get("service.name", "")
            if resource.get("service.namespace"):
                job = f"{resource['service.namespace']}/{job}"
            target = {"job": job, "instance": resource.get("service.instance.id", "")}
            for sm in rm.scope_metrics:
                scope = {"otel_scope_name": sm.scope.name, "otel_scope_version": sm.scope.version}
                for metric in sm.metrics:
                    self._metric(metric, {**scope, **target}, at)

    def _metric(self, metric: pb.Metric, fixed: dict[str, str], at: int) -> None:
        m = CATALOG.metrics[metric.name]
        kind = metric.WhichOneof("data")
        if kind not in ("sum", "gauge"):
            raise ValueError(f"{m.name}: {kind} data is not part of the history")
        data = getattr(metric, kind)
        counter = kind == "sum" and data.is_monotonic
        name = m.prometheus_name
        family = self.families.setdefault(
            name.removesuffix("_total") if counter else name, _Family("counter" if counter else "gauge", m.description)
        )
        for point in data.data_points:
            labels = {prometheus_label(kv.key): _text(kv.value) for kv in point.attributes}
            labels.update({k: v for k, v in fixed.items() if v})  # an empty label is no label
            key = tuple(sorted(labels.items()))
            value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
            family.samples.setdefault((("__name__", name), *key), []).append((at, value))

    def render(self, step: int = STEP) -> Iterator[str]:
        """OpenMetrics text, with a sample every ``step`` seconds between the exact ones (see ``_fill``)."""
        for family_name, family in sorted(self.families.items()):
            yield f"# HELP {family_name} {family.help}"
            yield f"# TYPE {family_name} {family.kind}"
            for key, points in sorted(family.samples.items()):
                name = key[0][1]
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in key[1:])
                for t, v in _fill(points, step, family.kind == "counter"):
                    yield f"{name}{{{body}}} {_number(v)} {t}"
        yield "# EOF"


def _fill(points: list[tuple[int, float]], step: int, counter: bool) -> Iterator[tuple[int, float]]:
    """The exact samples, and between two of them one every ``step`` seconds: a counter rises linearly (the
    hour's average rate; the ledger keeps no finer estimated cost), a gauge holds its last reading.

    Why: dashboards ask for ``rate(...[$__rate_interval])`` (minutes) and Prometheus looks back 5 minutes for an
    instant value; hourly samples alone would leave those panels empty over the history.
    """
    for (t0, v0), (t1, v1) in pairwise(points):
        yield t0, v0
        for t in range(t0 - t0 % step + step, t1, step):
            yield t, (v0 + (v1 - v0) * (t - t0) / (t1 - t0)) if counter else v0
    if points:
        yield points[-1]


def _number(v: float) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def ledger_history(config: Config, ledger: Ledger, now: int) -> History:
    """Every hour of the ledger's rollups up to ``now``, then ``now`` itself, as the receiver would export them."""
    labels = {p.name: dict(p.labels) for p in config.providers}
    attributor = Attributor(config.attribution.rules)
    prices = PriceBook(config.pricing.entries, use_genai_prices=config.pricing.genai_prices)
    signals = Signals(config.budgets, attributor, prices, labels)
    builder = MetricsBuilder(make_resource(ledger.instance_id), labels=labels, enabled=config.metrics,
                             attributor=attributor)
    final = ledger.export_rows(0)
    series = list(final.new_series)
    metrics = sorted({metric for _, _, metric, _ in series if metric not in LEVEL_METRICS})
    span = ledger.rollup_range()
    hours = list(range(span[0], min(span[1] + HOUR, now), HOUR)) if span else []
    # The rollups after each hour boundary, per series: what the total did not hold yet then.
    rollups: dict[int, dict[int, int]] = {}
    for sid, hour, value in ledger.rollup_values_at(hours, metrics):
        rollups.setdefault(sid, {})[hour] = value
    metric_of = {sid: metric for sid, _, metric, _ in series}
    history = History()
    first = True
    for at in [*hours, now]:
        totals = []
        for sid, total, adjusted, start in final.totals:
            per_hour = rollups.get(sid)
            if per_hour is None:
                totals.append((sid, total, adjusted, start))
                continue
            if at < min(per_hour):
                continue  # the series did not exist yet
            later = sum(v for h, v in per_hour.items() if h >= at)
            if metric_of.get(sid) in ROLLUP_PICO_METRICS:
                later //= PICOS_PER_NANO
            totals.append((sid, total - later, adjusted, start))
        rows = ExportRows(totals, series if first else [], final.names, final.levels)
        first = False
        gauges = gauge_metrics(signals.read(ledger, at), at * NANOS)
        for request in builder.build(rows, None, at * NANOS, gauges).requests():
            history.add(request, at)
    return history


def write_history(config: Config, path: str, now: int) -> int:
    """Write the ledger's history to ``path`` (atomically: a half-written file is never left); the sample count."""
    with open_ledger(config.storage, readonly=True) as ledger:
        history = ledger_history(config, ledger, now)
    tmp = f"{path}.tmp"
    samples = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for line in history.render():
            samples += not line.startswith("#")
            f.write(line + "\n")
    os.replace(tmp, path)
    return samples
