"""End to end through the real CLI: demo provider -> ledger -> OTLP (gRPC and HTTP) -> a real sink.

The last test is the one DESIGN.md's invariants promise users: `run --once`, then a `run` killed with
SIGKILL mid-flight, then `run --once` again; the sink ends up with exactly the demo's ground truth and the
counters' start times never changed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.demo_truth import demo_truth
from tests.support.otlp_sink import OTLPSink

SEED = 7
BACKFILL = 3 * 3600


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    tmp_path: Path, grpc_endpoint: str, http_endpoint: str, *, interval: str = "60s", health: str = ""
) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
collection_interval: {interval}
export_interval: {interval}
storage:
  path: {tmp_path / "ledger.db"}
health:
  endpoint: "{health}"
exporters:
  otlp:
    endpoint: {grpc_endpoint}
    tls: {{insecure: true}}
    timeout: 2s
  otlphttp/second:
    endpoint: {http_endpoint}
    headers: {{authorization: "Bearer ${{env:TEST_OTLP_TOKEN}}"}}
    timeout: 2s
providers:
  demo:
    seed: {SEED}
    backfill: 3h
    bucket_width: 1m
""")
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "otel_llm_receiver", *args]


ENV = {**os.environ, "LOG_FORMAT": "json", "TEST_OTLP_TOKEN": "sk-test-otlp-token-123456"}


def poll_lines(stderr: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [d for d in lines if "window_end" in d]


@pytest.fixture
def sinks() -> Iterator[tuple[OTLPSink, OTLPSink]]:
    with OTLPSink() as grpc_sink, OTLPSink() as http_sink:
        yield grpc_sink, http_sink


def totals_from(sink: OTLPSink) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], int],
                                        dict[tuple[str, str], Decimal]]:
    tokens = {
        (dict(k)["llm.tenancy.id"], dict(k)["gen_ai.request.model"], dict(k)["gen_ai.token.type"]): int(p.value)
        for k, p in sink.number_points("llm.usage.tokens").items()
    }
    requests = {
        (dict(k)["llm.tenancy.id"], dict(k)["gen_ai.request.model"]): int(p.value)
        for k, p in sink.number_points("llm.usage.requests").items()
    }
    cost = {
        (dict(k)["llm.tenancy.id"], dict(k)["gen_ai.request.model"]): Decimal(repr(p.value)).quantize(
            Decimal("0.000001"))
        for k, p in sink.number_points("llm.usage.cost").items()
    }
    return tokens, requests, cost


def assert_matches_truth(sink: OTLPSink, first_start: int, as_of: int) -> None:
    tokens, requests, cost = demo_truth(SEED, first_start, as_of)
    got_tokens, got_requests, got_cost = totals_from(sink)
    assert got_tokens == tokens
    assert got_requests == requests
    assert got_cost == {k: v.quantize(Decimal("0.000001")) for k, v in cost.items()}


def test_run_once_exports_the_demo_ground_truth_over_grpc_and_http(
    tmp_path: Path, sinks: tuple[OTLPSink, OTLPSink]
) -> None:
    grpc_sink, http_sink = sinks
    config = write_config(tmp_path, grpc_sink.grpc_endpoint, http_sink.http_endpoint)
    proc = subprocess.run(cli("run", "--config", str(config), "--once"), env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (poll,) = poll_lines(proc.stderr)
    first_start, as_of = int(poll["window_start"]), int(poll["window_end"])  # type: ignore[call-overload]
    assert as_of - first_start == BACKFILL
    for sink in (grpc_sink, http_sink):
        assert_matches_truth(sink, first_start, as_of)
        resource = sink.resource_attributes()
        assert resource["service.name"] == "otel-llm-receiver"
        assert resource["service.instance.id"]
        for point in sink.number_points("llm.usage.tokens").values():
            assert point.is_monotonic and point.temporality == 2  # CUMULATIVE
        assert {"llm.receiver.polls", "llm.receiver.poll.duration", "llm.receiver.records"} <= sink.metric_names()
    # Tenancy names were resolved and the configured header was sent (and never logged).
    names = {dict(k).get("llm.tenancy.name") for k in grpc_sink.number_points("llm.usage.requests")}
    assert names == {"Search", "Support Bot", "Research"}
    assert http_sink.requests[-1].headers["authorization"] == "Bearer sk-test-otlp-token-123456"
    assert "sk-test-otlp-token-123456" not in proc.stderr + proc.stdout


def test_restart_after_kill_9_continues_exactly(tmp_path: Path, sinks: tuple[OTLPSink, OTLPSink]) -> None:
    grpc_sink, http_sink = sinks
    health_port = _free_port()
    config = write_config(tmp_path, grpc_sink.grpc_endpoint, http_sink.http_endpoint, interval="1s",
                          health=f"127.0.0.1:{health_port}")

    first = subprocess.run(cli("run", "--config", str(config), "--once"), env=ENV, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    first_start = int(poll_lines(first.stderr)[0]["window_start"])  # type: ignore[call-overload]
    start_times = {k: p.start_time_unix_nano for k, p in grpc_sink.number_points("llm.usage.tokens").items()}
    values_before = {k: p.value for k, p in grpc_sink.number_points("llm.usage.tokens").items()}
    assert start_times

    # A long-running `run`, killed with SIGKILL once it has polled and exported at least twice.
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(cli("run", "--config", str(config)), env=ENV, stdout=log, stderr=log)
    try:
        base = grpc_sink.request_count
        assert grpc_sink.wait_for(lambda s: s.request_count >= base + 4, timeout=60), "no exports arrived"
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/health", timeout=5) as resp:
            health = json.load(resp)
            assert resp.status == 200
        assert health["instances"]["demo"]["healthy"] is True
        assert health["ledger"]["ok"] is True
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    last = subprocess.run(cli("run", "--config", str(config), "--once"), env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert last.returncode == 0, last.stderr
    as_of = int(poll_lines(last.stderr)[-1]["window_end"])  # type: ignore[call-overload]
    assert_matches_truth(grpc_sink, first_start, as_of)
    assert_matches_truth(http_sink, first_start, as_of)
    after = grpc_sink.number_points("llm.usage.tokens")
    for key, start in start_times.items():
        assert after[key].start_time_unix_nano == start, "a counter's start time changed across restarts"
        assert after[key].value >= values_before[key], "a counter went down across restarts"


def test_sigterm_stops_cleanly_with_a_final_export(tmp_path: Path, sinks: tuple[OTLPSink, OTLPSink]) -> None:
    grpc_sink, http_sink = sinks
    config = write_config(tmp_path, grpc_sink.grpc_endpoint, http_sink.http_endpoint, interval="1h")
    proc = subprocess.Popen(cli("run", "--config", str(config)), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # The first poll happens at start; exports only every hour, so the one we get is the final one.
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"window_end"' in line:
                break
        assert grpc_sink.request_count == 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert grpc_sink.request_count >= 1 and http_sink.request_count >= 1
    assert "llm.usage.tokens" in grpc_sink.metric_names()
    assert "Traceback" not in err
