"""Ledger totals -> OTLP ``ExportMetricsServiceRequest`` batches, ready for the wire.

Why not the SDK's ``MetricsData`` and its encoder: every export re-sends every series in full (cumulative
temporality, DESIGN.md invariant 4), so with 100,000 series the SDK's pure-Python encoder alone took ~3.5 s per
export. Almost nothing about a series changes between exports: its attributes and start time are fixed, only the
value and the timestamp move. So each series' attributes are encoded once into protobuf bytes (with the official
``opentelemetry-proto`` messages), and each export only appends the fixed-width timestamp and value fields
(``struct``) and frames the requests by hand; the bytes go on the wire as they are (``emitter.py``). Concatenated
protobuf encodings are a valid encoding of the merged message, which is what makes this sound;
``tests/test_builder.py`` checks the result field by field against messages built the ordinary way.

Memory is bounded by the series, and kept flat (issue 20: 1M series): what the builder remembers of a ledger
series is a few bytes in arrays indexed by the series id (its metric, instance, tenancy and encoded attribute set),
never a Python object per series; each distinct encoded attribute set is kept once (the estimated cost series
carry the same set as their token series), and the objects the garbage collector walks do not grow with the
series. An export keeps its values in per-metric columns and encodes its requests one at a time while they are
sent (never all of them at once); the ledger's totals are read into one flat int64 array.

Where the time goes (the same reason): the per-series work of an export runs in C where it can. Which ledger
rows feed which wire series is worked out once (``_Layout``) and reused while the set of series read and their
descriptions are unchanged; an export then takes each column's values out of the totals' array with ``map`` and
encodes each request with ``struct`` over ``zip``/``chain``, with no Python statement per point.

Counters are built here rather than through SDK instruments because only data objects can carry each series'
persisted start time (invariant 3).
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import add, truediv
from typing import Any, Literal, TypeVar

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb
from opentelemetry.sdk.resources import Resource

from . import __version__
from .attribution import COST_CENTER, TEAM, Attributor
from .catalog import CATALOG, MetricDef
from .ledger import ExportRows
from .ledger.reader import TotalsColumns
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
#: Metrics a builder can tell apart: a metric's index is a bit of each attribute set's 64-bit mask.
_MAX_METRICS = 63


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
    """One metric's points in one export: each wire series' head, value and start time (parallel sequences).

    ``kind`` says how a value goes on the wire: ``int`` as it is (``as_int``), ``double`` as ``float(value)``,
    ``money`` as nano-units divided into whole units (``as_double``).
    """

    header: bytes  # the encoded Metric's name, description and unit
    gauge: bool
    kind: ValueKind
    heads: Sequence[bytes]  # the data-point tag, its length and the encoded attributes: all but the tail
    values: Sequence[int] | Sequence[float]
    starts: Sequence[int]

    def encode(self, lo: int, hi: int, now_ns: int) -> bytes:
        """Points ``lo`` to ``hi`` encoded, one after the other (``struct`` over ``zip``: no Python per point)."""
        values: Iterable[int] | Iterable[float] = self.values[lo:hi]
        if self.kind == "int":
            tails = map(_TAIL_INT.pack, repeat(_TAG_START), self.starts[lo:hi], repeat(_TAG_TIME), repeat(now_ns),
                        repeat(_TAG_INT), values)
        else:
            # Money: nano-units divided as the exact integer quotient rounds (int / int), as before.
            floats = map(truediv, values, repeat(NANOS_PER_UNIT)) if self.kind == "money" else map(float, values)
            tails = map(_TAIL_DOUBLE.pack, repeat(_TAG_START), self.starts[lo:hi], repeat(_TAG_TIME),
                        repeat(now_ns), repeat(_TAG_DOUBLE), floats)
        return b"".join(chain.from_iterable(zip(self.heads[lo:hi], tails, strict=True)))


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
        return sum(len(c.heads) for c in self.columns) + self.extra_points

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
        metrics: list[bytes] = []  # encoded Metric messages of the request being filled
        points = 0
        sent = False
        for column in self.columns:
            data_tag, data_fields = (_TAG_METRIC_GAUGE, b"") if column.gauge else (_TAG_METRIC_SUM, _SUM_FIELDS)
            done, total = 0, len(column.heads)
            while done < total:
                if points >= limit:
                    yield self._batch(metrics, points)
                    sent = True
                    metrics, points = [], 0
                take = min(limit - points, total - done)
                body = column.encode(done, done + take, now_ns) + data_fields
                metrics.append(column.header + data_tag + _varint(len(body)) + body)
                points += take
                done += take
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
    """The attributes encoded in a head (tag, length, attributes), parsed back with protobuf."""
    pos = 1
    while head[pos] & 0x80:  # skip the length varint
        pos += 1
    point = pb.NumberDataPoint.FromString(head[pos + 1:])
    return {kv.key: kv.value.string_value for kv in point.attributes}


def _key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any_value(v)) for k, v in attributes.items()]


def _head(attrs: bytes) -> bytes:
    """A data point's head: its tag and length (attributes and the fixed-size tail), then the attributes."""
    return _TAG_DATA_POINT + _varint(len(attrs) + _TAIL_SIZE) + attrs


_TENANCY_FRAGMENT = '"llm.tenancy.id":"'
#: A data point's tag and length varint for the usual lengths, made once.
_FRAMED = 4096
_FRAMES = [_TAG_DATA_POINT + _varint(n) for n in range(_FRAMED)]


def _simple_fragments(text: str) -> list[str] | None:
    """The ``key":"value`` fragments of a JSON object whose keys and values are strings without escapes, in
    their order; None for anything else (then every ``"`` is a delimiter, so the split is exact)."""
    if "\\" in text or len(text) < 9:
        return None
    fragments = text[2:-2].split('","')
    if text.count('"') != 4 * len(fragments):
        return None
    return fragments


@dataclass(frozen=True, slots=True)
class _MetricFacts:
    """What describing and exporting a ledger series needs of its metric (one per metric, by index)."""

    name: str
    bit: int  # 1 << index: the metric's bit in an attribute set's mask
    enabled: bool
    kind: ValueKind
    level: bool  # a level (gauge): the newest bucket's value, never a total
    usage: bool  # llm.usage.*: gets the attribution rules' attributes


class _Fragments(dict[str, bytes]):
    """``key":"value`` fragment of canonical JSON -> its encoded attribute; a miss encodes it (``__missing__``),
    so a series' fragments are looked up with one ``map`` in C."""

    __slots__ = ("_pair",)

    def __init__(self, pair: Any) -> None:
        super().__init__()
        self._pair = pair

    def __missing__(self, fragment: str) -> bytes:
        key, value = fragment.split('":"', 1)
        encoded: bytes = self._pair((key, value))
        self[fragment] = encoded
        return encoded


_T = TypeVar("_T")
_ID_KEY, _NAME_KEY = "llm.tenancy.id", "llm.tenancy.name"


#: Entries a ``_Cache`` keeps: the sides around tenancy ids repeat (models, token types), but a per-user attribute
#: would make them as many as the series; past this the cache starts again rather than hold a copy of each text.
_CACHE_LIMIT = 1 << 16


class _Cache(dict[str, _T]):
    """A dict that makes a missing value on first lookup (``__missing__``): hits stay one C call. Bounded."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[str], _T]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: str) -> _T:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        value = self[key] = self._make(key)
        return value


class _Halves:
    """One instance's attribute texts cut around the tenancy id, encoded once each.

    A canonical text is ``{"k":"v",...,`` (keys before ``llm.tenancy.id``), the tenancy id, then ``,..."}``
    (keys after it). The two sides repeat across series (models, token types, operations), the ids across
    metrics, so a series' head is five cached pieces joined: the text before, the id, the keys after it up to
    ``llm.tenancy.name``, the name, the rest. The instance's labels are merged into the sides in key order (a
    label never overrides an attribute of the series). None: a side this cut cannot take (escapes, or a text
    that carries its own tenancy name): the series goes the general way.
    """

    __slots__ = ("prefixes", "suffixes")

    def __init__(self, builder: MetricsBuilder, labels: Mapping[str, str]) -> None:
        early = {k: v for k, v in labels.items() if k < _ID_KEY}
        late = {k: v for k, v in labels.items() if k > _ID_KEY and k != _NAME_KEY}

        def encode(pairs: Iterable[tuple[str, str]]) -> bytes:
            return b"".join([builder._pairs.get(item) or builder._pair(item) for item in pairs])

        def prefix(text: str) -> bytes | None:
            pairs = _side(text, "{", '{"', '",')
            if pairs is None:
                return None
            return encode(sorted({**{k: v for k, v in early.items()}, **dict(pairs)}.items()))

        def suffix(text: str) -> bytes | tuple[bytes, bytes] | None:
            pairs = _side(text, "}", ',"', '"}')
            if pairs is None or any(k == _NAME_KEY for k, _ in pairs):
                return None
            merged = sorted({**late, **dict(pairs)}.items())
            between = encode(p for p in merged if p[0] < _NAME_KEY)
            rest = encode(p for p in merged if p[0] > _NAME_KEY)
            return (between, rest) if between else rest  # bytes: nothing between the tenancy's id and name

        self.prefixes: _Cache[bytes | None] = _Cache(prefix)
        self.suffixes: _Cache[bytes | tuple[bytes, bytes] | None] = _Cache(suffix)


def _side(text: str, empty: str, opening: str, closing: str) -> list[tuple[str, str]] | None:
    """The ``(key, value)`` pairs of one side of a canonical text, or None if it is not escape-free JSON."""
    if text == empty:
        return []
    if "\\" in text or not text.startswith(opening) or not text.endswith(closing) or len(text) < 7:
        return None
    fragments = text[2:-2].split('","')
    if text.count('"') != 4 * len(fragments) or not all('":"' in f for f in fragments):
        return None
    return [(k, v) for k, v in (f.split('":"', 1) for f in fragments)]


@dataclass(frozen=True, slots=True)
class _Layout:
    """Which row of a totals read feeds which wire series: worked out once, reused while the rows read (their
    ids), the instances held and the series' descriptions (``epoch``) are the same.

    Per metric (first-seen order), the single-fed wire series: their heads, the flat-array index of each one's
    total and its start time. Wire series fed by several ledger series (two instances with one attribute set)
    are summed per export from ``shared``.
    """

    epoch: int
    held: frozenset[str] | None
    sids: array[int]  # the ids of the rows read, in their order
    singles: tuple[tuple[int, list[bytes], array[int], array[int]], ...]  # metric, heads, total index, starts
    shared: dict[tuple[int, int], list[int]]  # (metric, attribute set) -> flat-array indices of its rows' totals
    hole: int | None  # the lowest id read but not described (see ``MetricsBuilder.known_series``)


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
    # -- per ledger series, by id (ids are dense: SQLite's rowids, never deleted): a few bytes each ----------
    #: its metric's index + 1 (0: not described yet)
    _metric_of: bytearray = field(default_factory=bytearray)
    #: its encoded attribute set's index in ``_sets`` (-1: none, its metric is disabled)
    _set_of: array[int] = field(default_factory=lambda: array("i"))
    _instance_of: array[int] = field(default_factory=lambda: array("I"))  # index in ``_instances``
    _tenancy_of: array[int] = field(default_factory=lambda: array("i"))  # index in ``_tenancies`` (-1: none)
    #: 1 where the series' wire series (metric, attribute set) has other ledger series feeding it too
    _shared: bytearray = field(default_factory=bytearray)
    _max_id: int = 0
    #: the lowest series id the last export's totals had but no description of: a shared PostgreSQL ledger's
    #: ids come from a sequence, so a replica's transaction can commit lower ids after higher ones were read
    _hole: int | None = None
    # -- tables the per-series arrays index into ---------------------------------------------------------------
    _sets: list[bytes] = field(default_factory=list)  # distinct encoded attribute sets (heads), once each
    _set_index: dict[bytes, int] = field(default_factory=dict)
    _set_metrics: array[int] = field(default_factory=lambda: array("Q"))  # per set: mask of metrics using it
    _metrics: list[_MetricFacts] = field(default_factory=list)
    _metric_index: dict[str, int] = field(default_factory=dict)  # name -> index + 1
    _instances: list[str] = field(default_factory=list)
    _instance_index: dict[str, int] = field(default_factory=dict)
    _tenancies: list[tuple[str, str, Any]] = field(default_factory=list)  # (instance, "tenancy", id)
    _tenancy_ids: list[dict[Any, int]] = field(default_factory=list)  # per instance: tenancy id -> index
    _tenancy_names: list[str | None] = field(default_factory=list)  # the name its series' heads carry
    _id_pairs: list[bytes] = field(default_factory=list)  # per tenancy: its llm.tenancy.id, encoded
    _name_pairs: list[bytes] = field(default_factory=list)  # per tenancy: its llm.tenancy.name, encoded (or b"")
    _tenancy_blocks: list[bytes] = field(default_factory=list)  # per tenancy: its id and name pairs together
    _halves: list[_Halves] = field(default_factory=list)  # per instance: the texts around tenancy ids, encoded
    #: series id -> the head of its ``llm.usage.adjustments`` series and its value kind (made on its first shrink)
    _adjustment_sets: dict[int, tuple[bytes, ValueKind]] = field(default_factory=dict)
    _epoch: int = 0  # moves whenever a description changes (a new series, a rename): layouts are stale
    #: wire series (metric, attribute set) found fed by several series by ``describe`` and not marked yet
    #: (``_mark_shared`` walks every series: once per build, not once per page described)
    _collisions: set[tuple[int, int]] = field(default_factory=set)
    _layout: _Layout | None = None
    # -- encoding caches ---------------------------------------------------------------------------------------
    _pairs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # encoded attribute, framed
    _fragments: _Fragments | None = None  # ``key":"value`` of canonical JSON -> encoded
    _envelope: tuple[bytes, bytes] | None = None  # encoded ResourceMetrics and ScopeMetrics, without metrics
    _headers: dict[str, bytes] = field(default_factory=dict)  # metric -> its encoded name, description, unit
    _enabled: dict[str, bool] = field(default_factory=dict)  # is_enabled, per metric
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

    # -- one export's points ----------------------------------------------------------------------------------
    def _series_columns(self, rows: ExportRows, held: frozenset[str] | None) -> tuple[_Column, ...]:
        """The ledger series' points, per metric: totals, adjustments and levels (of ``held`` if given)."""
        names = rows.names
        self._rename(names)
        self._describe(rows.new_series, names)
        totals = rows.totals
        flat = totals.flat if isinstance(totals, TotalsColumns) else array("q", chain.from_iterable(totals))
        sids = flat[0::4]
        layout = self._layout
        if layout is None or layout.epoch != self._epoch or layout.held != held or layout.sids != sids:
            layout = self._layout = self._plan(flat, sids, held)
        self._hole = layout.hole

        # Per metric: the single-fed wire series straight from the flat array, then the summed ones.
        take = flat.__getitem__
        metrics, sets = self._metrics, self._sets
        columns: dict[int, tuple[list[bytes], array[int], array[int]]] = {}
        for m, heads, index, starts in layout.singles:
            columns[m] = (heads, array("q", map(take, index)), starts)
        extra: dict[int, tuple[list[bytes], list[int], list[int]]] = {}  # metric -> summed wire series
        for (m, s), where in layout.shared.items():
            column = extra.setdefault(m, ([], [], []))
            column[0].append(sets[s])
            column[1].append(sum(map(take, where)))
            column[2].append(min(map(take, [i + 2 for i in where])))
        self._levels(rows.levels, held, extra)
        out = []
        for m in dict.fromkeys([*columns, *extra]):
            facts = metrics[m - 1]
            heads, values, starts = columns.get(m, ([], array("q"), array("q")))
            more = extra.get(m)
            if more is not None:
                heads, values, starts = heads + more[0], values + array("q", more[1]), starts + array("q", more[2])
            out.append(_Column(self._metric_header(facts.name), facts.level, facts.kind, heads, values, starts))
        adjustments = self._adjustments(flat, sids, held)
        if adjustments is not None:
            out.append(adjustments)
        return tuple(out)

    def _plan(self, flat: array[int], sids: array[int], held: frozenset[str] | None) -> _Layout:
        """Work out which row feeds which wire series (see ``_Layout``); Python per row, once per layout."""
        metric_of, set_of, shared, instance_of = self._metric_of, self._set_of, self._shared, self._instance_of
        known, max_id = len(metric_of), self._max_id
        keep = None if held is None else {i for i, name in enumerate(self._instances) if name in held}
        skip = {i + 1 for i, f in enumerate(self._metrics) if f.level}  # levels come from ``rows.levels``
        sets = self._sets
        singles: dict[int, tuple[list[bytes], array[int], None]] = {}
        summed: dict[tuple[int, int], list[int]] = {}
        hole = None
        last_m = 0
        heads: list[bytes] | None = None
        index: array[int] | None = None
        for row, sid in enumerate(sids):
            m = metric_of[sid] if sid < known else 0
            if not m:  # created after the totals were read: described, but sent next time
                if sid <= max_id and (hole is None or sid < hole):
                    hole = sid  # committed after higher ids were described: read again next export
                continue
            if keep is not None and instance_of[sid] not in keep:
                continue
            s = set_of[sid]
            if s < 0 or m in skip:
                continue
            if shared[sid]:  # two instances reporting the same attribute set: added up each export
                summed.setdefault((m, s), []).append(4 * row + 1)
                continue
            if m != last_m:
                column = singles.get(m)
                if column is None:
                    column = singles[m] = ([], array("q"), None)
                heads, index, _ = column
                last_m = m
            assert heads is not None and index is not None
            heads.append(sets[s])
            index.append(4 * row + 1)
        # A series' start time never changes: read once per layout (two places after its total).
        take = flat.__getitem__
        planned = tuple((m, heads, index, array("q", map(take, map(add, index, repeat(2)))))
                        for m, (heads, index, _) in singles.items())
        return _Layout(self._epoch, held, sids, planned, summed, hole)

    def _levels(self, levels: Mapping[int, int], held: frozenset[str] | None,
                extra: dict[int, tuple[list[bytes], list[int], list[int]]]) -> None:
        """Level series (gauges): the newest bucket's value; several instances' levels of one set add up."""
        metric_of, known = self._metric_of, len(self._metric_of)
        summed: dict[tuple[int, int], int] = {}
        for sid, value in levels.items():
            m = metric_of[sid] if sid < known else 0
            if not m or not self._metrics[m - 1].level or self._set_of[sid] < 0:
                continue
            if held is not None and self._instances[self._instance_of[sid]] not in held:
                continue
            key = (m, self._set_of[sid])
            summed[key] = summed.get(key, 0) + value
        for (m, s), value in summed.items():
            column = extra.setdefault(m, ([], [], []))
            column[0].append(self._sets[s])
            column[1].append(value)
            column[2].append(0)

    def _adjustments(self, flat: array[int], sids: array[int], held: frozenset[str] | None) -> _Column | None:
        """``llm.usage.adjustments``: the shrinks, per wire series of a series with any (few: found in C)."""
        if not self.is_enabled("llm.usage.adjustments"):
            return None
        adjusted = flat[2::4]
        if adjusted.count(0) == len(adjusted):
            return None
        metric_of, set_of, known = self._metric_of, self._set_of, len(self._metric_of)
        summed: dict[bytes, list[Any]] = {}
        for row, amount in enumerate(adjusted):
            if not amount:
                continue
            sid = sids[row]
            m = metric_of[sid] if sid < known else 0
            if not m or set_of[sid] < 0 or self._metrics[m - 1].level:
                continue
            if held is not None and self._instances[self._instance_of[sid]] not in held:
                continue
            head, kind = self._adjustment_set(sid)
            start = flat[4 * row + 3]
            slot = summed.get(head)
            if slot is None:
                summed[head] = [amount, start, kind]
            else:
                slot[0] += amount
                slot[1] = min(slot[1], start)
        if not summed:
            return None
        # Adjustments are doubles on the wire; money ones are nano-units in the ledger like the money totals.
        values = [v / NANOS_PER_UNIT if kind == "money" else float(v) for v, _, kind in summed.values()]
        return _Column(self._metric_header("llm.usage.adjustments"), False, "double", list(summed), values,
                       array("q", [start for _, start, _ in summed.values()]))

    def _adjustment_set(self, sid: int) -> tuple[bytes, ValueKind]:
        """The head of a series' adjustment wire series (built on its first shrink) and how its values go out."""
        found = self._adjustment_sets.get(sid)
        if found is None:
            facts = self._metrics[self._metric_of[sid] - 1]
            measure = MEASURE_OF_METRIC.get(facts.name, facts.name)
            attributes = {"llm.measure": measure, **_decode_attributes(self._sets[self._set_of[sid]])}
            kind: ValueKind = "money" if facts.kind == "money" else "double"
            found = self._adjustment_sets[sid] = (_head(self._encode(attributes)), kind)
        return found

    # -- descriptions: attributes encoded once per series ---------------------------------------------------
    def describe(self, series: Iterable[tuple[int, str, str, str]], names: Mapping[Any, str]) -> None:
        """Remember these series ``(id, instance, metric, canonical attributes JSON)`` ahead of a build, as a
        build does with ``ExportRows.new_series``; ``known_series`` moves past them, so the next
        ``Ledger.export_rows`` reads only the series after. Why: at start every series' attributes are read
        once, by the money signals (``Signals.read(describe=...)``), and handed over here a page at a time,
        instead of being read a second time for the builder (issue 20). ``names`` may be older or newer than
        the build's: ``build`` renames what changed before it sends."""
        self._describe(series, names, mark=False)

    def _describe(
        self, new_series: Iterable[tuple[int, str, str, str]], names: Mapping[Any, str], *, mark: bool = True,
    ) -> None:
        """Remember the series not seen yet: their metric, instance, tenancy and encoded attribute set.

        This runs once per series, at start, so it decides how long the first export takes (issue 20). A
        series' attributes are canonical JSON (string values, keys sorted: ``series.canonical_attrs``); when the
        text has no escapes, its ``key":"value`` fragments are exactly its pairs, in key order, and each
        fragment's encoding is cached (values repeat across series): no JSON parse, no dict and no sort. Static
        labels and the tenancy name are merged in key order; anything else (escapes, non-string values, the
        attribution rules, which read the whole set) takes the general path: ``json.loads`` and a sorted dict.
        """
        metric_of, set_of, instance_of, tenancy_of = self._metric_of, self._set_of, self._instance_of, self._tenancy_of
        set_index, set_metrics, sets = self._set_index, self._set_metrics, self._sets
        id_pairs, name_pairs = self._id_pairs, self._name_pairs
        rules = bool(self.attributor)
        partition, join, frames, blocks = str.partition, b"".join, _FRAMES, self._tenancy_blocks
        cut = _TENANCY_FRAGMENT
        collisions = self._collisions
        described, top, size = 0, self._max_id, len(metric_of)
        last_instance = last_metric = None
        for sid, instance, metric, text in new_series:
            if sid < size and metric_of[sid]:
                continue
            if metric != last_metric or instance != last_instance:  # rows come in runs of one instance and metric
                m = self._metric_index.get(metric) or self._add_metric(metric)
                facts = self._metrics[m - 1]
                enabled, bit = facts.enabled, facts.bit
                general = rules and facts.usage and enabled
                found = self._instance_index.get(instance)
                i = self._add_instance(instance) if found is None else found
                tenancy_ids, halves = self._tenancy_ids[i], self._halves[i]
                prefixes, suffixes = halves.prefixes, halves.suffixes
                last_instance, last_metric = instance, metric
            head: bytes | None = None
            t = -1
            prefix, cut_found, rest = ("", "", "") if general else partition(text, cut)
            fast = bool(cut_found and prefix)
            if fast:  # the common shape: cut around the tenancy id, both sides' encodings cached per instance
                tenancy, _, suffix = partition(rest, '"')
                t = tenancy_ids.get(tenancy, -1)
                if t < 0:
                    t = self._tenancy(i, tenancy, names)
                before = prefixes[prefix]
                after = suffixes[suffix]
                if before is None or after is None or "\\" in tenancy:
                    fast = False  # not canonical JSON without escapes: the paths below
                elif enabled:
                    if isinstance(after, tuple):  # keys between the tenancy's id and its name
                        attrs = join((before, id_pairs[t], after[0], name_pairs[t], after[1]))
                    else:
                        attrs = before + blocks[t] + after
                    n = len(attrs) + _TAIL_SIZE
                    head = (frames[n] if n < _FRAMED else _TAG_DATA_POINT + _varint(n)) + attrs
            if not fast:
                frags = None if general else _simple_fragments(text)
                if frags is None:
                    t, head = self._describe_parsed(i, facts, json.loads(text), names)
                else:
                    t, head = self._describe_fragments(i, facts, text, frags, names)
            if sid >= size:
                self._grow(sid + 1)
                metric_of, set_of, instance_of, tenancy_of = (
                    self._metric_of, self._set_of, self._instance_of, self._tenancy_of)
                size = len(metric_of)
            metric_of[sid] = m
            instance_of[sid] = i
            tenancy_of[sid] = t
            if head is not None:
                s = set_index.get(head)
                if s is None:
                    s = set_index[head] = len(sets)
                    sets.append(head)
                    set_metrics.append(bit)
                elif set_metrics[s] & bit:
                    collisions.add((m, s))
                else:
                    set_metrics[s] |= bit
                set_of[sid] = s
            if sid > top:
                top = sid
            described += 1
        self._max_id = top
        if collisions and mark:
            self._mark_shared(collisions)
            collisions.clear()
        if described:
            self._epoch += 1

    def _describe_fragments(
        self, i: int, facts: _MetricFacts, text: str, frags: list[str], names: Mapping[Any, str]
    ) -> tuple[int, bytes | None]:
        """``_describe`` for canonical JSON without escapes and without a tenancy id (or with one that the cut
        around it cannot take): each ``key":"value`` fragment encoded once (cached), labels and the tenancy name
        merged in key order."""
        t, tname = -1, None
        at = text.find(_TENANCY_FRAGMENT)
        if at >= 0:
            at += len(_TENANCY_FRAGMENT)
            t = self._tenancy(i, text[at:text.index('"', at)], names)
            tname = self._tenancy_names[t]
        if not facts.enabled:
            return t, None
        if self._fragments is None:
            self._fragments = _Fragments(self._pair)
        fragment = self._fragments.__getitem__
        labels = self.labels.get(self._instances[i])
        if labels or tname:
            encoded = list(map(fragment, frags))
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
            attrs = b"".join(map(fragment, frags))
        return t, _head(attrs)

    def _describe_parsed(
        self, i: int, facts: _MetricFacts, raw: dict[str, Any], names: Mapping[Any, str]
    ) -> tuple[int, bytes | None]:
        """The general path of ``_describe``: a series' tenancy and head from its parsed attributes."""
        tenancy = raw.get("llm.tenancy.id")
        t, tname = -1, None
        if tenancy is not None:
            t = self._tenancy(i, tenancy, names)
            tname = self._tenancy_names[t]
        if not facts.enabled:
            return t, None
        labels = self.labels.get(self._instances[i])
        attributes = {**labels, **raw} if labels else raw
        if tname:
            attributes["llm.tenancy.name"] = tname
        if self.attributor and facts.usage:
            attributes.update(self.attributor.attributes(attributes, tname, labels))
        return t, _head(self._encode(attributes))

    def _add_metric(self, name: str) -> int:
        """A metric met for the first time: its facts, and its index + 1 (0 means "not described")."""
        if len(self._metrics) >= _MAX_METRICS:
            raise ValueError(f"more than {_MAX_METRICS} metrics in the ledger's series")
        kind = _value_kind(name)
        self._metrics.append(_MetricFacts(name, 1 << len(self._metrics), self.is_enabled(name), kind,
                                          name in LEVEL_METRICS, name.startswith("llm.usage.")))
        m = self._metric_index[name] = len(self._metrics)
        return m

    def _add_instance(self, instance: str) -> int:
        i = self._instance_index[instance] = len(self._instances)
        self._instances.append(instance)
        self._tenancy_ids.append({})
        self._halves.append(_Halves(self, self.labels.get(instance) or {}))
        return i

    def _tenancy(self, i: int, tenancy: Any, names: Mapping[Any, str]) -> int:
        """The index of an instance's tenancy; a new one carries the name it has now."""
        t = self._tenancy_ids[i].get(tenancy)
        if t is None:
            key = (self._instances[i], "tenancy", tenancy)
            t = self._tenancy_ids[i][tenancy] = len(self._tenancies)
            self._tenancies.append(key)
            self._tenancy_names.append(names.get(key))
            self._id_pairs.append(self._pair(("llm.tenancy.id", tenancy)))
            self._name_pairs.append(b"")
            self._tenancy_blocks.append(b"")
            self._name_pair(t)
        return t

    def _name_pair(self, t: int) -> None:
        """The encoded ``llm.tenancy.name`` a tenancy's series carry: its name, else a label's, else none."""
        name = self._tenancy_names[t] or self.labels.get(self._tenancies[t][0], {}).get("llm.tenancy.name")
        self._name_pairs[t] = self._pair(("llm.tenancy.name", name)) if name else b""
        self._tenancy_blocks[t] = self._id_pairs[t] + self._name_pairs[t]

    def _grow(self, size: int) -> None:
        """Make room for series ids below ``size`` (and some more: ids arrive in order, a page at a time)."""
        more = max(size, len(self._metric_of) + len(self._metric_of) // 4 + 1024) - len(self._metric_of)
        self._metric_of.extend(bytes(more))
        self._shared.extend(bytes(more))
        self._set_of.extend(array("i", [-1]) * more)
        self._instance_of.extend(array("I", [0]) * more)
        self._tenancy_of.extend(array("i", [-1]) * more)

    def _mark_shared(self, collisions: set[tuple[int, int]]) -> None:
        """Flag every series of the wire series (metric, attribute set) that several series feed: one pass."""
        metric_of, shared = self._metric_of, self._shared
        collided = {s for _, s in collisions}
        for sid, s in enumerate(self._set_of):
            if s in collided and (metric_of[sid], s) in collisions:
                shared[sid] = 1

    def _rename(self, names: Mapping[Any, str]) -> None:
        """Re-encode the series of tenancies whose name changed since their heads were made (a project renamed).

        Checked on every export with new rows, per tenancy (a C comparison when nothing changed); rare, so the
        attribute sets are then rebuilt from scratch."""
        if not self._tenancies:
            return
        now = list(map(names.get, self._tenancies))
        if now == self._tenancy_names:
            return
        renamed = {t for t, (old, new) in enumerate(zip(self._tenancy_names, now, strict=True)) if old != new}
        self._tenancy_names[:] = now
        for t in renamed:
            self._name_pair(t)
        heads: dict[int, bytes] = {}
        for sid, t in enumerate(self._tenancy_of):
            if t not in renamed or self._set_of[sid] < 0:
                continue
            facts = self._metrics[self._metric_of[sid] - 1]
            # The encoded attributes are the only copy kept (memory: none per series beyond the head).
            attributes = _decode_attributes(self._sets[self._set_of[sid]])
            for derived in ("llm.tenancy.name", TEAM, COST_CENTER):
                attributes.pop(derived, None)
            name = now[t]
            if name:
                attributes["llm.tenancy.name"] = name
            if self.attributor and facts.usage:  # usage and cost series get a team
                instance = self._instances[self._instance_of[sid]]
                attributes.update(self.attributor.attributes(attributes, name, self.labels.get(instance)))
            heads[sid] = _head(self._encode(attributes))
            self._adjustment_sets.pop(sid, None)
        self._reindex(heads)

    def _reindex(self, replaced: Mapping[int, bytes]) -> None:
        """The distinct attribute sets and who shares them, made again from every series (after renames)."""
        old = self._sets
        sets: list[bytes] = []
        index: dict[bytes, int] = {}
        masks: array[int] = array("Q")
        set_of = array("i", [-1]) * len(self._metric_of)
        collisions: set[tuple[int, int]] = set()
        for sid, s in enumerate(self._set_of):
            if s < 0:
                continue
            m = self._metric_of[sid]
            bit = self._metrics[m - 1].bit
            head = replaced.get(sid) or old[s]
            n = index.get(head)
            if n is None:
                n = index[head] = len(sets)
                sets.append(head)
                masks.append(bit)
            elif masks[n] & bit:
                collisions.add((m, n))
            else:
                masks[n] |= bit
            set_of[sid] = n
        self._sets, self._set_index, self._set_metrics, self._set_of = sets, index, masks, set_of
        self._collisions.clear()  # found again below, with the new sets' indexes
        self._shared = bytearray(len(self._metric_of))
        if collisions:
            self._mark_shared(collisions)
        self._epoch += 1

    def _encode(self, attributes: Mapping[str, Any]) -> bytes:
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

    def _pair(self, item: tuple[str, Any]) -> bytes:
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
