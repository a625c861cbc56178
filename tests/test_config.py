"""Tests of the config loader (otel_llm_receiver.config) and of durations (otel_llm_receiver.durations).

Every config test writes a real YAML file into tmp_path and loads it with ``load_config``, with an explicit
environment and explicit provider option schemas (a demo-like and an openai-like one).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from otel_llm_receiver.config import (
    COMMON_PROVIDER_KEYS,
    Config,
    ExporterConfig,
    Option,
    ProviderConfig,
    Secret,
    TLSConfig,
    load_config,
    parse_config,
)
from otel_llm_receiver.durations import format_duration, parse_duration
from otel_llm_receiver.errors import ConfigError

ADMIN_KEY = "sk-admin-test-abc123"
FILE_KEY = "sk-file-test-def456"
HEADER_TOKEN = "hdr-token-test-789xyz"

SCHEMAS: dict[str, dict[str, Option]] = {
    "demo": {
        "seed": Option("int", 42),
        "models": Option("list[str]"),
        "bucket_width": Option("duration", 60.0),
        "verbose": Option("bool", False),
        "mode": Option("str", "steady", choices=("steady", "bursty")),
        "extra": Option("map[str,str]"),
    },
    "openai": {
        "api_key": Option("secret", required=True, description="Admin API key"),
        "project_ids": Option("list[str]"),
        "backfill": Option("duration", "3d"),
    },
}

ENV = {"OPENAI_ADMIN_KEY": ADMIN_KEY, "TOKEN": HEADER_TOKEN}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ=ENV if env is None else env, provider_options=SCHEMAS)


def problems(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> str:
    found = problems(tmp_path, text, env)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------------------------------------------
# durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("168h", 604800.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2h45m10s", 9910.0),
        ("1d12h", 129600.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("250μs", 0.00025),
        ("100ns", 1e-7),
        ("1m1m", 120.0),
        (" 30s ", 30.0),
        ("+30s", 30.0),
        ("0", 0.0),
        ("0s", 0.0),
        (0, 0.0),
        (0.0, 0.0),
    ],
)
def test_parse_duration_accepts(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5 minutes", '"5 minutes" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)'),
        ("60", '"60" is not a duration: it needs a unit, e.g. 60s or 60m'),
        (60, "60 is not a duration: it needs a unit, e.g. 60s or 60m"),
        (1.5, "1.5 is not a duration: it needs a unit, e.g. 1.5s or 1.5m"),
        ("-5s", '"-5s" is not a duration: durations must not be negative'),
        (-1, "-1 is not a duration: durations must not be negative"),
        ("", '"" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)'),
        ("5M", '"5M" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)'),
        ("1h 30m", '"1h 30m" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)'),
        ("h", '"h" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)'),
        ("5w", '"5w" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)'),
        (True, "true is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)"),
        (math.inf, "inf is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)"),
        (math.nan, "nan is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)"),
    ],
)
def test_parse_duration_rejects_with_a_clear_message(text: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == message


def test_parse_duration_rejects_other_types() -> None:
    values: list[Any] = [None, [], {}]
    for value in values:
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (90, "1m30s"),
        (604800, "7d"),
        (0.5, "500ms"),
        (0, "0s"),
        (0.0, "0s"),
        (60.0, "1m"),
        (3600, "1h"),
        (86401, "1d1s"),
        (1.5, "1s500ms"),
        (0.1, "100ms"),
        (1e-9, "1ns"),
        (0.000250, "250us"),
        (90 * 86400, "90d"),
        (5400.0, "1h30m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1, -0.5, math.inf, math.nan])
def test_format_duration_rejects_negative_and_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)


def test_format_duration_rejects_non_numbers() -> None:
    with pytest.raises(TypeError):
        format_duration("30s")  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**50))
def test_format_then_parse_round_trips_to_the_nanosecond(nanos: int) -> None:
    seconds = nanos / 1e9
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=100 * 365 * 86400))
def test_whole_seconds_round_trip(whole: int) -> None:
    assert parse_duration(format_duration(whole)) == whole


_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}


@given(
    st.lists(st.tuples(st.integers(0, 500), st.sampled_from(sorted(_UNIT_SECONDS))), min_size=1, max_size=6)
)
def test_any_spelling_formats_canonically_and_reads_back(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{count}{unit}" for count, unit in parts)
    seconds = parse_duration(text)
    canonical = format_duration(seconds)
    assert parse_duration(canonical) == seconds
    assert format_duration(parse_duration(canonical)) == canonical
    assert math.isclose(seconds, sum(count * _UNIT_SECONDS[unit] for count, unit in parts), abs_tol=1e-9)


# ------------------------------------------------------------------------------------------------------------
# defaults and the happy path


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    config = load(tmp_path, "providers:\n  demo:\n")
    assert config.collection_interval == 60.0
    assert config.export_interval == 30.0
    assert config.progress_interval == 5.0
    assert config.storage.path == "./otel-llm-data/ledger.db"
    assert config.storage.retention == 90 * 86400
    assert config.health.endpoint == "127.0.0.1:13133"
    assert config.exporters == ()
    (demo,) = config.providers
    assert demo == ProviderConfig(
        name="demo",
        type="demo",
        collection_interval=60.0,
        timeout=30.0,
        tenant="default",
        endpoint=None,
        lookback=None,
        backfill=None,
        labels={},
        enabled=True,
        options={
            "seed": 42,
            "models": None,
            "bucket_width": 60.0,
            "verbose": False,
            "mode": "steady",
            "extra": None,
        },
    )
    assert config.warnings == ("exporters: none configured; `run` needs at least one",)
    assert config.secrets == frozenset()


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "client.pem").write_text("cert")
    (tmp_path / "client.key").write_text("key")
    config = load(
        tmp_path,
        """\
        collection_interval: 2m
        export_interval: 15s
        progress_interval: 10s
        storage:
          path: /var/lib/otel-llm/ledger.db
          retention: 30d
        health:
          endpoint: 0.0.0.0:13134
        exporters:
          otlp:
            endpoint: collector:4317
            headers:
              authorization: Bearer ${env:TOKEN}
            compression: none
            timeout: 5s
            tls:
              insecure: false
              ca_file: ca.pem
              cert_file: client.pem
              key_file: client.key
          otlphttp/grafana:
            endpoint: https://otlp-gateway-prod-eu-west-0.grafana.net/otlp
        providers:
          demo:
            seed: 7
            models: [gpt-4o, claude-sonnet-4]
            bucket_width: 1h
            verbose: true
            mode: bursty
            extra: {a: b}
            labels: {team: ml, cost_center: 42, billable: true}
            enabled: false
          openai/prod:
            api_key: ${env:OPENAI_ADMIN_KEY}
            project_ids: [proj_1]
            collection_interval: 5m
            timeout: 45s
            tenant: acme
            endpoint: http://127.0.0.1:8080/v1
            lookback: 2h
            backfill: 7d
        """,
    )
    assert config.collection_interval == 120.0
    assert config.export_interval == 15.0
    assert config.progress_interval == 10.0
    assert config.storage.path == "/var/lib/otel-llm/ledger.db"
    assert config.storage.retention == 30 * 86400
    assert config.health.endpoint == "0.0.0.0:13134"
    grpc, http = config.exporters
    assert grpc == ExporterConfig(
        name="otlp",
        protocol="grpc",
        endpoint="collector:4317",
        headers={"authorization": f"Bearer {HEADER_TOKEN}"},
        compression="none",
        timeout=5.0,
        tls=TLSConfig(
            insecure=False,
            ca_file=str(tmp_path / "ca.pem"),
            cert_file=str(tmp_path / "client.pem"),
            key_file=str(tmp_path / "client.key"),
        ),
    )
    assert (http.name, http.protocol, http.compression, http.timeout) == (
        "otlphttp/grafana",
        "http",
        "gzip",
        10.0,
    )
    assert http.tls == TLSConfig()
    assert dict(http.headers) == {}
    demo, openai = config.providers
    assert demo.enabled is False
    assert demo.collection_interval == 120.0  # inherited from the top level
    assert dict(demo.labels) == {"team": "ml", "cost_center": "42", "billable": "true"}
    assert dict(demo.options) == {
        "seed": 7,
        "models": ("gpt-4o", "claude-sonnet-4"),
        "bucket_width": 3600.0,
        "verbose": True,
        "mode": "bursty",
        "extra": {"a": "b"},
    }
    assert (openai.name, openai.type, openai.tenant) == ("openai/prod", "openai", "acme")
    assert (openai.collection_interval, openai.timeout, openai.lookback, openai.backfill) == (
        300,
        45,
        7200,
        604800,
    )
    assert openai.endpoint == "http://127.0.0.1:8080/v1"
    assert openai.options["api_key"] == ADMIN_KEY
    assert openai.options["project_ids"] == ("proj_1",)
    assert openai.options["backfill"] == 604800.0
    assert config.warnings == ()


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, "providers:\n  demo:\n    labels: {team: ml}\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.export_interval = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.providers[0].tenant = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.providers[0].options["seed"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        config.providers[0].labels["team"] = "x"  # type: ignore[index]
    hash(config.providers[0])
    hash(config.storage)


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("otlp", "grpc"),
        ("otlp_grpc", "grpc"),
        ("otlp/backup", "grpc"),
        ("otlp_grpc/a.b-c_1", "grpc"),
        ("otlphttp", "http"),
        ("otlp_http", "http"),
        ("otlphttp/grafana", "http"),
    ],
)
def test_exporter_types_and_aliases(tmp_path: Path, name: str, protocol: str) -> None:
    endpoint = "collector:4317" if protocol == "grpc" else "http://collector:4318"
    config = load(tmp_path, f"exporters:\n  {name}:\n    endpoint: {endpoint}\nproviders:\n  demo:\n")
    (exporter,) = config.exporters
    assert (exporter.name, exporter.protocol, exporter.endpoint) == (name, protocol, endpoint)


@pytest.mark.parametrize(
    "endpoint",
    ["collector:4317", "127.0.0.1:4317", "[::1]:4317", "http://collector:4317", "https://otel.example:443"],
)
def test_grpc_endpoints_accepted(tmp_path: Path, endpoint: str) -> None:
    config = load(tmp_path, f"exporters:\n  otlp:\n    endpoint: '{endpoint}'\nproviders:\n  demo:\n")
    assert config.exporters[0].endpoint == endpoint


@pytest.mark.parametrize(
    "endpoint",
    ["http://collector:4318", "https://otlp-gateway-prod-eu-west-0.grafana.net/otlp", "http://[::1]"],
)
def test_http_endpoints_accepted(tmp_path: Path, endpoint: str) -> None:
    config = load(tmp_path, f"exporters:\n  otlphttp:\n    endpoint: '{endpoint}'\nproviders:\n  demo:\n")
    assert config.exporters[0].endpoint == endpoint
    assert config.warnings == ()


def test_http_endpoint_with_v1_metrics_warns(tmp_path: Path) -> None:
    config = load(
        tmp_path, "exporters:\n  otlphttp:\n    endpoint: http://c:4318/v1/metrics\nproviders:\n  demo:\n"
    )
    assert config.warnings == (
        "exporters.otlphttp.endpoint: ends with /v1/metrics, which is appended to the endpoint"
        " (as the Collector does)",
    )


def test_provider_instances_of_one_type(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        collection_interval: 10m
        exporters: {otlp: {endpoint: "c:4317"}}
        providers:
          openai/prod: {api_key: "${env:OPENAI_ADMIN_KEY}", tenant: prod}
          openai/staging: {api_key: "${env:OPENAI_ADMIN_KEY}", tenant: staging, collection_interval: 1h}
        """,
    )
    assert [(p.name, p.type, p.tenant, p.collection_interval) for p in config.providers] == [
        ("openai/prod", "openai", "prod", 600.0),
        ("openai/staging", "openai", "staging", 3600.0),
    ]


def test_schema_can_give_a_common_key_a_provider_default(tmp_path: Path) -> None:
    config = load(tmp_path, "providers:\n  openai:\n    api_key: ${env:OPENAI_ADMIN_KEY}\n")
    assert config.providers[0].backfill == 3 * 86400
    assert config.providers[0].options["backfill"] == 3 * 86400


def test_common_provider_keys() -> None:
    assert (
        frozenset(
            {
                "collection_interval",
                "timeout",
                "tenant",
                "endpoint",
                "lookback",
                "backfill",
                "backfill_chunk",
                "labels",
                "enabled",
            }
        )
        == COMMON_PROVIDER_KEYS
    )


def test_lookback_and_backfill_may_be_zero(tmp_path: Path) -> None:
    config = load(tmp_path, "providers:\n  demo: {lookback: 0, backfill: 0s}\n")
    assert (config.providers[0].lookback, config.providers[0].backfill) == (0.0, 0.0)


def test_health_can_be_disabled(tmp_path: Path) -> None:
    config = load(tmp_path, 'health: {endpoint: ""}\nproviders: {demo: }\n')
    assert config.health.endpoint == ""
    assert "health: endpoint (disabled)" in config.describe()


@pytest.mark.parametrize("endpoint", ["127.0.0.1:0", ":13133", "localhost:8080", "[::1]:13133"])
def test_health_endpoints_accepted(tmp_path: Path, endpoint: str) -> None:
    config = load(tmp_path, f"health: {{endpoint: '{endpoint}'}}\nproviders: {{demo: }}\n")
    assert config.health.endpoint == endpoint


def test_export_failure_window_defaults_to_three_export_intervals(tmp_path: Path) -> None:
    """Issue 17.10: how long /ready stays 200 without a successful export."""
    config = load(tmp_path, "export_interval: 20s\nproviders: {demo: }\n")
    assert config.health.export_failure_window is None and config.export_failure_window == 60.0
    config = load(tmp_path, "health: {export_failure_window: 5m}\nproviders: {demo: }\n")
    assert config.export_failure_window == 300.0
    assert "export failure window 5m" in config.describe()
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, "health: {export_failure_window: 0s}\nproviders: {demo: }\n")
    assert exc.value.problems == ["health.export_failure_window: must be greater than 0"]


def test_parse_config_takes_a_parsed_document(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(ADMIN_KEY + "\n")
    config = parse_config(
        {"providers": {"openai/x": {"api_key": "${file:key}"}}},
        base_dir=str(tmp_path),
        environ={},
        provider_options=SCHEMAS,
    )
    assert config.providers[0].options["api_key"] == ADMIN_KEY


def test_default_schemas_come_from_the_providers_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = types.ModuleType("otel_llm_receiver.providers")
    fake.provider_options = lambda: {"fake": {"level": Option("int", 3)}}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "otel_llm_receiver.providers", fake)
    config = load_config(write(tmp_path, "providers:\n  fake/one:\n"), environ={})
    assert config.providers[0].options == {"level": 3}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "providers:\n  demo:\n"), environ={})
    assert info.value.problems == ['providers.demo: unknown provider type "demo" (known: fake)']


def test_option_schema_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown option kind"):
        Option("float")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="choices only apply"):
        Option("int", choices=("1",))
    assert Option("str", choices=["a", "b"]).choices == ("a", "b")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# substitution


def test_env_substitution_forms(tmp_path: Path) -> None:
    env = {**ENV, "TENANT": "acme", "EMPTY": "", "HOST": "collector", "PORT": "4317"}
    config = load(
        tmp_path,
        """\
        exporters:
          otlp:
            endpoint: ${HOST}:${env:PORT}
        providers:
          demo:
            tenant: ${env:TENANT}
            mode: ${env:MODE:-bursty}
            models: ["${env:TENANT:-ignored}", "cost$$center", "a$b", "$"]
            labels: {empty: "${env:EMPTY:-unused}", braces: "${env:NOPE:-}"}
        """,
        env,
    )
    assert config.exporters[0].endpoint == "collector:4317"
    demo = config.providers[0]
    assert demo.tenant == "acme"
    assert demo.options["mode"] == "bursty"
    assert demo.options["models"] == ("acme", "cost$center", "a$b", "$")
    # As in the Collector, the default applies only when the variable is unset, not when it is empty.
    assert dict(demo.labels) == {"empty": "", "braces": ""}


def test_typed_values_are_parsed_after_substitution(tmp_path: Path) -> None:
    env = {"SEED": "7", "VERBOSE": "true", "WIDTH": "5m", "ENABLED": "no", "EVERY": "90s"}
    config = load(
        tmp_path,
        """\
        collection_interval: ${env:EVERY}
        providers:
          demo:
            seed: ${env:SEED}
            verbose: ${env:VERBOSE}
            bucket_width: ${env:WIDTH}
            enabled: ${env:ENABLED}
        """,
        env,
    )
    demo = config.providers[0]
    assert config.collection_interval == 90.0
    assert (demo.options["seed"], demo.options["verbose"], demo.options["bucket_width"]) == (7, True, 300.0)
    assert demo.enabled is False


def test_file_substitution(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "openai").write_text(FILE_KEY + "\n\n")
    absolute = tmp_path / "absolute-key"
    absolute.write_text("sk-absolute-test-000\r\n")
    config = load(
        tmp_path,
        f"""\
        providers:
          openai/a: {{api_key: "${{file:secrets/openai}}"}}
          openai/b: {{api_key: "${{file:{absolute}}}"}}
        """,
    )
    a, b = config.providers
    assert a.options["api_key"] == FILE_KEY
    assert b.options["api_key"] == "sk-absolute-test-000"
    assert {FILE_KEY, "sk-absolute-test-000"} <= config.secrets
    assert config.warnings == ("exporters: none configured; `run` needs at least one",)


def test_file_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "key").write_text(FILE_KEY)
    monkeypatch.chdir(tmp_path)
    path = write(conf_dir, 'providers:\n  openai: {api_key: "${file:key}"}\n')
    config = load_config(os.path.relpath(path), environ={}, provider_options=SCHEMAS)
    assert config.providers[0].options["api_key"] == FILE_KEY


def test_substitution_is_not_applied_to_keys(tmp_path: Path) -> None:
    config = load(tmp_path, "providers:\n  demo:\n    extra: {'${env:X}': v}\n", env={})
    assert dict(config.providers[0].options["extra"]) == {"${env:X}": "v"}


# ------------------------------------------------------------------------------------------------------------
# problems, each with its key path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown keys, at every depth, with a hint when one is close
        (
            "colection_interval: 1m\nproviders: {demo: }",
            "colection_interval: unknown key (did you mean collection_interval?)",
        ),
        (
            "whatever: 1\nproviders: {demo: }",
            "whatever: unknown key (valid keys: attribution, budgets, collection_interval, export_interval, exporters,"
            " focus, health, metrics, pricing, progress_interval, providers, storage)",
        ),
        (
            "storage: {retension: 1d}\nproviders: {demo: }",
            "storage.retension: unknown key (did you mean retention?)",
        ),
        (
            "health: {endpont: ':1'}\nproviders: {demo: }",
            "health.endpont: unknown key (did you mean endpoint?)",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', endpiont: x}}\nproviders: {demo: }",
            "exporters.otlp.endpiont: unknown key (did you mean endpoint?)",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', retry_on_failure: {enabled: true}}}\nproviders: {demo: }",
            "exporters.otlp.retry_on_failure: unknown key: a Collector option this receiver does not support",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', tls: {ca_fle: x}}}\nproviders: {demo: }",
            "exporters.otlp.tls.ca_fle: unknown key (did you mean ca_file?)",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', tls: {insecure_skip_verify: true}}}\nproviders: {demo: }",
            "exporters.otlp.tls.insecure_skip_verify: unknown key: a Collector option this receiver does not support",
        ),
        ("providers: {demo: {sede: 1}}", "providers.demo.sede: unknown key (did you mean seed?)"),
        ("providers: {demo: {tennant: x}}", "providers.demo.tennant: unknown key (did you mean tenant?)"),
        # empty config / no providers
        ("", "providers: at least one provider instance is required"),
        ("providers:", "providers: at least one provider instance is required"),
        ("providers: {}\nexport_interval: 1s", "providers: at least one provider instance is required"),
        ("- a\n- b", "(top level): must be a mapping, got a list"),
        # durations
        (
            "providers:\n  openai/prod:\n    api_key: sk-literal\n    collection_interval: 5 minutes",
            'providers.openai/prod.collection_interval: "5 minutes" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)',
        ),
        (
            "collection_interval: 60\nproviders: {demo: }",
            "collection_interval: 60 is not a duration: it needs a unit, e.g. 60s or 60m",
        ),
        ("collection_interval: 0s\nproviders: {demo: }", "collection_interval: must be greater than 0"),
        ("export_interval: 0\nproviders: {demo: }", "export_interval: must be greater than 0"),
        ("progress_interval: 0\nproviders: {demo: }", "progress_interval: must be greater than 0"),
        (
            "export_interval: -1s\nproviders: {demo: }",
            'export_interval: "-1s" is not a duration: durations must not be negative',
        ),
        ("storage: {retention: 0s}\nproviders: {demo: }", "storage.retention: must be greater than 0"),
        ("providers: {demo: {timeout: 0s}}", "providers.demo.timeout: must be greater than 0"),
        (
            "providers: {demo: {lookback: [1]}}",
            "providers.demo.lookback: must be a duration such as 30s, got a list",
        ),
        (
            "providers: {demo: {bucket_width: 1y}}",
            'providers.demo.bucket_width: "1y" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)',
        ),
        # types
        ("providers: {demo: {seed: abc}}", "providers.demo.seed: must be an integer, got a string"),
        (
            "providers: {demo: {seed: '42'}}",
            "providers.demo.seed: must be an integer, got a string (remove the quotes)",
        ),
        ("providers: {demo: {seed: true}}", "providers.demo.seed: must be an integer, got a boolean"),
        ("providers: {demo: {verbose: 1}}", "providers.demo.verbose: must be true or false, got an integer"),
        (
            "providers: {demo: {enabled: 'false'}}",
            "providers.demo.enabled: must be true or false, got a string (remove the quotes)",
        ),
        (
            "providers: {demo: {models: gpt-4o}}",
            "providers.demo.models: must be a list of strings, got a string",
        ),
        ("providers: {demo: {models: [a, [b]]}}", "providers.demo.models[1]: must be a string, got a list"),
        ("providers: {demo: {models: [a, '']}}", "providers.demo.models[1]: must not be empty"),
        ("providers: {demo: {extra: [a]}}", "providers.demo.extra: must be a mapping, got a list"),
        ("providers: {demo: {extra: {a: [1]}}}", "providers.demo.extra.a: must be a string, got a list"),
        (
            "providers: {demo: {mode: bursti}}",
            'providers.demo.mode: "bursti" is not one of steady, bursty; did you mean bursty?',
        ),
        ("providers: {demo: {tenant: ''}}", "providers.demo.tenant: must not be empty"),
        ("providers: {demo: {tenant: }}", "providers.demo.tenant: must not be empty"),
        (
            "providers: {demo: {tenant: 1.5}}",
            "providers.demo.tenant: must be a string, got a number (quote it)",
        ),
        ("providers: {demo: {tenant: [2024-01-01]}}", "providers.demo.tenant: must be a string, got a list"),
        ("providers: {demo: [1]}", "providers.demo: must be a mapping, got a list"),
        ("providers: [demo]", "providers: must be a mapping, got a list"),
        ("storage: x\nproviders: {demo: }", "storage: must be a mapping, got a string"),
        ("storage: {path: ''}\nproviders: {demo: }", "storage.path: must not be empty"),
        ("providers: {demo: {extra: {1: a}}}", "providers.demo.extra: key 1 must be a string (quote it)"),
        ("providers: {demo: {extra: {on: a}}}", "providers.demo.extra: key true must be a string (quote it)"),
        (
            "providers: {demo: {endpoint: 'ftp://x'}}",
            'providers.demo.endpoint: "ftp://x" must be a URL http(s)://host[:port][/path]',
        ),
        (
            "providers: {demo: {endpoint: 'localhost:8080'}}",
            'providers.demo.endpoint: "localhost:8080" must be a URL http(s)://host[:port][/path]',
        ),
        # provider types and names
        (
            "providers: {opneai: {}}",
            'providers.opneai: unknown provider type "opneai" (known: demo, openai); did you mean openai?',
        ),
        (
            "providers: {bedrock/x: {}}",
            'providers.bedrock/x: unknown provider type "bedrock" (known: demo, openai)',
        ),
        (
            "providers: {demo/: {}}",
            'providers.demo/: instance name "" must match [A-Za-z0-9_.-]+ (as in openai/prod)',
        ),
        (
            "providers: {demo/a b: {}}",
            'providers.demo/a b: instance name "a b" must match [A-Za-z0-9_.-]+ (as in openai/prod)',
        ),
        (
            "providers: {demo/a/b: {}}",
            'providers.demo/a/b: instance name "a/b" must match [A-Za-z0-9_.-]+ (as in openai/prod)',
        ),
        ("providers: {openai: {}}", "providers.openai.api_key: is required (secret option of openai)"),
        (
            "providers: {openai: {api_key: }}",
            "providers.openai.api_key: is required (secret option of openai)",
        ),
        # labels
        (
            "providers: {demo: {labels: {gen_ai.request.model: x}}}",
            "providers.demo.labels.gen_ai.request.model: is reserved: gen_ai.*, llm.* and error.type are set by the receiver",
        ),
        (
            "providers: {demo: {labels: {llm.tenant: x}}}",
            "providers.demo.labels.llm.tenant: is reserved: gen_ai.*, llm.* and error.type are set by the receiver",
        ),
        (
            "providers: {demo: {labels: {llm.currency: EUR}}}",
            "providers.demo.labels.llm.currency: is reserved: gen_ai.*, llm.* and error.type are set by the receiver",
        ),
        (
            "providers: {demo: {labels: {9lives: x}}}",
            "providers.demo.labels.9lives: is not a valid attribute name (letters, digits, _ and ., not starting with a digit)",
        ),
        (
            "providers: {demo: {labels: {team-name: x}}}",
            "providers.demo.labels.team-name: is not a valid attribute name (letters, digits, _ and ., not starting with a digit)",
        ),
        ("providers: {demo: {labels: {team: }}}", "providers.demo.labels.team: must be a string, got null"),
        ("providers: {demo: {labels: [a]}}", "providers.demo.labels: must be a mapping, got a list"),
        # exporters
        (
            "exporters: {prometheus: {endpoint: '0.0.0.0:8889'}}\nproviders: {demo: }",
            'exporters.prometheus: unknown exporter type "prometheus" (valid: otlp, otlp_grpc, otlphttp, otlp_http)'
            " (this receiver sends OTLP only: configure that exporter in the Collector)",
        ),
        (
            "exporters: {otlpgrpc: {endpoint: 'c:1'}}\nproviders: {demo: }",
            'exporters.otlpgrpc: unknown exporter type "otlpgrpc" (valid: otlp, otlp_grpc, otlphttp, otlp_http);'
            " did you mean otlp_grpc?",
        ),
        (
            "exporters: {otlp/: {endpoint: 'c:1'}}\nproviders: {demo: }",
            'exporters.otlp/: exporter name "" must match [A-Za-z0-9_.-]+',
        ),
        (
            "exporters: {otlp: {}}\nproviders: {demo: }",
            "exporters.otlp.endpoint: is required (e.g. collector:4317)",
        ),
        (
            "exporters: {otlp: }\nproviders: {demo: }",
            "exporters.otlp.endpoint: is required (e.g. collector:4317)",
        ),
        (
            "exporters: {otlphttp: {compression: gzip}}\nproviders: {demo: }",
            "exporters.otlphttp.endpoint: is required (e.g. http://collector:4318)",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', compression: zstd}}\nproviders: {demo: }",
            'exporters.otlp.compression: "zstd" is not one of gzip, none',
        ),
        (
            "exporters: {otlp: {endpoint: collector}}\nproviders: {demo: }",
            'exporters.otlp.endpoint: "collector" must be host:port or http(s)://host:port for OTLP/gRPC (e.g. collector:4317)',
        ),
        (
            "exporters: {otlp: {endpoint: 'http://c:4317/v1'}}\nproviders: {demo: }",
            'exporters.otlp.endpoint: "http://c:4317/v1" must be host:port or http(s)://host:port for OTLP/gRPC (e.g. collector:4317)',
        ),
        (
            "exporters: {otlp: {endpoint: 'c:99999'}}\nproviders: {demo: }",
            'exporters.otlp.endpoint: "c:99999" must be host:port or http(s)://host:port for OTLP/gRPC (e.g. collector:4317)',
        ),
        (
            "exporters: {otlphttp: {endpoint: 'collector:4318'}}\nproviders: {demo: }",
            'exporters.otlphttp.endpoint: "collector:4318" must be a URL http(s)://host[:port][/path] for OTLP/HTTP (e.g. http://collector:4318)',
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', timeout: 10}}\nproviders: {demo: }",
            "exporters.otlp.timeout: 10 is not a duration: it needs a unit, e.g. 10s or 10m",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', headers: [a]}}\nproviders: {demo: }",
            "exporters.otlp.headers: must be a mapping, got a list",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', headers: {a: [1]}}}\nproviders: {demo: }",
            "exporters.otlp.headers.a: must be a string, got a list",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', headers: {'bad name': x}}}\nproviders: {demo: }",
            "exporters.otlp.headers.bad name: is not a valid header name",
        ),
        (
            "exporters: {otlp: {endpoint: 'c:1', tls: {insecure: 'yes'}}}\nproviders: {demo: }",
            "exporters.otlp.tls.insecure: must be true or false, got a string (remove the quotes)",
        ),
        ("exporters: [otlp]\nproviders: {demo: }", "exporters: must be a mapping, got a list"),
        # health
        (
            "health: {endpoint: localhost}\nproviders: {demo: }",
            'health.endpoint: "localhost" must be host:port such as 127.0.0.1:13133 (or "" to disable)',
        ),
        (
            "health: {endpoint: 'http://x:1'}\nproviders: {demo: }",
            'health.endpoint: "http://x:1" must be host:port such as 127.0.0.1:13133 (or "" to disable)',
        ),
        # substitution
        (
            "providers:\n  openai/prod:\n    api_key: ${env:OPENAI_ADMIN_KEY}",
            "providers.openai/prod.api_key: environment variable OPENAI_ADMIN_KEY is not set",
        ),
        (
            "providers: {demo: {tenant: '${TENANT}'}}",
            "providers.demo.tenant: environment variable TENANT is not set",
        ),
        (
            "providers: {demo: {tenant: 'a${env:X'}}",
            "providers.demo.tenant: unterminated ${ (write $$ for a literal $)",
        ),
        (
            "providers: {demo: {tenant: '${vault:x}'}}",
            "providers.demo.tenant: ${vault:x}: unsupported substitution 'vault' (use env or file)",
        ),
        (
            "providers: {demo: {tenant: '${env:1X}'}}",
            "providers.demo.tenant: ${env:1X}: not a valid environment variable name",
        ),
        (
            "providers: {demo: {tenant: '${}'}}",
            "providers.demo.tenant: ${} is not a substitution (use ${env:NAME}, ${file:PATH}, or $$ for $)",
        ),
        ("providers: {demo: {tenant: '${file:}'}}", "providers.demo.tenant: ${file:} needs a path"),
        (
            "providers: {demo: {seed: '${env:SEED}'}}",
            "providers.demo.seed: environment variable SEED is not set",
        ),
    ],
)
def test_each_problem_names_its_key_path(tmp_path: Path, text: str, expected: str) -> None:
    assert one_problem(tmp_path, text, env={}) == expected


def test_substituted_values_of_the_wrong_type(tmp_path: Path) -> None:
    env = {"SEED": "many", "VERBOSE": "maybe", "EVERY": "soon"}
    text = (
        "collection_interval: ${env:EVERY}\nproviders: {demo: {seed: '${SEED}', verbose: '${env:VERBOSE}'}}\n"
    )
    # A value from the environment is never echoed (it may be a credential under the wrong key, issue 17.9).
    hidden = "the value substituted from ${env:...} (not shown)"
    assert problems(tmp_path, text, env) == [
        f"collection_interval: {hidden} is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)",
        f"providers.demo.seed: {hidden} is not an integer",
        f"providers.demo.verbose: {hidden} is not a boolean (use true or false)",
    ]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    found = one_problem(tmp_path, "providers:\n  openai/prod:\n    api_key: ${file:keys/openai}\n")
    assert (
        found
        == f"providers.openai/prod.api_key: cannot read file {tmp_path / 'keys' / 'openai'}: No such file or directory"
    )


def test_tls_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_text("cert")
    found = problems(
        tmp_path,
        """\
        exporters:
          otlp:
            endpoint: c:4317
            tls: {ca_file: missing-ca.pem}
          otlp/two:
            endpoint: c:4317
            tls: {cert_file: client.pem}
        providers: {demo: }
        """,
    )
    assert found == [
        f'exporters.otlp.tls.ca_file: file "missing-ca.pem" does not exist (looked for {tmp_path / "missing-ca.pem"})',
        "exporters.otlp/two.tls: cert_file and key_file must be given together",
    ]


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        export_interval: soon
        storage:
          path: ""
        exporters:
          otlp:
            compression: brotli
          kafka: {}
        providers:
          openai/prod:
            api_key: ${env:OPENAI_ADMIN_KEY}
            collection_interval: 5 minutes
          demo:
            seed: x
            labels: {llm.tenant: x}
          nope: {}
        collection_interval: 0s
        bogus: 1
        """,
        env={},
    )
    assert found == [
        'export_interval: "soon" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)',
        "storage.path: must not be empty",
        'exporters.otlp.compression: "brotli" is not one of gzip, none',
        "exporters.otlp.endpoint: is required (e.g. collector:4317)",
        'exporters.kafka: unknown exporter type "kafka" (valid: otlp, otlp_grpc, otlphttp, otlp_http)',
        "providers.openai/prod.api_key: environment variable OPENAI_ADMIN_KEY is not set",
        'providers.openai/prod.collection_interval: "5 minutes" is not a duration (use e.g. 500ms, 30s, 5m, 1h, 7d)',
        "providers.demo.seed: must be an integer, got a string",
        "providers.demo.labels.llm.tenant: is reserved: gen_ai.*, llm.* and error.type are set by the receiver",
        'providers.nope: unknown provider type "nope" (known: demo, openai)',
        "collection_interval: must be greater than 0",
        "bogus: unknown key (valid keys: attribution, budgets, collection_interval, export_interval, exporters, focus, health, metrics, pricing, progress_interval, providers, storage)",
    ]


def test_unknown_provider_type_still_checks_its_common_keys(tmp_path: Path) -> None:
    assert problems(tmp_path, "providers: {anthropic: {tenant: '', admin_key: x}}") == [
        'providers.anthropic: unknown provider type "anthropic" (known: demo, openai)',
        "providers.anthropic.tenant: must not be empty",
    ]


def test_duplicate_keys_are_problems(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        providers:
          demo:
            seed: 1
            seed: 2
          demo:
            tenant: a
        """,
    )
    assert found == [
        "providers.demo.seed: duplicate key (lines 3 and 4)",
        "providers.demo: duplicate key (lines 2 and 5)",
    ]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", environ={}, provider_options=SCHEMAS)
    assert info.value.problems == [
        f"{tmp_path / 'nope.yaml'}: cannot read the config file: No such file or directory"
    ]


def test_invalid_yaml_gives_the_position_but_not_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n  openai:\n    api_key: {ADMIN_KEY}\n  - oops\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={}, provider_options=SCHEMAS)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: invalid YAML at line 4, column 3: ")
    assert ADMIN_KEY not in problem


def test_export_interval_at_or_over_five_minutes_warns(tmp_path: Path) -> None:
    config = load(
        tmp_path, "export_interval: 5m\nexporters: {otlp: {endpoint: 'c:1'}}\nproviders: {demo: }\n"
    )
    assert config.warnings == (
        "export_interval: 5m is not under 5m, the Collector prometheus exporter's default metric_expiration:"
        " series would go stale between exports",
    )


def test_insecure_with_https_warns(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "exporters: {otlp: {endpoint: 'https://c:4317', tls: {insecure: true}}}\nproviders: {demo: }\n",
    )
    assert config.warnings == (
        "exporters.otlp.tls.insecure: is true but the endpoint says https://; https:// wins",
    )


# ------------------------------------------------------------------------------------------------------------
# secrets (DESIGN.md invariant 7)

SECRET_CONFIG = """\
exporters:
  otlp:
    endpoint: collector:4317
    headers:
      authorization: Bearer ${env:TOKEN}
      x-static: literal-header-value-42
  otlphttp/grafana:
    endpoint: https://otlp-gateway.example/otlp
    headers:
      Authorization: Basic ${file:grafana.token}
providers:
  openai/prod:
    api_key: ${env:OPENAI_ADMIN_KEY}
  openai/file:
    api_key: ${file:openai.key}
    tenant: team-a
  demo:
    tenant: ${file:tenant.txt}
"""


@pytest.fixture
def secret_config(tmp_path: Path) -> Config:
    (tmp_path / "grafana.token").write_text("grafana-token-test-555\n")
    (tmp_path / "openai.key").write_text(FILE_KEY + "\n")
    (tmp_path / "tenant.txt").write_text("tenant-from-file-777\n")
    return load(tmp_path, SECRET_CONFIG)


SECRET_VALUES = [
    ADMIN_KEY,
    FILE_KEY,
    HEADER_TOKEN,
    "literal-header-value-42",
    "grafana-token-test-555",
    "tenant-from-file-777",
]


def test_secrets_are_collected(secret_config: Config) -> None:
    assert set(SECRET_VALUES) <= secret_config.secrets
    assert f"Bearer {HEADER_TOKEN}" in secret_config.secrets
    assert "Basic grafana-token-test-555" in secret_config.secrets
    assert "" not in secret_config.secrets
    assert "team-a" not in secret_config.secrets
    # ...and still usable as plain strings.
    assert secret_config.providers[0].options["api_key"] == ADMIN_KEY
    assert secret_config.exporters[0].headers["authorization"] == f"Bearer {HEADER_TOKEN}"
    assert f"{secret_config.providers[1].options['api_key']}" == FILE_KEY


@pytest.mark.parametrize("secret", SECRET_VALUES)
def test_secrets_never_appear_in_describe_or_repr(secret_config: Config, secret: str) -> None:
    described = secret_config.describe()
    assert secret not in described
    assert secret not in repr(secret_config)
    assert secret not in str(secret_config)
    for provider in secret_config.providers:
        assert secret not in repr(provider)
        assert secret not in repr(dict(provider.options))
    for exporter in secret_config.exporters:
        assert secret not in repr(exporter)
        assert secret not in repr(dict(exporter.headers))


def test_describe_shows_what_is_not_secret(secret_config: Config) -> None:
    described = secret_config.describe()
    assert "openai/prod (type openai): enabled, every 1m, timeout 30s, tenant default" in described
    assert "openai/file (type openai): enabled, every 1m, timeout 30s, tenant team-a" in described
    assert "demo (type demo): enabled, every 1m, timeout 30s, tenant <redacted>" in described
    assert "api_key: <redacted>" in described
    assert "headers: authorization=<redacted>, x-static=<redacted>" in described
    assert "otlp (OTLP/gRPC): endpoint collector:4317, compression gzip, timeout 10s" in described
    assert "otlphttp/grafana (OTLP/HTTP): endpoint https://otlp-gateway.example/otlp" in described
    assert "storage: path ./otel-llm-data/ledger.db, retention 90d" in described
    assert "health: endpoint 127.0.0.1:13133" in described
    assert "backfill: 3d" in described
    assert "bucket_width: 1m" in described
    assert "seed: 42" in described


def test_secret_wrapper() -> None:
    secret = Secret(ADMIN_KEY)
    assert repr(secret) == "<redacted>"
    assert str(secret) == ADMIN_KEY
    assert secret == ADMIN_KEY
    assert f"{secret}" == ADMIN_KEY
    assert ADMIN_KEY not in repr({"k": secret})


def test_constructed_exporter_headers_are_redacted_too() -> None:
    exporter = ExporterConfig(
        name="otlp", protocol="grpc", endpoint="c:1", headers={"authorization": ADMIN_KEY}
    )
    assert ADMIN_KEY not in repr(exporter)
    assert exporter.headers["authorization"] == ADMIN_KEY


def test_literal_secret_is_allowed_with_a_warning(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"exporters: {{otlp: {{endpoint: 'c:1'}}}}\nproviders:\n  openai:\n    api_key: {ADMIN_KEY}\n",
    )
    assert config.providers[0].options["api_key"] == ADMIN_KEY
    assert ADMIN_KEY in config.secrets
    assert config.warnings == (
        "providers.openai.api_key: secret written literally in the config file; prefer ${env:NAME} or ${file:PATH}",
    )
    assert ADMIN_KEY not in "\n".join(config.warnings)
    assert ADMIN_KEY not in config.describe()


def test_problems_never_quote_values_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(FILE_KEY)
    found = problems(
        tmp_path,
        """\
        exporters:
          otlp: {endpoint: "${file:secret}"}
        providers:
          demo:
            mode: ${file:secret}
            seed: ${file:secret}
            bucket_width: ${file:secret}
        """,
    )
    assert found == [
        "exporters.otlp.endpoint: the value read from ${file:...} (not shown) must be host:port or"
        " http(s)://host:port for OTLP/gRPC (e.g. collector:4317)",
        "providers.demo.mode: the value read from ${file:...} (not shown) is not one of steady, bursty",
        "providers.demo.seed: the value read from ${file:...} (not shown) is not an integer",
        "providers.demo.bucket_width: the value read from ${file:...} (not shown) is not a duration"
        " (use e.g. 500ms, 30s, 5m, 1h, 7d)",
    ]
    assert all(FILE_KEY not in p for p in found)


def test_secret_pieces_are_collected_from_mixed_header_values(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "exporters: {otlp: {endpoint: 'c:1', headers: {a: 'x ${env:TOKEN} y'}}}\nproviders: {demo: }\n",
    )
    assert {HEADER_TOKEN, f"x {HEADER_TOKEN} y"} <= config.secrets


# ------------------------------------------------------------------------------------------------------------
# docs/configuration.md stays true

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _doc_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)


def test_docs_examples_are_valid_configs() -> None:
    blocks = _doc_yaml_blocks()
    assert len(blocks) >= 4
    env = {"OPENAI_ADMIN_KEY": ADMIN_KEY, "OTEL_TOKEN": HEADER_TOKEN, "POLL_STAGING": "true",
           "LEDGER_DSN": "postgresql://ledger:pw-test@db.internal:5432/llm_ledger?sslmode=require"}
    for block in blocks:
        raw = yaml.safe_load(block)
        raw.setdefault("providers", {"demo": None})
        try:
            parse_config(raw, environ=env)  # the registered providers' real option schemas
        except ConfigError as e:
            # The examples point at secret and certificate files that do not exist here; nothing else may fail.
            other = [p for p in e.problems if "cannot read file" not in p and "does not exist" not in p]
            assert other == [], block


def test_docs_name_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    keys = [
        *("collection_interval", "export_interval", "storage", "health", "exporters", "providers"),
        *("path", "retention", "backend", "dsn", "lease_duration", "endpoint", "headers", "compression", "timeout"),
        *("tls.insecure", "tls.ca_file", "tls.cert_file", "tls.key_file"),
        *sorted(COMMON_PROVIDER_KEYS),
        *("otlp", "otlp_grpc", "otlphttp", "otlp_http", "gzip", "none"),
        *("${env:NAME}", "${NAME}", "${env:NAME:-default}", "${file:PATH}", "$$"),
    ]
    missing = [key for key in keys if f"`{key}`" not in text]
    assert missing == []


def test_metrics_section_switches_catalog_metrics_off_and_rejects_unknown_names() -> None:
    config = parse_config({"providers": {"demo": {}}, "metrics": {"llm.usage.requests": {"enabled": False}}})
    assert dict(config.metrics) == {"llm.usage.requests": False}
    assert "metrics: llm.usage.requests disabled" in config.describe()
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"demo": {}}, "metrics": {
            "llm.usage.request": {"enabled": False},
            "llm.usage.tokens": {"enable": True},
            "llm.usage.cost": {"enabled": "maybe"},
        }})
    problems = info.value.problems
    assert any(p.startswith("metrics.llm.usage.request:") and "did you mean llm.usage.requests" in p
               for p in problems)
    assert any(p.startswith("metrics.llm.usage.tokens.enable:") for p in problems)
    assert any(p.startswith("metrics.llm.usage.cost.enabled:") for p in problems)
    assert len(problems) == 3


@pytest.mark.parametrize(("text", "seconds"), [
    ("1795000000", 1_795_000_000),
    ("2026-11-01", 1_793_491_200),
    ("2026-11-01T12:30:00", 1_793_491_200 + 45_000),
    ("2026-11-01T12:30:00+01:00", 1_793_491_200 + 45_000 - 3600),
])
def test_parse_moment_reads_unix_seconds_and_utc_dates(text: str, seconds: int) -> None:
    from otel_llm_receiver.durations import parse_moment

    assert parse_moment(text) == seconds
