"""Typed reads of JSON fields that name the offending field when the API's answer does not fit its spec.

A response that does not match the documented shape is rejected whole (DESIGN.md, the provider contract):
every reader here raises ``ShapeError`` with the path of the field (``data[3].results[1].input_tokens``) so
that the poll's one log line says exactly what was wrong. Nothing is coerced silently: a count that arrives
as a string is wrong, a money amount that arrives as a string is a documented quirk and accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from ...model import MAX_AMOUNT, MAX_COUNT


class ShapeError(ValueError):
    """A JSON value is not what the API's spec says it is; the message starts with the field's path."""


def describe(value: Any) -> str:
    """A short description of a wrong value for an error message (never long, never a whole body)."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ShapeError(f"{path}: expected an object, got {describe(value)}")
    return value


def count(row: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> int | None:
    """A non-negative integer field; None when absent or null (an error when ``required``)."""
    value = row.get(key)
    if value is None:
        if required:
            raise ShapeError(f"{path}.{key}: required integer is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(f"{path}.{key}: expected an integer, got {describe(value)}")
    if value < 0:
        raise ShapeError(f"{path}.{key}: expected a count >= 0, got {value}")
    if value > MAX_COUNT:
        raise ShapeError(f"{path}.{key}: implausible count {value} (more than 2^53 - 1 in one bucket)")
    return value


def text(row: Mapping[str, Any], key: str, path: str) -> str | None:
    """A string field that may be null or absent (group fields are null when not grouped by)."""
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ShapeError(f"{path}.{key}: expected a string or null, got {describe(value)}")


def flag(row: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise ShapeError(f"{path}.{key}: expected a boolean or null, got {describe(value)}")


def decimal(value: Any, path: str) -> Decimal:
    """An exact decimal from a JSON number (decoded as ``Decimal`` or ``int``) or a numeric string.

    OpenAI documents ``amount.value`` as a number, and it has been seen live as a string (``"12.50"``,
    ``"0.1739150000000000000000000000"``): both are read exactly, never through a binary float.
    """
    if isinstance(value, bool) or value is None:
        raise ShapeError(f"{path}: expected a number, got {describe(value)}")
    if isinstance(value, float):  # only when the body was decoded without decimals: still exact via repr
        value = repr(value)
    if isinstance(value, int | Decimal | str):
        try:
            result = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise ShapeError(f"{path}: expected a number, got {describe(value)}") from None
        if result.is_finite():
            if abs(result) > MAX_AMOUNT:
                raise ShapeError(f"{path}: implausible amount {describe(value)} (bound {MAX_AMOUNT})")
            return result
    raise ShapeError(f"{path}: expected a finite number, got {describe(value)}")


def integer(row: Mapping[str, Any], key: str, path: str) -> int:
    """A required integer that may be any sign (timestamps)."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(f"{path}.{key}: expected an integer, got {describe(value)}")
    return value
