"""Config is the lowest layer above the model: parsing a config never imports SQLite, the ledger or pricing.

Checked in a fresh interpreter (``sys.modules`` of this test process already holds everything), and for the
provider registry too: config reaches it only when a config is parsed, never at import time.
"""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("sqlite3", "otel_llm_receiver.ledger", "otel_llm_receiver.pricing", "otel_llm_receiver.providers")


def _imported_after(statement: str) -> set[str]:
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


def test_importing_config_imports_neither_sqlite_nor_the_ledger_pricing_or_providers() -> None:
    modules = _imported_after("import otel_llm_receiver.config")
    assert "otel_llm_receiver.config" in modules
    assert sorted(m for m in FORBIDDEN if m in modules) == []


def test_each_config_module_alone_stays_below_the_runtime() -> None:
    for name in ("config_parse", "config_exporters", "config_providers", "signals_config", "focus_config"):
        modules = _imported_after(f"import otel_llm_receiver.{name}")
        assert sorted(m for m in FORBIDDEN if m in modules) == [], name


def test_parsing_with_schemas_handed_in_does_not_reach_the_provider_registry() -> None:
    modules = _imported_after(
        "from otel_llm_receiver.config import Option, parse_config\n"
        "parse_config({'providers': {'x': {'n': 3}}, 'pricing': {'overrides': []}},"
        " provider_options={'x': {'n': Option('int', 1)}})"
    )
    assert sorted(m for m in FORBIDDEN if m in modules) == []


# -- what validating a config imports (issue 20: start-up) -------------------------------------------------------
#: Client libraries and SDKs: loaded by the provider (or exporter) that uses them, never by validating a config.
CLIENT_LIBRARIES = ("httpx", "httpcore", "grpc", "boto3", "botocore", "google", "azure", "opentelemetry",
                    "genai_prices", "pydantic", "rich", "pyarrow")
#: What the registry itself is: the contract, the shared option classes and the providers' descriptor files.
REGISTRY = {"otel_llm_receiver.providers", "otel_llm_receiver.providers.base",
            "otel_llm_receiver.providers.descriptors", "otel_llm_receiver.providers.options"}


def _provider_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "otel_llm_receiver.providers" or m.startswith("otel_llm_receiver.providers.")}


def _libraries(modules: set[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(CLIENT_LIBRARIES))


def test_a_demo_only_config_imports_the_demo_provider_and_no_other_nor_any_client_library() -> None:
    modules = _imported_after(
        "from otel_llm_receiver.config import parse_config\n"
        "config = parse_config({'providers': {'demo': {'seed': 3}},"
        " 'exporters': {'otlp': {'endpoint': 'localhost:4317'}, 'otlphttp': {'endpoint': 'https://c.example'}}})\n"
        "assert config.providers[0].options['seed'] == 3 and 'seed' in config.describe()"
    )
    assert _provider_modules(modules) == REGISTRY | {"otel_llm_receiver.providers.demo"}
    assert _libraries(modules) == []
    assert sorted(m for m in FORBIDDEN[:-1] if m in modules) == []  # nor sqlite3, the ledger or pricing


def test_a_config_imports_the_provider_types_it_names_only() -> None:
    modules = _imported_after(
        "from otel_llm_receiver.config import parse_config\n"
        "parse_config({'providers': {'openai/prod': {'admin_key': 'sk-admin-x'}, 'demo': None}}, environ={})"
    )
    loaded = {m.split(".")[2] for m in _provider_modules(modules) - REGISTRY}
    assert {"openai", "demo"} <= loaded
    assert loaded - {"openai", "demo", "http", "shape"} == set()  # the shared HTTP client and shape readers


def test_an_unknown_type_is_named_with_every_known_one_without_importing_any() -> None:
    modules = _imported_after(
        "from otel_llm_receiver.config import parse_config\n"
        "from otel_llm_receiver.errors import ConfigError\n"
        "try:\n"
        "    parse_config({'providers': {'opnai': {}}})\n"
        "except ConfigError as exc:\n"
        "    assert exc.problems == ['providers.opnai: unknown provider type \"opnai\" (known: anthropic, "
        "azure_openai, bedrock, demo, openai, vertex_ai); did you mean openai?'], exc.problems\n"
        "else:\n"
        "    raise AssertionError('accepted')"
    )
    assert _provider_modules(modules) == REGISTRY - {"otel_llm_receiver.providers.base",
                                                     "otel_llm_receiver.providers.options"}
