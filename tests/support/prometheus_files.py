"""Where our Prometheus files live and what they hold: rules, alerts, promtool unit tests, runbooks.

Shared by the rule tests and the real-Prometheus dashboard test, so that a new rule file, alert or test file
(issue 7's budget and anomaly rules, say) is picked up by every check by adding the file alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "examples" / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "recording-rules.yaml", PROMETHEUS_DIR / "alerts.yaml")
RULE_TEST_DIR = PROMETHEUS_DIR / "tests"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

INSTALL_HINT = (
    "is not installed: it comes with Debian's `prometheus` package (`apt-get install prometheus`); "
    ".ci/run installs it"
)


@dataclass(frozen=True)
class Rule:
    file: Path
    group: str
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.raw.get("record") or self.raw.get("alert"))

    @property
    def expr(self) -> str:
        return str(self.raw["expr"])

    @property
    def is_alert(self) -> bool:
        return "alert" in self.raw


def load_rules(files: tuple[Path, ...] = RULE_FILES) -> list[Rule]:
    rules: list[Rule] = []
    for path in files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["groups"]:
            rules.extend(Rule(path, group["name"], r) for r in group["rules"])
    return rules


def rule_test_files() -> list[Path]:
    return sorted(RULE_TEST_DIR.glob("*.test.yaml"))


def tool(name: str) -> str:
    """The path of a Prometheus binary; fails the test (never skips it) when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} {INSTALL_HINT}")
    return path
