"""Ledger totals -> OTLP ``ExportMetricsServiceRequest`` batches, ready for the wire.

Why not the SDK's ``MetricsData`` and its encoder: every export re-sends every series in full (cumulative
temporality, DESIGN.md invariant 4), so with 100,000 series the SDK's pure-Python encoder alone took ~3.5 s per
export. Almost nothing about a series changes between exports: its attributes and start time are fixed, only the
value and the timestamp move. So each series' attributes are encoded once into protobuf bytes (with the official
``opentelemetry-proto`` messages), and each export only appends the fixed-width timestamp and value fields
(``struct``) and frames the requests by hand; the bytes go on the wire as they are (``emitter.py``). Concatenated
protobuf encodings are a valid encoding of the merged message, which is what makes this sound;
``tests/test_builder.py`` checks the result field by field against messages built the ordinary way.

Memory is bounded by the series, not by the export: an export keeps its values in per-metric int64 columns and
encodes its requests one at a time while they are sent (never all of them at once), and the ledger's totals are
read into one flat int64 array (issue 20: 1M series).

Counters are built here rather than through SDK instruments because only data objects can carry each series'
persisted start time (invariant 3).
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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

    Sent as these bytes (``emitter.py`` passes them through the exporters unchanged); ``request()`` parses them,
    for tests and for ``history.py``.
    """

    payload: bytes
    points: int

    def request(self) -> ExportMetricsServiceRequest:
        request: ExportMetricsServiceRequest = ExportMetricsServiceRequest.FromString(self.payload)
        return request


@dataclass(frozen=True, slots=True)
class _Column:
    """One metric's points in one export: its wire series, their values and start times (parallel)."""

    header: bytes  # the encoded Metric's name, description and unit
    gauge: bool
    groups: list[_Group]
    values: array[int]  # ledger units: the wire value follows from each group's kind
    starts: array[int]


@dataclass(frozen=True, slots=True)
class Export:
    """Everything one export sends, encoded into requests of at most ``limit`` points as they are sent.

    The values are this export's own (the builder keeps none of them), so an export still being sent is not
    changed by the next build; its requests are made one at a time (``iter_batches``): an exporter holds one
    request's bytes at a time, not the whole export (1M series: ~250 MB of requests), and each exporter thread
    encodes its own.
    """

    columns: tuple[_Column, ...]
    extra: tuple[bytes, ...]  # other metrics (self-health, signals), encoded
    extra_points: int
    now_ns: int
    limit: int
    envelope: tuple[bytes, bytes]  # encoded ResourceMetrics and ScopeMetrics heads, without metrics

    @property
    def points(self) -> int:
        return sum(len(c.groups) for c in self.columns) + self.extra_points

    @property
    def batches(self) -> tuple[Batch, ...]:
        """Every request at once (tests, ``history.py``); the emitter sends ``iter_batches()``."""
        return tuple(self.iter_batches())

    def requests(self) -> Iterator[ExportMetricsServiceRequest]:
        for batch in self.iter_batches():
            yield batch.request()

    def iter_batches(self) -> Iterator[Batch]:
        """The requests, encoded one at a time; a metric may span several requests."""
        limit, now_ns = max(1, self.limit), self.now_ns
        pack_int, pack_double = _TAIL_INT.pack, _TAIL_DOUBLE.pack
        metrics: list[bytes] = []  # encoded Metric messages of the request being filled
        points = 0
        sent = False
        for column in self.columns:
            data_tag, data_fields = (_TAG_METRIC_GAUGE, b"") if column.gauge else (_TAG_METRIC_SUM, _SUM_FIELDS)
            groups, values, starts = column.groups, column.values, column.starts
            done, remaining = 0, len(groups)
            while remaining:
                if points >= limit:
                    yield self._batch(metrics, points)
                    sent = True
                    metrics, points = [], 0
                take = min(limit - points, remaining)
                framed: list[bytes] = []
                append = framed.append
                for i in range(done, done + take):
                    group = groups[i]
                    kind = group.kind
                    append(group.head)
                    if kind == "int":
                        append(pack_int(_TAG_START, starts[i], _TAG_TIME, now_ns, _TAG_INT, values[i]))
                    else:
                        amount = values[i] / NANOS_PER_UNIT if kind == "money" else float(values[i])
                        append(pack_double(_TAG_START, starts[i], _TAG_TIME, now_ns, _TAG_DOUBLE, amount))
                body = b"".join(framed) + data_fields
                metrics.append(column.header + data_tag + _varint(len(body)) + body)
                points += take
                done += take
                remaining -= take
        for metric in self.extra:
            metrics.append(metric)
        points += self.extra_points
        if points or metrics or not sent:
            yield self._batch(metrics, points)

    def _batch(self, metrics: list[bytes], points: int) -> Batch:
        """Frame encoded metrics into ScopeMetrics, ResourceMetrics and the request (fields 2, 2 and 1)."""
        rm_head, sm_head = self.envelope
        scope = sm_head + b"".join(_TAG_FIELD_2 + _varint(len(m)) + m for m in metrics)
        resource_metrics = rm_head + _TAG_FIELD_2 + _varint(len(scope)) + scope
        return Batch(_TAG_FIELD_1 + _varint(len(resource_metrics)) + resource_metrics, points)


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


class _Points:
    """One metric's points as an export collects them (a ``_Column`` once the export is built)."""

    __slots__ = ("group", "groups", "start", "starts", "value", "values")

    def __init__(self) -> None:
        self.groups: list[_Group] = []
        self.values: array[int] = array("q")
        self.starts: array[int] = array("q")
        self.group, self.value, self.start = self.groups.append, self.values.append, self.starts.append


@dataclass(slots=True, eq=False)  # identity hash: groups are dict keys, one object per wire series
class _Group:
    """One wire series: a metric and its final attribute set (several ledger series may feed it)."""

    metric: str
    kind: ValueKind  # how a ledger total goes on the wire
    head: bytes  # the data-point tag, its length and the encoded attributes: all but the tail
    feeders: int = 0  # ledger series sending their totals here: above 1, their totals are added up


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


_TENANCY_FRAGMENT = '"llm.tenancy.id":"'


def _simple_fragments(text: str) -> list[str] | None:
    """The ``key":"value`` fragments of a JSON object whose keys and values are strings without escapes, in
    their order; None for anything else (then every ``"`` is a delimiter, so the split is exact)."""
    if "\\" in text or len(text) < 9:
        return None
    fragments = text[2:-2].split('","')
    if text.count('"') != 4 * len(fragments):
        return None
    return fragments


@dataclass
class MetricsBuilder:
    """Builds export batches from ledger rows; remembers each series' encoded attributes between exports."""

    resource: Resource
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # instance -> static labels
    enabled: Mapping[str, bool] = field(default_factory=dict)  # metric -> enabled (default: the catalog's)
    attributor: Attributor = field(default_factory=lambda: Attributor(()))  # llm.team on usage and cost series
    max_points_per_request: int = MAX_POINTS_PER_REQUEST
    #: added to every llm.receiver.* point: ``llm.receiver.replica`` on a shared PostgreSQL ledger, where every
    #: replica exports under the ledger's resource but its self-health counters are its own (empty on SQLite)
    self_health_attributes: Mapping[str, str] = field(default_factory=dict)
    #: by ledger series id (ids are dense: SQLite's rowids, never deleted): 8 bytes a series, not a dict entry
    _views: list[_View | None] = field(default_factory=list)
    _max_id: int = 0
    #: the lowest series id the last export's totals had but no description of: a shared PostgreSQL ledger's
    #: ids come from a sequence, so a replica's transaction can commit lower ids after higher ones were read
    _hole: int | None = None
    _groups: dict[str, dict[bytes, _Group]] = field(default_factory=dict)  # metric -> head -> group
    _pairs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # encoded attribute, framed
    _strings: dict[Any, Any] = field(default_factory=dict)  # one copy of each instance, metric, tenancy key
    _envelope: tuple[bytes, bytes] | None = None  # encoded ResourceMetrics and ScopeMetrics, without metrics
    _headers: dict[str, bytes] = field(default_factory=dict)  # metric -> its encoded name, description, unit
    _enabled: dict[str, bool] = field(default_factory=dict)  # is_enabled, per metric
    _metric_facts: dict[str, tuple[bool, ValueKind, bool, bool, dict[bytes, _Group]]] = field(default_factory=dict)
    _fragments: dict[str, bytes] = field(default_factory=dict)  # ``key":"value`` of canonical JSON -> encoded
    _columns: tuple[_Column, ...] | None = None  # the last build's series points (reused while nothing changed)
    _columns_held: frozenset[str] | None = None  # ... and the instances they were built for (None: all)

    def is_enabled(self, name: str) -> bool:
        on = self._enabled.get(name)
        if on is None:
            on = self._enabled[name] = self.enabled.get(name, CATALOG.metrics[name].enabled)
        return on

    @property
    def known_series(self) -> int:
        """The ledger series ids up to this one are described to the builder (for ``Ledger.export_rows``): the
        highest described, or below the lowest id an export found undescribed (a series committed after higher
        ids were read, on PostgreSQL), so the next read describes it."""
        return self._max_id if self._hole is None else min(self._max_id, self._hole - 1)

    @property
    def missing_series(self) -> bool:
        """The last build met a series it had no description of (see ``known_series``): read the rows again."""
        return self._hole is not None

    def build(
        self, rows: ExportRows | None, health: SelfHealthReading | None, now_ns: int,
        gauges: Sequence[pb.Metric] = (), *, instances: Collection[str] | None = None,
    ) -> Export:
        """Every series' current total, the self-health metrics and ``gauges`` (the money signals, already
        encoded by ``signals.py``), as ready-to-send OTLP requests.

        ``rows`` None: the ledger has not changed since the last build (the caller compared its generation), so
        its series' points are the last build's (their columns are never changed once built), sent with this
        export's time. ``instances`` (replicas on a shared ledger): only the series of these provider
        instances, the ones this replica holds the leases of; each instance's series are sent by its holder
        alone (docs/deployment.md, high availability). The last build is reused only for the same instances."""
        held = None if instances is None else frozenset(instances)
        if rows is None:
            if self._columns is None or held != self._columns_held:
                raise ValueError("no previous build of these instances to reuse: read the ledger's rows")
            columns = self._columns
        else:
            columns = self._columns = self._series_columns(rows, held)
            self._columns_held = held
        extra = self._self_health(health, now_ns, held) if health is not None else []
        extra += [g for g in gauges if self.is_enabled(g.name)]
        return Export(
            columns, tuple(m.SerializeToString() for m in extra), sum(_points(m) for m in extra), now_ns,
            self.max_points_per_request, self._resource_envelope(),
        )

    def _series_columns(self, rows: ExportRows, instances: frozenset[str] | None) -> tuple[_Column, ...]:
        """The ledger series' points, per metric: totals, adjustments and levels (of ``instances`` if given)."""
        names = rows.names
        self._describe(rows.new_series, names)
        self._hole = None

        # Value and start time per wire series, per metric. Most wire series have one ledger series: their
        # totals go straight into the metric's columns; the others (``feeders`` > 1) are added up first.
        points: dict[str, _Points] = {}
        shared: dict[_Group, list[int]] = {}
        adjustments: dict[_Group, list[int]] = {}
        adjustments_on = self.is_enabled("llm.usage.adjustments")
        views = self._views
        known = len(views)
        names_get = names.get
        current: _Points | None = None
        current_metric = ""
        for sid, total, adjusted, start in rows.totals:
            view = views[sid] if sid < known else None
            if view is None:  # created after the totals were read: described, but sent next time
                if sid < known and (self._hole is None or sid < self._hole):
                    self._hole = sid  # committed after higher ids were described: read again next export
                continue
            if instances is not None and view.instance not in instances:
                continue
            if view.tenancy_key is not None and names_get(view.tenancy_key) != view.tenancy_name:
                self._attach(view, names_get(view.tenancy_key))  # a project was renamed
            group = view.group
            if group is None:
                continue
            if group.feeders == 1:
                if group.metric is not current_metric:
                    current_metric = group.metric
                    current = points.get(current_metric)
                    if current is None:
                        current = points[current_metric] = _Points()
                assert current is not None
                current.group(group)
                current.value(total)
                current.start(start)
            else:  # two instances reporting the same attribute set: add them up
                slot = shared.get(group)
                if slot is None:
                    shared[group] = [total, start]
                else:
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
        for sid, value in rows.levels.items():  # gauges: several instances' levels of one set add up
            view = views[sid] if sid < known else None
            if view is None or view.level is None or (instances is not None and view.instance not in instances):
                continue
            slot = shared.get(view.level)
            if slot is None:
                shared[view.level] = [value, 0]
            else:
                slot[0] += value
        for group, (value, start) in [*shared.items(), *adjustments.items()]:
            column = points.get(group.metric)
            if column is None:
                column = points[group.metric] = _Points()
            column.group(group)
            column.value(value)
            column.start(start)

        return tuple(
            _Column(self._metric_header(name), name in LEVEL_METRICS, p.groups, p.values, p.starts)
            for name, p in points.items()
        )

    # -- attributes, encoded once -----------------------------------------------------------------------
    def _describe(self, new_series: Iterable[tuple[int, str, str, str]], names: Mapping[Any, str]) -> None:
        """Remember the series not seen yet: their wire series, with the attributes encoded once.

        This runs once per series, at start, so it decides how long the first export takes (issue 20). A
        series' attributes are canonical JSON (string values, keys sorted: ``series.canonical_attrs``); when the
        text has no escapes, its ``key":"value`` fragments are exactly its pairs, in key order, and each
        fragment's encoding is cached (values repeat across series): no JSON parse, no dict and no sort. Static
        labels and the tenancy name are merged in key order; anything else (escapes, non-string values, the
        attribution rules, which read the whole set) takes the general path: ``json.loads`` and a sorted dict.
        """
        views = self._views
        strings = self._strings.setdefault
        names_get = names.get
        labels_get = self.labels.get
        rules = bool(self.attributor)
        fragments_get = self._fragments.get
        fragment = self._fragment
        facts_of = self._facts
        for sid, instance, metric, text in new_series:
            if sid < len(views) and views[sid] is not None:
                continue
            instance = strings(instance, instance)
            metric = strings(metric, metric)
            enabled, kind, level, usage, groups = facts_of(metric)
            frags = _simple_fragments(text)
            if frags is None or (rules and usage and enabled):
                view, head = self._describe_parsed(instance, metric, json.loads(text), names)
            else:
                tkey = tname = None
                at = text.find(_TENANCY_FRAGMENT)
                if at >= 0:
                    at += len(_TENANCY_FRAGMENT)
                    tkey = (instance, "tenancy", text[at:text.index('"', at)])
                    tkey = strings(tkey, tkey)
                    tname = names_get(tkey)
                view = _View(instance, metric, tkey, tname, None)
                head = None
                if enabled:
                    labels = labels_get(instance)
                    encoded = [fragments_get(f) or fragment(f) for f in frags]
                    if labels or tname:
                        extra = {k: v for k, v in labels.items() if f'"{k}":"' not in text} if labels else {}
                        if tname:
                            extra["llm.tenancy.name"] = tname
                        if '"llm.tenancy.name":"' in text:
                            raw = json.loads(text)
                            raw.update(extra)
                            attrs = self._encode(raw)
                        else:
                            attrs = self._merge(frags, encoded, extra)
                    else:
                        attrs = b"".join(encoded)
                    head = _TAG_DATA_POINT + _varint(len(attrs) + _TAIL_SIZE) + attrs
            if sid >= len(views):
                views.extend([None] * (sid + 1 - len(views)))
            views[sid] = view
            if sid > self._max_id:
                self._max_id = sid
            if head is None:
                continue
            group = groups.get(head)
            if group is None:
                group = groups[head] = _Group(metric, kind, head)
            if level:
                view.level = group
            else:
                view.group = group
                group.feeders += 1

    def _describe_parsed(
        self, instance: str, metric: str, raw: dict[str, str], names: Mapping[Any, str]
    ) -> tuple[_View, bytes | None]:
        """The general path of ``_describe``: the view and the head of a series from its parsed attributes."""
        enabled, _, _, usage, _ = self._facts(metric)
        tenancy = raw.get("llm.tenancy.id")
        tkey = tname = None
        if tenancy is not None:
            tkey = (instance, "tenancy", tenancy)
            tkey = self._strings.setdefault(tkey, tkey)
            tname = names.get(tkey)
        view = _View(instance, metric, tkey, tname, None)
        if not enabled:
            return view, None
        labels = self.labels.get(instance)
        attributes = {**labels, **raw} if labels else raw
        if tname:
            attributes["llm.tenancy.name"] = tname
        if self.attributor and usage:
            attributes.update(self.attributor.attributes(attributes, tname, labels))
        attrs = self._encode(attributes)
        return view, _TAG_DATA_POINT + _varint(len(attrs) + _TAIL_SIZE) + attrs

    def _encode(self, attributes: Mapping[str, str]) -> bytes:
        """Attributes encoded in key order: equal sets encode to equal bytes."""
        pairs_get = self._pairs.get
        return b"".join([pairs_get(item) or self._pair(item) for item in sorted(attributes.items())])

    def _merge(self, frags: list[str], encoded: list[bytes], extra: Mapping[str, str]) -> bytes:
        """A series' encoded fragments and ``extra`` attributes (keys not among the fragments), in key order."""
        items = [(f[:f.index('":"')], e) for f, e in zip(frags, encoded, strict=True)]
        pairs_get = self._pairs.get
        items += [(k, pairs_get((k, v)) or self._pair((k, v))) for k, v in extra.items()]
        items.sort()
        return b"".join([e for _, e in items])

    def _fragment(self, fragment: str) -> bytes:
        """One ``key":"value`` fragment of canonical JSON without escapes, encoded (cached)."""
        key, value = fragment.split('":"', 1)
        encoded = self._fragments[fragment] = self._pairs.get((key, value)) or self._pair((key, value))
        return encoded

    def _facts(self, metric: str) -> tuple[bool, ValueKind, bool, bool, dict[bytes, _Group]]:
        """What describing a series needs of its metric: enabled, wire kind, level, usage, its wire series."""
        facts = self._metric_facts.get(metric)
        if facts is None:
            groups = self._groups.setdefault(metric, {})
            facts = self._metric_facts[metric] = (
                self.is_enabled(metric), _value_kind(metric), metric in LEVEL_METRICS,
                metric.startswith("llm.usage."), groups,
            )
        return facts

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
            labels = self.labels.get(view.instance)
            attributes = {**labels, **raw} if labels else raw
        view.tenancy_name = tenancy_name
        view.adjustment = None
        if view.group is not None:
            view.group.feeders -= 1
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
            group.feeders += 1

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
        pairs_get = self._pairs.get
        attrs = b"".join([pairs_get(item) or self._pair(item) for item in sorted(attributes.items())])
        head = _TAG_DATA_POINT + _varint(len(attrs) + _TAIL_SIZE) + attrs
        groups = self._groups.get(metric)
        if groups is None:
            groups = self._groups[metric] = {}
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
    def _metric_header(self, name: str) -> bytes:
        header = self._headers.get(name)
        if header is None:
            d = CATALOG.metrics[name]
            header = self._headers[name] = pb.Metric(
                name=d.name, description=d.description, unit=d.unit).SerializeToString()
        return header

    def _resource_envelope(self) -> tuple[bytes, bytes]:
        """The encoded ResourceMetrics (resource, schema URL) and ScopeMetrics (scope) heads, made once."""
        if self._envelope is None:
            resource = ResourcePb(attributes=_key_values(dict(self.resource.attributes)))
            rm = pb.ResourceMetrics(resource=resource, schema_url=self.resource.schema_url or "")
            sm = pb.ScopeMetrics(scope=InstrumentationScope(name=SCOPE_NAME, version=CATALOG.schema_version))
            self._envelope = (rm.SerializeToString(), sm.SerializeToString())
        return self._envelope

    def _self_health(self, h: SelfHealthReading, now_ns: int, held: frozenset[str] | None = None) -> list[pb.Metric]:
        """This process's llm.receiver.* metrics. With ``held`` (replicas), the per-instance gauges (last success,
        data lag) only of the instances this replica holds: a replica that handed an instance over stops
        reporting its frozen last success and ever-growing lag, which ``max by (llm_source)`` would pick over
        the holder's. Counters stay: they are this replica's history, summed across replicas."""
        start = h.started_ns
        own = dict(self.self_health_attributes)

        def number(attrs: Mapping[str, str], value: int | float) -> pb.NumberDataPoint:
            p = pb.NumberDataPoint(attributes=_key_values({**attrs, **own}), start_time_unix_nano=start,
                                   time_unix_nano=now_ns)
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
                attributes=_key_values({"llm.source": src, **own}), start_time_unix_nano=start, time_unix_nano=now_ns,
                count=d.count, sum=d.sum, bucket_counts=list(d.bucket_counts), explicit_bounds=list(d.bounds),
                min=d.min, max=d.max,
            )
            for src, d in sorted(h.durations.items())
        ]
        last = [number({"llm.source": s}, float(v)) for s, v in sorted(h.last_success.items())
                if held is None or s in held]
        lag = [number({"llm.source": s}, float(v)) for s, v in sorted(h.data_lag.items())
               if held is None or s in held]
        lag += [number({"llm.source": s, "llm.data.source": src}, float(v))
                for (s, src), v in sorted(h.source_lag.items()) if held is None or s in held]
        api = [number({"llm.source": src, "llm.api.operation": op}, n) for (src, op), n in sorted(h.api_requests.items())]
        loops = [number({"llm.loop": loop}, n) for loop, n in sorted(h.loop_errors.items())]
        unmatched = [number({"llm.source": s, "llm.data.source": src}, n)
                     for (s, src), n in sorted(h.unmatched.items())]
        stale = [number({"llm.source": s}, n) for s, n in sorted(h.stale_writes.items())]
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
        if stale:
            out.append(_metric(c["llm.receiver.stale_writes"], sum=pb.Sum(
                data_points=stale, aggregation_temporality=CUMULATIVE, is_monotonic=True)))
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
