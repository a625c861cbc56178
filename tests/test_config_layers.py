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
