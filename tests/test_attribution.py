"""Attribution rules (llm.team, llm.cost_center) and coverage."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.attribution import Attributor
from otel_llm_receiver.builder import MetricsBuilder, make_resource
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import ConfigError
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.signals import Signals
from tests.support.otlp_sink import merge_requests

H = 3600
NOW_NS = 1_900_000_000 * 10**9

RULES = [
    {"tenancy": "proj-a", "model": "gpt-*", "team": "search", "cost_center": "CC-1"},
    {"tenancy": "Project B", "team": "support"},  # by display name
    {"tenancy_regex": "lab-.*", "team": "research"},
    {"labels": {"env": "staging"}, "team": "platform"},
]


def attributor() -> Attributor:
    return Attributor(parse_config({"providers": {"demo": {}}, "attribution": {"rules": RULES}}).attribution.rules)


@pytest.mark.parametrize(("attrs", "name", "labels", "expected"), [
    ({"llm.tenancy.id": "proj-a", "gen_ai.request.model": "gpt-4o"}, None, None,
     {"llm.team": "search", "llm.cost_center": "CC-1"}),
    ({"llm.tenancy.id": "proj-a", "gen_ai.request.model": "claude-opus-4"}, None, None,
     {"llm.team": "unattributed"}),  # the model condition fails: the next rules do not match either
    ({"llm.tenancy.id": "proj_b123", "gen_ai.request.model": "x"}, "Project B", None, {"llm.team": "support"}),
    ({"llm.tenancy.id": "lab-7"}, None, None, {"llm.team": "research"}),
    ({"llm.tenancy.id": "xlab-7"}, None, None, {"llm.team": "unattributed"}),  # regexes match the whole id
    ({"llm.tenancy.id": "lab-7"}, None, {"env": "staging"}, {"llm.team": "research"}),  # first match wins
    ({"llm.tenancy.id": "other"}, None, {"env": "staging"}, {"llm.team": "platform"}),
])
def test_rules(attrs: dict[str, str], name: str | None, labels: dict[str, str] | None,
               expected: dict[str, str]) -> None:
    assert attributor().attributes(attrs, name, labels) == expected


def test_attribution_config_problems() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"providers": {"demo": {}}, "attribution": {"rules": [
            {"tenancy_regex": "([", "team": "a"},
            {"model": "x", "team": "has space"},
            {"team": "lonely"},
            {"tenancy": "p", "team": "t", "owner": "me"},
        ], "default": "x"}})
    problems = err.value.problems
    assert problems[0].startswith("attribution.rules[0].tenancy_regex: not a valid regular expression")
    assert problems[1:] == [
        "attribution.rules[1].team: must be 1-64 letters, digits or _ . : / - (it becomes a metric label)",
        "attribution.rules[2]: needs at least one condition: tenancy, tenancy_regex, model or labels",
        "attribution.rules[3].owner: unknown key (valid: tenancy, tenancy_regex, model, labels, team, cost_center)",
        "attribution.default: unknown key (valid: rules)",
    ]


def test_usage_and_cost_series_carry_the_team_and_coverage_is_the_attributed_share(tmp_path: Path) -> None:
    hour = 1_900_000_000 // H * H - 5 * H
    config = parse_config({"providers": {"demo": {}}, "attribution": {"rules": RULES}, "pricing": {
        "genai_prices": False, "overrides": [{"provider": "acme", "model": "*", "prices": {"input": "1"}}]}})
    book = PriceBook(config.pricing.entries, use_genai_prices=False)
    usage = [
        UsageRecord(provider="acme", model="gpt-4o", operation="chat", tenancy_id=tenancy, bucket_start=hour,
                    bucket_width=H, tokens={"input": n}, requests=1)
        for tenancy, n in (("proj-a", 3_000_000), ("proj-z", 1_000_000))
    ]
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.set_pricer(book)
        ledger.apply("acme", PollResult(usage=usage))
        att = Attributor(config.attribution.rules)
        export = MetricsBuilder(make_resource("x"), attributor=att).build(ledger.export_rows(0), None, NOW_NS)
        reading = Signals(attributor=att).read(ledger, 1_900_000_000)
    merged = merge_requests(export.requests())
    for metric in ("llm.usage.tokens", "llm.usage.requests", "llm.usage.cost.estimated"):
        teams = {dict(k)["llm.tenancy.id"]: dict(k)["llm.team"] for k in merged[metric]}
        assert teams == {"proj-a": "search", "proj-z": "unattributed"}
    # 3 USD of the last 24 h's 4 USD of spend has a team
    assert reading.coverage == {"acme": Decimal(3) / Decimal(4)}


def test_without_rules_no_team_label_and_no_coverage(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.apply("acme", PollResult(usage=[UsageRecord(
            provider="acme", model="m", operation="chat", tenancy_id="t", bucket_start=0, bucket_width=H,
            tokens={"input": 1})]))
        export = MetricsBuilder(make_resource("x")).build(ledger.export_rows(0), None, NOW_NS)
        assert Signals().read(ledger, int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())).coverage == {}
    keys = merge_requests(export.requests())["llm.usage.tokens"]
    assert all("llm.team" not in dict(k) for k in keys)
