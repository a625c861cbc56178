"""Typed reads of a provider's decoded answer that reject a value not fitting its documented shape.

A response that does not match its spec is rejected whole (DESIGN.md, the provider contract). Every provider
reads its answers through these few helpers, so a bad field fails the same way everywhere: one
``ResponseShapeError`` whose message starts with the field's JSON path (``data[3].results[1].input_tokens``),
which the provider turns into one ``bad_response`` for the poll. Nothing is coerced silently: a count that
arrives as a string is wrong; a money amount that arrives as a numeric string is a documented quirk and accepted.
Counts and amounts are bounded by the ledger's limits (``model.MAX_COUNT``, ``model.MAX_AMOUNT``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ..errors import ResponseShapeError
from ..model import MAX_AMOUNT, MAX_COUNT

_EXCERPT = 40


def describe(value: Any) -> str:
    """A short description of a wrong value for an error message (its type and the start of its repr)."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:_EXCERPT]}{'...' if len(text) > _EXCERPT else ''}"


def as_object(value: Any, path: str) -> Mapping[str, Any]:
    """A JSON object."""
    if not isinstance(value, Mapping):
        raise ResponseShapeError(f"{path}: expected an object, got {describe(value)}")
    return value


def as_list(value: Any, path: str) -> list[Any]:
    """A JSON array."""
    if not isinstance(value, list):
        raise ResponseShapeError(f"{path}: expected an array, got {describe(value)}")
    return value


def count(value: Any, path: str) -> int:
    """A count of one bucket row: an integer (not a bool, not a float) from 0 to ``MAX_COUNT``."""
    if type(value) is not int:
        raise ResponseShapeError(f"{path}: expected an integer, got {describe(value)}")
    if value < 0:
        raise ResponseShapeError(f"{path}: expected a count >= 0, got {value}")
    if value > MAX_COUNT:
        raise ResponseShapeError(f"{path}: implausible count {value} (more than 2^53 - 1 in one bucket)")
    return value


def measured_count(value: Any, path: str) -> int:
    """A count a metrics API reports as a number (Azure Monitor's ``total``, CloudWatch's ``Sum``): finite, from
    0 to ``MAX_COUNT``, rounded to the nearest integer (the APIs send whole counts as ``12.0``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ResponseShapeError(f"{path}: {value!r} is not a count")
    if value > MAX_COUNT:
        raise ResponseShapeError(f"{path}: implausible count {value!r} (more than 2^53 - 1 in one bucket)")
    return round(value)


def integer(value: Any, path: str) -> int:
    """An integer of any sign (Unix timestamps)."""
    if type(value) is not int:
        raise ResponseShapeError(f"{path}: expected an integer, got {describe(value)}")
    return value


def text(value: Any, path: str) -> str:
    """A required string."""
    if not isinstance(value, str):
        raise ResponseShapeError(f"{path}: expected a string, got {describe(value)}")
    return value


def optional_text(value: Any, path: str, *, max_len: int | None = None) -> str | None:
    """A string that may be null or absent (a group field when the report is not grouped by it); ``max_len``
    bounds what may become an attribute value."""
    if value is None:
        return None
    if not isinstance(value, str) or (max_len is not None and len(value) > max_len):
        raise ResponseShapeError(f"{path}: expected a string or null, got {describe(value)}")
    return value


def optional_flag(value: Any, path: str) -> bool | None:
    """A boolean that may be null or absent."""
    if value is None or isinstance(value, bool):
        return value
    raise ResponseShapeError(f"{path}: expected a boolean or null, got {describe(value)}")


def decimal(value: Any, path: str, *, bound: Decimal | None = MAX_AMOUNT) -> Decimal:
    """An exact, finite decimal from a JSON number (decoded as ``Decimal``, ``int`` or ``float``) or a numeric
    string, never read through a binary float; its magnitude at most ``bound`` (None: unbounded, for quantities).
    """
    if isinstance(value, bool) or value is None:
        raise ResponseShapeError(f"{path}: expected a number, got {describe(value)}")
    raw = value
    if isinstance(value, float):  # only when the body was decoded without decimals: still exact via repr
        value = repr(value)
    if isinstance(value, int | Decimal | str):
        try:
            result = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise ResponseShapeError(f"{path}: expected a number, got {describe(raw)}") from None
        if result.is_finite():
            if bound is not None and abs(result) > bound:
                raise ResponseShapeError(f"{path}: implausible amount {describe(raw)} (bound {bound})")
            return result
    raise ResponseShapeError(f"{path}: expected a finite number, got {describe(raw)}")


def timestamp(value: Any, path: str, *, offset_required: bool = False) -> int:
    """An ISO 8601 / RFC 3339 time as Unix seconds (floored). Without a UTC offset it is read as UTC, unless
    ``offset_required`` (an API documented to always send one: its absence means a malformed answer)."""
    if not isinstance(value, str):
        raise ResponseShapeError(f"{path}: expected an ISO 8601 time, got {describe(value)}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ResponseShapeError(f"{path}: {describe(value)} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        if offset_required:
            raise ResponseShapeError(f"{path}: {describe(value)} has no UTC offset")
        parsed = parsed.replace(tzinfo=UTC)
    return math.floor(parsed.timestamp())


__all__ = [
    "ResponseShapeError", "as_list", "as_object", "count", "decimal", "describe", "integer", "measured_count",
    "optional_flag", "optional_text", "text", "timestamp",
]
