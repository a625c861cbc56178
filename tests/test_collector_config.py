"""The Collector configs in collector-config/: valid for the otelcol-contrib release they name.

There is no Collector binary on a Python CI machine, so the configs are checked against a schema of the
targeted release's component types and keys (tests/schemas/otelcol-contrib.yaml, each entry naming the source
it was read from), plus the structural rules the Collector itself enforces at start: every component a
pipeline names is defined, every authenticator is an enabled extension. On top, our own rules: each config
has health_check, memory_limiter (first) and batch, names the release it targets, documents every
``${env:...}`` variable, and keeps the prometheus exporter's metric_expiration above the receiver's export
interval.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_llm_receiver.catalog import CATALOG
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.durations import parse_duration
from tests.support.prometheus_files import ROOT
from tests.support.prometheus_names import (
    metric_kind,
    prometheus_label_name,
    prometheus_metric_name,
    render_names_table,
)

CONFIG_DIR = ROOT / "collector-config"
SCHEMA = yaml.safe_load((ROOT / "tests" / "schemas" / "otelcol-contrib.yaml").read_text(encoding="utf-8"))
DOC = ROOT / "docs" / "collector.md"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
SECTIONS = ("receivers", "processors", "exporters", "extensions")
ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
#: The receiver's default export interval (seconds): see otel_llm_receiver/config.py.
RECEIVER_EXPORT_INTERVAL = 30.0


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def key_problems(value: Any, spec: Any, path: str) -> list[str]:
    """Keys in ``value`` that ``spec`` does not allow, each with its dotted path."""
    if spec is None or not isinstance(value, dict):
        return []
    if set(spec) == {"*"}:
        return [p for k, v in value.items() for p in key_problems(v, spec["*"], f"{path}.{k}")]
    problems = []
    for key, sub in value.items():
        if key not in spec:
            problems.append(f"{path}.{key}: not a key of this component in {SCHEMA['collector']} {SCHEMA['version']}")
        else:
            problems.extend(key_problems(sub, spec[key], f"{path}.{key}"))
    return problems


def config_problems(doc: dict[str, Any]) -> list[str]:
    """Everything the Collector (or our schema) would reject in one config document."""
    problems = [f"{k}: unknown top-level section" for k in doc if k not in (*SECTIONS, "connectors", "service")]
    for section in SECTIONS:
        for cid, cfg in (doc.get(section) or {}).items():
            ctype = cid.split("/", 1)[0]
            known = SCHEMA["components"][section].get(ctype)
            if known is None:
                problems.append(f"{section}.{cid}: no {section[:-1]} type {ctype!r} in {SCHEMA['collector']} {SCHEMA['version']}")
                continue
            if known.get("deprecated"):
                problems.append(f"{section}.{cid}: {ctype!r} is a deprecated alias ({known['source']})")
            problems.extend(key_problems(cfg or {}, known["keys"], f"{section}.{cid}"))
            for auth_path, auth in _authenticators(cfg or {}, f"{section}.{cid}"):
                if auth not in (doc.get("extensions") or {}):
                    problems.append(f"{auth_path}: authenticator {auth!r} is not a defined extension")
                elif auth not in (doc.get("service", {}).get("extensions") or []):
                    problems.append(f"{auth_path}: authenticator {auth!r} is not enabled in service.extensions")
    service = doc.get("service") or {}
    problems.extend(key_problems(service, SCHEMA["service"]["keys"], "service"))
    for ext in service.get("extensions") or []:
        if ext not in (doc.get("extensions") or {}):
            problems.append(f"service.extensions: {ext!r} is not defined under extensions")
    used: dict[str, set[str]] = {s: set() for s in SECTIONS}
    used["extensions"] = set(service.get("extensions") or [])
    for name, pipeline in (service.get("pipelines") or {}).items():
        for section in ("receivers", "processors", "exporters"):
            for cid in pipeline.get(section) or []:
                used[section].add(cid)
                if cid not in (doc.get(section) or {}):
                    problems.append(f"service.pipelines.{name}.{section}: {cid!r} is not defined under {section}")
    for section in SECTIONS:
        for cid in doc.get(section) or {}:
            if cid not in used[section]:
                problems.append(f"{section}.{cid}: defined but not used by any pipeline")
    return problems


def _authenticators(value: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return []
    found = [(f"{path}.auth", value["auth"]["authenticator"])] if isinstance(value.get("auth"), dict) else []
    for k, v in value.items():
        if k != "auth":
            found.extend(_authenticators(v, f"{path}.{k}"))
    return found


def test_the_shipped_configs_are_all_there() -> None:
    names = {p.name for p in CONFIGS}
    assert {"prometheus.yaml", "remote-write.yaml", "grafana-cloud.yaml", "fanout.yaml",
            "transform-short-labels.yaml"} <= names


def test_schema_names_a_source_for_every_component() -> None:
    for section, components in SCHEMA["components"].items():
        for ctype, entry in components.items():
            assert entry.get("source"), f"{section}.{ctype}: where was it read?"
            assert "keys" in entry
    assert re.fullmatch(r"v0\.\d+\.\d+", SCHEMA["version"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid_for_the_targeted_release(path: Path) -> None:
    assert config_problems(load(path)) == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_names_its_collector_release_and_has_the_baseline_components(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines()[:12] if line.startswith("#"))
    assert f"{SCHEMA['collector']} {SCHEMA['version']}" in header, f"{path.name}: name the targeted release"
    doc = load(path)
    assert "health_check" in doc["extensions"] and "health_check" in doc["service"]["extensions"]
    for name, pipeline in doc["service"]["pipelines"].items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", f"{path.name}: {name}: memory_limiter must come first"
        assert processors[-1] == "batch", f"{path.name}: {name}: batch must come last"
    assert doc["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert doc["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_prometheus_exporter_keeps_series_longer_than_the_export_interval(path: Path) -> None:
    for cid, cfg in load(path)["exporters"].items():
        if cid.split("/")[0] == "prometheus":
            expiration = parse_duration(cfg["metric_expiration"])
            assert expiration >= 4 * RECEIVER_EXPORT_INTERVAL, f"{path.name}: {cid}.metric_expiration"



#: Exporters that turn OTLP names into Prometheus names: each must pin the translation the catalog's
#: ``prometheus_name``s, the dashboards and the rules assume, or a Collector release changing the default
#: would rename every series.
PROMETHEUS_NAMING_EXPORTERS = ("prometheus", "prometheusremotewrite")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_prometheus_naming_exporter_pins_the_translation_strategy(path: Path) -> None:
    for cid, cfg in load(path)["exporters"].items():
        if cid.split("/")[0] in PROMETHEUS_NAMING_EXPORTERS:
            assert (cfg or {}).get("translation_strategy") == "UnderscoreEscapingWithSuffixes", (
                f"{path.name}: exporters.{cid}.translation_strategy is not pinned"
            )


def test_every_env_variable_is_documented() -> None:
    doc = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z_][A-Z0-9_]*)` \|", doc, flags=re.M))
    used = {v for p in CONFIGS for v in ENV_REFERENCE.findall(p.read_text(encoding="utf-8"))}
    assert used, "the configs use environment variables for credentials"
    assert used <= documented, f"not in docs/collector.md's variable table: {sorted(used - documented)}"


def test_a_wrong_key_type_or_reference_is_reported_with_its_path() -> None:
    doc = load(CONFIG_DIR / "prometheus.yaml")
    doc["exporters"]["prometheus"]["metric_expiraton"] = "5m"
    doc["exporters"]["otlphttp"] = {"endpoint": "http://x:4318"}
    doc["processors"]["nosuch"] = {}
    doc["service"]["pipelines"]["metrics"]["exporters"].append("debug")
    problems = config_problems(doc)
    assert "exporters.prometheus.metric_expiraton: not a key of this component in otelcol-contrib v0.159.0" in problems
    assert any(p.startswith("exporters.otlphttp: 'otlphttp' is a deprecated alias") for p in problems)
    assert any(p.startswith("processors.nosuch: no processor type 'nosuch'") for p in problems)
    assert "service.pipelines.metrics.exporters: 'debug' is not defined under exporters" in problems


def test_an_authenticator_must_be_an_enabled_extension() -> None:
    doc = load(CONFIG_DIR / "grafana-cloud.yaml")
    doc["service"]["extensions"].remove("basicauth/grafana_cloud")
    assert "exporters.otlp_http/grafana_cloud.auth: authenticator 'basicauth/grafana_cloud' is not enabled " \
           "in service.extensions" in config_problems(doc)


# ------------------------------------------------------------------------------------------------ the doc
def test_docs_prometheus_name_table_is_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- BEGIN generated: prometheus names -->\n(.*?)<!-- END generated: prometheus names -->",
                      text, re.S)
    assert match, "docs/collector.md lost its generated-table markers"
    assert match.group(1) == render_names_table(), "stale: run `make docs` to regenerate docs/collector.md's table"


def test_receiver_configs_in_the_doc_are_valid() -> None:
    # The "no Collector" variants in docs/collector.md are receiver configs: they must pass our own validator.
    blocks = re.findall(r"<!-- receiver-config -->\n```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert blocks
    env = {"GRAFANA_CLOUD_OTLP_ENDPOINT": "https://otlp-gateway-prod-eu-west-0.grafana.net/otlp",
           "GRAFANA_CLOUD_BASIC_AUTH": "MTIzNDU2OnRlc3Q=", "OPENAI_ADMIN_KEY": "sk-admin-test-123"}
    for block in blocks:
        config = parse_config(yaml.safe_load(block), environ=env)
        assert config.exporters


@pytest.mark.parametrize("name", list(CATALOG.metrics))
def test_catalog_prometheus_name_is_what_the_collector_produces(name: str) -> None:
    m = CATALOG.metrics[name]
    assert m.prometheus_name == prometheus_metric_name(m.name, m.unit, metric_kind(m))


def test_translation_rules_on_known_examples() -> None:
    # From otlptranslator's own documentation and the OpenTelemetry/Prometheus compatibility spec.
    assert prometheus_metric_name("http.server.request.duration", "s", "histogram") == \
        "http_server_request_duration_seconds"
    assert prometheus_metric_name("requests.count", "1", "counter") == "requests_count_total"
    assert prometheus_metric_name("memory.usage", "By", "gauge") == "memory_usage_bytes"
    assert prometheus_metric_name("cpu.utilization", "1", "gauge") == "cpu_utilization_ratio"
    assert prometheus_metric_name("net.io", "By/s", "gauge") == "net_io_bytes_per_second"
    assert prometheus_metric_name("seconds.total", "s", "counter") == "seconds_total"  # unit already a token
    assert prometheus_label_name("gen_ai.provider.name") == "gen_ai_provider_name"
