"""The command line as users run it: `check`, `run` refusals, and `demo`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.otlp_sink import OTLPSink

SECRET = "sk-admin-test-cli-0123456789"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_llm_receiver", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def test_check_prints_what_would_run_with_secrets_redacted(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("""
exporters:
  otlphttp/grafana:
    endpoint: https://otlp.example.com/otlp
    headers: {Authorization: "Bearer ${env:OTLP_TOKEN}"}
providers:
  demo/eu:
    seed: 3
    collection_interval: 5m
""")
    proc = cli("check", "--config", str(config), env={"OTLP_TOKEN": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert "demo/eu" in proc.stdout and "otlphttp/grafana" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("""
collection_interval: 5 minutes
exporters:
  otlp: {endpiont: localhost:4317}
providers:
  demo/prod:
    collection_interval: "5 minutes"
    seeed: 1
""")
    proc = cli("check", "--config", str(config))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 4
    assert any(line.startswith('providers.demo/prod.collection_interval: "5 minutes" is not a duration')
               for line in lines)
    assert any(line.startswith("providers.demo/prod.seeed:") for line in lines)
    assert any(line.startswith("exporters.otlp.endpiont:") for line in lines)
    assert any(line.startswith("collection_interval:") for line in lines)
    assert "Traceback" not in proc.stderr
    assert cli("run", "--config", str(config), "--once").returncode == 2


def test_provider_checks_the_schema_cannot_see_fail_check_and_run_at_once(tmp_path: Path) -> None:
    """A region that is not one, a bucket width that does not divide a day: exit 2 before any poll."""
    config = tmp_path / "config.yaml"
    config.write_text("""
exporters:
  otlp: {endpoint: 127.0.0.1:4317, tls: {insecure: true}}
providers:
  demo: {}
  bedrock/prod:
    regions: [us-east-1, moon-base-1]
    bucket_width: 7m
  vertex_ai/prod:
    projects: []
""")
    proc = cli("check", "--config", str(config))
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    bedrock = [line for line in lines if line.startswith("providers.bedrock/prod")]
    vertex = [line for line in lines if line.startswith("providers.vertex_ai/prod")]
    assert bedrock == [  # each with its key path (issue 19.3)
        "providers.bedrock/prod.regions[1]: 'moon-base-1' is not an AWS region name",
        "providers.bedrock/prod.bucket_width: must divide a day and be at least 5m, not 420s",
    ]
    assert vertex == ["providers.vertex_ai/prod.projects: must name at least one GCP project id"]
    assert not any(line.startswith("providers.demo") for line in lines)
    assert "Traceback" not in proc.stderr
    assert cli("run", "--config", str(config), "--once").returncode == 2


def test_run_refuses_to_start_without_an_exporter(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{path: {tmp_path / 'l.db'}}}\nproviders:\n  demo: {{}}\n")
    proc = cli("run", "--config", str(config), "--once")
    assert proc.returncode == 2
    assert "exporters: none configured" in proc.stderr


def test_log_level_is_global_and_read_from_the_environment(tmp_path: Path) -> None:
    """Issue 18.8: --log-level before or after any command, LOG_LEVEL otherwise; a bad value is one line, exit 2."""
    with OTLPSink() as sink:
        config = tmp_path / "config.yaml"
        config.write_text(f"""
storage: {{path: {tmp_path / 'l.db'}}}
exporters: {{otlp: {{endpoint: {sink.grpc_endpoint}, tls: {{insecure: true}}}}}}
providers: {{demo: {{backfill: 2h}}}}
""")
        run = ("run", "--config", str(config), "--once")
        default = cli(*run)
        assert default.returncode == 0 and "poll ok" in default.stderr, default.stderr
        for quiet in (cli("--log-level", "warning", *run), cli(*run, "--log-level", "error"),
                      cli(*run, env={"LOG_LEVEL": "WARNING"})):
            assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
        # The flag wins over the environment; debug shows what info hides.
        loud = cli(*run, "--log-level", "debug", env={"LOG_LEVEL": "error"})
        assert loud.returncode == 0 and "DEBUG" in loud.stderr and "poll ok" in loud.stderr
    for command in (("report", "--storage", str(tmp_path / "l.db")), ("check", "--config", str(config))):
        assert cli("--log-level", "debug", *command).returncode == 0
        bad = cli(*command, env={"LOG_LEVEL": "verbose"})
        assert bad.returncode == 2 and bad.stderr.strip() == \
            "LOG_LEVEL=verbose: must be one of debug, info, warning, error", bad.stderr


def test_unwritable_ledger_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(f"""
storage: {{path: {blocker / 'ledger.db'}}}
exporters: {{otlp: {{endpoint: 127.0.0.1:4317, tls: {{insecure: true}}}}}}
providers: {{demo: {{}}}}
""")
    proc = cli("run", "--config", str(config), "--once")
    assert proc.returncode == 1
    assert "cannot open ledger" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_readers_of_a_ledger_that_is_not_one_say_so_and_create_nothing(tmp_path: Path) -> None:
    """Issue 18.1: `report`/`focus` on a missing, empty, foreign or non-SQLite file: one line, exit 1, no file."""
    import sqlite3

    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    with sqlite3.connect(tmp_path / "other.db") as other:
        other.execute("CREATE TABLE t (x)")
    cases = {
        "typo.db": "no ledger at",
        "empty.db": "the file is empty (0 bytes)",
        "notes.db": "file is not a database",
        "other.db": "is an SQLite database but not a receiver ledger",
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, says in cases.items():
        for command in (["report", "--storage", name], ["focus", "--storage", name, "--out", "x.csv"]):
            proc = cli(*command, cwd=tmp_path)
            assert proc.returncode == 1, (command, proc.stderr)
            assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (command, proc.stderr)
            assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # not a 0-byte typo.db, no x.csv, no -wal


@pytest.mark.slow
def test_a_second_writer_on_one_ledger_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    """Issue 19.5: two `run` processes on one ledger: the second exits 1 in one line naming the path and the first's
    pid, exports nothing; `report` still reads; after the holder is killed (-9), the lock does not outlive it."""
    import signal
    import urllib.request

    from tests.support.prometheus_server import free_port

    ledger = tmp_path / "ledger.db"
    port = free_port()
    with OTLPSink() as first_sink, OTLPSink() as second_sink:
        def config(name: str, sink: OTLPSink, health: int | None) -> Path:
            path = tmp_path / name
            path.write_text(f"""
storage: {{path: {ledger}}}
{f"health: {{endpoint: 127.0.0.1:{health}}}" if health else ""}
exporters: {{otlp: {{endpoint: {sink.grpc_endpoint}, tls: {{insecure: true}}}}}}
providers: {{demo: {{backfill: 2h, collection_interval: 1h}}}}
""")
            return path

        holder = subprocess.Popen([sys.executable, "-m", "otel_llm_receiver", "run", "--config",
                                   str(config("first.yaml", first_sink, port))],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Started when its first export arrived (the ledger is open, the lock taken, the backfill applied).
            assert first_sink.wait_for(lambda s: s.request_count >= 1, timeout=60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=5) as live:
                assert live.status == 200
            second = cli("run", "--once", "--config", str(config("second.yaml", second_sink, None)))
            assert second.returncode == 1, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and f"ledger {ledger} is in use by another writer (pid {holder.pid}" in lines[0]
            assert second_sink.request_count == 0
            assert cli("report", "--storage", str(ledger)).returncode == 0  # readers take no lock
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
            assert holder.stderr is not None
            holder.stderr.close()
        after = cli("run", "--once", "--config", str(config("second.yaml", second_sink, None)))
        assert after.returncode == 0, after.stderr
        assert second_sink.request_count >= 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_without_a_collector_warns_once_and_summarises(tmp_path: Path) -> None:
    port = _closed_port()
    proc = cli("demo", "--duration", "2s", "--refresh", "1s", "--otlp-endpoint", f"127.0.0.1:{port}",
               "--storage", str(tmp_path / "demo.db"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("nothing listens on") == 1
    assert "gpt-4o-mini" in proc.stdout and "tokens/min" in proc.stdout
    assert "Traceback" not in proc.stderr
    # The money signals: estimated spend, budget burn, and the week's injected spike (Wednesday 14:00 UTC).
    assert "USD estimated" in proc.stdout and "budget demo-monthly:" in proc.stdout and "burn 1h" in proc.stdout
    peak = re.search(r"highest anomaly score of the last 7 days: \+([0-9.]+) at (\w+) \S+ (\d\d):00 UTC, demo gpt-4o "
                     r"Research", proc.stdout)
    assert peak is not None, proc.stdout
    assert float(peak.group(1)) > 4 and peak.group(2, 3) == ("Wed", "14")
    # `report` reads the same ledger offline.
    report = cli("report", "--storage", str(tmp_path / "demo.db"), "--since", "7d")
    assert report.returncode == 0, report.stderr
    for title in ("Spend and tokens", "reported USD", "estimated USD", "Top anomaly scores"):
        assert title in report.stdout


def test_demo_exports_to_a_listening_collector(tmp_path: Path) -> None:
    with OTLPSink() as sink:
        proc = cli("demo", "--duration", "2s", "--otlp-endpoint", sink.grpc_endpoint,
                   "--storage", str(tmp_path / "demo.db"))
        assert proc.returncode == 0, proc.stderr
        assert "nothing listens" not in proc.stderr
        providers = {dict(k)["gen_ai.provider.name"] for k in sink.number_points("llm.usage.tokens")}
        assert providers == {"demo"}


# -- what each command loads (issue 20: start-up). Asserted on the modules a fresh process ends with, not on time.
_PROBE = """\
import json, sys
from otel_llm_receiver.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""
#: Provider client libraries and cloud SDKs: only a provider that uses one loads it.
PROVIDER_LIBRARIES = {"httpx", "httpcore", "boto3", "botocore", "azure", "google.cloud", "google.auth"}
#: What exporting loads (OTLP over gRPC, protobuf) and what pricing loads (genai-prices and its pydantic).
RUNTIME_LIBRARIES = {"grpc", "opentelemetry", "google.protobuf", "genai_prices", "pydantic", "sqlite3", "rich",
                     "pyarrow"}


def _modules_after(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return proc, set(json.loads(line.removeprefix("MODULES ")))


def _loaded(modules: set[str], names: set[str]) -> list[str]:
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def _ours(modules: set[str]) -> set[str]:
    return {m.removeprefix("otel_llm_receiver.") for m in modules if m.startswith("otel_llm_receiver.")}


def _demo_config(path: Path, ledger: Path, endpoint: str) -> Path:
    path.write_text(f"storage: {{path: {ledger}}}\nhealth: {{endpoint: ''}}\n"
                    f"exporters: {{otlp: {{endpoint: {endpoint}, tls: {{insecure: true}}}}}}\n"
                    "providers: {demo: {backfill: 2h}}\n")
    return path


def test_help_loads_the_parser_and_nothing_of_the_receiver(tmp_path: Path) -> None:
    proc, modules = _modules_after("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "run the receiver" in proc.stdout and "focus" in proc.stdout
    assert _ours(modules) == {"_version", "cli", "errors", "focus", "focus.command", "focus.schema", "ledger_cli"}
    assert _loaded(modules, PROVIDER_LIBRARIES | RUNTIME_LIBRARIES | {"yaml", "asyncio"}) == []
    assert "importlib.metadata" not in modules  # the version comes from _version.py, not a scan of distributions


def test_check_of_a_demo_config_loads_the_config_and_the_demo_provider_only(tmp_path: Path) -> None:
    config = _demo_config(tmp_path / "config.yaml", tmp_path / "l.db", "127.0.0.1:4317")
    proc, modules = _modules_after("check", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0 and "demo (type demo): enabled" in proc.stdout, proc.stderr
    providers = {m for m in _ours(modules) if m.startswith("providers.")}
    assert providers == {"providers.base", "providers.demo", "providers.descriptors", "providers.options"}
    assert not {"scheduler", "emitter", "builder", "ledger", "pricing", "catalog"} & _ours(modules)
    assert _loaded(modules, PROVIDER_LIBRARIES | RUNTIME_LIBRARIES) == []


def test_run_once_of_a_demo_config_loads_no_other_provider_nor_their_libraries(tmp_path: Path) -> None:
    with OTLPSink() as sink:
        config = _demo_config(tmp_path / "config.yaml", tmp_path / "l.db", sink.grpc_endpoint)
        proc, modules = _modules_after("run", "--config", str(config), "--once", cwd=tmp_path)
        assert proc.returncode == 0 and "poll ok" in proc.stderr, proc.stderr
        assert sink.number_points("llm.usage.tokens")
    providers = {m for m in _ours(modules) if m.startswith("providers.")}
    assert providers == {"providers.base", "providers.demo", "providers.descriptors", "providers.options"}
    assert _loaded(modules, PROVIDER_LIBRARIES) == []
    assert _loaded(modules, {"grpc", "opentelemetry"}) == ["grpc", "opentelemetry"]  # what it exports with
