"""Ledger totals -> OTLP ``ExportMetricsServiceRequest`` batches, ready for the wire.

Why not the SDK's ``MetricsData`` and its encoder: every export re-sends every series in full (cumulative
temporality, DESIGN.md invariant 4), so with 100,000 series the SDK's pure-Python encoder alone took ~3.5 s per
export. Almost nothing about a series changes between exports: its attributes and start time are fixed, only the
value and the timestamp move. So each series' attributes are encoded once into protobuf bytes (with the official
``opentelemetry-proto`` messages), and each export only appends the fixed-width timestamp and value fields
(``struct``) and lets the C protobuf runtime parse the concatenation into messages. Concatenated protobuf
encodings are a valid encoding of the merged message, which is what makes this sound; ``tests/test_builder.py``
checks the result field by field against messages built the ordinary way.

Counters are built here rather than through SDK instruments because only data objects can carry each series'
persisted start time (invariant 3).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb
from opentelemetry.sdk.resources import Resource

from . import __version__
from .attribution import COST_CENTER, TEAM, Attributor
from .catalog import CATALOG, MetricDef
from .ledger import ExportRows
from .model import NANOS_PER_UNIT
from .names import LEVEL_METRICS, MEASURE_OF_METRIC, NANO_METRICS
from .selfhealth import SelfHealthReading

__all__ = ["MAX_POINTS_PER_REQUEST", "Batch", "Export", "MetricsBuilder", "make_resource"]

SCOPE_NAME = "otel_llm_receiver"
#: Data points per OTLP request: keeps each request well under the Collector's default 4 MiB gRPC limit.
MAX_POINTS_PER_REQUEST = 5_000
CUMULATIVE = pb.AGGREGATION_TEMPORALITY_CUMULATIVE
ValueKind = Literal["int", "double", "money"]

# NumberDataPoint fields after the attributes: start_time_unix_nano (2, fixed64), time_unix_nano (3, fixed64)
# and the value, as_double (4, double) or as_int (6, sfixed64): tag byte, then eight little-endian bytes each.
_TAIL_INT = struct.Struct("<BQBQBq")
_TAIL_DOUBLE = struct.Struct("<BQBQBd")
_TAG_START, _TAG_TIME, _TAG_DOUBLE, _TAG_INT = 0x11, 0x19, 0x21, 0x31
_TAIL_SIZE = _TAIL_INT.size
_TAG_DATA_POINT = b"\x0a"  # Sum.data_points (1, length-delimited)
_TAG_ATTRIBUTE = b"\x3a"  # NumberDataPoint.attributes (7, length-delimited KeyValue)
_TAG_METRIC_SUM = b"\x3a"  # Metric.sum (7, length-delimited)
_TAG_METRIC_GAUGE = b"\x2a"  # Metric.gauge (5, length-delimited); its data points are field 1 as in Sum
_TAG_FIELD_1 = b"\x0a"  # ExportMetricsServiceRequest.resource_metrics
_TAG_FIELD_2 = b"\x12"  # ResourceMetrics.scope_metrics, ScopeMetrics.metrics
# Sum.aggregation_temporality and Sum.is_monotonic, appended after the data points.
_SUM_FIELDS = pb.Sum(aggregation_temporality=pb.AGGREGATION_TEMPORALITY_CUMULATIVE, is_monotonic=True).SerializeToString()


def make_resource(instance_id: str, extra: Mapping[str, str] | None = None) -> Resource:
    """The receiver's resource; ``OTEL_RESOURCE_ATTRIBUTES`` is merged in as the SDK does."""
    attributes: dict[str, str] = {
        "service.name": "otel-llm-receiver",
        "service.version": __version__,
        "service.instance.id": instance_id,
    }
    attributes.update(extra or {})
    return Resource.create(attributes)


@dataclass(frozen=True, slots=True)
class Batch:
    """One OTLP request, encoded, and the number of data points in it.

    Kept as bytes (a quarter of the memory of parsed messages); each exporter parses its own copy with
    ``request()`` just before sending, in C.
    """

    payload: bytes
    points: int

    def request(self) -> ExportMetricsServiceRequest:
        request: ExportMetricsServiceRequest = ExportMetricsServiceRequest.FromString(self.payload)
        return request


@dataclass(frozen=True, slots=True)
class Export:
    """Everything one export sends, split into requests of at most ``MAX_POINTS_PER_REQUEST`` points."""

    batches: tuple[Batch, ...]

    @property
    def points(self) -> int:
        return sum(b.points for b in self.batches)

    def requests(self) -> Iterator[ExportMetricsServiceRequest]:
        for batch in self.batches:
            yield batch.request()


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _decode_attributes(head: bytes) -> dict[str, str]:
    """The attributes encoded in a group's head (tag, length, attributes), parsed back with protobuf."""
    pos = 1
    while head[pos] & 0x80:  # skip the length varint
        pos += 1
    point = pb.NumberDataPoint.FromString(head[pos + 1:])
    return {kv.key: kv.value.string_value for kv in point.attributes}


def _key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any_value(v)) for k, v in attributes.items()]


@dataclass(slots=True, eq=False)  # identity hash: groups are dict keys, one object per wire series
class _Group:
    """One wire series: a metric and its final attribute set (several ledger series may feed it)."""

    metric: str
    kind: ValueKind  # how a ledger total goes on the wire
    head: bytes  # the data-point tag, its length and the encoded attributes: all but the tail


@dataclass(slots=True)
class _View:
    """What the builder remembers about one ledger series between exports (kept small: one per series)."""

    instance: str
    metric: str
    tenancy_key: tuple[str, str, str] | None
    tenancy_name: str | None
    group: _Group | None  # None: the metric is disabled, or a level (see ``level``)
    adjustment: _Group | None = None  # built on the first shrink only
    level: _Group | None = None  # a level metric's (gauge) wire series: the newest bucket's value, not a total


@dataclass
class MetricsBuilder:
    """Builds export batches from ledger rows; remembers each series' encoded attributes between exports."""

    resource: Resource
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # instance -> static labels
    enabled: Mapping[str, bool] = field(default_factory=dict)  # metric -> enabled (default: the catalog's)
    attributor: Attributor = field(default_factory=lambda: Attributor(()))  # llm.team on usage and cost series
    max_points_per_request: int = MAX_POINTS_PER_REQUEST
    _views: dict[int, _View] = field(default_factory=dict)
    _max_id: int = 0
    _groups: dict[str, dict[bytes, _Group]] = field(default_factory=dict)  # metric -> head -> group
    _pairs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # encoded attribute, framed
    _strings: dict[Any, Any] = field(default_factory=dict)  # one copy of each instance, metric, tenancy key
    _envelope: tuple[bytes, bytes] | None = None  # encoded ResourceMetrics and ScopeMetrics, without metrics

    def is_enabled(self, name: str) -> bool:
        return self.enabled.get(name, CATALOG.metrics[name].enabled)

    @property
    def known_series(self) -> int:
        """The highest ledger series id already described to the builder (for ``Ledger.export_rows``)."""
        return self._max_id

    def build(
        self, rows: ExportRows, health: SelfHealthReading | None, now_ns: int, gauges: Sequence[pb.Metric] = ()
    ) -> Export:
        """Every series' current total, the self-health metrics and ``gauges`` (the money signals, already
        encoded by ``signals.py``), as ready-to-send OTLP requests."""
        names = rows.names
        strings = self._strings
        for sid, instance, metric, attrs in rows.new_series:
            if sid not in self._views:
                raw = json.loads(attrs)
                instance = strings.setdefault(instance, instance)
                metric = strings.setdefault(metric, metric)
                tenancy = raw.get("llm.tenancy.id")
                tkey = None
                if tenancy is not None:
                    tkey = (instance, "tenancy", tenancy)
                    tkey = strings.setdefault(tkey, tkey)
                new = _View(instance, metric, tkey, None, None)
                self._attach(new, names.get(tkey) if tkey else None, raw)
                self._views[sid] = new
                self._max_id = max(self._max_id, sid)

        # value and start time per wire series (per metric), summed over the ledger series that feed it
        sums: dict[str, dict[_Group, list[Any]]] = {}
        adjustments: dict[_Group, list[Any]] = {}
        adjustments_on = self.is_enabled("llm.usage.adjustments")
        views = self._views
        for sid, total, adjusted, start in rows.totals:
            view = views.get(sid)
            if view is None:  # created after the totals were read: described, but sent next time
                continue
            if view.tenancy_key is not None and names.get(view.tenancy_key) != view.tenancy_name:
                self._attach(view, names.get(view.tenancy_key))  # a project was renamed
            group = view.group
            if group is None:
                continue
            metric_sums = sums.get(group.metric)
            if metric_sums is None:
                metric_sums = sums[group.metric] = {}
            slot = metric_sums.get(group)
            if slot is None:
                metric_sums[group] = [total, start]
            else:  # two instances reporting the same attribute set: add them up
                slot[0] += total
                slot[1] = min(slot[1], start)
            if adjusted and adjustments_on:
                adj = view.adjustment or self._adjustment_group(view)
                slot = adjustments.get(adj)
                if slot is None:
                    adjustments[adj] = [adjusted, start]
                else:
                    slot[0] += adjusted
                    slot[1] = min(slot[1], start)
        if adjustments:
            sums["llm.usage.adjustments"] = adjustments
        for sid, value in rows.levels.items():  # gauges: several instances' levels of one set add up
            view = views.get(sid)
            if view is None or view.level is None:
                continue
            metric_levels = sums.setdefault(view.level.metric, {})
            slot = metric_levels.get(view.level)
            if slot is None:
                metric_levels[view.level] = [value, 0]
            else:
                slot[0] += value
        extra = self._self_health(health, now_ns) if health is not None else []
        extra += [g for g in gauges if self.is_enabled(g.name)]
        return Export(self._batches(sums, extra, now_ns))

    # -- attributes, encoded once -----------------------------------------------------------------------
    def _attach(self, view: _View, tenancy_name: str | None, raw: dict[str, str] | None = None) -> None:
        """(Re)build the view's wire series; ``raw`` is given for a new series, else read back from the wire."""
        if raw is None:  # a rename: the encoded attributes are the only copy kept (memory: one per series)
            wire = view.group or view.level
            if wire is None:
                view.tenancy_name = tenancy_name
                return
            attributes = _decode_attributes(wire.head)
            for derived in ("llm.tenancy.name", TEAM, COST_CENTER):
                attributes.pop(derived, None)
        else:
            attributes = {**self.labels.get(view.instance, {}), **raw}
        view.tenancy_name = tenancy_name
        view.adjustment = None
        if not self.is_enabled(view.metric):
            view.group = None
            return
        if tenancy_name:
            attributes["llm.tenancy.name"] = tenancy_name
        if self.attributor and view.metric.startswith("llm.usage."):  # usage and cost series get a team
            attributes.update(self.attributor.attributes(attributes, tenancy_name, self.labels.get(view.instance)))
        group = self._group(view.metric, attributes, _value_kind(view.metric))
        if view.metric in LEVEL_METRICS:
            view.group, view.level = None, group
        else:
            view.group = group

    def _adjustment_group(self, view: _View) -> _Group:
        assert view.group is not None
        measure = MEASURE_OF_METRIC.get(view.metric, view.metric)
        attributes = {"llm.measure": measure, **_decode_attributes(view.group.head)}
        # Adjustments are doubles on the wire; money ones are nano-units in the ledger like the money totals.
        kind: ValueKind = "money" if _value_kind(view.metric) == "money" else "double"
        group = view.adjustment = self._group("llm.usage.adjustments", attributes, kind)
        return group

    def _group(self, metric: str, attributes: dict[str, str], kind: ValueKind) -> _Group:
        """The wire series for ``attributes``; equal attribute sets (sorted) encode to equal bytes."""
        pairs = self._pairs
        parts = [pairs.get(item) or self._pair(item) for item in sorted(attributes.items())]
        attrs = b"".join(parts)
        head = _TAG_DATA_POINT + _varint(len(attrs) + _TAIL_SIZE) + attrs
        groups = self._groups.setdefault(metric, {})
        group = groups.get(head)
        if group is None:
            group = groups[head] = _Group(metric, kind, head)
        return group

    def _pair(self, item: tuple[str, str]) -> bytes:
        """One attribute, encoded as a framed ``NumberDataPoint.attributes`` entry (cached: values repeat)."""
        kv: bytes = KeyValue(key=item[0], value=_any_value(item[1])).SerializeToString()
        encoded = self._pairs[item] = _TAG_ATTRIBUTE + _varint(len(kv)) + kv
        return encoded

    # -- requests -----------------------------------------------------------------------------------------
    def _batches(
        self, sums: dict[str, dict[_Group, list[Any]]], extra: list[pb.Metric], now_ns: int
    ) -> tuple[Batch, ...]:
        """Requests of at most ``max_points_per_request`` points; a metric may span several requests."""
        limit = max(1, self.max_points_per_request)
        batches: list[Batch] = []
        metrics: list[bytes] = []  # encoded Metric messages of the request being filled
        points = 0
        for name, groups in sums.items():
            header = self._metric_header(name)
            gauge = name in LEVEL_METRICS
            data_tag, data_fields = (_TAG_METRIC_GAUGE, b"") if gauge else (_TAG_METRIC_SUM, _SUM_FIELDS)
            items = iter(groups.items())
            remaining = len(groups)
            while remaining:
                if points >= limit:
                    batches.append(self._batch(metrics, points))
                    metrics, points = [], 0
                take = min(limit - points, remaining)
                framed = []
                for group, (value, start) in islice(items, take):
                    if group.kind == "int":
                        tail = _TAIL_INT.pack(_TAG_START, start, _TAG_TIME, now_ns, _TAG_INT, value)
                    else:
                        amount = value / NANOS_PER_UNIT if group.kind == "money" else float(value)
                        tail = _TAIL_DOUBLE.pack(_TAG_START, start, _TAG_TIME, now_ns, _TAG_DOUBLE, amount)
                    framed.append(group.head)
                    framed.append(tail)
                body = b"".join(framed) + data_fields
                metrics.append(header + data_tag + _varint(len(body)) + body)
                points += take
                remaining -= take
        for metric in extra:
            metrics.append(metric.SerializeToString())
            points += _points(metric)
        if points or not batches:
            batches.append(self._batch(metrics, points))
        return tuple(batches)

    def _metric_header(self, name: str) -> bytes:
        d = CATALOG.metrics[name]
        return bytes(pb.Metric(name=d.name, description=d.description, unit=d.unit).SerializeToString())

    def _batch(self, metrics: list[bytes], points: int) -> Batch:
        """Frame encoded metrics into ScopeMetrics, ResourceMetrics and the request (fields 2, 2 and 1)."""
        if self._envelope is None:
            resource = ResourcePb(attributes=_key_values(dict(self.resource.attributes)))
            rm = pb.ResourceMetrics(resource=resource, schema_url=self.resource.schema_url or "")
            sm = pb.ScopeMetrics(scope=InstrumentationScope(name=SCOPE_NAME, version=CATALOG.schema_version))
            self._envelope = (rm.SerializeToString(), sm.SerializeToString())
        rm_head, sm_head = self._envelope
        scope = sm_head + b"".join(_TAG_FIELD_2 + _varint(len(m)) + m for m in metrics)
        resource_metrics = rm_head + _TAG_FIELD_2 + _varint(len(scope)) + scope
        return Batch(_TAG_FIELD_1 + _varint(len(resource_metrics)) + resource_metrics, points)

    def _self_health(self, h: SelfHealthReading, now_ns: int) -> list[pb.Metric]:
        start = h.started_ns

        def number(attrs: Mapping[str, str], value: int | float) -> pb.NumberDataPoint:
            p = pb.NumberDataPoint(attributes=_key_values(attrs), start_time_unix_nano=start, time_unix_nano=now_ns)
            if isinstance(value, int):
                p.as_int = value
            else:
                p.as_double = value
            return p

        polls = [
            number({"llm.source": src, "llm.data.source": data_source, "llm.outcome": outcome,
                    **({"error.type": et} if et else {})}, n)
            for (src, data_source, outcome, et), n in sorted(h.polls.items())
        ]
        records = [number({"llm.source": src, "llm.outcome": o}, n) for (src, o), n in sorted(h.records.items())]
        durations = [
            pb.HistogramDataPoint(
                attributes=_key_values({"llm.source": src}), start_time_unix_nano=start, time_unix_nano=now_ns,
                count=d.count, sum=d.sum, bucket_counts=list(d.bucket_counts), explicit_bounds=list(d.bounds),
                min=d.min, max=d.max,
            )
            for src, d in sorted(h.durations.items())
        ]
        last = [number({"llm.source": s}, float(v)) for s, v in sorted(h.last_success.items())]
        lag = [number({"llm.source": s}, float(v)) for s, v in sorted(h.data_lag.items())]
        lag += [number({"llm.source": s, "llm.data.source": src}, float(v))
                for (s, src), v in sorted(h.source_lag.items())]
        api = [number({"llm.source": src, "llm.api.operation": op}, n) for (src, op), n in sorted(h.api_requests.items())]
        loops = [number({"llm.loop": loop}, n) for loop, n in sorted(h.loop_errors.items())]
        unmatched = [number({"llm.source": s, "llm.data.source": src}, n)
                     for (s, src), n in sorted(h.unmatched.items())]
        out: list[pb.Metric] = []
        c = CATALOG.metrics
        if polls:
            out.append(_metric(c["llm.receiver.polls"], sum=pb.Sum(
                data_points=polls, aggregation_temporality=CUMULATIVE, is_monotonic=True)))
        if durations:
            out.append(_metric(c["llm.receiver.poll.duration"], histogram=pb.Histogram(
                data_points=durations, aggregation_temporality=CUMULATIVE)))
        if last:
            out.append(_metric(c["llm.receiver.last_success"], gauge=pb.Gauge(data_points=last)))
        if lag:
            out.append(_metric(c["llm.receiver.data.lag"], gauge=pb.Gauge(data_points=lag)))
        if records:
            out.append(_metric(c["llm.receiver.records"], sum=pb.Sum(
                data_points=records, aggregation_temporality=CUMULATIVE, is_monotonic=True)))
        if api:
            out.append(_metric(c["llm.receiver.provider_requests"], sum=pb.Sum(
                data_points=api, aggregation_temporality=CUMULATIVE, is_monotonic=True)))
        if loops:
            out.append(_metric(c["llm.receiver.loop.errors"], sum=pb.Sum(
                data_points=loops, aggregation_temporality=CUMULATIVE, is_monotonic=True)))
        if unmatched:
            out.append(_metric(c["llm.receiver.unmatched_records"], sum=pb.Sum(
                data_points=unmatched, aggregation_temporality=CUMULATIVE, is_monotonic=True)))
        return [m for m in out if self.is_enabled(m.name)]


def _value_kind(metric: str) -> ValueKind:
    """Ledger totals are integers; money (and fractional billed quantities) are kept in nano-units and sent
    as a double of whole units."""
    if metric in NANO_METRICS:
        return "money"
    return "double" if CATALOG.metrics[metric].value_type == "double" else "int"


def _metric(d: MetricDef, **data: Any) -> pb.Metric:
    return pb.Metric(name=d.name, description=d.description, unit=d.unit, **data)


def _points(metric: pb.Metric) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0
