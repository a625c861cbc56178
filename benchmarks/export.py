"""Export cost: wall time and peak RSS to build and send one export of N series to a real OTLP sink.

Run by hand (`python benchmarks/export.py`); it prints its figures. For each N (default 10,000 and
100,000) a ledger with N token series is prepared in a child process, then a second child opens it and
does what one export cycle does - read the snapshot, build MetricsData, send it over OTLP/gRPC (in batches
of at most 5,000 points per request) - and reports its wall time split by phase and its peak RSS. The sink
(tests/support/otlp_sink.py, decoding every request with opentelemetry-proto) runs in this parent process,
so its decoding is not counted in the child's memory; its time is, since an export waits for each reply.
Target: 100,000 series in under 2 s and under 300 MiB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(path: str, n: int) -> None:
    from otel_llm_receiver.ledger import Ledger
    from otel_llm_receiver.model import PollResult, UsageRecord

    records = [
        UsageRecord("demo", f"model-{i % 50}", "chat", f"tenancy-{i // 50}", 0, 3600, {"input": i + 1})
        for i in range(n)
    ]
    with Ledger(path) as ledger:
        ledger.apply("bench", PollResult(usage=records), tenant="bench")


def measure(path: str, endpoint: str) -> None:
    from otel_llm_receiver.builder import MetricsBuilder, make_resource
    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.emitter import build_exporter
    from otel_llm_receiver.ledger import Ledger

    cfg = parse_config({
        "exporters": {"otlp": {"endpoint": endpoint, "tls": {"insecure": True}, "timeout": "60s"}},
        "providers": {"demo": {}},
    }).exporters[0]
    exporter = build_exporter(cfg)
    builder = MetricsBuilder(make_resource("bench"))
    figures = {}
    with Ledger(path, readonly=True) as reader:
        # Two export cycles, as a running receiver does them: the first (cold) encodes every series'
        # attributes; every later one (warm) reuses them and only re-reads the totals.
        for cycle in ("cold", "warm"):
            t0 = time.perf_counter()
            rows = reader.export_rows(builder.known_series)
            t1 = time.perf_counter()
            export = builder.build(rows, None, time.time_ns())
            t2 = time.perf_counter()
            ok = all(exporter.export_request(b.request(), b.points) for b in export.batches)
            t3 = time.perf_counter()
            assert ok, "export failed"
            figures[cycle] = {"read_s": t1 - t0, "build_s": t2 - t1, "send_s": t3 - t2, "total_s": t3 - t0}
    exporter.shutdown()
    print(json.dumps({
        "points": export.points, "requests": len(export.batches), **figures,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--decode", action="store_true",
                        help="let the sink decode every point into Python objects (counted in the send time)")
    parser.add_argument("--prepare", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("PATH", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare[0], int(args.prepare[1]))
        return
    if args.measure:
        measure(*args.measure)
        return

    from tests.support.otlp_sink import OTLPSink

    sink_options = {"decode_points": args.decode}

    print(f"{'series':>8} {'cycle':>5} {'read':>7} {'build':>7} {'send':>7} {'total':>7} {'peak RSS':>10}")
    with OTLPSink(**sink_options) as sink, tempfile.TemporaryDirectory() as tmp:
        for n in args.series:
            path = str(Path(tmp) / f"ledger-{n}.db")
            subprocess.run([sys.executable, __file__, "--prepare", path, str(n)], check=True)
            out = subprocess.run([sys.executable, __file__, "--measure", path, sink.grpc_endpoint],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            received = sink.point_count("llm.usage.tokens")
            for cycle in ("cold", "warm"):
                f = r[cycle]
                print(f"{n:>8,} {cycle:>5} {f['read_s']:>6.2f}s {f['build_s']:>6.2f}s {f['send_s']:>6.2f}s "
                      f"{f['total_s']:>6.2f}s {r['peak_rss_mib']:>7.0f} MiB")
            print(f"{'':>8} {r['points']:,} points in {r['requests']} requests; the sink counted {received:,} points")
            sink.clear()


if __name__ == "__main__":
    main()
