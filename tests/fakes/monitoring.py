"""A fake Cloud Monitoring ``MetricService`` on loopback (real gRPC, the real generated protobuf types).

Why a gRPC server rather than a mocked client: the provider's job is to send the right ``ListTimeSeries``
requests through the real ``google-cloud-monitoring`` client (deadline, paging, error mapping) and read what
comes back, so the test must stand where Google's server stands. The fake:

* stores raw DELTA points (``add_point``) the way Monitoring stores them, per series of resource and metric
  labels, each point with its own ``[start, end]`` interval;
* answers ``ListTimeSeries`` like the real API for the requests the provider makes: it parses the filter
  (``metric.type = "..." AND resource.type = "..."``), aligns with ``ALIGN_SUM`` into periods that end at the
  request's end time, reduces with ``REDUCE_SUM`` by ``group_by_fields`` (only those labels survive), returns
  points newest first and pages by ``page_size`` series with an opaque ``next_page_token``;
* answers ``ListMetricDescriptors`` for ``metric.type = starts_with("...")``;
* answers ``PERMISSION_DENIED`` with Google's message for projects it does not know or was told to deny;
* ``fail_next`` makes the next calls fail with a status (``RESOURCE_EXHAUSTED`` with a ``RetryInfo`` detail,
  ``UNAVAILABLE``, ...), and ``hang_next`` holds calls until their deadline passes;
* logs every request (``requests``) as the decoded protobuf message, for assertions.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from google.cloud.monitoring_v3.types import metric_service
from google.protobuf import any_pb2, duration_pb2  # type: ignore[import-untyped]
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

__all__ = ["FakeMonitoring", "RawPoint"]

_SERVICE = "google.monitoring.v3.MetricService"
ListTimeSeriesRequest = metric_service.ListTimeSeriesRequest.pb()
ListTimeSeriesResponse = metric_service.ListTimeSeriesResponse.pb()
ListMetricDescriptorsRequest = metric_service.ListMetricDescriptorsRequest.pb()
ListMetricDescriptorsResponse = metric_service.ListMetricDescriptorsResponse.pb()

_CLAUSE = re.compile(r'\s*(metric|resource)\.type\s*=\s*"([^"]+)"\s*')
_STARTS_WITH = re.compile(r'\s*metric\.type\s*=\s*starts_with\("([^"]+)"\)\s*')
_ALIGN_SUM = 14  # google.monitoring.v3.Aggregation.Aligner.ALIGN_SUM
_REDUCE_SUM = 4  # google.monitoring.v3.Aggregation.Reducer.REDUCE_SUM


@dataclass(frozen=True)
class RawPoint:
    start: int
    end: int
    value: int


@dataclass
class _RawSeries:
    project: str
    metric_type: str
    resource_type: str
    resource_labels: Mapping[str, str]
    metric_labels: Mapping[str, str]
    points: list[RawPoint] = field(default_factory=list)


@dataclass
class _Fault:
    method: str
    code: grpc.StatusCode
    message: str
    retry_delay: float | None = None


class FakeMonitoring:
    """The fake server; use as a context manager. ``endpoint`` is what the provider's config takes."""

    def __init__(self, *, page_size: int = 2) -> None:
        self.page_size = page_size
        self.projects: set[str] = set()
        self.denied: set[str] = set()
        self.descriptors: dict[str, set[str]] = defaultdict(set)  # project -> metric types
        self.requests: list[tuple[str, Any]] = []  # (method, decoded request)
        self._series: dict[tuple[object, ...], _RawSeries] = {}
        self._faults: list[_Fault] = []
        self._hangs: dict[str, int] = defaultdict(int)
        self._tokens: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                self._list_time_series, request_deserializer=ListTimeSeriesRequest.FromString,
                response_serializer=ListTimeSeriesResponse.SerializeToString,
            ),
            "ListMetricDescriptors": grpc.unary_unary_rpc_method_handler(
                self._list_metric_descriptors, request_deserializer=ListMetricDescriptorsRequest.FromString,
                response_serializer=ListMetricDescriptorsResponse.SerializeToString,
            ),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- data ------------------------------------------------------------------------------------------------
    def add_point(
        self, project: str, metric_type: str, resource_type: str, resource_labels: Mapping[str, str],
        metric_labels: Mapping[str, str], start: int, end: int, value: int,
    ) -> None:
        """Record one raw DELTA point (``value`` over ``(start, end]``) of one series."""
        key = (project, metric_type, resource_type, tuple(sorted(resource_labels.items())),
               tuple(sorted(metric_labels.items())))
        with self._lock:
            self.projects.add(project)
            self.descriptors[project].add(metric_type)
            series = self._series.setdefault(key, _RawSeries(
                project, metric_type, resource_type, dict(resource_labels), dict(metric_labels)))
            series.points.append(RawPoint(start, end, value))

    def raw_series(self) -> list[_RawSeries]:
        with self._lock:
            return list(self._series.values())

    def fail_next(self, method: str, code: grpc.StatusCode, message: str, *, count: int = 1,
                  retry_delay: float | None = None) -> None:
        """The next ``count`` calls of ``method`` fail with ``code`` (and a ``RetryInfo`` delay, if given)."""
        with self._lock:
            self._faults += [_Fault(method, code, message, retry_delay) for _ in range(count)]

    def hang_next(self, method: str, count: int = 1) -> None:
        """The next ``count`` calls of ``method`` answer nothing until their deadline has passed."""
        with self._lock:
            self._hangs[method] += count

    def requests_of(self, method: str) -> list[Any]:
        with self._lock:
            return [r for m, r in self.requests if m == method]

    # -- serving ---------------------------------------------------------------------------------------------
    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.requests.append((method, request))
            fault = next((f for f in self._faults if f.method == method), None)
            if fault is not None:
                self._faults.remove(fault)
            hang = self._hangs[method] > 0
            if hang:
                self._hangs[method] -= 1
        if hang:
            remaining = context.time_remaining()
            self._release.wait(None if remaining is None else remaining + 0.5)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if fault is not None:
            status = status_pb2.Status(code=fault.code.value[0], message=fault.message)
            if fault.retry_delay is not None:
                detail = any_pb2.Any()
                seconds = int(fault.retry_delay)
                detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                    seconds=seconds, nanos=int((fault.retry_delay - seconds) * 1e9))))
                status.details.append(detail)
            context.abort_with_status(rpc_status.to_status(status))
        project = request.name.removeprefix("projects/")
        if not request.name.startswith("projects/") or project in self.denied or project not in self.projects:
            perm = "monitoring.timeSeries.list" if method == "ListTimeSeries" else "monitoring.metricDescriptors.list"
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"Permission {perm} denied (or the resource may not exist).")

    def _list_time_series(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListTimeSeries", request, context)
        clauses = request.filter.split(" AND ")
        wanted: dict[str, str] = {}
        for clause in clauses:
            m = _CLAUSE.fullmatch(clause)
            if m is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Could not parse filter: {request.filter}")
            assert m is not None  # abort raised
            wanted[m.group(1)] = m.group(2)
        if "metric" not in wanted:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "A filter must specify a metric type.")
        agg = request.aggregation
        period = agg.alignment_period.seconds
        if agg.per_series_aligner != _ALIGN_SUM or agg.cross_series_reducer != _REDUCE_SUM or period < 60:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "This fake serves ALIGN_SUM + REDUCE_SUM, period >= 60s")
        start, end = request.interval.start_time.seconds, request.interval.end_time.seconds
        if end <= start:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The interval end must be after its start.")
        fingerprint = request.SerializeToString(deterministic=True) if not request.page_token else b""
        offset = 0
        if request.page_token:
            copy = ListTimeSeriesRequest()
            copy.CopyFrom(request)
            copy.page_token = ""
            fingerprint = copy.SerializeToString(deterministic=True)
            with self._lock:
                token = self._tokens.get(request.page_token)
            if token is None or token[0] != fingerprint:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid page token.")
            assert token is not None  # abort raised
            offset = token[1]
        project = request.name.removeprefix("projects/")
        series = self._aggregate(project, wanted, start, end, period, list(agg.group_by_fields))
        response = ListTimeSeriesResponse(time_series=series[offset:offset + self.page_size])
        if offset + self.page_size < len(series):
            token_value = f"tok-{len(self._tokens) + 1}"
            with self._lock:
                self._tokens[token_value] = (fingerprint, offset + self.page_size)
            response.next_page_token = token_value
        return response

    def _aggregate(self, project: str, wanted: Mapping[str, str], start: int, end: int, period: int,
                   group_by: list[str]) -> list[Any]:
        """ALIGN_SUM into periods ending at ``end``, then REDUCE_SUM by ``group_by`` (only those labels kept)."""
        groups: dict[tuple[tuple[str, str], ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        resource_type = ""
        for s in self.raw_series():
            if s.project != project or s.metric_type != wanted["metric"]:
                continue
            if "resource" in wanted and s.resource_type != wanted["resource"]:
                continue
            resource_type = s.resource_type
            labels = tuple(
                (path, (s.resource_labels if path.startswith("resource.") else s.metric_labels).get(
                    path.rsplit(".", 1)[1], ""))
                for path in group_by
            )
            for p in s.points:
                if not start < p.end <= end:
                    continue
                period_end = end - ((end - p.end) // period) * period
                if period_end - period < start:
                    continue  # only whole periods inside the interval
                groups[labels][period_end] += p.value
        out = []
        for labels, points in sorted(groups.items()):
            ts = ListTimeSeriesResponse().time_series.add()
            ts.metric.type = wanted["metric"]
            ts.resource.type = resource_type
            ts.metric_kind = 2  # DELTA
            ts.value_type = 2  # INT64
            for path, value in labels:
                if path.startswith("resource.label."):
                    ts.resource.labels[path.removeprefix("resource.label.")] = value
                else:
                    ts.metric.labels[path.removeprefix("metric.label.")] = value
            for period_end in sorted(points, reverse=True):  # newest first, as the API returns them
                point = ts.points.add()
                point.interval.start_time.seconds = period_end - period
                point.interval.end_time.seconds = period_end
                point.value.int64_value = points[period_end]
            out.append(ts)
        return out

    def _list_metric_descriptors(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("ListMetricDescriptors", request, context)
        m = _STARTS_WITH.fullmatch(request.filter)
        if m is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Could not parse filter: {request.filter}")
        assert m is not None  # abort raised
        project = request.name.removeprefix("projects/")
        with self._lock:
            types = sorted(t for t in self.descriptors[project] if t.startswith(m.group(1)))
        response = ListMetricDescriptorsResponse()
        for t in types:
            d = response.metric_descriptors.add()
            d.type = t
            d.name = f"projects/{project}/metricDescriptors/{t}"
        return response

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._release.set()
        self._server.stop(grace=None).wait()

    def __enter__(self) -> FakeMonitoring:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
