"""Durations as the Collector writes them: ``500ms``, ``30s``, ``5m``, ``1h``, ``7d``, ``1h30m``.

The grammar is Go's ``time.ParseDuration`` (a sequence of decimal numbers, each with an optional fraction and a
unit, such as ``1.5h`` or ``2h45m``) plus a ``d`` unit for days, without a sign: negative durations are refused.
Units: ``ns``, ``us`` (also ``µs``), ``ms``, ``s``, ``m``, ``h``, ``d``. A number without a unit is refused,
except zero, because a bare ``60`` could mean seconds, minutes or (in the Collector) nanoseconds.

Values are float seconds. Parsing is exact to the nanosecond: the components are added as fractions and
rounded once, so ``format_duration(parse_duration(s))`` is the canonical spelling of ``s``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from fractions import Fraction

__all__ = ["DURATION_HINT", "format_duration", "parse_duration", "parse_moment", "parse_window"]

#: Appended to every "not a duration" message.
DURATION_HINT = "(use e.g. 500ms, 30s, 5m, 1h, 7d)"

_NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN, as Go accepts
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3_600 * 1_000_000_000,
    "d": 86_400 * 1_000_000_000,
}
_NS_PER_SECOND = 1_000_000_000

# Longest units first in the alternation so that "ms" is not read as "m" followed by garbage.
_UNIT_PATTERN = "ns|us|\u00b5s|\u03bcs|ms|s|m|h|d"
_COMPONENT = re.compile(rf"(\d+(?:\.\d*)?|\.\d+)({_UNIT_PATTERN})")
_WHOLE = re.compile(rf"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:{_UNIT_PATTERN}))+")
_BARE_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

# Units used when formatting, largest first.
_FORMAT_UNITS: tuple[tuple[str, int], ...] = (
    ("d", _NS_PER_UNIT["d"]),
    ("h", _NS_PER_UNIT["h"]),
    ("m", _NS_PER_UNIT["m"]),
    ("s", _NS_PER_UNIT["s"]),
    ("ms", _NS_PER_UNIT["ms"]),
    ("us", _NS_PER_UNIT["us"]),
    ("ns", _NS_PER_UNIT["ns"]),
)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def parse_duration(text: str | int | float) -> float:
    """Parse a Collector-style duration into seconds.

    Accepts strings such as ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"168h"`` and combinations
    such as ``"1h30m"`` or ``"1.5h"``; and zero, as ``"0"`` or ``0``. Raises ``ValueError`` with a message that
    quotes the text and shows valid examples for anything else, including bare non-zero numbers (which need a
    unit) and negative durations.
    """
    if isinstance(text, bool):
        raise ValueError(f"{str(text).lower()} is not a duration {DURATION_HINT}")
    if isinstance(text, int | float):
        if isinstance(text, float) and not math.isfinite(text):
            raise ValueError(f"{text} is not a duration {DURATION_HINT}")
        if text == 0:
            return 0.0
        if text < 0:
            raise ValueError(f"{text} is not a duration: durations must not be negative")
        raise _no_unit_error(str(text))
    if not isinstance(text, str):
        raise ValueError(f"a {type(text).__name__} is not a duration {DURATION_HINT}")

    stripped = text.strip()
    if stripped in ("0", "0.0", "+0", "-0"):
        return 0.0
    if stripped.startswith("-") and _WHOLE.fullmatch(stripped[1:]):
        raise ValueError(f"{_quoted(text)} is not a duration: durations must not be negative")
    if stripped.startswith("+") and _WHOLE.fullmatch(stripped[1:]):
        stripped = stripped[1:]
    if _BARE_NUMBER.fullmatch(stripped):
        raise _no_unit_error(_quoted(text), stripped)
    if not _WHOLE.fullmatch(stripped):
        raise ValueError(f"{_quoted(text)} is not a duration {DURATION_HINT}")

    total = Fraction(0)
    for number, unit in _COMPONENT.findall(stripped):
        total += Fraction(number) * _NS_PER_UNIT[unit]
    return float(Fraction(round(total), _NS_PER_SECOND))


def _no_unit_error(shown: str, number: str | None = None) -> ValueError:
    example = (number if number is not None else shown).lstrip("+")
    if re.fullmatch(r"\d+(?:\.\d+)?", example):
        return ValueError(f"{shown} is not a duration: it needs a unit, e.g. {example}s or {example}m")
    return ValueError(f"{shown} is not a duration: it needs a unit {DURATION_HINT}")


def format_duration(seconds: float) -> str:
    """The canonical spelling of a duration: whole units, largest first, zero parts left out.

    ``90`` -> ``"1m30s"``, ``604800`` -> ``"7d"``, ``0.5`` -> ``"500ms"``, ``0`` -> ``"0s"``. Exact to the
    nanosecond (finer parts are rounded), and ``parse_duration`` reads it back to the same value.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"format_duration() needs a number of seconds, not {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} seconds as a duration")
    remaining = round(Fraction(seconds) * _NS_PER_SECOND)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_moment(text: str) -> int:
    """A point in time as Unix seconds: Unix seconds, or an ISO 8601 date or date-time (UTC unless it says)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def parse_window(
    *, since: str, start: str | None = None, end: str | None = None, now: str | None = None, clock: float
) -> tuple[int, int, int]:
    """``(now, start, end)`` of a ``--now`` / ``--since`` / ``--from`` / ``--to`` command line, ``[start, end)``
    the window (ValueError when a value is not a time or the window is empty)."""
    at = parse_moment(now) if now else int(clock)
    stop = parse_moment(end) if end else at
    first = parse_moment(start) if start else stop - int(parse_duration(since))
    if stop <= first:
        raise ValueError("--to must be after --from")
    return at, first, stop
