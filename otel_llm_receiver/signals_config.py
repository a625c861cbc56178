"""The ``pricing``, ``budgets`` and ``attribution`` config sections: their frozen shapes and their validation.

Kept out of ``config.py`` (which only dispatches to ``parse_pricing`` / ``parse_budgets`` /
``parse_attribution``) so the money signals own their schema. Like the rest of the config, every problem is
reported at once with its key path, and unknown keys are errors.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from .price_entries import PriceEntry, load_catalog_file, parse_price_entries

if TYPE_CHECKING:
    from .config_parse import Parser

Period = Literal["day", "week", "month", "quarter"]
BudgetSource = Literal["reported", "estimated", "best"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "quarter")
BUDGET_SOURCES: tuple[BudgetSource, ...] = ("reported", "estimated", "best")

_PRICING_KEYS = ("genai_prices", "catalog_file", "overrides")
_BUDGET_KEYS = ("name", "amount", "period", "timezone", "source", "match")
_MATCH_KEYS = ("provider", "tenant", "tenancy", "model", "team", "labels")
_ATTRIBUTION_KEYS = ("rules",)
_RULE_KEYS = ("tenancy", "tenancy_regex", "model", "labels", "team", "cost_center")
_TEAM_VALUE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
UNATTRIBUTED = "unattributed"


@dataclass(frozen=True)
class PricingConfig:
    """``pricing:``: overrides first, then the catalog file's entries; genai-prices can be switched off."""

    genai_prices: bool = True
    catalog_file: str | None = None
    overrides: tuple[PriceEntry, ...] = ()
    catalog_entries: tuple[PriceEntry, ...] = ()

    @property
    def entries(self) -> tuple[PriceEntry, ...]:
        return (*self.overrides, *self.catalog_entries)


@dataclass(frozen=True)
class BudgetMatch:
    """Which spend a budget counts. Every field is optional; globs (``*``) are allowed in all strings."""

    provider: str | None = None
    tenant: str | None = None
    tenancy: str | None = None  # id or name
    model: str | None = None
    team: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetConfig:
    name: str
    amount: Decimal
    period: Period = "month"
    timezone: str = "UTC"
    source: BudgetSource = "best"
    match: BudgetMatch = field(default_factory=BudgetMatch)


@dataclass(frozen=True)
class AttributionRule:
    """First matching rule wins; every given condition must hold (tenancy id or name, regex, model glob, labels)."""

    team: str
    cost_center: str | None = None
    tenancy: str | None = None
    tenancy_regex: re.Pattern[str] | None = None
    model: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AttributionConfig:
    rules: tuple[AttributionRule, ...] = ()


def _unknown(key: str, valid: tuple[str, ...]) -> str:
    return f"unknown key (valid: {', '.join(valid)})"


def parse_pricing(p: Parser, raw: Any) -> PricingConfig:
    section = p.mapping(raw, "pricing") or {}
    genai, catalog_file = True, None
    overrides: list[PriceEntry] = []
    catalog: list[PriceEntry] = []
    for key, value in section.items():
        path = f"pricing.{key}"
        if key == "genai_prices":
            flag = p.boolean(value, path)
            if isinstance(flag, bool):
                genai = flag
        elif key == "catalog_file":
            full = p.file_path(value, path)
            if isinstance(full, str):
                catalog_file = full
                catalog = load_catalog_file(full, p.problems, key_path=path)
        elif key == "overrides":
            overrides = parse_price_entries(value, path, p.problems, layer="override")
        else:
            p.problem(path, _unknown(key, _PRICING_KEYS))
    return PricingConfig(genai, catalog_file, tuple(overrides), tuple(catalog))


def _string(p: Parser, value: Any, path: str) -> str | None:
    text = p.text(value, path, nonempty=True, coerce=True)
    return text if isinstance(text, str) else None


def _labels(p: Parser, value: Any, path: str) -> dict[str, str]:
    labels = p.string_map(value, path)
    return labels if isinstance(labels, dict) else {}


def parse_budgets(p: Parser, raw: Any) -> tuple[BudgetConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        p.problem("budgets", "must be a list of budgets (name, amount, period, ...)")
        return ()
    budgets: list[BudgetConfig] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        path = f"budgets[{index}]"
        section = p.mapping(item, path)
        if section is None:
            continue
        before = len(p.problems)
        values: dict[str, Any] = {}
        for key, value in section.items():
            key_path = f"{path}.{key}"
            if key == "name":
                values["name"] = _string(p, value, key_path)
            elif key == "amount":
                amount = None
                if isinstance(value, int | float | str) and not isinstance(value, bool):
                    try:
                        amount = Decimal(str(value))
                    except ArithmeticError:
                        amount = None
                if amount is None or not amount.is_finite() or amount <= 0:
                    p.problem(key_path, f"must be a positive amount in USD, got {value!r}")
                else:
                    values["amount"] = amount
            elif key == "period":
                values["period"] = p.text(value, key_path, choices=PERIODS)
            elif key == "source":
                values["source"] = p.text(value, key_path, choices=BUDGET_SOURCES)
            elif key == "timezone":
                zone = _string(p, value, key_path)
                if zone is not None:
                    try:
                        zoneinfo.ZoneInfo(zone)
                        values["timezone"] = zone
                    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                        p.problem(key_path, f"unknown time zone {zone!r} (use an IANA name such as Europe/Berlin)")
            elif key == "match":
                values["match"] = _budget_match(p, value, key_path)
            else:
                p.problem(key_path, _unknown(key, _BUDGET_KEYS))
        for required in ("name", "amount"):
            if required not in section:
                p.problem(f"{path}.{required}", "is required")
        name = values.get("name")
        if isinstance(name, str):
            if name in names:
                p.problem(f"{path}.name", f"budget {name!r} is defined twice")
            names.add(name)
        if len(p.problems) == before:
            budgets.append(BudgetConfig(**values))
    return tuple(budgets)


def _budget_match(p: Parser, raw: Any, path: str) -> BudgetMatch:
    section = p.mapping(raw, path) or {}
    values: dict[str, Any] = {}
    for key, value in section.items():
        key_path = f"{path}.{key}"
        if key == "labels":
            values["labels"] = _labels(p, value, key_path)
        elif key in _MATCH_KEYS:
            values[key] = _string(p, value, key_path)
        else:
            p.problem(key_path, _unknown(key, _MATCH_KEYS))
    return BudgetMatch(**values)


def parse_attribution(p: Parser, raw: Any) -> AttributionConfig:
    section = p.mapping(raw, "attribution") or {}
    rules: list[AttributionRule] = []
    for key, value in section.items():
        if key != "rules":
            p.problem(f"attribution.{key}", _unknown(key, _ATTRIBUTION_KEYS))
            continue
        if not isinstance(value, list):
            p.problem("attribution.rules", "must be a list of rules (tenancy / model / labels -> team)")
            continue
        for index, item in enumerate(value):
            rule = _rule(p, item, f"attribution.rules[{index}]")
            if rule is not None:
                rules.append(rule)
    return AttributionConfig(tuple(rules))


def _rule(p: Parser, raw: Any, path: str) -> AttributionRule | None:
    section = p.mapping(raw, path)
    if section is None:
        return None
    before = len(p.problems)
    values: dict[str, Any] = {}
    for key, value in section.items():
        key_path = f"{path}.{key}"
        if key == "labels":
            values["labels"] = _labels(p, value, key_path)
        elif key == "tenancy_regex":
            text = _string(p, value, key_path)
            if text is not None:
                try:
                    values["tenancy_regex"] = re.compile(text)
                except re.error as exc:
                    p.problem(key_path, f"not a valid regular expression: {exc}")
        elif key in ("team", "cost_center"):
            text = _string(p, value, key_path)
            if text is not None and not _TEAM_VALUE.fullmatch(text):
                p.problem(key_path, "must be 1-64 letters, digits or _ . : / - (it becomes a metric label)")
            elif text == UNATTRIBUTED:
                p.problem(key_path, f"{UNATTRIBUTED!r} is reserved for spend no rule matches")
            else:
                values[key] = text
        elif key in _RULE_KEYS:
            values[key] = _string(p, value, key_path)
        else:
            p.problem(key_path, _unknown(key, _RULE_KEYS))
    if "team" not in section:
        p.problem(f"{path}.team", "is required")
    if not any(k in section for k in ("tenancy", "tenancy_regex", "model", "labels")):
        p.problem(path, "needs at least one condition: tenancy, tenancy_regex, model or labels")
    if len(p.problems) > before:
        return None
    return AttributionRule(**values)
