"""OpenAI's row-and-key reads over the shared shape helpers (``providers/shape.py``).

The usage and cost endpoints read most fields as ``row[key]`` with the row's path, and many of them may be null
or absent; these adapters say that once. Every failure is the shared ``ResponseShapeError`` with the path of the
field (``data[3].results[1].input_tokens``), so that the poll's one log line says exactly what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ResponseShapeError
from ..shape import as_object as mapping
from ..shape import count as _count_value
from ..shape import decimal, describe, optional_flag, optional_text
from ..shape import integer as _integer_value


def count(row: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> int | None:
    """A non-negative integer field; None when absent or null (an error when ``required``)."""
    value = row.get(key)
    if value is None:
        if required:
            raise ResponseShapeError(f"{path}.{key}: required integer is missing")
        return None
    return _count_value(value, f"{path}.{key}")


def text(row: Mapping[str, Any], key: str, path: str) -> str | None:
    """A string field that may be null or absent (group fields are null when not grouped by)."""
    return optional_text(row.get(key), f"{path}.{key}")


def flag(row: Mapping[str, Any], key: str, path: str) -> bool | None:
    return optional_flag(row.get(key), f"{path}.{key}")


def integer(row: Mapping[str, Any], key: str, path: str) -> int:
    """A required integer that may be any sign (timestamps)."""
    return _integer_value(row.get(key), f"{path}.{key}")


__all__ = ["count", "decimal", "describe", "flag", "integer", "mapping", "text"]
