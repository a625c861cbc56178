"""A real third-party OTLP collector between the receiver and the sink: our OTLP is not only understood by
our own test sink.

``rotel`` (PyPI) ships a Rust OpenTelemetry collector binary with an OTLP receiver and an OTLP exporter. The
receiver runs ``run --once`` against Rotel; Rotel forwards to ``OTLPSink``. The sink must then hold exactly the
demo's ground truth with the counters' cumulative/monotonic flags, start times, histogram and resource intact,
and the request must have come from Rotel (its user agent), not straight from us.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.otlp_sink import OTLPSink
from tests.test_e2e import ENV, assert_matches_truth, cli, poll_lines

STARTUP_TIMEOUT = 15.0


def rotel_binary() -> Path:
    """The collector binary inside the ``rotel`` package; fails (never skips) when it is not installed."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise AssertionError("the `rotel` package is not installed: `pip install rotel` (it is in the test extra)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "rotel-agent"
    if not os.access(binary, os.X_OK):
        raise AssertionError(f"the rotel package has no runnable collector binary at {binary}")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the rotel collector binary cannot run on this machine (exit {proc.returncode}):\n"
                    + log.read_text(errors="replace")[-2000:]
                ) from None
            if time.monotonic() > deadline:
                raise AssertionError(f"rotel did not listen on {port} within {STARTUP_TIMEOUT}s") from None
            time.sleep(0.02)  # polling for the listening socket, not waiting for a result


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_receiver_to_rotel_to_sink_carries_the_exact_totals(tmp_path: Path, sink: OTLPSink, protocol: str) -> None:
    grpc_port, http_port = _free_port(), _free_port()
    out = f"http://{sink.grpc_endpoint}" if protocol == "grpc" else sink.http_endpoint
    log = tmp_path / "rotel.log"
    with open(log, "wb") as log_file:
        rotel = subprocess.Popen(
            [str(rotel_binary()), "start",
             "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
             "--exporter", "otlp", "--otlp-exporter-endpoint", out, "--otlp-exporter-protocol", protocol,
             "--pid-file", str(tmp_path / "rotel.pid"), "--log-file", str(tmp_path / "rotel-daemon.log")],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(grpc_port if protocol == "grpc" else http_port, rotel, log)
        exporter = (f"otlp:\n    endpoint: 127.0.0.1:{grpc_port}\n    tls: {{insecure: true}}" if protocol == "grpc"
                    else f"otlphttp:\n    endpoint: http://127.0.0.1:{http_port}")
        config = tmp_path / "config.yaml"
        config.write_text(
            f"storage: {{path: {tmp_path / 'ledger.db'}}}\nhealth: {{endpoint: \"\"}}\n"
            f"exporters:\n  {exporter}\n    timeout: 5s\n"
            "providers:\n  demo:\n    seed: 7\n    backfill: 3h\n    bucket_width: 1m\n"
        )
        proc = subprocess.run(cli("run", "--config", str(config), "--once"), env=ENV, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        (poll,) = poll_lines(proc.stderr)
        # Rotel batches, then forwards: wait until the forwarded export has arrived in full.
        assert sink.wait_for(lambda s: {"llm.usage.cost", "llm.receiver.poll.duration"} <= s.metric_names(),
                             timeout=20), "nothing arrived through rotel:\n" + log.read_text(errors="replace")
    finally:
        rotel.terminate()
        rotel.wait(timeout=10)

    assert all("rotel" in r.headers.get("user-agent", "").lower() for r in sink.requests), \
        "the data must come through rotel, not straight from the receiver"
    assert_matches_truth(sink, int(poll["window_start"]), int(poll["window_end"]))  # type: ignore[call-overload]
    assert sink.resource_attributes()["service.name"] == "otel-llm-receiver"
    tokens = sink.number_points("llm.usage.tokens")
    assert tokens and all(p.is_monotonic and p.temporality == 2 for p in tokens.values())  # cumulative
    assert all(p.start_time_unix_nano < p.time_unix_nano for p in tokens.values())
    (duration,) = sink.histogram_points("llm.receiver.poll.duration").values()
    assert duration.count == 1
    info = sink.metric_info("llm.usage.cost")
    assert info.unit == "USD"
