"""Export cost: one export of N series, as the receiver makes it, sent to a real OTLP/gRPC sink; against the
official OpenTelemetry OTLP exporter encoding and sending the same points.

Run by hand: ``python benchmarks/export.py [--sizes demo,100000,1000000] [--repeat 3] [--ledgers DIR]``.
It prints one table. Every figure is the median of ``--repeat`` (>= 3) runs, each in a fresh child process
(``harness.py``): wall and CPU seconds of the timed part, and the child's peak RSS (inputs included). The machine
is shared: compare CPU seconds first.

Ledgers (made once per size, untimed, by the measured code, and reused by every case and run):
* ``N`` (e.g. 100,000): a large organisation's hourly usage of the last two hours, ``N / 5`` (tenancy x model)
  keys, each with input and output tokens and a request count, priced as the receiver prices them (estimated
  cost of input and output): five series per key, so N series. Signals have real rollups to read.
* ``demo``: the demo provider's 7-day backfill, priced (what ``otel-llm-receiver demo`` exports).

Cases, each in a new process that builds the receiver untimed (config, price book, exporter: its start) and then
sets up as ``run`` does once its start is done (``harness.settle_as_run``: the garbage collector's settings,
``heap.py``), then:
* ``first``: the first export after start, ``Receiver.export_now()``: open the ledger's read connection, read
  every total, compute the money signals (budgets, anomalies, coverage, reconciliation, prices), build, and send
  over OTLP/gRPC, waiting for every reply;
* ``later``: the same receiver's second export (the first one untimed), nothing having landed in between: the
  ledger's generation is unchanged, so the export re-sends the last points and the signals reuse their sums;
* ``changed``: the same, but a poll lands between the two exports (one instance's current hour for 1% of the keys,
  applied untimed by the child's receiver): the ledger's generation moved, so the totals and the signals' rollups
  are read again (the series' attributes are not: they never change);
* ``bare`` (only with ``--cases``): the first export with the money signals left out, to show the export path's
  own time and memory apart from the signals';
* ``anchor``: the official ``OTLPMetricExporter`` (gRPC, the same 5,000-point batches) encoding and sending the
  same points: the child builds the receiver's first export untimed, decodes it into the SDK's ``MetricsData``
  (the exporter's input: the same metrics, attributes, values and start times), then times
  ``OTLPMetricExporter.export(metrics_data)``, i.e. the SDK's OTLP encoder plus its send, compressed as the
  receiver's exporter compresses (its config's ``compression``: gzip, the Collector's default). This is what the
  receiver would cost if it handed its points to the official exporter as the SDK does, without the data
  collection that an SDK ``MeterProvider`` adds on top (so the anchor is the exporter's floor, not a strawman).

The sink (tests/support/otlp_sink.py, counting points without decoding them into Python) runs in this parent
process: its work is not in the child's CPU or memory. After each case the parent checks that the sink received,
for each run, every series' point (N usage points per export) and all the points the child says it sent.
Goals (issue 20): first export of 100k series < 1.2 s; later exports < 0.6 s; 1M series first export < 12 s and
< 800 MiB peak RSS.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, measure, settle_as_run, table, timed

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "o4-mini")
SERIES_PER_KEY = 5  # input, output, requests, estimated cost of input and of output
HOUR = 3600
DAY = 86400
CASES = ("first", "later", "changed", "anchor")
HEAD = ["ledger", "case", "points/export", "wall s", "cpu s", "signals cpu s", "cpu s w/o signals", "peak MiB",
        "anchor cpu / cpu w/o signals"]


def _config(path: str, endpoint: str = "127.0.0.1:1") -> Any:
    from otel_llm_receiver.config import parse_config

    return parse_config({
        "storage": {"path": path},
        "exporters": {"otlp": {"endpoint": endpoint, "tls": {"insecure": True}, "timeout": "120s"}},
        "providers": {"demo": {"backfill": "168h"}},
        "budgets": [{"name": "org-month", "amount": 100_000, "period": "month", "source": "best"}],
    })


def prepare(path: str, size: str) -> None:
    """The ledger of one size (untimed, run once): see the module docstring."""
    import asyncio

    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import PollResult, UsageRecord, Window
    from otel_llm_receiver.money import money_stack
    from otel_llm_receiver.providers import create_provider

    logging.disable(logging.WARNING)  # unpriced models are logged once each
    config = _config(path)
    money = money_stack(config)
    now = int(time.time())
    with Ledger(path) as ledger:
        ledger.set_pricer(money.prices)
        if size == "demo":
            provider = create_provider(config.providers[0])
            window = Window(now // DAY * DAY - 7 * DAY, now // HOUR * HOUR)
            ledger.apply(config.providers[0].name, asyncio.run(provider.fetch(window)))
            return
        keys = int(size) // SERIES_PER_KEY
        for hour in (now // HOUR * HOUR - 2 * HOUR, now // HOUR * HOUR - HOUR):
            for lo in range(0, keys, 20_000):  # bounded applies, as a backfill lands
                records = [
                    UsageRecord("openai", MODELS[k % len(MODELS)], "chat", f"proj_{k // len(MODELS):06d}", hour, HOUR,
                                {"input": 1000 + (k * 7919 + hour) % 50_000, "output": 100 + (k * 104_729) % 5_000},
                                requests=1 + k % 40)
                    for k in range(lo, min(keys, lo + 20_000))
                ]
                ledger.apply("openai/bench", PollResult(usage=records), tenant="bench")


def child(case: str, path: str, endpoint: str) -> None:
    from otel_llm_receiver.scheduler import Receiver

    logging.disable(logging.WARNING)
    receiver = Receiver(_config(path, endpoint))
    settle_as_run()  # start-up done: the collector's settings of `run` (heap.py), as before its first export
    try:
        if case == "anchor":
            anchor(receiver, endpoint)
            return
        if case == "bare":  # the export path alone: the money signals left out (not what the receiver does)
            receiver._signal_gauges = lambda reader, now_ns, *first: []
        if case in ("later", "changed"):
            assert receiver.export_now(wait=True), "the first export failed"
        if case == "changed":
            _land_a_poll(receiver)
        # What the export read, for the parent's check: series (usage points) and all points sent.
        points = _points_of(receiver)
        signals = _time_signals(receiver)
        with timed(points) as out:
            ok = receiver.export_now(wait=True)
            out["signals_cpu"] = signals[-1]
        assert ok, "export failed"
    finally:
        import asyncio

        asyncio.run(receiver.aclose())


def _land_a_poll(receiver: Any) -> None:
    """A steady-state poll of one instance between two exports: the current hour of 1% of the keys (the same
    values every run, so repeated runs leave the ledger as the first one left it)."""
    from otel_llm_receiver.model import PollResult, UsageRecord

    series = receiver.ledger.counts()["series"]
    keys = max(1, series // SERIES_PER_KEY // 100)
    hour = int(time.time()) // HOUR * HOUR
    records = [
        UsageRecord("openai", MODELS[k % len(MODELS)], "chat", f"proj_{k // len(MODELS):06d}", hour, HOUR,
                    {"input": 100 + k, "output": 10 + k}, requests=1)
        for k in range(keys)
    ]
    receiver.ledger.apply("openai/bench", PollResult(usage=records), tenant="bench")


def _time_signals(receiver: Any) -> list[float]:
    """Time the money signals inside each export (CPU seconds of the export thread), for the table's split.

    The builder's descriptions of the series the signals' first reading hands over (``MetricsBuilder.describe``,
    called from inside the signals) are the export path's work: left out of the signals' figure."""
    compute = receiver._signal_gauges
    describe = getattr(receiver.builder, "describe", None)
    spent: list[float] = [0.0]
    described: list[float] = [0.0]

    def timed_signals(reader: Any, now_ns: int, *first: Any) -> Any:
        described[0] = 0.0
        t0 = time.thread_time()
        try:
            return compute(reader, now_ns, *first)
        finally:
            spent.append(time.thread_time() - t0 - described[0])

    def timed_describe(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return describe(*args, **kwargs)
        finally:
            described[0] += time.thread_time() - t0

    receiver._signal_gauges = timed_signals
    if describe is not None:
        receiver.builder.describe = timed_describe
    return spent


def _points_of(receiver: Any) -> dict[str, float]:
    """The number of ledger series (one usage point each per export) and of all points one export sends."""
    from otel_llm_receiver.ledger import Ledger

    with Ledger(receiver.config.storage.path, readonly=True) as reader:
        series = reader.counts()["series"]
    return {"series": float(series)}


def anchor(receiver: Any, endpoint: str) -> None:
    """The official exporter's encode + send of the points the receiver's first export sends."""
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    from otel_llm_receiver.ledger import Ledger

    with Ledger(receiver.config.storage.path, readonly=True) as reader:
        rows = reader.export_rows(0)
        now_ns = time.time_ns()
        data = receiver.builder.build(rows, None, now_ns, receiver._signal_gauges(reader, now_ns))
        series = reader.counts()["series"]
    metrics_data, points = _sdk_metrics_data(data, receiver.builder.resource)
    del data, rows
    # The same wire settings as the receiver's exporter: its config's compression (the Collector's default, gzip).
    compression = grpc.Compression.Gzip if receiver.config.exporters[0].compression == "gzip" else None
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=120, max_export_batch_size=5_000,
                                  compression=compression)
    with timed({"series": float(series), "sent": float(points)}):
        result = exporter.export(metrics_data)
    exporter.shutdown()
    assert result.name == "SUCCESS", result


def _sdk_metrics_data(data: Any, resource: Any) -> tuple[Any, int]:
    """The SDK's ``MetricsData`` holding exactly the points of ``data`` (decoded from its requests, untimed)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    by_name: dict[str, tuple[Any, list[Any]]] = {}
    scope = None
    points = 0
    for batch in data.batches:
        request = ExportMetricsServiceRequest.FromString(batch.payload)
        for sm in request.resource_metrics[0].scope_metrics:
            scope = scope or InstrumentationScope(sm.scope.name, sm.scope.version)
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind not in ("sum", "gauge"):
                    continue  # self-health histograms: not in the receiver's first export without polls
                _head, out = by_name.setdefault(m.name, (m, []))
                for dp in getattr(m, kind).data_points:
                    value = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                    out.append(NumberDataPoint(
                        attributes={kv.key: kv.value.string_value for kv in dp.attributes},
                        start_time_unix_nano=dp.start_time_unix_nano, time_unix_nano=dp.time_unix_nano,
                        value=value,
                    ))
                    points += 1
    metrics = []
    for name, (m, dps) in by_name.items():
        if m.WhichOneof("data") == "sum":
            body: Any = Sum(dps, AggregationTemporality.CUMULATIVE, is_monotonic=m.sum.is_monotonic)
        else:
            body = Gauge(dps)
        metrics.append(Metric(name, m.description, m.unit, body))
    assert scope is not None
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")]), points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,100000,1000000", help="ledger sizes in series (or demo)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--no-anchor-above", type=int, default=1_000_000,
                        help="skip the anchor above this many series (the SDK encoder needs minutes at 1M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (>= 3); medians are printed")
    parser.add_argument("--ledgers", help="keep the ledgers in this directory and reuse them on the next run")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "PATH", "ENDPOINT"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=2, metavar=("PATH", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(*args.prepare)
        return
    if args.child:
        child(*args.child)
        return

    from tests.support.otlp_sink import OTLPSink

    script = Path(__file__).resolve()
    cases = [c for c in args.cases.split(",") if c]
    print(f"export, {machine()}; medians of {max(3, args.repeat)} runs, each a fresh process; "
          "sink: OTLP/gRPC on loopback in the parent process")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, OTLPSink(decode_points=False) as sink:
        where = Path(args.ledgers or tmp)
        where.mkdir(parents=True, exist_ok=True)
        for size in [s for s in args.sizes.split(",") if s]:
            path = where / f"export-{size}.db"
            if not path.exists():
                t0 = time.perf_counter()
                _prepare(script, path, size)
                print(f"prepared the {size} ledger in {time.perf_counter() - t0:.0f} s (untimed)", flush=True)
            figures = {}
            for case in cases:
                if case == "anchor" and size != "demo" and int(size) > args.no_anchor_above:
                    continue
                sink.clear()
                f = measure(case, script, [case, str(path), sink.grpc_endpoint], args.repeat)
                exports = f.runs * (2 if case in ("later", "changed") else 1)
                usage = sum(sink.point_count(m) for m in sink.metric_names() if m.startswith("llm.usage."))
                level = sum(sink.point_count(m) for m in ("llm.usage.storage",) if m in sink.metric_names())
                series = int(f.extra["series"])
                if usage - level < exports * series - exports * level:
                    raise SystemExit(f"{size} {case}: the sink received {usage:,} usage points, "
                                     f"expected {series:,} x {exports} exports")
                figures[case] = (f, sum(r.data_point_count for r in sink.requests) // exports)
            anchor_cpu = figures["anchor"][0].cpu if "anchor" in figures else None
            for case, (f, points) in figures.items():
                signals = f.extra.get("signals_cpu")
                rows.append([
                    f"{size} ({int(f.extra['series']):,} series)" if case == cases[0] else "", case,
                    f"{points:,}", f"{f.wall:.3f}", f"{f.cpu:.3f}",
                    f"{signals:.3f}" if signals is not None else "",
                    f"{f.cpu - signals:.3f}" if signals is not None else f"{f.cpu:.3f}",
                    f"{f.rss_mib:.0f}",
                ])
            for row, (case, (f, _)) in zip(rows[-len(figures):], figures.items(), strict=True):
                row.append(f"{anchor_cpu / (f.cpu - f.extra.get('signals_cpu', 0.0)):.0%}"
                           if anchor_cpu and case != "anchor" else "")
            print(table(rows[-len(figures):], HEAD), flush=True)
    print()
    print(table(rows, HEAD))
    print("goals: first export of 100k series < 1.2 s; later < 0.6 s; 1M series first < 12 s and < 800 MiB")


def _prepare(script: Path, path: Path, size: str) -> None:
    import os
    import subprocess

    from benchmarks.harness import CODE, ROOT

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(CODE), str(ROOT)]))}
    subprocess.run([sys.executable, str(script), "--prepare", str(path), size], check=True, env=env)


if __name__ == "__main__":
    main()
