"""Price entries: the schema of ``pricing.overrides``, ``pricing.catalog_file`` and ``default_prices.yaml``.

Parsing an entry is configuration work and must not pull in the price book or the ledger: ``signals_config``
validates the ``pricing:`` section with this module alone, and ``pricing.PriceBook`` resolves prices from the
entries it returns (docs/pricing.md describes the fields).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from typing import Any

import yaml

from .model import TOKEN_TYPES

__all__ = [
    "PER_MILLION_UNITS",
    "PICOS_PER_USD",
    "REQUEST_UNIT",
    "TOKENS_PER_MTOK",
    "PriceEntry",
    "glob_match",
    "load_catalog_file",
    "load_default_entries",
    "parse_price_entries",
]

PICOS_PER_USD = 10**12
TOKENS_PER_MTOK = 1_000_000
REQUEST_UNIT = "request"
#: Units priced per million (tokens); every other unit (requests, a metric name for other measures) per one.
PER_MILLION_UNITS = frozenset(TOKEN_TYPES)
_ENTRY_KEYS = ("provider", "model", "effective_from", "when", "prices", "multiplier", "applies_to", "source")
_LAYERS = ("override", "catalog_file", "default")


# ------------------------------------------------------------------------------------------------ entries
@dataclass(frozen=True)
class PriceEntry:
    """One catalog or override entry (see the module docstring and docs/pricing.md)."""

    provider: str = "*"
    model: str = "*"
    effective_from: int = 0  # Unix seconds (UTC midnight of the configured date)
    when: Mapping[str, str] = field(default_factory=dict)
    prices: Mapping[str, Decimal] = field(default_factory=dict)  # unit -> USD per MTok (tokens) or per unit
    multiplier: Decimal | None = None
    applies_to: tuple[str, ...] = ()  # units the multiplier changes (empty: all)
    source: str = ""
    layer: str = "override"  # override, catalog_file or default

    def matches(self, provider: str, model: str, attrs: Mapping[str, str]) -> bool:
        return (
            glob_match(self.provider, provider)
            and glob_match(self.model, model)
            and all(attrs.get(k) == v for k, v in self.when.items())
        )

    @property
    def rank(self) -> tuple[int, int, int, int]:
        """Sort key, most specific first: layer, more ``when`` keys, exact names before globs, latest date."""
        globs = _is_glob(self.provider) + _is_glob(self.model)
        return (_LAYERS.index(self.layer), -len(self.when), globs, -self.effective_from)


def _is_glob(pattern: str) -> int:
    return int(any(c in pattern for c in "*?["))


def glob_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern`` (equal, or an fnmatch glob when the pattern has one)."""
    return pattern == value or (bool(_is_glob(pattern)) and fnmatch.fnmatchcase(value, pattern))


def parse_price_entries(raw: Any, path: str, problems: list[str], *, layer: str) -> list[PriceEntry]:
    """Validate a list of entries, appending one ``path: message`` line per problem (nothing is guessed)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{path}: must be a list of price entries, got {type(raw).__name__}")
        return []
    entries = []
    for index, item in enumerate(raw):
        entry = _parse_entry(item, f"{path}[{index}]", problems, layer)
        if entry is not None:
            entries.append(entry)
    return entries


def _parse_entry(item: Any, path: str, problems: list[str], layer: str) -> PriceEntry | None:
    if not isinstance(item, dict):
        problems.append(f"{path}: must be a mapping, got {type(item).__name__}")
        return None
    before = len(problems)
    values: dict[str, Any] = {"layer": layer}
    for key, value in item.items():
        key_path = f"{path}.{key}"
        if key not in _ENTRY_KEYS:
            problems.append(f"{key_path}: unknown key (valid: {', '.join(_ENTRY_KEYS)})")
        elif key in ("provider", "model", "source"):
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{key_path}: must be a non-empty string")
            else:
                values[key] = value.strip()
        elif key == "effective_from":
            when = _parse_date(value)
            if when is None:
                problems.append(f"{key_path}: must be a date such as 2026-01-01 (UTC), got {value!r}")
            else:
                values[key] = when
        elif key == "when":
            if not isinstance(value, dict) or not value:
                problems.append(f"{key_path}: must be a non-empty mapping of attribute to value")
            else:
                values[key] = {str(k): _attr_text(v) for k, v in value.items()}
        elif key == "prices":
            values[key] = _parse_prices(value, key_path, problems)
        elif key == "multiplier":
            number = _decimal(value)
            if number is None or number < 0:
                problems.append(f"{key_path}: must be a non-negative number, got {value!r}")
            else:
                values[key] = number
        elif key == "applies_to":
            units = value if isinstance(value, list) else None
            if not units or not all(isinstance(u, str) and u for u in units):
                problems.append(f"{key_path}: must be a non-empty list of units (input, cache_read, ...)")
            else:
                values[key] = tuple(units)
    if "prices" not in values and "multiplier" not in values and len(problems) == before:
        problems.append(f"{path}: needs prices, a multiplier, or both")
    if "applies_to" in values and "multiplier" not in values:
        problems.append(f"{path}.applies_to: only applies with a multiplier")
    if len(problems) > before:
        return None
    return PriceEntry(**values)


def _parse_prices(value: Any, path: str, problems: list[str]) -> dict[str, Decimal]:
    if not isinstance(value, dict) or not value:
        problems.append(f"{path}: must be a mapping of unit to USD price (input, cache_read, cache_write, output, "
                        "request, or a metric name)")
        return {}
    out: dict[str, Decimal] = {}
    for unit, amount in value.items():
        number = _decimal(amount)
        if number is None or number < 0:
            problems.append(f"{path}.{unit}: must be a non-negative number (USD), got {amount!r}")
            continue
        per = TOKENS_PER_MTOK if unit in PER_MILLION_UNITS else 1
        if (number * PICOS_PER_USD / per) != (number * PICOS_PER_USD / per).to_integral_value():
            what = "per million tokens: at most 6 decimals" if per > 1 else "per unit: at most 12 decimals"
            problems.append(f"{path}.{unit}: {amount} has more precision than the ledger keeps ({what})")
            continue
        out[str(unit)] = number
    return out


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        number = Decimal(str(value).strip())  # str(): YAML 0.075 is the float nearest 0.075, its repr is exact
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _attr_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_date(value: Any) -> int | None:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(moment.timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp())
    if isinstance(value, str):
        try:
            return _parse_date(dt.datetime.fromisoformat(value.strip()))
        except ValueError:
            return None
    return None


def load_default_entries() -> list[PriceEntry]:
    """The packaged ``default_prices.yaml``: rules genai-prices cannot express, each with its source."""
    text = files("otel_llm_receiver").joinpath("default_prices.yaml").read_text("utf-8")
    problems: list[str] = []
    entries = parse_price_entries(yaml.safe_load(text), "default_prices.yaml", problems, layer="default")
    if problems:  # a packaging bug, not a user error
        raise ValueError("; ".join(problems))
    return entries


def load_catalog_file(path: str, problems: list[str], *, key_path: str) -> list[PriceEntry]:
    """A user's catalog file: a YAML list of entries (the overrides' schema)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        problems.append(f"{key_path}: cannot read {path}: {exc.strerror or exc}")
        return []
    except yaml.YAMLError as exc:
        problems.append(f"{key_path}: {path} is not valid YAML: {exc}")
        return []
    return parse_price_entries(raw, f"{key_path} ({path})", problems, layer="catalog_file")
