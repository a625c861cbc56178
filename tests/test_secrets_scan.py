"""Secrets scan (issue 17.9) and third-party log lines (issue 18.2).

``run --once`` at every log level, debug included, against moto (server mode, the real boto3) and the Azure
fake (the real azure-identity managed-identity credential, its token endpoint served on loopback): no fixture
credential appears anywhere in stdout or stderr. Before the redacting formatter, botocore's debug output held
the access key id and the session token. A config error never echoes a value that came from ``${env:}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.azure import TOKEN, FakeAccount, FakeAzure
from tests.support.moto_server import MotoServer
from tests.support.otlp_sink import OTLPSink

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ("debug", "info", "warning", "error")
AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAFIXTURE000000001",
    "AWS_SECRET_ACCESS_KEY": "fixture-secret-access-key-not-real-0001",
    "AWS_SESSION_TOKEN": "FIXTURESESSIONTOKEN-test-0001",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
IDENTITY_HEADER = "fixture-identity-header-0001"
SUB = "00000000-0000-0000-0000-0000000000a1"


def base_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_", "IDENTITY_", "MSI_"))}
    return {**keep, "HOME": os.environ.get("HOME", "/tmp"), **extra}


def run_once(config: Path, level: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_llm_receiver", "run", "--config", str(config), "--once", "--log-level", level],
        capture_output=True, text=True, timeout=120, env=env, cwd=config.parent,
    )


def hits(output: str, values: list[str]) -> int:
    return sum(output.count(v) for v in values)


@pytest.fixture(scope="module")
def sink() -> Iterator[OTLPSink]:
    with OTLPSink() as s:
        yield s


def test_bedrock_against_moto_leaks_no_credential_at_any_level(tmp_path: Path, sink: OTLPSink) -> None:
    with MotoServer() as moto:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "health": {"endpoint": ""},
            "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}, "timeout": "2s"}},
            "providers": {"bedrock/prod": {
                "regions": ["us-east-1"], "endpoint": moto.url, "costs": False, "mantle": False,
                "max_attempts": 1,
            }},
        }))
        found: dict[str, int] = {}
        for level in LEVELS:
            proc = run_once(config, level, base_env(**AWS, LOG_FORMAT="json"))
            output = proc.stdout + proc.stderr
            assert "Traceback" not in output
            if level == "debug":
                assert "botocore" in output  # the SDK did log its requests, through our formatter
            found[level] = hits(output, [AWS["AWS_ACCESS_KEY_ID"], AWS["AWS_SECRET_ACCESS_KEY"],
                                         AWS["AWS_SESSION_TOKEN"]])
    print(f"bedrock/moto credential hits by level: {found}", file=sys.__stderr__)
    assert found == dict.fromkeys(LEVELS, 0)


class _IdentityEndpoint(BaseHTTPRequestHandler):
    """App Service managed identity (``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER``), as azure-identity calls it."""

    def do_GET(self) -> None:
        if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"access_token": TOKEN, "expires_on": str(int(time.time()) + 3600),
                           "resource": "x", "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def azure_world(tmp_path: Path, sink: OTLPSink) -> Iterator[tuple[Path, dict[str, str]]]:
    fake = FakeAzure()
    identity = ThreadingHTTPServer(("127.0.0.1", 0), _IdentityEndpoint)
    thread = threading.Thread(target=identity.serve_forever, daemon=True)
    thread.start()
    try:
        fake.add_account(FakeAccount(SUB, "rg-ai", "aoai-prod", "OpenAI", {"chat": ("gpt-4o", "2024-11-20")}))
        raw = yaml.safe_load((ROOT / "examples" / "azure_openai.yaml").read_text())
        raw["storage"]["path"] = str(tmp_path / "ledger.db")
        raw["health"] = {"endpoint": ""}
        raw["exporters"]["otlp"]["endpoint"] = sink.grpc_endpoint
        raw["providers"]["azure_openai/prod"].update(
            subscriptions=[SUB], management_endpoint=fake.base_url, cost=False, retry_initial_interval="10ms")
        config = tmp_path / "azure.yaml"
        config.write_text(yaml.safe_dump(raw))
        env = base_env(IDENTITY_ENDPOINT=f"http://127.0.0.1:{identity.server_address[1]}/msi/token",
                       IDENTITY_HEADER=IDENTITY_HEADER, LOG_FORMAT="json")
        yield config, env
    finally:
        identity.shutdown()
        identity.server_close()
        fake.close()


def test_azure_against_the_fake_leaks_no_credential_at_any_level(azure_world: tuple[Path, dict[str, str]]) -> None:
    config, env = azure_world
    found: dict[str, int] = {}
    for level in LEVELS:
        proc = run_once(config, level, env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        found[level] = hits(proc.stdout + proc.stderr, [TOKEN, IDENTITY_HEADER])
    print(f"azure credential hits by level: {found}", file=sys.__stderr__)
    assert found == dict.fromkeys(LEVELS, 0)


def test_azure_example_writes_one_json_line_per_event(azure_world: tuple[Path, dict[str, str]]) -> None:
    config, env = azure_world
    proc = run_once(config, "info", env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON record: nothing bypasses it
    assert not [r for r in records if not r["logger"].startswith("otel_llm_receiver")], lines
    assert len(lines) < 10, lines
    debug = run_once(config, "debug", env)
    third_party = [json.loads(line) for line in debug.stderr.splitlines()]
    assert any(r["logger"].startswith(("azure", "urllib3", "httpx")) for r in third_party)


def test_a_config_error_never_echoes_a_value_from_env(tmp_path: Path) -> None:
    secret = "sk-admin-test-misplaced-0001"
    config = tmp_path / "config.yaml"
    config.write_text("collection_interval: ${env:OPENAI_ADMIN_KEY}\n"
                      "providers:\n  demo:\n    tenant: ${env:OPENAI_ADMIN_KEY}\n    seed: ${env:OPENAI_ADMIN_KEY}\n"
                      "    bucket_width: ${env:OPENAI_ADMIN_KEY}\n")
    proc = subprocess.run([sys.executable, "-m", "otel_llm_receiver", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=base_env(OPENAI_ADMIN_KEY=secret))
    assert proc.returncode == 2
    assert "collection_interval: the value substituted from ${env:...} (not shown)" in proc.stderr
    assert secret not in proc.stdout + proc.stderr
