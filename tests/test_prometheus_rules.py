"""The Prometheus recording rules and alerts, checked with the real ``promtool`` and against the catalog.

``promtool check rules`` proves both files load in Prometheus; ``promtool test rules`` runs the unit tests in
examples/prometheus/tests/, and the convention checked here makes those tests complete: every alert has a case
where it fires and a near-miss case where it stays silent. The remaining checks keep the rules honest with the
rest of the project: metric names exist in the catalog, every alert carries a severity, a summary that names
what is affected and a runbook section that exists.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.support.prometheus_files import RULE_FILES, RUNBOOKS, Rule, load_rules, rule_test_files, tool
from tests.support.prometheus_names import metric_names_in, unknown_metrics

RULES = load_rules()
ALERTS = [r for r in RULES if r.is_alert]
RECORDS = [r for r in RULES if not r.is_alert]
SEVERITIES = {"critical", "warning", "info"}
#: The documented placeholder (example.com is reserved for documentation) that users substitute with the URL of
#: their copy of the repository (examples/prometheus/README.md): every runbook_url is this + docs/runbooks.md#anchor.
RUNBOOK_HOST = "https://runbooks.example.com/otel-llm-receiver/"
RUNBOOK_BASE = RUNBOOK_HOST + "docs/runbooks.md#"
# Labels that name what an alert is about: a summary must show at least one of them.
SUBJECT_LABELS = ("llm_source", "gen_ai_provider_name", "gen_ai_request_model", "llm_team", "llm_budget_name",
                  "llm_tenancy_id")


def test_promtool_check_rules_accepts_both_files() -> None:
    proc = subprocess.run([tool("promtool"), "check", "rules", *map(str, RULE_FILES)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_FILES)


def test_promtool_unit_tests_pass() -> None:
    # One promtool per test file, run side by side (the usage-alert tests replay 28 hours of series).
    files = rule_test_files()
    assert len(files) >= 2
    procs = {p.name: subprocess.Popen([tool("promtool"), "test", "rules", p.name], cwd=p.parent,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in files}
    outputs = {name: proc.communicate(timeout=120)[0] for name, proc in procs.items()}
    failed = {name: out for name, out in outputs.items() if procs[name].returncode != 0 or "SUCCESS" not in out}
    assert failed == {}


def _alert_cases() -> dict[str, dict[str, int]]:
    """alertname -> {"fires": n, "silent": n} over every promtool test file."""
    cases: dict[str, dict[str, int]] = defaultdict(lambda: {"fires": 0, "silent": 0})
    for path in rule_test_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert sorted(Path(f).name for f in doc["rule_files"]) == sorted(p.name for p in RULE_FILES), path
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                cases[case["alertname"]]["fires" if case.get("exp_alerts") else "silent"] += 1
    return cases


@pytest.mark.parametrize("alert", [a.name for a in ALERTS])
def test_every_alert_has_a_firing_and_a_near_miss_case(alert: str) -> None:
    cases = _alert_cases().get(alert, {"fires": 0, "silent": 0})
    assert cases["fires"] >= 1, f"{alert}: no promtool test expects it to fire"
    assert cases["silent"] >= 1, f"{alert}: no promtool test expects it to stay silent on a near miss"


def test_unit_tests_name_only_alerts_that_exist() -> None:
    assert set(_alert_cases()) <= {a.name for a in ALERTS}


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_alert_has_severity_summary_naming_its_subject_and_runbook(alert: Rule) -> None:
    labels = alert.raw.get("labels", {})
    annotations = alert.raw.get("annotations", {})
    assert labels.get("severity") in SEVERITIES, alert.name
    assert {"summary", "description", "runbook_url"} <= set(annotations), alert.name
    grouped = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", alert.expr)
    subjects = {label.strip() for g in grouped for label in g.split(",")} & set(SUBJECT_LABELS)
    for label in subjects:  # whatever the alert is per (provider instance, provider, model), its summary says
        assert "$labels." + label in annotations["summary"], (alert.name, label)
    if not alert.expr.lstrip().startswith("absent("):  # only "no data at all" has nothing to name
        named = {label for label in SUBJECT_LABELS if "$labels." + label in annotations["summary"]}
        assert named, f"{alert.name}: the summary names none of {SUBJECT_LABELS}"
    anchor = alert.name.lower()
    assert annotations["runbook_url"] == RUNBOOK_BASE + anchor
    assert anchor in _runbook_sections(), f"docs/runbooks.md has no section `## {alert.name}`"


def test_runbook_urls_move_to_another_host_with_one_substitution() -> None:
    # The README's recipe: replace the placeholder host once; every runbook_url, and nothing else, changes.
    text = RULE_FILES[1].read_text(encoding="utf-8")
    mine = "https://github.com/acme/llm-ops/blob/main/"
    moved = yaml.safe_load(text.replace(RUNBOOK_HOST, mine))
    urls = [r["annotations"]["runbook_url"] for g in moved["groups"] for r in g["rules"] if "alert" in r]
    assert len(urls) == len(ALERTS)
    assert all(u.startswith(mine + "docs/runbooks.md#") for u in urls)
    elsewhere = [line for line in text.splitlines() if RUNBOOK_HOST in line
                 and not line.lstrip().startswith(("#", "runbook_url:"))]
    assert elsewhere == []  # nothing but runbook links (and comments) moves with them
    readme = (RULE_FILES[0].parent / "README.md").read_text(encoding="utf-8")
    assert RUNBOOK_HOST in readme and "sed" in readme


def _runbook_sections() -> dict[str, str]:
    text = RUNBOOKS.read_text(encoding="utf-8")
    parts = re.split(r"^## +(\S+)\s*$", text, flags=re.M)
    return {parts[i].lower(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_runbooks_have_one_complete_section_per_alert() -> None:
    sections = _runbook_sections()
    assert set(sections) == {a.name.lower() for a in ALERTS}
    for name, body in sections.items():
        for part in ("**Means.**", "**Check.**", "**Fix.**"):
            assert part in body, f"docs/runbooks.md ## {name}: missing {part}"


def test_rules_use_only_catalog_metrics_and_recorded_series() -> None:
    recorded = {r.name for r in RECORDS}
    assert unknown_metrics([r.expr for r in RULES], recorded) == set()


def test_recorded_series_are_defined_before_use_or_by_themselves() -> None:
    seen: set[str] = set()
    recorded = {r.name for r in RECORDS}
    for r in RECORDS:
        for used in metric_names_in(r.expr) & recorded:
            assert used in seen or used == r.name, f"{r.name} uses {used} before it is recorded"
        seen.add(r.name)


def test_recorded_names_follow_level_metric_operation() -> None:
    for r in RECORDS:
        assert re.fullmatch(r"llm:[a-z0-9_]+:[a-z0-9_]+", r.name), r.name
    assert len({r.name for r in RECORDS}) == len(RECORDS)


def test_unknown_metric_in_an_expression_is_reported_by_name() -> None:
    # The check above must be able to fail: a misspelt metric is caught and named.
    assert unknown_metrics(["rate(llm_usage_token_total[5m])"], set()) == {"llm_usage_token_total"}
