"""Tests for the OTLP test sink, driven by the official OTLP exporters over loopback.

The sink is the oracle for every end-to-end test in this project, so it is
itself checked against what the real exporters put on the wire: exact values,
start times, attributes, units, resource, headers and compression.

Exporter timing facts (opentelemetry-exporter-otlp-proto-* 1.45) these tests
rely on to stay fast without sleeping:

* Both exporters retry retryable failures (HTTP 429/502/503/504, gRPC
  UNAVAILABLE etc.) with backoff ``2**n * uniform(0.8, 1.2)`` seconds, but give
  up as soon as the next backoff would overrun ``timeout``. With
  ``timeout=0.5`` the first backoff (>= 0.8 s) never fits, so a retryable
  failure yields exactly one attempt and an immediate ``FAILURE``.
* A server-supplied ``Retry-After`` (HTTP) / ``RetryInfo`` (gRPC) replaces the
  backoff, so ``fail_next(..., retry_after=0)`` makes retries instant.
"""

from __future__ import annotations

import gzip
import http.client
import threading
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GRPCMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HTTPMetricExporter,
)
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from tests.support.otlp_sink import HistogramPoint, MetricInfo, OTLPSink, Point, attr_key

TOKEN = "Bearer sk-test-0123456789"
START_A = 1_700_000_000_000_000_000
START_B = 1_700_000_100_000_000_000
NOW = 1_700_000_500_000_000_000
RESOURCE = {"service.name": "otel-llm-receiver", "service.version": "0.1.0"}
OPENAI_IN = {"llm.provider": "openai", "llm.model": "gpt-4o", "llm.token.type": "input"}
ANTHROPIC_OUT = {"llm.provider": "anthropic", "llm.model": "claude-3-5-sonnet", "llm.token.type": "output"}


def metrics_data(openai_tokens: int = 1234, anthropic_tokens: int | None = 99, now: int = NOW) -> MetricsData:
    """A hand-built batch: cumulative monotonic int sum, double gauge, histogram.

    ``anthropic_tokens=None`` leaves that series out of the batch.
    """
    token_points = [NumberDataPoint(OPENAI_IN, START_A, now, openai_tokens)]
    if anthropic_tokens is not None:
        token_points.append(NumberDataPoint(ANTHROPIC_OUT, START_B, now, anthropic_tokens))
    tokens = Metric(
        name="llm.usage.tokens",
        description="Tokens billed by the provider.",
        unit="{token}",
        data=Sum(
            data_points=token_points,
            aggregation_temporality=AggregationTemporality.CUMULATIVE,
            is_monotonic=True,
        ),
    )
    budget = Metric(
        name="llm.usage.budget.remaining",
        description="Remaining prepaid credit.",
        unit="USD",
        data=Gauge(data_points=[NumberDataPoint({"llm.provider": "openai"}, 0, now, 42.125)]),
    )
    latency = Metric(
        name="llm.poll.duration",
        description="Time spent polling a usage API.",
        unit="s",
        data=Histogram(
            data_points=[
                HistogramDataPoint(
                    attributes={"llm.provider": "openai"},
                    start_time_unix_nano=START_A,
                    time_unix_nano=now,
                    count=4,
                    sum=7.5,
                    bucket_counts=[1, 2, 0, 1],
                    explicit_bounds=[0.5, 1.0, 2.5],
                    min=0.25,
                    max=4.0,
                )
            ],
            aggregation_temporality=AggregationTemporality.CUMULATIVE,
        ),
    )
    scope = ScopeMetrics(
        scope=InstrumentationScope("otel_llm_receiver", "0.1.0"),
        metrics=[tokens, budget, latency],
        schema_url="",
    )
    return MetricsData(resource_metrics=[ResourceMetrics(Resource(RESOURCE), [scope], schema_url="")])


def grpc_exporter(sink: OTLPSink, timeout: float = 0.5) -> GRPCMetricExporter:
    return GRPCMetricExporter(
        endpoint=sink.grpc_endpoint, insecure=True, headers={"authorization": TOKEN}, timeout=timeout
    )


def http_exporter(sink: OTLPSink, timeout: float = 0.5) -> HTTPMetricExporter:
    return HTTPMetricExporter(
        endpoint=sink.http_endpoint + "/v1/metrics",
        headers={"authorization": TOKEN},
        compression=Compression.Gzip,
        timeout=timeout,
    )


@pytest.fixture(params=["grpc", "http"])
def exporter(request: pytest.FixtureRequest, sink: OTLPSink) -> Iterator[MetricExporter]:
    exp: MetricExporter = grpc_exporter(sink) if request.param == "grpc" else http_exporter(sink)
    yield exp
    exp.shutdown()


def test_decodes_exactly_what_the_exporter_sent(sink: OTLPSink, exporter: MetricExporter) -> None:
    assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS

    assert sink.request_count == 1
    assert sink.metric_names() == {"llm.usage.tokens", "llm.usage.budget.remaining", "llm.poll.duration"}
    assert sink.resource_attributes() == RESOURCE

    cumulative = AggregationTemporality.CUMULATIVE.value
    assert sink.points("llm.usage.tokens") == {
        attr_key(OPENAI_IN): Point(1234, START_A, NOW, is_monotonic=True, temporality=cumulative),
        attr_key(ANTHROPIC_OUT): Point(99, START_B, NOW, is_monotonic=True, temporality=cumulative),
    }
    value = sink.number_points("llm.usage.tokens")[attr_key(OPENAI_IN)].value
    assert type(value) is int  # as_int on the wire, not a float that happens to be whole

    assert sink.points("llm.usage.budget.remaining") == {
        attr_key({"llm.provider": "openai"}): Point(42.125, 0, NOW),
    }
    assert sink.histogram_points("llm.poll.duration") == {
        attr_key({"llm.provider": "openai"}): HistogramPoint(
            count=4,
            sum=7.5,
            bucket_counts=(1, 2, 0, 1),
            explicit_bounds=(0.5, 1.0, 2.5),
            start_time_unix_nano=START_A,
            time_unix_nano=NOW,
            temporality=cumulative,
            min=0.25,
            max=4.0,
        )
    }

    assert sink.metric_info("llm.usage.tokens") == MetricInfo(
        "llm.usage.tokens", "{token}", "Tokens billed by the provider.", "sum"
    )
    assert sink.metric_info("llm.usage.budget.remaining").kind == "gauge"
    assert sink.metric_info("llm.usage.budget.remaining").unit == "USD"
    assert sink.metric_info("llm.poll.duration").kind == "histogram"
    assert sink.metric_info("llm.poll.duration").unit == "s"


def test_records_transport_headers_and_gzip(sink: OTLPSink) -> None:
    g, h = grpc_exporter(sink), http_exporter(sink)
    try:
        assert g.export(metrics_data()) is MetricExportResult.SUCCESS
        assert h.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        g.shutdown()
        h.shutdown()

    via_grpc, via_http = sink.requests
    assert via_grpc.transport == "grpc"
    assert via_grpc.headers["authorization"] == TOKEN
    assert via_grpc.headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    assert via_http.transport == "http"
    assert via_http.headers["authorization"] == TOKEN
    assert via_http.headers["content-type"] == "application/x-protobuf"
    assert via_http.content_encoding == "gzip"
    for r in (via_grpc, via_http):
        assert r.accepted
        assert r.data_point_count == 4
        assert r.metric_names == {"llm.usage.tokens", "llm.usage.budget.remaining", "llm.poll.duration"}
        assert r.payload_size > 0


def test_latest_request_wins_per_series_across_transports(sink: OTLPSink) -> None:
    g, h = grpc_exporter(sink), http_exporter(sink)
    try:
        assert g.export(metrics_data(openai_tokens=10, anthropic_tokens=5)) is MetricExportResult.SUCCESS
        assert h.export(metrics_data(openai_tokens=25, anthropic_tokens=5, now=NOW + 1)) is (
            MetricExportResult.SUCCESS
        )
        # A later request that only carries one series must not drop the other.
        only_openai = metrics_data(openai_tokens=30, anthropic_tokens=None, now=NOW + 2)
        assert g.export(only_openai) is MetricExportResult.SUCCESS
    finally:
        g.shutdown()
        h.shutdown()

    tokens = sink.number_points("llm.usage.tokens")
    assert tokens[attr_key(OPENAI_IN)] == Point(30, START_A, NOW + 2, True, 2)
    assert tokens[attr_key(ANTHROPIC_OUT)] == Point(5, START_B, NOW + 1, True, 2)
    assert sink.request_count == 3


def test_fail_next_fails_one_export_then_recovers(sink: OTLPSink, exporter: MetricExporter) -> None:
    sink.fail_next(1)
    # timeout=0.5 s: the first backoff (>= 0.8 s) does not fit, so no retry.
    assert exporter.export(metrics_data(openai_tokens=1)) is MetricExportResult.FAILURE
    assert sink.attempt_count == 1
    assert sink.request_count == 0
    assert not sink.requests[0].accepted
    assert sink.points("llm.usage.tokens") == {}  # refused data is not merged

    assert exporter.export(metrics_data(openai_tokens=2)) is MetricExportResult.SUCCESS
    assert sink.request_count == 1
    assert sink.number_points("llm.usage.tokens")[attr_key(OPENAI_IN)].value == 2


def test_fail_next_with_retry_after_is_retried_by_exporter(sink: OTLPSink, exporter: MetricExporter) -> None:
    sink.fail_next(2, retry_after=0)
    assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
    assert [r.accepted for r in sink.requests] == [False, False, True]


def test_fail_next_non_retryable_fails_immediately(sink: OTLPSink) -> None:
    # Long timeout on purpose: a non-retryable answer must not be retried at all.
    g, h = grpc_exporter(sink, timeout=10), http_exporter(sink, timeout=10)
    try:
        sink.fail_next(2, http_status=400, grpc_code=grpc.StatusCode.INVALID_ARGUMENT)
        assert g.export(metrics_data()) is MetricExportResult.FAILURE
        assert h.export(metrics_data()) is MetricExportResult.FAILURE
        assert sink.attempt_count == 2  # one attempt each; failures are shared by both transports
        assert g.export(metrics_data()) is MetricExportResult.SUCCESS
        assert h.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        g.shutdown()
        h.shutdown()
    assert [(r.transport, r.accepted) for r in sink.requests] == [
        ("grpc", False),
        ("http", False),
        ("grpc", True),
        ("http", True),
    ]


def test_stop_and_new_sink_on_same_ports(exporter: MetricExporter, sink: OTLPSink) -> None:
    assert exporter.export(metrics_data(openai_tokens=1)) is MetricExportResult.SUCCESS
    grpc_port, http_port = sink.grpc_port, sink.http_port
    sink.stop()

    assert exporter.export(metrics_data(openai_tokens=2)) is MetricExportResult.FAILURE

    with OTLPSink(grpc_port=grpc_port, http_port=http_port) as back:
        assert (back.grpc_port, back.http_port) == (grpc_port, http_port)
        assert exporter.export(metrics_data(openai_tokens=3)) is MetricExportResult.SUCCESS
        assert back.number_points("llm.usage.tokens")[attr_key(OPENAI_IN)].value == 3
        assert back.request_count == 1
    assert sink.request_count == 1  # the old sink saw nothing after it stopped


def test_restart_same_instance_keeps_ports_and_data(sink: OTLPSink) -> None:
    h = http_exporter(sink)
    try:
        assert h.export(metrics_data(openai_tokens=1)) is MetricExportResult.SUCCESS
        ports = (sink.grpc_port, sink.http_port)
        sink.stop()
        sink.stop()  # idempotent
        assert not sink.running
        assert h.export(metrics_data(openai_tokens=2)) is MetricExportResult.FAILURE
        sink.start()
        assert (sink.grpc_port, sink.http_port) == ports
        assert h.export(metrics_data(openai_tokens=3)) is MetricExportResult.SUCCESS
    finally:
        h.shutdown()
    assert sink.request_count == 2
    assert sink.number_points("llm.usage.tokens")[attr_key(OPENAI_IN)].value == 3


def test_port_clash_is_an_error(sink: OTLPSink) -> None:
    with pytest.raises(OSError):
        OTLPSink(grpc_port=sink.grpc_port).start()
    with pytest.raises(OSError):
        OTLPSink(http_port=sink.http_port).start()


def test_wait_for_wakes_on_request_from_another_thread(sink: OTLPSink) -> None:
    g = grpc_exporter(sink)
    results: list[MetricExportResult] = []
    worker = threading.Thread(target=lambda: results.append(g.export(metrics_data(openai_tokens=7))))
    try:
        worker.start()
        assert sink.wait_for(
            lambda s: attr_key(OPENAI_IN) in s.points("llm.usage.tokens"),
            timeout=10,
        )
        worker.join()
    finally:
        g.shutdown()
    assert results == [MetricExportResult.SUCCESS]
    assert sink.number_points("llm.usage.tokens")[attr_key(OPENAI_IN)].value == 7


def test_wait_for_returns_false_on_timeout(sink: OTLPSink) -> None:
    assert sink.wait_for(lambda s: s.request_count > 0, timeout=0.01) is False


def test_clear_forgets_everything(sink: OTLPSink) -> None:
    h = http_exporter(sink)
    try:
        assert h.export(metrics_data()) is MetricExportResult.SUCCESS
        sink.fail_next(5)
        sink.clear()
        assert (sink.request_count, sink.attempt_count, sink.requests) == (0, 0, [])
        assert sink.metric_names() == set()
        assert sink.resource_attributes() == {}
        assert sink.points("llm.usage.tokens") == {}
        assert h.export(metrics_data()) is MetricExportResult.SUCCESS  # pending failures cleared too
    finally:
        h.shutdown()


def test_typed_point_accessors_reject_wrong_kind(sink: OTLPSink) -> None:
    h = http_exporter(sink)
    try:
        assert h.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        h.shutdown()
    with pytest.raises(TypeError):
        sink.number_points("llm.poll.duration")
    with pytest.raises(TypeError):
        sink.histogram_points("llm.usage.tokens")
    with pytest.raises(KeyError):
        sink.metric_info("never.sent")


def _post(sink: OTLPSink, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", sink.http_port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_http_protocol_edges(sink: OTLPSink) -> None:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    request.resource_metrics.add().resource.attributes.add(key="service.name").value.string_value = "raw"
    raw = request.SerializeToString()
    protobuf = {"Content-Type": "application/x-protobuf"}

    status, body = _post(sink, "/v1/metrics", gzip.compress(raw), {**protobuf, "Content-Encoding": "gzip"})
    assert status == 200
    metrics_service_pb2.ExportMetricsServiceResponse.FromString(body)  # a valid, empty response
    assert sink.resource_attributes() == {"service.name": "raw"}

    assert _post(sink, "/v1/traces", raw, protobuf)[0] == 404
    assert _post(sink, "/v1/metrics", b"{}", {"Content-Type": "application/json"})[0] == 415
    assert _post(sink, "/v1/metrics", b"not gzip", {**protobuf, "Content-Encoding": "gzip"})[0] == 400
    assert _post(sink, "/v1/metrics", b"\xff\xff\xff", protobuf)[0] == 400
    assert sink.attempt_count == 1  # malformed requests are answered but not recorded

    sink.fail_next(1, http_status=429, retry_after=1.5)
    conn = http.client.HTTPConnection("127.0.0.1", sink.http_port, timeout=5)
    try:
        conn.request("POST", "/v1/metrics", body=raw, headers=protobuf)
        response = conn.getresponse()
        response.read()
        assert (response.status, response.getheader("Retry-After")) == (429, "1.5")
    finally:
        conn.close()
