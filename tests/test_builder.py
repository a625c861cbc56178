"""The request builder: its hand-framed protobuf must decode to exactly what the ledger holds.

The builder encodes each series' attributes once and frames requests by hand for speed (see builder.py), so
these tests read its output with the official ``opentelemetry-proto`` parser, field by field, and check the
sending path against a real OTLP sink through the official exporters' hooks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otel_llm_receiver import __version__
from otel_llm_receiver.builder import MetricsBuilder, make_resource
from otel_llm_receiver.catalog import CATALOG
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.emitter import build_exporter
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from tests.support.otlp_sink import OTLPSink, Point, attr_key, merge_requests

ROOT = Path(__file__).resolve().parent.parent

NOW = 1_790_000_000_000_000_000
HOUR = 3600


def usage(model: str, tenancy: str, start: int, tokens: dict[str, int], requests: int | None = None) -> UsageRecord:
    return UsageRecord("openai", model, "chat", tenancy, start, HOUR, tokens, requests)


@pytest.fixture()
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.db") as led:
        yield led


def test_every_field_decodes_to_the_ledger_values(ledger: Ledger) -> None:
    ledger.apply("openai/prod", PollResult(
        usage=[usage("gpt-4o", "proj_a", 0, {"input": 1000, "cache_read": 200, "output": 50}, requests=7),
               usage("gpt-4o", "proj_b", 0, {"input": 5})],
        costs=[CostRecord("openai", "proj_a", 0, 86400, Decimal("12.345678912"), line_item="gpt-4o, input")],
        names={("tenancy", "proj_a"): "Project A"},
    ), tenant="acme")
    # shrink one bucket so that adjustments exist for tokens and for money
    ledger.apply("openai/prod", PollResult(
        usage=[usage("gpt-4o", "proj_a", 0, {"input": 900, "cache_read": 200, "output": 50}, requests=7)],
        costs=[CostRecord("openai", "proj_a", 0, 86400, Decimal("12.000000001"), line_item="gpt-4o, input")],
    ), tenant="acme")
    builder = MetricsBuilder(make_resource("inst-1"), labels={"openai/prod": {"deployment.environment": "prod"}})
    export = builder.build(ledger.export_rows(builder.known_series), None, NOW)

    (request,) = list(export.requests())
    assert export.points == 8
    rm = request.resource_metrics[0]
    resource = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
    assert resource["service.name"] == "otel-llm-receiver" and resource["service.instance.id"] == "inst-1"
    assert rm.scope_metrics[0].scope.name == "otel_llm_receiver"
    # the scope version is the catalog's schema version, not the package's: an upgrade keeps every series
    scope_version = yaml.safe_load((ROOT / "otel_llm_receiver" / "catalog.yaml").read_text())["schema_version"]
    assert rm.scope_metrics[0].scope.version == scope_version == CATALOG.schema_version
    assert scope_version != __version__
    for metric in rm.scope_metrics[0].metrics:
        d = CATALOG.metrics[metric.name]
        assert (metric.unit, metric.description) == (d.unit, d.description)
        assert metric.WhichOneof("data") == "sum"
        assert metric.sum.is_monotonic and metric.sum.aggregation_temporality == 2
        for dp in metric.sum.data_points:
            assert dp.time_unix_nano == NOW and dp.start_time_unix_nano > 0
            assert dp.WhichOneof("value") == ("as_double" if d.value_type == "double" else "as_int")

    merged = merge_requests([request])
    base = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat",
            "llm.tenant": "acme", "llm.tenancy.id": "proj_a", "llm.tenancy.name": "Project A",
            "deployment.environment": "prod"}
    tokens = merged["llm.usage.tokens"]
    assert tokens[attr_key({**base, "gen_ai.token.type": "input"})].value == 1000  # growth only
    assert tokens[attr_key({**base, "gen_ai.token.type": "cache_read"})].value == 200
    b_attrs = {**base, "llm.tenancy.id": "proj_b", "gen_ai.token.type": "input"}
    del b_attrs["llm.tenancy.name"]  # proj_b has no known name: no name attribute at all
    assert tokens[attr_key(b_attrs)].value == 5
    assert merged["llm.usage.requests"][attr_key(base)].value == 7
    ((cost_key, cost),) = merged["llm.usage.cost"].items()
    assert isinstance(cost, Point) and cost.value == pytest.approx(12.345678912, abs=1e-9)
    assert dict(cost_key)["llm.cost.line_item"] == "gpt-4o, input"
    assert dict(cost_key)["llm.tenancy.name"] == "Project A"
    adjustments = merged["llm.usage.adjustments"]
    token_adj = adjustments[attr_key({**base, "gen_ai.token.type": "input", "llm.measure": "tokens"})]
    assert token_adj.value == 100.0
    money_adj = [p for k, p in adjustments.items() if dict(k)["llm.measure"] == "cost"]
    assert len(money_adj) == 1 and money_adj[0].value == pytest.approx(0.345678911, abs=1e-9)


def test_batches_never_exceed_the_limit_and_merge_to_the_unbatched_result(ledger: Ledger) -> None:
    ledger.apply("openai/prod", PollResult(
        usage=[usage(f"m{i}", "p", 0, {"input": i + 1, "output": 2 * i + 1}, requests=i + 1) for i in range(7)]
    ))
    whole = MetricsBuilder(make_resource("x")).build(ledger.export_rows(0), None, NOW)
    split_builder = MetricsBuilder(make_resource("x"), max_points_per_request=4)
    split = split_builder.build(ledger.export_rows(0), None, NOW)
    assert whole.points == split.points == 21
    assert len(whole.batches) == 1 and len(split.batches) == 6
    assert all(0 < b.points <= 4 for b in split.batches)
    for b in split.batches:  # each request counts what it carries
        request = ExportMetricsServiceRequest.FromString(b.payload)
        carried = sum(len(m.sum.data_points) for m in request.resource_metrics[0].scope_metrics[0].metrics)
        assert carried == b.points
    assert merge_requests(split.requests()) == merge_requests(whole.requests())


def test_a_renamed_tenancy_changes_the_attributes_on_the_next_export(ledger: Ledger) -> None:
    ledger.apply("openai/prod", PollResult(usage=[usage("gpt-4o", "proj_a", 0, {"input": 10})],
                                           names={("tenancy", "proj_a"): "Old name"}))
    builder = MetricsBuilder(make_resource("x"))
    first = merge_requests(builder.build(ledger.export_rows(builder.known_series), None, NOW).requests())
    ledger.apply("openai/prod", PollResult(names={("tenancy", "proj_a"): "New name"}))
    second = merge_requests(builder.build(ledger.export_rows(builder.known_series), None, NOW).requests())
    (old_key,) = first["llm.usage.tokens"]
    (new_key,) = second["llm.usage.tokens"]
    assert dict(old_key)["llm.tenancy.name"] == "Old name"
    assert dict(new_key)["llm.tenancy.name"] == "New name"
    assert {k: v for k, v in dict(new_key).items() if k != "llm.tenancy.name"} == \
        {k: v for k, v in dict(old_key).items() if k != "llm.tenancy.name"}


def test_two_instances_with_one_attribute_set_are_added_up(ledger: Ledger) -> None:
    ledger.apply("openai/a", PollResult(usage=[usage("gpt-4o", "p", 0, {"input": 10})]), now_ns=2_000)
    ledger.apply("openai/b", PollResult(usage=[usage("gpt-4o", "p", 0, {"input": 32})]), now_ns=1_000)
    merged = merge_requests(MetricsBuilder(make_resource("x")).build(ledger.export_rows(0), None, NOW).requests())
    (point,) = merged["llm.usage.tokens"].values()
    assert isinstance(point, Point) and point.value == 42
    starts = [s.start_time_ns for s in ledger.snapshot().series]
    assert point.start_time_unix_nano == min(starts)


def test_disabled_metrics_are_not_built(ledger: Ledger) -> None:
    ledger.apply("openai/prod", PollResult(usage=[usage("gpt-4o", "p", 0, {"input": 10}, requests=3)]))
    builder = MetricsBuilder(make_resource("x"), enabled={"llm.usage.requests": False})
    merged = merge_requests(builder.build(ledger.export_rows(0), None, NOW).requests())
    assert set(merged) == {"llm.usage.tokens"}


def test_series_are_described_in_pages_and_only_once(ledger: Ledger) -> None:
    ledger.apply("openai/prod", PollResult(usage=[usage(f"m{i}", "p", 0, {"input": i + 1}) for i in range(25)]))
    builder = MetricsBuilder(make_resource("x"))
    first = builder.build(ledger.export_rows(builder.known_series, page=4), None, NOW)
    assert first.points == 25
    known = builder.known_series
    assert known == max(s.id for s in ledger.snapshot().series)
    assert list(ledger.export_rows(known).new_series) == []  # nothing to describe again
    ledger.apply("openai/prod", PollResult(usage=[usage("new-model", "p", 0, {"input": 1})]))
    rows = ledger.export_rows(builder.known_series)
    second = builder.build(rows, None, NOW)
    assert second.points == 26 and builder.known_series == known + 1


def test_a_series_created_after_the_totals_were_read_waits_for_the_next_export(ledger: Ledger) -> None:
    ledger.apply("openai/prod", PollResult(usage=[usage("a", "p", 0, {"input": 1})]))
    builder = MetricsBuilder(make_resource("x"))
    rows = ledger.export_rows(builder.known_series)
    ledger.apply("openai/prod", PollResult(usage=[usage("b", "p", 0, {"input": 2})]))  # before new_series is read
    assert builder.build(rows, None, NOW).points == 1
    assert builder.build(ledger.export_rows(builder.known_series), None, NOW).points == 2


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_official_exporters_send_built_requests_unchanged(ledger: Ledger, protocol: str) -> None:
    """Pins the private exporter hooks the emitter relies on (``_export`` / ``_export_batch``)."""
    ledger.apply("openai/prod", PollResult(usage=[usage(f"m{i}", "p", 0, {"input": i + 1}) for i in range(12)]))
    export = MetricsBuilder(make_resource("x"), max_points_per_request=5).build(ledger.export_rows(0), None, NOW)
    with OTLPSink() as sink:
        endpoint = sink.grpc_endpoint if protocol == "grpc" else sink.http_endpoint
        kind = "otlp" if protocol == "grpc" else "otlphttp"
        cfg = parse_config({"exporters": {kind: {"endpoint": endpoint, "tls": {"insecure": True}}},
                            "providers": {"demo": {}}}).exporters[0]
        exporter = build_exporter(cfg)
        try:
            assert all(exporter.export_request(b.payload, b.points) for b in export.batches)
        finally:
            exporter.shutdown()
        assert [r.data_point_count for r in sink.requests] == [5, 5, 2]
        assert sink.number_points("llm.usage.tokens") == merge_requests(export.requests())["llm.usage.tokens"]


def test_long_attribute_values_frame_correctly(ledger: Ledger) -> None:
    """Lengths past one and two varint bytes (128 and 16,384) must still decode exactly."""
    for size in (100, 200, 20_000):
        ledger.apply("openai/prod", PollResult(usage=[usage("m" * size, "p", 0, {"input": size})]))
    merged = merge_requests(MetricsBuilder(make_resource("x")).build(ledger.export_rows(0), None, NOW).requests())
    by_model = {dict(k)["gen_ai.request.model"]: p.value for k, p in merged["llm.usage.tokens"].items()}
    assert by_model == {"m" * 100: 100, "m" * 200: 200, "m" * 20_000: 20_000}


def test_measures_levels_and_billed_quantities_go_out_with_their_own_instruments(ledger: Ledger) -> None:
    storage = "llm.usage.storage"
    ledger.apply("openai/prod", PollResult(
        usage=[UsageRecord("openai", "vs", "vector_store", "p", 0, HOUR, measures={storage: 1000}),
               UsageRecord("openai", "vs", "vector_store", "p", HOUR, HOUR, measures={storage: 1500}),
               UsageRecord("openai", "gpt-image-1", "image", "p", 0, HOUR, measures={"llm.usage.images": 3})],
        costs=[CostRecord("openai", "p", 0, 86400, Decimal("1.25"), line_item="image",
                          quantity=Decimal("2.5"), quantity_unit="images")],
    ))
    # the storage level falls: a gauge follows it down, and no adjustment is sent for a level
    ledger.apply("openai/prod", PollResult(
        usage=[UsageRecord("openai", "vs", "vector_store", "p", 2 * HOUR, HOUR, measures={storage: 700})]))
    export = MetricsBuilder(make_resource("x")).build(ledger.export_rows(0), None, NOW)
    metrics = {m.name: m for r in export.requests() for m in r.resource_metrics[0].scope_metrics[0].metrics}
    assert metrics[storage].WhichOneof("data") == "gauge"
    (level,) = metrics[storage].gauge.data_points
    assert level.as_int == 700
    assert metrics["llm.usage.images"].sum.data_points[0].as_int == 3
    (quantity,) = metrics["llm.usage.billed_quantity"].sum.data_points
    assert quantity.as_double == 2.5
    assert "llm.usage.adjustments" not in metrics


def test_attributes_reach_the_wire_exactly_whatever_their_text(ledger: Ledger) -> None:
    """The first export encodes canonical JSON without escapes from its fragments, and anything else through
    ``json.loads``: both must put exactly ``{**labels, **attributes, tenancy name}`` on the wire, and a label
    never overrides an attribute of the series."""
    models = ["gpt-4o", 'we"ird\\model', "модель-ü", "a,b:c", 'x":"y', "tab\there"]
    ledger.apply("openai/prod", PollResult(
        usage=[usage(m, t, 0, {"input": i + 1}) for i, m in enumerate(models) for t in ("proj_a", "proj_b")],
        names={("tenancy", "proj_a"): 'Proj "A" ü'},
    ), tenant="acme")
    labels = {"deployment.environment": "prod", "gen_ai.provider.name": "a label loses", "zz.last": "1"}
    builder = MetricsBuilder(make_resource("x"), labels={"openai/prod": labels})
    merged = merge_requests(builder.build(ledger.export_rows(0), None, NOW).requests())
    expected = {}
    for s in ledger.snapshot().series:
        attrs = {**labels, **json.loads(s.attrs)}
        if attrs["llm.tenancy.id"] == "proj_a":
            attrs["llm.tenancy.name"] = 'Proj "A" ü'
        expected[attr_key(attrs)] = s.total
    assert {k: p.value for k, p in merged["llm.usage.tokens"].items()} == expected
    assert len(expected) == 2 * len(models)


def test_equal_attribute_sets_from_two_instances_are_one_wire_series_on_either_path(ledger: Ledger) -> None:
    """One instance's series go through the fragments, the other's (a label that its attributes also carry,
    and a tenancy name) through the merge: the same final set must still be one wire series, added up."""
    ledger.apply("openai/a", PollResult(usage=[usage("gpt-4o", "p", 0, {"input": 10})],
                                        names={("tenancy", "p"): "P"}))
    ledger.apply("openai/b", PollResult(usage=[usage("gpt-4o", "p", 0, {"input": 32})],
                                        names={("tenancy", "p"): "P"}))
    builder = MetricsBuilder(make_resource("x"), labels={"openai/b": {"gen_ai.request.model": "loses"}})
    merged = merge_requests(builder.build(ledger.export_rows(0), None, NOW).requests())
    (point,) = merged["llm.usage.tokens"].values()
    assert isinstance(point, Point) and point.value == 42


def test_stale_writes_are_exported_per_instance(ledger: Ledger) -> None:
    """Issue 21: a write fenced off by a lost lease is counted in ``llm.receiver.stale_writes``, per instance."""
    from otel_llm_receiver.selfhealth import SelfHealth

    health = SelfHealth(clock=lambda: NOW / 1e9)
    health.register("openai/prod", 300.0)
    built = MetricsBuilder(make_resource("x")).build(ledger.export_rows(0), health.reading(), NOW)
    assert "llm.receiver.stale_writes" not in merge_requests(built.requests())
    health.stale_write("openai/prod")
    health.stale_write("openai/prod")
    built = MetricsBuilder(make_resource("x")).build(ledger.export_rows(0), health.reading(), NOW)
    stale = merge_requests(built.requests())["llm.receiver.stale_writes"]
    assert list(stale) == [frozenset({("llm.source", "openai/prod")})]
    point = next(iter(stale.values()))
    assert isinstance(point, Point) and point.value == 2 and point.is_monotonic
