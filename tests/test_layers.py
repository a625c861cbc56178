"""Layering: providers, the config modules and pricing know metric names (names.py), never the ledger.

Walks the package's imports with ``ast`` (every import statement, also inside functions, relative ones resolved),
so a provider cannot reach SQL through a helper either: the modules these import at load time are followed too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "otel_llm_receiver"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    """The package modules ``module`` imports (``from x import y`` counts ``x.y`` when that is a module)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text("utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES}


def _closure(module: str) -> set[str]:
    """Every package module loaded by importing ``module`` (its module-level imports, followed)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages' __init__ run first
        todo += sorted(_imports(m, top_level_only=True))
    return seen - {module}


def _is_ledger(module: str) -> bool:
    return module == "otel_llm_receiver.ledger" or module.startswith("otel_llm_receiver.ledger.")


LOWER_LAYERS = sorted(
    m for m in MODULES
    if m.startswith("otel_llm_receiver.providers")
    or m.rpartition(".")[2].startswith("config")
    or m in ("otel_llm_receiver.pricing", "otel_llm_receiver.names", "otel_llm_receiver.series",
             "otel_llm_receiver.model", "otel_llm_receiver.catalog")
)


def test_the_walk_sees_the_modules_it_checks() -> None:
    assert "otel_llm_receiver.providers.anthropic.reports" in LOWER_LAYERS
    assert "otel_llm_receiver.pricing" in LOWER_LAYERS and "otel_llm_receiver.config" in LOWER_LAYERS
    assert any(_is_ledger(m) for m in _imports("otel_llm_receiver.scheduler", top_level_only=True))


@pytest.mark.parametrize("module", LOWER_LAYERS)
def test_module_does_not_import_the_ledger(module: str) -> None:
    direct = sorted(m for m in _imports(module, top_level_only=False) if _is_ledger(m))
    assert not direct, f"{module} imports {direct}: take names from otel_llm_receiver.names instead"
    loaded = sorted(m for m in _closure(module) if _is_ledger(m))
    assert not loaded, f"importing {module} loads {loaded}"


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md is the map a newcomer reads first: a module it does not name is one they cannot find."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text("utf-8")
    modules = [p for p in (*PACKAGE.glob("*.py"), *(PACKAGE / "ledger").glob("*.py"))
               if p.name not in ("__init__.py", "__main__.py")]
    missing = sorted(str(p.relative_to(PACKAGE)) for p in modules
                     if f"`{p.relative_to(PACKAGE)}`" not in page and f"`{p.name}`" not in page)
    assert not missing, missing
