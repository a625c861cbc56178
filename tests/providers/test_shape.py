"""The shared response-shape readers (``providers/shape.py``) and the rules they exist for (issue 19.4).

Every helper rejects a value that does not fit with one ``ResponseShapeError`` whose message starts with the
JSON path it was given, so that a provider's one log line names the field. Two source checks keep the providers
on them: no provider raises a bare ``ValueError`` for a bad response, and no module borrows another's private name.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.errors import ReceiverError, ResponseShapeError
from otel_llm_receiver.model import MAX_AMOUNT, MAX_COUNT
from otel_llm_receiver.providers import shape

PROVIDERS = Path(__file__).resolve().parents[2] / "otel_llm_receiver" / "providers"

#: The only ``raise ValueError`` left under providers/: each parses configuration, not a response, and its
#: caller turns it into a config problem (or an auth error for a credentials file) naming the key.
CONFIG_VALUE_ERRORS = {
    ("azure_openai/discovery.py", "parse_account_id"),
    ("vertex_ai/billing.py", "parse"),
    ("vertex_ai/monitoring.py", "plaintext_target"),
    ("vertex_ai/monitoring.py", "_credentials_of_type"),
}


def test_the_error_is_in_the_tree_and_still_a_value_error() -> None:
    assert issubclass(ResponseShapeError, ReceiverError) and issubclass(ResponseShapeError, ValueError)


BAD: list[tuple[str, Callable[[Any, str], Any], Any, str]] = [
    ("object", shape.as_object, [1], "expected an object, got list [1]"),
    ("object-null", shape.as_object, None, "expected an object, got null"),
    ("list", shape.as_list, {"a": 1}, "expected an array"),
    ("count-str", shape.count, "5", "expected an integer, got str '5'"),
    ("count-bool", shape.count, True, "expected an integer, got bool"),
    ("count-float", shape.count, 1.0, "expected an integer, got float"),
    ("count-negative", shape.count, -1, "expected a count >= 0, got -1"),
    ("count-huge", shape.count, MAX_COUNT + 1, "implausible count"),
    ("measured-nan", shape.measured_count, float("nan"), "is not a count"),
    ("measured-negative", shape.measured_count, -0.5, "is not a count"),
    ("measured-str", shape.measured_count, "3", "is not a count"),
    ("measured-huge", shape.measured_count, 2.0**60, "implausible count"),
    ("integer", shape.integer, "1700000000", "expected an integer"),
    ("text", shape.text, 7, "expected a string, got int 7"),
    ("optional-text", shape.optional_text, 7, "expected a string or null"),
    ("optional-flag", shape.optional_flag, "false", "expected a boolean or null"),
    ("decimal-word", shape.decimal, "abc", "expected a number, got str 'abc'"),
    ("decimal-null", shape.decimal, None, "expected a number, got null"),
    ("decimal-bool", shape.decimal, True, "expected a number"),
    ("decimal-nan", shape.decimal, "NaN", "expected a finite number"),
    ("decimal-huge", shape.decimal, str(MAX_AMOUNT + 1), "implausible amount"),
    ("time-number", shape.timestamp, 1700000000, "expected an ISO 8601 time"),
    ("time-word", shape.timestamp, "yesterday", "is not an ISO 8601 time"),
]


@pytest.mark.parametrize(("reader", "value", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_every_reader_names_the_path_first(reader: Callable[[Any, str], Any], value: Any, says: str) -> None:
    with pytest.raises(ResponseShapeError) as info:
        reader(value, "data[3].results[1].x")
    assert str(info.value).startswith("data[3].results[1].x: ") and says in str(info.value)


def test_readers_return_the_value_when_it_fits() -> None:
    assert shape.as_object({"a": 1}, "p") == {"a": 1} and shape.as_list([1], "p") == [1]
    assert shape.count(0, "p") == 0 and shape.count(MAX_COUNT, "p") == MAX_COUNT
    assert shape.measured_count(12.0, "p") == 12 and shape.measured_count(7, "p") == 7
    assert shape.integer(-5, "p") == -5 and shape.text("", "p") == ""
    assert shape.optional_text(None, "p") is None and shape.optional_text("m", "p", max_len=1) == "m"
    assert shape.optional_flag(None, "p") is None and shape.optional_flag(False, "p") is False
    assert shape.decimal(" 12.50 ", "p") == Decimal("12.50") and shape.decimal(0.1, "p") == Decimal("0.1")
    assert shape.decimal(str(MAX_AMOUNT * 2), "p", bound=None) == MAX_AMOUNT * 2
    assert shape.timestamp("2025-08-01T00:00:00Z", "p") == 1754006400
    assert shape.timestamp("2025-08-01T00:00:00", "p") == 1754006400  # no offset: UTC
    assert shape.timestamp("2025-08-01T02:00:00+02:00", "p", offset_required=True) == 1754006400


def test_bounds_of_text_and_required_offsets_are_shape_errors_too() -> None:
    with pytest.raises(ResponseShapeError, match=r"^p: expected a string or null"):
        shape.optional_text("xx", "p", max_len=1)
    with pytest.raises(ResponseShapeError, match=r"^p: .* has no UTC offset"):
        shape.timestamp("2025-08-01T00:00:00", "p", offset_required=True)


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(PROVIDERS).as_posix(), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(PROVIDERS.rglob("*.py"))]


def _value_error_raises(tree: ast.Module) -> list[str]:
    """The name of the function around each ``raise ValueError`` (or ``raise ValueError(...)``) in ``tree``."""
    found: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id == "ValueError":
                found.append(function)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_no_provider_raises_a_bare_value_error_for_a_response() -> None:
    raised = {(name, function) for name, tree in _modules() for function in _value_error_raises(tree)}
    # exact both ways: a new one is refused, and an entry no longer needed is removed from the allowance
    assert raised == CONFIG_VALUE_ERRORS


def test_no_provider_module_uses_another_modules_private_name() -> None:
    borrowed = []
    for name, tree in _modules():
        modules: set[str] = set()  # names bound to modules by ``import x`` / ``from pkg import module``
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        borrowed.append(f"{name}: from {'.' * node.level}{node.module or ''} import {alias.name}")
                    if node.module is None:  # ``from .. import shape``
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules.update((a.asname or a.name).split(".")[0] for a in node.names)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                borrowed.append(f"{name}: {node.value.id}.{node.attr}")
    assert borrowed == []
