"""Attribution: which team (and cost center) owns a series, from ``attribution.rules`` only.

Once ``attribution.rules`` is configured, every usage and cost series gains ``llm.team`` (``unattributed`` where
no rule matches) and, when the rule names one, ``llm.cost_center``; without rules no team label is added. Team values come only from the rules, never from the data, so cardinality is bounded
by the config. Rules are evaluated at export time, so a changed rule re-labels every series at the next export
without touching the ledger.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from .signals_config import UNATTRIBUTED, AttributionRule

__all__ = ["UNATTRIBUTED", "Attributor"]

TEAM = "llm.team"
COST_CENTER = "llm.cost_center"


class Attributor:
    """First matching rule wins; a rule's conditions all have to hold (see ``AttributionRule``)."""

    def __init__(self, rules: Sequence[AttributionRule]) -> None:
        self.rules = tuple(rules)
        self._label_keys = tuple(sorted({k for r in self.rules for k in r.labels}))
        self._cache: dict[tuple[object, ...], dict[str, str]] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rule_for(
        self, attrs: Mapping[str, str], tenancy_name: str | None = None, labels: Mapping[str, str] | None = None
    ) -> AttributionRule | None:
        tenancy = attrs.get("llm.tenancy.id")
        names = {n for n in (tenancy, tenancy_name or attrs.get("llm.tenancy.name")) if n}
        model = attrs.get("gen_ai.request.model")
        labels = labels or {}
        for rule in self.rules:
            if rule.tenancy is not None and rule.tenancy not in names:
                continue
            if rule.tenancy_regex is not None and not any(rule.tenancy_regex.fullmatch(n) for n in names):
                continue
            if rule.model is not None and (model is None or not fnmatch.fnmatchcase(model, rule.model)):
                continue
            if any(labels.get(k, attrs.get(k)) != v for k, v in rule.labels.items()):
                continue
            return rule
        return None

    def attributes(
        self, attrs: Mapping[str, str], tenancy_name: str | None = None, labels: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """``llm.team`` (and ``llm.cost_center``) for a series; cached per distinct input."""
        if not self.rules:  # attribution not configured: no team label at all (not "unattributed" everywhere)
            return {}
        labels = labels or {}
        key = (attrs.get("llm.tenancy.id"), tenancy_name or attrs.get("llm.tenancy.name"),
               attrs.get("gen_ai.request.model"), tuple(labels.get(k, attrs.get(k)) for k in self._label_keys))
        found = self._cache.get(key)
        if found is None:
            rule = self.rule_for(attrs, tenancy_name, labels)
            found = {TEAM: rule.team if rule else UNATTRIBUTED}
            if rule is not None and rule.cost_center:
                found[COST_CENTER] = rule.cost_center
            if len(self._cache) < 100_000:
                self._cache[key] = found
        return found

    def team(self, attrs: Mapping[str, str], tenancy_name: str | None = None,
             labels: Mapping[str, str] | None = None) -> str:
        return self.attributes(attrs, tenancy_name, labels).get(TEAM, UNATTRIBUTED)
