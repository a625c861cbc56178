"""The emitter: ledger snapshot -> OTLP metrics, sent through the official OpenTelemetry exporters.

Two halves, as in opentelemetry-python: ``MetricsBuilder.build`` is pure (a snapshot and the self-health
readings in, ``MetricsData`` out) and ``Emitter`` is the thin sending part. Counters are built as data objects
rather than SDK instruments because only data objects can carry each series' persisted start time
(invariant 3). Every export re-sends every series in full (cumulative temporality, invariant 4), so an export
that fails loses nothing: the next one carries it all.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from . import __version__
from .catalog import CATALOG, MetricDef
from .config import ExporterConfig
from .errors import ExportError
from .ledger import LEVEL_METRICS, MEASURE_OF_METRIC, NANO_METRICS, Snapshot
from .model import NANOS_PER_UNIT
from .selfhealth import SelfHealthReading

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("otel_llm_receiver", __version__)
CUMULATIVE = AggregationTemporality.CUMULATIVE
#: Data points per OTLP request: keeps each request well under the Collector's default 4 MiB gRPC limit.
MAX_POINTS_PER_REQUEST = 5_000


def make_resource(instance_id: str, extra: Mapping[str, str] | None = None) -> Resource:
    """The receiver's resource; ``OTEL_RESOURCE_ATTRIBUTES`` is merged in as the SDK does."""
    attributes: dict[str, str] = {
        "service.name": "otel-llm-receiver",
        "service.version": __version__,
        "service.instance.id": instance_id,
    }
    attributes.update(extra or {})
    return Resource.create(attributes)


@dataclass
class _SeriesView:
    """The cached wire form of one ledger series: attributes parsed once, rebuilt only when a name changes."""

    raw: dict[str, str]  # the ledger's attributes
    tenancy_id: str | None
    tenancy_name: str | None
    attributes: dict[str, str]  # what goes on the wire: labels, raw attributes and the tenancy name
    key: str


@dataclass
class MetricsBuilder:
    """Builds ``MetricsData`` from ledger snapshots; keeps per-series attribute dicts between exports."""

    resource: Resource
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # instance -> static labels
    enabled: Mapping[str, bool] = field(default_factory=dict)  # metric -> enabled (default: catalog)
    _views: dict[int, _SeriesView] = field(default_factory=dict)

    def is_enabled(self, name: str) -> bool:
        return self.enabled.get(name, CATALOG.metrics[name].enabled)

    def build(
        self, snapshot: Snapshot, health: SelfHealthReading | None, now_ns: int
    ) -> MetricsData:
        sums: dict[str, dict[str, NumberDataPoint]] = {}
        levels: dict[str, dict[str, NumberDataPoint]] = {}
        adjustments: dict[str, NumberDataPoint] = {}
        names = snapshot.names
        for s in snapshot.series:
            if not self.is_enabled(s.metric):
                continue
            view = self._views.get(s.id)
            if view is None:
                raw = json.loads(s.attrs)
                tenancy_id = raw.get("llm.tenancy.id")
                view = self._view(s.instance, raw, names.get((s.instance, "tenancy", tenancy_id)))
                self._views[s.id] = view
            elif view.tenancy_id is not None:
                tenancy = names.get((s.instance, "tenancy", view.tenancy_id))
                if tenancy != view.tenancy_name:  # a project was renamed: rebuild its attributes
                    view = self._views[s.id] = self._view(s.instance, view.raw, tenancy)
            if s.metric in LEVEL_METRICS:  # a gauge: the newest bucket's value, not a running total
                if s.level is not None:
                    level_points = levels.setdefault(s.metric, {})
                    prior_level = level_points.get(view.key)
                    level_points[view.key] = NumberDataPoint(
                        attributes=view.attributes, start_time_unix_nano=s.start_time_ns, time_unix_nano=now_ns,
                        value=s.level + (prior_level.value if prior_level else 0),
                    )
                continue
            money = s.metric in NANO_METRICS
            value: int | float = s.total / NANOS_PER_UNIT if money else s.total
            points = sums.setdefault(s.metric, {})
            previous = points.get(view.key)
            if previous is not None:  # two instances reporting the same attribute set: add them up
                value += previous.value
            points[view.key] = NumberDataPoint(
                attributes=view.attributes,
                start_time_unix_nano=min(s.start_time_ns, previous.start_time_unix_nano)
                if previous else s.start_time_ns,
                time_unix_nano=now_ns,
                value=value,
            )
            if s.adjustments and self.is_enabled("llm.usage.adjustments"):
                amount = s.adjustments / NANOS_PER_UNIT if money else float(s.adjustments)
                key = s.metric + "|" + view.key
                prior = adjustments.get(key)
                adjustments[key] = NumberDataPoint(
                    attributes={"llm.measure": MEASURE_OF_METRIC.get(s.metric, s.metric), **view.attributes},
                    start_time_unix_nano=s.start_time_ns,
                    time_unix_nano=now_ns,
                    value=amount + (prior.value if prior else 0.0),
                )
        metrics = [
            _metric(CATALOG.metrics[name], Sum(list(points.values()), CUMULATIVE, True))
            for name, points in sums.items()
        ]
        metrics += [
            _metric(CATALOG.metrics[name], Gauge(list(points.values()))) for name, points in levels.items()
        ]
        if adjustments:
            metrics.append(
                _metric(CATALOG.metrics["llm.usage.adjustments"], Sum(list(adjustments.values()), CUMULATIVE, True))
            )
        if health is not None:
            metrics.extend(m for m in self._self_health(health, now_ns) if self.is_enabled(m.name))
        return MetricsData(
            resource_metrics=[ResourceMetrics(self.resource, [ScopeMetrics(SCOPE, metrics, "")], "")]
        )

    def _view(self, instance: str, raw: dict[str, str], tenancy_name: str | None) -> _SeriesView:
        attributes = {**self.labels.get(instance, {}), **raw}
        if tenancy_name:
            attributes["llm.tenancy.name"] = tenancy_name
        key = json.dumps(attributes, sort_keys=True, separators=(",", ":"))
        return _SeriesView(raw, raw.get("llm.tenancy.id"), tenancy_name, attributes, key)

    @staticmethod
    def _self_health(h: SelfHealthReading, now_ns: int) -> list[Metric]:
        c = CATALOG.metrics
        start = h.started_ns
        polls = [
            NumberDataPoint(
                {"llm.source": src, "llm.outcome": outcome, **({"error.type": et} if et else {})},
                start, now_ns, n,
            )
            for (src, outcome, et), n in sorted(h.polls.items())
        ]
        records = [
            NumberDataPoint({"llm.source": src, "llm.outcome": outcome}, start, now_ns, n)
            for (src, outcome), n in sorted(h.records.items())
        ]
        durations = [
            HistogramDataPoint(
                {"llm.source": src}, start, now_ns, d.count, d.sum, list(d.bucket_counts),
                list(d.bounds), d.min, d.max,
            )
            for src, d in sorted(h.durations.items())
        ]
        last = [NumberDataPoint({"llm.source": s}, start, now_ns, v) for s, v in sorted(h.last_success.items())]
        lag = [NumberDataPoint({"llm.source": s}, start, now_ns, v) for s, v in sorted(h.data_lag.items())]
        out = []
        if polls:
            out.append(_metric(c["llm.receiver.polls"], Sum(polls, CUMULATIVE, True)))
        if durations:
            out.append(_metric(c["llm.receiver.poll.duration"], Histogram(durations, CUMULATIVE)))
        if last:
            out.append(_metric(c["llm.receiver.last_success"], Gauge(last)))
        if lag:
            out.append(_metric(c["llm.receiver.data.lag"], Gauge(lag)))
        if records:
            out.append(_metric(c["llm.receiver.records"], Sum(records, CUMULATIVE, True)))
        return out


def _metric(d: MetricDef, data: Sum | Gauge | Histogram) -> Metric:
    return Metric(name=d.name, description=d.description, unit=d.unit, data=data)


def count_points(data: MetricsData) -> int:
    return sum(
        len(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


# ------------------------------------------------------------------------------------------------ sending
class MetricExporterLike(Protocol):
    def export(self, metrics_data: MetricsData, timeout_millis: float = ..., **kwargs: Any) -> MetricExportResult: ...

    def shutdown(self, timeout_millis: float = ..., **kwargs: Any) -> None: ...


def build_exporter(cfg: ExporterConfig) -> MetricExporterLike:
    """The official OTLP exporter for one ``exporters:`` entry (gRPC or HTTP/protobuf)."""
    headers = dict(cfg.headers)
    try:
        if cfg.protocol == "grpc":
            import grpc
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcExporter,
            )

            endpoint = cfg.endpoint
            insecure = cfg.tls.insecure or endpoint.startswith("http://")
            credentials = None
            if not insecure and (cfg.tls.ca_file or cfg.tls.cert_file):
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read(cfg.tls.ca_file),
                    private_key=_read(cfg.tls.key_file),
                    certificate_chain=_read(cfg.tls.cert_file),
                )
            return GrpcExporter(
                endpoint=endpoint, insecure=insecure, credentials=credentials, headers=headers or None,
                timeout=cfg.timeout,
                compression=grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression,
                max_export_batch_size=MAX_POINTS_PER_REQUEST,
            )
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

        url = cfg.endpoint.rstrip("/")
        if not url.endswith("/v1/metrics"):
            url += "/v1/metrics"
        return HttpExporter(
            endpoint=url, certificate_file=cfg.tls.ca_file, client_key_file=cfg.tls.key_file,
            client_certificate_file=cfg.tls.cert_file, headers=headers, timeout=cfg.timeout,
            compression=Compression.Gzip if cfg.compression == "gzip" else Compression.NoCompression,
            max_export_batch_size=MAX_POINTS_PER_REQUEST,
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ExportError(f"exporters.{cfg.name}: cannot be set up: {exc}") from exc


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


@dataclass
class ExporterState:
    """What the health endpoint and logs say about one exporter."""

    name: str
    endpoint: str
    exports: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success_unix: float | None = None
    last_error: str | None = None


class Emitter:
    """Sends each built ``MetricsData`` to every exporter, each on its own thread.

    A slow or dead exporter cannot delay another one, and while one is still busy with an earlier export
    it is skipped (the next export carries everything anyway): one failing exporter never blocks the rest.
    """

    def __init__(
        self,
        exporters: Sequence[tuple[ExporterConfig | str, MetricExporterLike]],
        *,
        clock: Callable[[], float],
    ) -> None:
        self._exporters = list(exporters)
        self._clock = clock
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"export-{i}") for i in range(len(exporters))]
        self._busy: list[Future[bool] | None] = [None] * len(exporters)
        self.states = [
            ExporterState(cfg if isinstance(cfg, str) else cfg.name, "" if isinstance(cfg, str) else cfg.endpoint)
            for cfg, _ in self._exporters
        ]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._exporters)

    def send(self, data: MetricsData, *, wait_for_all: bool = False, timeout: float | None = None) -> bool:
        """Hand ``data`` to every idle exporter; with ``wait_for_all``, wait and return whether all succeeded."""
        futures: list[Future[bool]] = []
        with self._lock:
            for i, (_, exporter) in enumerate(self._exporters):
                busy = self._busy[i]
                if busy is not None and not busy.done() and not wait_for_all:
                    log.debug("exporter %s is still busy; skipping this export", self.states[i].name)
                    continue
                # Each exporter's pool has one thread: a waited-for export queues behind a busy one.
                future = self._pools[i].submit(self._export_one, i, exporter, data)
                self._busy[i] = future
                futures.append(future)
        if not wait_for_all:
            return True
        done, pending = wait(futures, timeout=timeout)
        return not pending and all(f.result() for f in done)

    def _export_one(self, index: int, exporter: MetricExporterLike, data: MetricsData) -> bool:
        state = self.states[index]
        try:
            result = exporter.export(data)
            ok = result == MetricExportResult.SUCCESS
            error = None if ok else "export failed (the collector is unreachable or refused the data)"
        except Exception as exc:  # an exporter bug or transport error must not kill the export thread
            ok, error = False, f"{type(exc).__name__}: {exc}"
        with self._lock:
            state.exports += 1
            if ok:
                if state.consecutive_failures:
                    log.info("exporter %s: export succeeded again after %d failures",
                             state.name, state.consecutive_failures)
                state.consecutive_failures = 0
                state.last_success_unix = self._clock()
            else:
                state.failures += 1
                state.consecutive_failures += 1
                state.last_error = error
                if state.consecutive_failures in (1, 10) or state.consecutive_failures % 100 == 0:
                    log.warning(
                        "exporter %s (%s): %s; totals keep accumulating and go out with the next "
                        "successful export (%d consecutive failures)",
                        state.name, state.endpoint, error, state.consecutive_failures,
                    )
        return ok

    def shutdown(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True)
        for _, exporter in self._exporters:
            try:
                exporter.shutdown()
            except Exception as exc:  # shutting down must not fail the stop
                log.debug("exporter shutdown: %s", exc)
