"""``otel-llm-receiver report`` on a fixed ledger: every number is computed here from the records applied."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.cli import main
from otel_llm_receiver.config import load_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook

H = 3600
D = 86400
NOW = 1_795_000_000 // D * D + 10 * H  # 10:00 UTC on a fixed day
PRICES = {"input": Decimal("2"), "output": Decimal("8")}  # USD per million tokens
# (tenancy, model, hourly input, hourly output)
TRAFFIC = [("proj-a", "gpt-x", 100_000, 20_000), ("proj-b", "gpt-x", 30_000, 1_000), ("proj-b", "gpt-y", 7, 3)]
REPORTED = Decimal("5.123456")
REPORTED_DAY = NOW // D * D - 2 * D  # a whole UTC day, inside the 72 hours of usage


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
storage: {{path: {tmp_path / "ledger.db"}}}
providers:
  demo: {{enabled: false}}
pricing:
  genai_prices: false
  overrides:
    - {{provider: acme, model: "gpt-*", prices: {{input: "2", output: "8"}}}}
budgets:
  - {{name: team-a, amount: 1000, period: month, source: estimated, match: {{team: alpha}}}}
attribution:
  rules:
    - {{tenancy: proj-a, team: alpha, cost_center: CC-1}}
""")
    config = load_config(path)
    usage = [
        UsageRecord(provider="acme", model=model, operation="chat", tenancy_id=tenancy, bucket_start=NOW - h * H,
                    bucket_width=H, tokens={"input": inp, "output": out})
        for h in range(1, 73) for tenancy, model, inp, out in TRAFFIC
    ]
    costs = [CostRecord(provider="acme", tenancy_id="proj-a", bucket_start=REPORTED_DAY, bucket_width=D,
                        amount=REPORTED, model="gpt-x")]
    with Ledger(config.storage.path) as ledger:
        ledger.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
        ledger.apply("acme", PollResult(usage=usage, costs=costs))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["report", *args]) == 0
    return capsys.readouterr().out


def expected_rows(hours: int) -> dict[tuple[str, str], tuple[int, Decimal]]:
    return {
        (tenancy, model): (hours * (inp + out), hours * (inp * PRICES["input"] + out * PRICES["output"]) / 10**6)
        for tenancy, model, inp, out in TRAFFIC
    }


def test_json_report_numbers(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(run(capsys, "--config", str(config_path), "--now", str(NOW), "--since", "24h",
                         "--format", "json"))
    rows = {(r["tenancy_id"], r["model"]): r for r in doc["spend"]}
    expected = expected_rows(24)
    assert {k: (r["tokens"], Decimal(r["estimated_usd"])) for k, r in rows.items()} == expected
    assert {k: r["team"] for k, r in rows.items()} == {
        ("proj-a", "gpt-x"): "alpha", ("proj-b", "gpt-x"): "unattributed", ("proj-b", "gpt-y"): "unattributed"}
    assert Decimal(doc["total"]["estimated_usd"]) == sum(v for _, v in expected.values())
    assert Decimal(rows[("proj-a", "gpt-x")]["reported_usd"]) == 0  # the reported day is outside 24 h
    share = expected[("proj-a", "gpt-x")][1] / sum(v for _, v in expected.values())
    assert Decimal(doc["coverage"]["acme"]) == share
    (budget,) = doc["budgets"]
    assert budget["name"] == "team-a" and Decimal(budget["limit_usd"]) == 1000
    # the reported day is final (complete, and covered by usage): estimated / reported for it
    (recon,) = doc["reconciliation"]
    day_estimate = expected[("proj-a", "gpt-x")][1]  # 24 hours, like the 24 h window above
    assert (recon["tenancy_id"], Decimal(recon["estimated_usd"]), Decimal(recon["reported_usd"])) == (
        "proj-a", day_estimate, REPORTED)
    assert Decimal(recon["ratio"]) == day_estimate / REPORTED
    month_start = budget["period_start"]
    hours_in_month = min(72, (NOW - month_start) // H)
    assert Decimal(budget["spent_usd"]) == hours_in_month * expected[("proj-a", "gpt-x")][1] / 24


def test_reported_and_estimated_side_by_side_over_7_days(config_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--config", str(config_path), "--now", str(NOW), "--format", "csv")
    rows = {(r["tenancy_id"], r["model"]): r for r in csv.DictReader(io.StringIO(out))}
    expected = expected_rows(72)
    assert {k: (int(r["tokens"]), Decimal(r["estimated_usd"])) for k, r in rows.items()} == expected
    assert Decimal(rows[("proj-a", "gpt-x")]["reported_usd"]) == REPORTED


def test_table_rendering_shows_the_computed_numbers(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "--config", str(config_path), "--now", str(NOW), "--from", str(NOW - 72 * H),
              "--to", str(NOW))
    expected = expected_rows(72)
    total_tokens = sum(t for t, _ in expected.values())
    total_usd = sum(v for _, v in expected.values()).quantize(Decimal("0.01"))
    lines = out.splitlines()
    total_line = next(line for line in lines if line.strip().startswith("total"))
    assert f"{total_tokens:,}" in total_line and f"{total_usd:,}" in total_line
    row_a = next(line for line in lines if "proj-a" in line and "gpt-x" in line)
    tokens_a, usd_a = expected[("proj-a", "gpt-x")]
    assert f"{tokens_a:,}" in row_a and f"{usd_a.quantize(Decimal('0.01')):,}" in row_a and "alpha" in row_a
    assert f"{REPORTED.quantize(Decimal('0.01'))}" in row_a
    for title in ("Spend and tokens", "Budgets (current period)", "Attribution coverage"):
        assert title in out


def test_report_problems_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--storage", str(tmp_path / "l.db"), "--from", "2026-02-01", "--to", "2026-01-01"]) == 2
    assert capsys.readouterr().err == "report: --to must be after --from\n"
    assert main(["report", "--storage", str(tmp_path / "none" / "l.db")]) == 1
    assert capsys.readouterr().err.startswith("report: no ledger at")


def test_the_report_reads_the_same_numbers_on_postgresql(config_path: Path, postgres_cluster: object,
                                                         pg_ledger_template: str) -> None:
    """The same records in a PostgreSQL ledger: the report built from it is the SQLite one's, number for
    number, and both equal the numbers computed here (the report's readers on both engines)."""
    from dataclasses import replace

    from otel_llm_receiver.config_storage import StorageConfig
    from otel_llm_receiver.ledger import open_ledger
    from otel_llm_receiver.money import money_stack
    from otel_llm_receiver.report import build_report, render

    cluster = postgres_cluster
    database = cluster.create_database(template=pg_ledger_template)  # type: ignore[attr-defined]
    try:
        config = load_config(config_path)
        pg = StorageConfig(backend="postgresql", dsn=database.dsn)
        with Ledger(config.storage.path, readonly=True) as source, open_ledger(pg) as target:
            target.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
            usage = [UsageRecord(provider="acme", model=model, operation="chat", tenancy_id=tenancy,
                                 bucket_start=NOW - h * H, bucket_width=H, tokens={"input": inp, "output": out})
                     for h in range(1, 73) for tenancy, model, inp, out in TRAFFIC]
            costs = [CostRecord(provider="acme", tenancy_id="proj-a", bucket_start=REPORTED_DAY, bucket_width=D,
                                amount=REPORTED, model="gpt-x")]
            target.apply("acme", PollResult(usage=usage, costs=costs))
            docs = []
            for ledger, storage in ((source, config.storage), (target, pg)):
                money = money_stack(replace(config, storage=storage))
                report = build_report(ledger, NOW - 72 * H, NOW, NOW, money.signals, money.labels)
                docs.append(json.loads(render(report, "json")))
        assert docs[0] == docs[1]
        rows = {(r["tenancy_id"], r["model"]): r for r in docs[1]["spend"]}
        assert {k: (r["tokens"], Decimal(r["estimated_usd"])) for k, r in rows.items()} == expected_rows(72)
        assert Decimal(rows[("proj-a", "gpt-x")]["reported_usd"]) == REPORTED
    finally:
        cluster.drop_database(database.name)  # type: ignore[attr-defined]
