"""The emitter sends the builder's bytes unchanged through the official exporters, keeping what they add.

``emitter.py`` gives the gRPC exporter a stub whose serializer passes bytes through, and the HTTP exporter a
payload that serialises to itself (issue 20: parsing the bytes back into a message to serialise it again cost as
much as the rest of the send). These tests check, against a real OTLP sink on loopback, that what arrives is
byte for byte what the builder made, and that the exporters' own behaviour survives: gzip, headers, retries
after a refused request (for gRPC also after the reconnect an UNAVAILABLE triggers, which makes a new stub),
and the point count the HTTP exporter reads for its self-metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import _count_data_points

from otel_llm_receiver.builder import Export, MetricsBuilder, make_resource
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.emitter import BatchExporter, _Payload, build_exporter
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import PollResult, UsageRecord
from tests.support.otlp_sink import OTLPSink, merge_requests

NOW = 1_790_000_000_000_000_000


@pytest.fixture()
def export(tmp_path: Path) -> Iterator[Export]:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.apply("openai/prod", PollResult(usage=[
            UsageRecord("openai", f"model-{i}", "chat", "proj", 0, 3600, {"input": i + 1, "output": 7 * i})
            for i in range(9)
        ]))
        yield MetricsBuilder(make_resource("x"), max_points_per_request=7).build(ledger.export_rows(0), None, NOW)


def exporter_for(sink: OTLPSink, protocol: str, **options: object) -> BatchExporter:
    endpoint = sink.grpc_endpoint if protocol == "grpc" else sink.http_endpoint
    kind = "otlp" if protocol == "grpc" else "otlphttp"
    cfg = parse_config({"exporters": {kind: {"endpoint": endpoint, "tls": {"insecure": True}, **options}},
                        "providers": {"demo": {}}}).exporters[0]
    return build_exporter(cfg)


def send(exporter: BatchExporter, export: Export) -> bool:
    try:
        return all(exporter.export_request(b.payload, b.points) for b in export.iter_batches())
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_bytes_arrive_unchanged_compressed_with_the_headers(export: Export, protocol: str) -> None:
    with OTLPSink() as sink:
        exporter = exporter_for(sink, protocol, compression="gzip", headers={"x-tenant": "acme"})
        assert send(exporter, export)
        batches = export.batches
        assert [r.data_point_count for r in sink.requests] == [b.points for b in batches] == [7, 7, 4]
        assert [r.payload_size for r in sink.requests] == [len(b.payload) for b in batches]
        assert all(r.headers["x-tenant"] == "acme" for r in sink.requests)
        if protocol == "http":  # a gRPC server does not show the message encoding to the servicer
            assert all(r.content_encoding == "gzip" for r in sink.requests)
        assert sink.number_points("llm.usage.tokens") == merge_requests(export.requests())["llm.usage.tokens"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_refused_request_is_retried_by_the_exporter(export: Export, protocol: str) -> None:
    """UNAVAILABLE makes the gRPC exporter close its channel and make a new stub before it retries: the
    retry only arrives if that stub passes bytes through too."""
    with OTLPSink() as sink:
        sink.fail_next(2, grpc_code=grpc.StatusCode.UNAVAILABLE, http_status=503, retry_after=0)
        assert send(exporter_for(sink, protocol), export)
        assert sink.attempt_count == 2 + len(export.batches)
        assert sink.request_count == len(export.batches)
        assert sink.point_count("llm.usage.tokens") == 18


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_message_is_still_accepted(export: Export, protocol: str) -> None:
    """Callers holding a parsed request (older code, tests) send it as before."""
    with OTLPSink() as sink:
        exporter = exporter_for(sink, protocol)
        try:
            assert all(exporter.export_request(b.request(), b.points) for b in export.iter_batches())
        finally:
            exporter.shutdown()
        assert sink.point_count("llm.usage.tokens") == 18


def test_the_http_exporter_counts_the_points_the_builder_counted(export: Export) -> None:
    """The HTTP exporter's self-metrics count data points through the request's nesting."""
    for batch in export.iter_batches():
        assert _count_data_points(_Payload(batch.payload, batch.points)) == batch.points  # type: ignore[arg-type]
        assert _Payload(batch.payload, batch.points).SerializeToString() is batch.payload
