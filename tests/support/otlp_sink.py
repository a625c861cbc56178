"""A real OTLP metrics receiver (gRPC + HTTP/protobuf) for tests and benchmarks.

Why a real server rather than a mocked exporter: the receiver's job is to put
exact numbers on the wire, so tests must see what a collector would see, after
the official OpenTelemetry exporters have encoded, compressed, retried and sent
it. ``OTLPSink`` listens on loopback with both OTLP transports, decodes every
``ExportMetricsServiceRequest`` into plain Python values and lets a test:

* query the latest data point per attribute set (``points``),
* check transport details (headers, gzip) per request (``requests``),
* make the next N requests fail (``fail_next``) to exercise retry paths,
* stop and restart on the same ports ("collector down, then back"),
* block until something arrived (``wait_for``) without sleeping.

Only metrics are supported; traces and logs are out of scope for this project.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, cast

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc import status_pb2  # type: ignore[import-untyped]
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

__all__ = [
    "Attributes",
    "HistogramPoint",
    "MetricInfo",
    "MetricKind",
    "OTLPSink",
    "Point",
    "ReceivedRequest",
    "Transport",
    "attr_key",
    "merge_requests",
]

_HOST = "127.0.0.1"
_METRICS_PATH = "/v1/metrics"
# Generous so that benchmarks with big batches are not rejected by the sink
# before the exporter's own limits come into play (gRPC's default is 4 MiB).
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Transport = Literal["grpc", "http"]
MetricKind = Literal["sum", "gauge", "histogram", "exponential_histogram", "summary"]

#: Key of a time series within one metric: its data point attributes.
Attributes = frozenset[tuple[str, Any]]


def attr_key(attributes: Mapping[str, Any]) -> Attributes:
    """Build the key used by :meth:`OTLPSink.points` from a plain mapping.

    Exists because attribute names such as ``llm.provider`` cannot be keyword
    arguments, and spelling ``frozenset({...}.items())`` in every test is noise.
    """
    return frozenset(attributes.items())


@dataclass(frozen=True)
class Point:
    """Latest value of one sum or gauge time series.

    ``is_monotonic`` and ``temporality`` (the OTLP ``AggregationTemporality``
    enum value: 1 = delta, 2 = cumulative) are ``None`` for gauges, which have
    neither in OTLP.
    """

    value: int | float
    start_time_unix_nano: int
    time_unix_nano: int
    is_monotonic: bool | None = None
    temporality: int | None = None


@dataclass(frozen=True)
class HistogramPoint:
    """Latest value of one explicit-bucket histogram time series.

    ``sum``, ``min`` and ``max`` are optional in OTLP, hence ``None`` when the
    sender left them out.
    """

    count: int
    sum: float | None
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    start_time_unix_nano: int
    time_unix_nano: int
    temporality: int
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class MetricInfo:
    """Descriptive fields of a metric, as in the most recent request carrying it."""

    name: str
    unit: str
    description: str
    kind: MetricKind


@dataclass(frozen=True)
class ReceivedRequest:
    """Transport-level record of one export attempt that reached the sink.

    Kept separately from the data so that tests can assert on *how* data was
    sent (auth header, gzip, transport) and on attempts that were refused by
    ``fail_next`` (``accepted=False``), whose data is never merged into
    ``points``.

    ``headers`` has lower-cased names. For gRPC it is the invocation metadata;
    binary (``-bin``) values are decoded as latin-1 so every value is a ``str``.
    ``content_encoding`` is the HTTP ``Content-Encoding`` header, or for gRPC
    the ``grpc-encoding`` metadata if the gRPC runtime exposes it (it normally
    strips it, so expect ``None`` on gRPC).
    """

    transport: Transport
    headers: Mapping[str, str]
    content_encoding: str | None
    accepted: bool
    metric_names: frozenset[str]
    data_point_count: int
    payload_size: int  # bytes of the serialized, uncompressed protobuf request


@dataclass
class _Failures:
    """Pending injected failures; shared by both transports on purpose, so a
    test can say "the next 2 exports fail" without caring which exporter runs."""

    remaining: int = 0
    http_status: int = HTTPStatus.SERVICE_UNAVAILABLE.value
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    retry_after: float | None = None


@dataclass(frozen=True)
class _Decoded:
    """Plain-Python view of one request, computed outside the lock."""

    resource_attributes: dict[str, Any]
    infos: list[MetricInfo]
    series: list[tuple[str, Attributes, Point | HistogramPoint]]
    data_point_count: int
    counts: dict[str, int] = field(default_factory=dict)  # metric -> points in this request


@dataclass(frozen=True)
class _Verdict:
    """What a transport handler must answer for one request."""

    ok: bool
    http_status: int = HTTPStatus.OK.value
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK
    retry_after: float | None = None


@dataclass
class _State:
    """Everything the queries read; guarded by ``OTLPSink._cond``."""

    requests: list[ReceivedRequest] = field(default_factory=list)
    latest: dict[str, dict[Attributes, Point | HistogramPoint]] = field(default_factory=dict)
    infos: dict[str, MetricInfo] = field(default_factory=dict)
    resource_attributes: dict[str, Any] = field(default_factory=dict)
    failures: _Failures = field(default_factory=_Failures)
    point_counts: dict[str, int] = field(default_factory=dict)  # metric -> points accepted, all requests


def _any_value(value: common_pb2.AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` to a hashable Python value.

    Arrays become tuples and key/value lists become tuples of pairs so that the
    result can sit inside the frozenset used as a series key.
    """
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return tuple((kv.key, _any_value(kv.value)) for kv in value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(key_values: Any) -> Attributes:
    return frozenset((kv.key, _any_value(kv.value)) for kv in key_values)


def _number_value(dp: Any) -> int | float:
    return cast(int | float, dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double)


def _decode(request: metrics_service_pb2.ExportMetricsServiceRequest) -> _Decoded:
    """Flatten a request into (metric, attributes, point) triples in wire order.

    Wire order matters: if the same series appears twice, the later one wins,
    exactly as it would when merging successive requests.
    """
    resource_attributes: dict[str, Any] = {}
    infos: list[MetricInfo] = []
    series: list[tuple[str, Attributes, Point | HistogramPoint]] = []
    if request.resource_metrics:
        resource_attributes = dict(_attributes(request.resource_metrics[0].resource.attributes))
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                infos.append(MetricInfo(metric.name, metric.unit, metric.description, cast(MetricKind, kind)))
                if kind == "sum":
                    for dp in metric.sum.data_points:
                        series.append(
                            (
                                metric.name,
                                _attributes(dp.attributes),
                                Point(
                                    value=_number_value(dp),
                                    start_time_unix_nano=dp.start_time_unix_nano,
                                    time_unix_nano=dp.time_unix_nano,
                                    is_monotonic=metric.sum.is_monotonic,
                                    temporality=int(metric.sum.aggregation_temporality),
                                ),
                            )
                        )
                elif kind == "gauge":
                    for dp in metric.gauge.data_points:
                        series.append(
                            (
                                metric.name,
                                _attributes(dp.attributes),
                                Point(
                                    value=_number_value(dp),
                                    start_time_unix_nano=dp.start_time_unix_nano,
                                    time_unix_nano=dp.time_unix_nano,
                                ),
                            )
                        )
                elif kind == "histogram":
                    for hdp in metric.histogram.data_points:
                        series.append(
                            (
                                metric.name,
                                _attributes(hdp.attributes),
                                HistogramPoint(
                                    count=hdp.count,
                                    sum=hdp.sum if hdp.HasField("sum") else None,
                                    bucket_counts=tuple(hdp.bucket_counts),
                                    explicit_bounds=tuple(hdp.explicit_bounds),
                                    start_time_unix_nano=hdp.start_time_unix_nano,
                                    time_unix_nano=hdp.time_unix_nano,
                                    temporality=int(metric.histogram.aggregation_temporality),
                                    min=hdp.min if hdp.HasField("min") else None,
                                    max=hdp.max if hdp.HasField("max") else None,
                                ),
                            )
                        )
                # exponential_histogram / summary: info is recorded, points are not
                # decoded because nothing in this project emits them.
    counts: dict[str, int] = {}
    for name, _, _ in series:
        counts[name] = counts.get(name, 0) + 1
    return _Decoded(resource_attributes, infos, series, len(series), counts)


def _count(request: metrics_service_pb2.ExportMetricsServiceRequest) -> _Decoded:
    """Metric infos and point counts only: what ``decode_points=False`` keeps."""
    infos: list[MetricInfo] = []
    counts: dict[str, int] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                infos.append(MetricInfo(metric.name, metric.unit, metric.description, cast(MetricKind, kind)))
                counts[metric.name] = counts.get(metric.name, 0) + len(getattr(metric, kind).data_points)
    resource = dict(_attributes(request.resource_metrics[0].resource.attributes)) if request.resource_metrics else {}
    return _Decoded(resource, infos, [], sum(counts.values()), counts)


def merge_requests(
    requests: Iterable[metrics_service_pb2.ExportMetricsServiceRequest],
) -> dict[str, dict[Attributes, Point | HistogramPoint]]:
    """Decode requests without a server, merged as the sink merges them: metric -> attributes -> latest point.

    For tests of the request builder, which must read its output exactly as a collector would.
    """
    merged: dict[str, dict[Attributes, Point | HistogramPoint]] = {}
    for request in requests:
        for name, key, point in _decode(request).series:
            merged.setdefault(name, {})[key] = point
    return merged


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    """gRPC side: the same ``Export`` RPC a collector implements."""

    def __init__(self, sink: OTLPSink) -> None:
        self._sink = sink

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        headers: dict[str, str] = {}
        for key, value in context.invocation_metadata():
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            headers[key.lower()] = text
        verdict = self._sink._record("grpc", headers, headers.get("grpc-encoding"), request)
        if not verdict.ok:
            if verdict.retry_after is not None:
                # The official gRPC exporter honours RetryInfo as its backoff.
                info = RetryInfo()
                info.retry_delay.FromNanoseconds(int(verdict.retry_after * 1e9))
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.abort(verdict.grpc_code, "failure injected by OTLPSink.fail_next")
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _HTTPServer(ThreadingHTTPServer):
    """Carries a reference to the sink for the handler; loopback, no port sharing."""

    daemon_threads = True
    allow_reuse_address = True  # lets a restarted sink rebind while old sockets sit in TIME_WAIT

    def __init__(self, port: int, sink: OTLPSink) -> None:
        self.sink = sink
        super().__init__((_HOST, port), _MetricsHandler)


class _MetricsHandler(BaseHTTPRequestHandler):
    """HTTP side: ``POST /v1/metrics`` with ``application/x-protobuf``.

    Deliberately HTTP/1.0 (the base class default), i.e. one request per
    connection: with keep-alive, a handler thread of a *stopped* sink could keep
    serving the exporter's pooled connection and swallow requests meant for the
    restarted sink on the same port.
    """

    server: _HTTPServer

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != _METRICS_PATH:
            self._reply(HTTPStatus.NOT_FOUND.value, b"")
            return
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-protobuf":
            # OTLP/HTTP JSON is legal but not used by this project; refuse loudly.
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE.value, _status_body("only application/x-protobuf"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        encoding = self.headers.get("Content-Encoding")
        try:
            match (encoding or "").strip().lower():
                case "" | "identity":
                    raw = body
                case "gzip":
                    raw = gzip.decompress(body)
                case "deflate":
                    raw = zlib.decompress(body)
                case other:
                    self._reply(HTTPStatus.BAD_REQUEST.value, _status_body(f"unsupported encoding {other}"))
                    return
            request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(raw)
        except (OSError, zlib.error, EOFError, DecodeError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST.value, _status_body(f"undecodable request: {exc}"))
            return
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            name = key.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        verdict = self.server.sink._record("http", headers, encoding, request)
        if not verdict.ok:
            extra = {} if verdict.retry_after is None else {"Retry-After": f"{verdict.retry_after:g}"}
            self._reply(verdict.http_status, _status_body("failure injected by OTLPSink.fail_next"), extra)
            return
        self._reply(
            HTTPStatus.OK.value, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        )

    def _reply(self, status: int, body: bytes, extra_headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request access logs; tests assert on ``requests`` instead."""


def _status_body(message: str) -> bytes:
    """OTLP/HTTP error bodies are a serialized ``google.rpc.Status``."""
    return cast(bytes, status_pb2.Status(message=message).SerializeToString())


class OTLPSink:
    """OTLP metrics receiver on 127.0.0.1 speaking gRPC and HTTP/protobuf.

    Use as a context manager, or ``start()``/``stop()``. Ports default to 0
    (pick a free one); after the first ``start()`` the chosen ports are kept, so
    ``stop(); start()`` on the same object -- or a new ``OTLPSink(grpc_port=...,
    http_port=...)`` -- comes back on the same addresses, which is what an
    exporter configured with a fixed endpoint needs for "down, then back" tests.

    All state lives behind one ``threading.Condition`` (re-entrant lock) that is
    notified on every request, so ``wait_for`` wakes up exactly when something
    arrives and predicates may call the query methods.
    """

    def __init__(self, grpc_port: int = 0, http_port: int = 0, *, decode_points: bool = True) -> None:
        # decode_points=False: only count points per metric (for benchmarks, where decoding 100,000 points
        # into Python objects would measure this sink rather than the sender; a Collector decodes in Go).
        self._decode_points = decode_points
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._cond = threading.Condition(threading.RLock())
        self._state = _State()
        self._grpc_server: grpc.Server | None = None
        self._grpc_executor: futures.ThreadPoolExecutor | None = None
        self._http_server: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> OTLPSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._grpc_server is not None

    def start(self) -> None:
        """Bind both servers and start serving. Raises ``OSError`` if a port is taken."""
        if self.running:
            return
        executor = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp-sink-grpc")
        server = grpc.server(
            executor,
            options=[
                # gRPC enables SO_REUSEPORT by default on Linux, which would let a
                # second sink silently share a port; a clash must be an error.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _MetricsServicer(self), server
        )
        try:
            # Recent grpcio raises on a bind failure; older versions returned 0.
            port = server.add_insecure_port(f"{_HOST}:{self._grpc_port}")
            if port == 0:
                raise RuntimeError("add_insecure_port returned 0")
        except RuntimeError as exc:
            executor.shutdown(wait=True)
            raise OSError(f"OTLPSink: cannot bind gRPC on {_HOST}:{self._grpc_port}") from exc
        try:
            http_server = _HTTPServer(self._http_port, self)
        except OSError:
            server.stop(0).wait()
            executor.shutdown(wait=True)
            raise
        server.start()
        # Short poll interval: shutdown() only takes effect when serve_forever's
        # select() returns, so this bounds how long stop() blocks.
        thread = threading.Thread(
            target=http_server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-sink-http",
            daemon=True,
        )
        thread.start()
        self._grpc_port = port
        self._http_port = http_server.server_address[1]
        self._grpc_server, self._grpc_executor = server, executor
        self._http_server, self._http_thread = http_server, thread

    def stop(self) -> None:
        """Stop both servers and release their ports before returning. Idempotent.

        In-flight gRPC calls are cancelled (clients see UNAVAILABLE/CANCELLED),
        like a collector that crashed. Recorded data is kept.
        """
        if self._grpc_server is not None:
            self._grpc_server.stop(0).wait()
            self._grpc_server = None
        if self._grpc_executor is not None:
            self._grpc_executor.shutdown(wait=True)
            self._grpc_executor = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join()
            self._http_thread = None

    # -- addresses ---------------------------------------------------------

    @property
    def grpc_port(self) -> int:
        """Bound gRPC port (the requested one before the first ``start()``)."""
        return self._grpc_port

    @property
    def http_port(self) -> int:
        """Bound HTTP port (the requested one before the first ``start()``)."""
        return self._http_port

    @property
    def grpc_endpoint(self) -> str:
        """``host:port`` for the gRPC exporter (use with ``insecure=True``)."""
        return f"{_HOST}:{self._grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base URL; the HTTP exporter wants ``http_endpoint + "/v1/metrics"``."""
        return f"http://{_HOST}:{self._http_port}"

    # -- failure injection -------------------------------------------------

    def fail_next(
        self,
        n: int,
        *,
        http_status: int = HTTPStatus.SERVICE_UNAVAILABLE.value,
        grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        retry_after: float | None = None,
    ) -> None:
        """Refuse the next ``n`` requests, whichever transport they arrive on.

        Refused requests are recorded (``accepted=False``) but their data is
        not merged. Defaults are retryable for both official exporters, so one
        ``export()`` call may consume several failures through its retries.
        ``retry_after`` (seconds) is sent as HTTP ``Retry-After`` / gRPC
        ``RetryInfo``, which both exporters use *instead of* their exponential
        backoff -- e.g. ``retry_after=0`` makes retry tests instant. Replaces
        any failures still pending.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._cond:
            self._state.failures = _Failures(n, int(http_status), grpc_code, retry_after)

    # -- recording (called from server threads) ----------------------------

    def _record(
        self,
        transport: Transport,
        headers: dict[str, str],
        content_encoding: str | None,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
    ) -> _Verdict:
        decoded = _decode(request) if self._decode_points else _count(request)
        with self._cond:
            state = self._state
            failures = state.failures
            accepted = failures.remaining == 0
            state.requests.append(
                ReceivedRequest(
                    transport=transport,
                    headers=headers,
                    content_encoding=content_encoding,
                    accepted=accepted,
                    metric_names=frozenset(info.name for info in decoded.infos),
                    data_point_count=decoded.data_point_count,
                    payload_size=request.ByteSize(),
                )
            )
            if accepted:
                if request.resource_metrics:
                    state.resource_attributes = decoded.resource_attributes
                for info in decoded.infos:
                    state.infos[info.name] = info
                for name, key, point in decoded.series:
                    state.latest.setdefault(name, {})[key] = point
                for name, n in decoded.counts.items():
                    state.point_counts[name] = state.point_counts.get(name, 0) + n
                verdict = _Verdict(ok=True)
            else:
                failures.remaining -= 1
                verdict = _Verdict(
                    ok=False,
                    http_status=failures.http_status,
                    grpc_code=failures.grpc_code,
                    retry_after=failures.retry_after,
                )
            self._cond.notify_all()
        return verdict

    # -- queries -------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """Number of *accepted* requests (refused ones are in ``attempt_count``)."""
        with self._cond:
            return sum(1 for r in self._state.requests if r.accepted)

    @property
    def attempt_count(self) -> int:
        """Number of requests that reached the sink, including refused ones."""
        with self._cond:
            return len(self._state.requests)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, oldest first (a copy)."""
        with self._cond:
            return list(self._state.requests)

    def metric_names(self) -> set[str]:
        """Names of all metrics in accepted requests."""
        with self._cond:
            return set(self._state.infos)

    def metric_info(self, name: str) -> MetricInfo:
        """Unit, description and kind of ``name``. Raises ``KeyError`` if never seen."""
        with self._cond:
            return self._state.infos[name]

    def resource_attributes(self) -> dict[str, Any]:
        """Resource attributes of the latest accepted request (its first resource)."""
        with self._cond:
            return dict(self._state.resource_attributes)

    def points(self, metric_name: str) -> dict[Attributes, Point | HistogramPoint]:
        """Latest point per attribute set of ``metric_name``; ``{}`` if never seen.

        "Latest" means from the most recently received request, not the largest
        timestamp: that is what a collector forwarding the stream would keep.
        Series from different resources/scopes with equal attributes collide.
        """
        with self._cond:
            return dict(self._state.latest.get(metric_name, {}))

    def point_count(self, metric_name: str) -> int:
        """Data points of ``metric_name`` accepted so far, over all requests (repeats counted each time)."""
        with self._cond:
            return self._state.point_counts.get(metric_name, 0)

    def number_points(self, metric_name: str) -> dict[Attributes, Point]:
        """``points()`` for a sum or gauge, typed as such. Raises ``TypeError`` otherwise."""
        result: dict[Attributes, Point] = {}
        for key, point in self.points(metric_name).items():
            if not isinstance(point, Point):
                raise TypeError(f"{metric_name} is not a sum or gauge")
            result[key] = point
        return result

    def histogram_points(self, metric_name: str) -> dict[Attributes, HistogramPoint]:
        """``points()`` for a histogram, typed as such. Raises ``TypeError`` otherwise."""
        result: dict[Attributes, HistogramPoint] = {}
        for key, point in self.points(metric_name).items():
            if not isinstance(point, HistogramPoint):
                raise TypeError(f"{metric_name} is not a histogram")
            result[key] = point
        return result

    def wait_for(self, predicate: Callable[[OTLPSink], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` is true or ``timeout`` seconds pass.

        Returns the predicate's final value. The predicate runs with the lock
        held (re-entrant, so it may call any query method) each time a request
        is recorded; keep it cheap and free of side effects.
        """
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def clear(self) -> None:
        """Forget all requests, data and pending failures; servers keep running."""
        with self._cond:
            self._state = _State()
            self._cond.notify_all()
