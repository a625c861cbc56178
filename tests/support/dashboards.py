"""The Grafana dashboards as data: every panel query and template-variable query, ready to run in PromQL.

Grafana expands ``$variables`` before a query reaches Prometheus; ``runnable`` does the same with the values a
user gets from "All" (``.*``) and typical interval values, so a test can send each query to a real Prometheus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.prometheus_files import ROOT

DASHBOARD_DIR = ROOT / "examples" / "grafana" / "dashboards"

#: What Grafana substitutes for its built-in variables, for a 7-day range at a 1-minute step.
BUILTINS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "7d", "${__range}": "7d"}


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # panel title or variable name
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in doc.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def panel_queries(path: Path) -> list[Query]:
    doc = load(path)
    return [Query(path.name, p["title"], t["expr"]) for p in panels(doc) for t in p.get("targets", [])]


def variable_queries(path: Path) -> list[Query]:
    """Each query variable's ``label_values(selector, label)`` as the equivalent PromQL query."""
    out = []
    for v in load(path)["templating"]["list"]:
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q, re.S)
        if not m:
            raise AssertionError(f"{path.name}: variable {v['name']}: only label_values(...) queries are supported")
        out.append(Query(path.name, f"variable {v['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
    return out


def runnable(expr: str, variables: list[str]) -> str:
    """The query as Grafana sends it with "All" selected for every variable."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", ".*").replace("$" + name, ".*")
    if "$" in expr:
        raise AssertionError(f"unexpanded variable in {expr!r}")
    return expr


def variable_names(path: Path) -> list[str]:
    return [v["name"] for v in load(path)["templating"]["list"]]
