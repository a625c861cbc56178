"""The emitter: sends each export's OTLP requests through the official OpenTelemetry exporters.

``builder.py`` turns ledger totals into ready-made ``ExportMetricsServiceRequest`` batches; this module hands
them to the OTLP/gRPC and OTLP/HTTP exporters of ``opentelemetry-exporter-otlp`` (their retries, TLS,
compression and headers), one thread per exporter. Every export re-sends every series in full (cumulative
temporality, invariant 4), so an export that fails loses nothing: the next one carries it all.

The exporters' public ``export()`` takes SDK ``MetricsData`` and encodes it in pure Python, which is what made a
100,000-series export take seconds. We pass our encoded requests through the exporters' own send paths instead:
the gRPC exporter's ``_export`` with ``_translate_data`` / ``_count_data`` overridden, and the HTTP exporter's
``_export_batch``. They are private, so ``build_exporter`` checks that they exist and fails with one clear line if
an incompatible exporter release is installed, and ``tests/test_emitter.py`` and ``tests/test_builder.py`` pin
their behaviour.

The builder's bytes go on the wire as they are: parsing them back into a message only for gRPC or the HTTP
exporter to serialise it again cost as much as the rest of the send (issue 20). The gRPC exporter builds its stub
from ``self._stub`` (also when it reconnects), so ours is the generated stub's one method with a serializer that
passes bytes through; the HTTP exporter only calls ``SerializeToString()`` on what it is given, and counts its
points for its own self-metrics, which ``_Payload`` answers from the count the builder kept. Everything else
(retries and backoff, ``RetryInfo``, deadline, reconnect on UNAVAILABLE, compression, headers, TLS, and the
error details the emitter logs) is the exporters' own code, unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, cast

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics.export import MetricExportResult

from .builder import MAX_POINTS_PER_REQUEST, Export
from .config import ExporterConfig
from .errors import ExportError

log = logging.getLogger(__name__)


#: ``MetricsService/Export``, the one RPC of OTLP metrics over gRPC (as in the generated ``MetricsServiceStub``).
EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

#: A request as the emitter sends it: the builder's encoded bytes (or, from older callers, a message).
Request = bytes | ExportMetricsServiceRequest


class BatchExporter(Protocol):
    """What the emitter needs of an exporter: send one ready-made request, and shut down."""

    def export_request(self, request: Request, points: int) -> bool: ...

    def shutdown(self) -> None: ...


def failure_detail(exporter: BatchExporter) -> str | None:
    """What the collector answered to the last failed request (gRPC status or HTTP code, and its message).

    The official exporters log this themselves, but only their own loggers know it, and those stay quiet below
    debug (every retry would be a line); the operator needs it in the one warning the emitter writes.
    """
    detail = getattr(exporter, "last_failure", None)
    return detail if isinstance(detail, str) else None


class _RecordingStub:
    """The gRPC exporter's stub, remembering the status of the last failed ``Export`` call."""

    def __init__(self, inner: Any, owner: Any) -> None:
        self._inner, self._owner = inner, owner

    def Export(self, *args: Any, **kwargs: Any) -> Any:  # the stub's own method name
        import grpc

        try:
            return self._inner.Export(*args, **kwargs)
        except grpc.RpcError as error:
            code = error.code() if callable(getattr(error, "code", None)) else None
            details = error.details() if callable(getattr(error, "details", None)) else None
            name = getattr(code, "name", str(code))
            self._owner.last_failure = f"gRPC status {name}" + (f": {details}" if details else "")
            raise


class _RecordingHttpClient:
    """The HTTP exporter's client, remembering the HTTP code, reason or transport error of the last failure."""

    def __init__(self, inner: Any, owner: Any) -> None:
        self._inner, self._owner = inner, owner

    def export(self, data: bytes) -> Any:
        result = self._inner.export(data)
        if not getattr(result, "success", True):
            code, reason = getattr(result, "status_code", None), getattr(result, "reason", None)
            error = getattr(result, "error", None)
            if code is not None:
                self._owner.last_failure = f"HTTP {code}" + (f" {reason}" if reason else "")
            else:
                self._owner.last_failure = f"{type(error).__name__}: {error}" if error else "no response"
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _encoded(request: Request) -> bytes:
    """The request's wire bytes: the builder's as they are, a message serialised (the stub's serializer)."""
    if isinstance(request, bytes):
        return request
    return bytes(request.SerializeToString())


class _PassThroughStub:
    """``MetricsServiceStub`` whose ``Export`` sends already-encoded bytes unchanged.

    The exporter makes its stub as ``self._stub(channel)``, on start and on every reconnect, so this class takes
    the generated stub's place; the response is decoded as the generated stub decodes it.
    """

    def __init__(self, channel: Any) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

        self.Export = channel.unary_unary(
            EXPORT_METHOD, request_serializer=_encoded,
            response_deserializer=ExportMetricsServiceResponse.FromString,
        )


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A request already encoded by the builder, passed through the gRPC exporter's ``_export``."""

    payload: bytes
    points: int


class _PointCount:
    """Just enough of a ``Metric`` for the HTTP exporter to count a payload's points (its self-metrics)."""

    __slots__ = ("sum",)

    def __init__(self, points: int) -> None:
        self.sum = _DataPoints(points)

    @staticmethod
    def WhichOneof(_group: str) -> str:  # protobuf's method name
        return "sum"


@dataclass(frozen=True, slots=True)
class _DataPoints:
    points: int

    @property
    def data_points(self) -> range:
        return range(self.points)


class _Payload:
    """An encoded request where the HTTP exporter expects a message: ``SerializeToString()`` returns the bytes
    unchanged, and the nesting it counts data points through yields the builder's count."""

    __slots__ = ("_payload", "resource_metrics")

    def __init__(self, payload: bytes, points: int) -> None:
        from types import SimpleNamespace

        self._payload = payload
        scope = SimpleNamespace(metrics=(_PointCount(points),))
        self.resource_metrics = (SimpleNamespace(scope_metrics=(scope,)),)

    def SerializeToString(self) -> bytes:  # protobuf's method name
        return self._payload


def _grpc_exporter_class() -> type[Any]:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    for hook in ("_export", "_translate_data", "_count_data", "_initialize_channel_and_stub"):
        if not callable(getattr(OTLPMetricExporter, hook, None)):
            raise ExportError(
                f"the installed opentelemetry-exporter-otlp-proto-grpc has no {hook}(); "
                "install a release this receiver supports (>=1.45,<2)"
            )

    class GrpcBatchExporter(OTLPMetricExporter):
        """The official OTLP/gRPC metric exporter, fed with ready-made requests."""

        last_failure: str | None = None

        def _initialize_channel_and_stub(self) -> None:
            self._stub = _PassThroughStub  # before the parent makes the stub from it (also on reconnects)
            super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
            if getattr(self, "_client", None) is not None:  # also after the exporter's reconnects
                self._client = cast(Any, _RecordingStub(self._client, self))

        def _translate_data(self, data: Any) -> Any:
            if isinstance(data, _Encoded):
                return data.payload  # sent as it is by _PassThroughStub
            return super()._translate_data(data)

        def _count_data(self, data: Any) -> int:
            if isinstance(data, _Encoded):
                return data.points
            return int(super()._count_data(data))

        def export_request(self, request: Request, points: int) -> bool:
            self.last_failure = None
            result = self._export(data=cast(Any, _Encoded(_encoded(request), points)))
            return result == MetricExportResult.SUCCESS

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            super().shutdown(timeout_millis, **kwargs)

    return GrpcBatchExporter


def _http_exporter_class() -> type[Any]:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    if not callable(getattr(OTLPMetricExporter, "_export_batch", None)):
        raise ExportError(
            "the installed opentelemetry-exporter-otlp-proto-http has no _export_batch(); "
            "install a release this receiver supports (>=1.45,<2)"
        )

    class HttpBatchExporter(OTLPMetricExporter):
        """The official OTLP/HTTP (protobuf) metric exporter, fed with ready-made requests."""

        last_failure: str | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not callable(getattr(getattr(self, "_client", None), "export", None)):
                raise ExportError(
                    "the installed opentelemetry-exporter-otlp-proto-http has no _client.export(); "
                    "install a release this receiver supports (>=1.45,<2)"
                )
            self._client = cast(Any, _RecordingHttpClient(self._client, self))

        def export_request(self, request: Request, points: int) -> bool:
            if self._shutdown:
                return False
            self.last_failure = None
            payload = cast(Any, _Payload(_encoded(request), points))
            return self._export_batch(payload) == MetricExportResult.SUCCESS

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            super().shutdown(timeout_millis, **kwargs)

    return HttpBatchExporter


def build_exporter(cfg: ExporterConfig) -> BatchExporter:
    """The official OTLP exporter for one ``exporters:`` entry (gRPC or HTTP/protobuf)."""
    headers = dict(cfg.headers)
    try:
        if cfg.protocol == "grpc":
            import grpc
            GrpcExporter = _grpc_exporter_class()
            endpoint = cfg.endpoint
            insecure = cfg.tls.insecure or endpoint.startswith("http://")
            credentials = None
            if not insecure and (cfg.tls.ca_file or cfg.tls.cert_file):
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read(cfg.tls.ca_file),
                    private_key=_read(cfg.tls.key_file),
                    certificate_chain=_read(cfg.tls.cert_file),
                )
            exporter: BatchExporter = GrpcExporter(
                endpoint=endpoint, insecure=insecure, credentials=credentials, headers=headers or None,
                timeout=cfg.timeout,
                compression=grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression,
                max_export_batch_size=MAX_POINTS_PER_REQUEST,
            )
            return exporter
        from opentelemetry.exporter.otlp.proto.http import Compression
        HttpExporter = _http_exporter_class()

        url = cfg.endpoint.rstrip("/")
        if not url.endswith("/v1/metrics"):
            url += "/v1/metrics"
        exporter = HttpExporter(
            endpoint=url, certificate_file=cfg.tls.ca_file, client_key_file=cfg.tls.key_file,
            client_certificate_file=cfg.tls.cert_file, headers=headers, timeout=cfg.timeout,
            compression=Compression.Gzip if cfg.compression == "gzip" else Compression.NoCompression,
            max_export_batch_size=MAX_POINTS_PER_REQUEST,
        )
        return exporter
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
    """Sends each built ``Export`` to every exporter, each on its own thread.

    A slow or dead exporter cannot delay another one, and while one is still busy with an earlier export
    it is skipped (the next export carries everything anyway): one failing exporter never blocks the rest.
    """

    def __init__(
        self,
        exporters: Sequence[tuple[ExporterConfig | str, BatchExporter]],
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

    def send(self, data: Export, *, wait_for_all: bool = False, timeout: float | None = None) -> bool:
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

    def _export_one(self, index: int, exporter: BatchExporter, data: Export) -> bool:
        state = self.states[index]
        try:
            # Stop at the first failed request: the collector is down or refusing, and the next export
            # re-sends every series anyway.
            ok = all(exporter.export_request(b.payload, b.points) for b in data.iter_batches())
            error = None
            if not ok:
                detail = failure_detail(exporter) or "the collector is unreachable or refused the data"
                error = f"export failed ({detail})"
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
