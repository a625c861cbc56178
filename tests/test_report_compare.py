"""Reported cost (daily buckets) and estimated cost (hourly) compared over the same whole UTC days (issue 16.12),
unpriced models shown as such (16.13), and one tenancy vocabulary in the JSON (16.14).

Two ledgers: a small one whose every number is computed here, and the demo provider's 14-day backfill at a fixed
clock, whose reported cost per day and tokens per minute come from the demo's own pure functions. Each runs on
SQLite and on PostgreSQL (issue 21: the readers give the same figures on both engines), opened as users open it:
through the config file's ``storage`` section.
"""

from __future__ import annotations

import asyncio
import calendar
import csv
import io
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from otel_llm_receiver.cli import DEMO_CONFIG, main
from otel_llm_receiver.config import Config, load_config
from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.ledger import open_ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord, first_window_start
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.providers.demo import WORKLOADS, daily_cost, full_bucket
from otel_llm_receiver.scheduler import Receiver
from otel_llm_receiver.signals import day_label
from otel_llm_receiver.summary import render_summary

from .support.ledger_stores import poll_held, shared_store, storage_section

H = 3600
D = 86400
TODAY = 1_795_000_000 // D * D
NOW = TODAY + 10 * H  # 10:00 UTC: `--since 7d` starts at 10:00 too, mid-day
USAGE_FROM = TODAY - 3 * D + 16 * H  # the token backfill starts at 16:00, mid-day
HOURLY = {"input": 100_000, "output": 20_000}
HOURLY_USD = (HOURLY["input"] * Decimal(2) + HOURLY["output"] * Decimal(8)) / 10**6  # input 2, output 8 per Mtok
#: Reported cost per UTC day: the day before usage starts, the partial first day, then two whole days.
REPORTED = {TODAY - 4 * D: Decimal("9.5"), TODAY - 3 * D: Decimal("7.25"), TODAY - 2 * D: Decimal("2.40"),
            TODAY - D: Decimal("2.30")}
COMPARED = [TODAY - 2 * D, TODAY - D]  # whole days with reported cost and usage all day long


@pytest.fixture
def config_path(tmp_path: Path, ledger_store: StorageConfig, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
storage: {json.dumps(storage_section(ledger_store, monkeypatch))}
providers:
  demo: {{enabled: false}}
pricing:
  genai_prices: false
  overrides:
    - {{provider: acme, model: "gpt-*", prices: {{input: "2", output: "8"}}}}
""")
    config = load_config(path)
    usage = [
        UsageRecord(provider="acme", model=model, operation="chat", tenancy_id=tenancy, bucket_start=hour,
                    bucket_width=H, tokens=dict(HOURLY))
        for hour in range(USAGE_FROM, NOW, H) for tenancy, model in (("proj-a", "gpt-x"), ("proj-b", "mystery-1"))
    ]
    costs = [CostRecord(provider="acme", tenancy_id="proj-a", bucket_start=day, bucket_width=D, amount=amount,
                        model="gpt-x") for day, amount in REPORTED.items()]
    with open_ledger(config.storage) as ledger:
        ledger.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
        ledger.apply("acme", PollResult(usage=usage, costs=costs, names={("tenancy", "proj-a"): "Alpha Project"}))
    return path


def report(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["report", *args]) == 0
    return capsys.readouterr().out


def test_estimate_is_also_shown_over_the_reported_days(config_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(report(capsys, "--config", str(config_path), "--now", str(NOW), "--format", "json"))
    row = next(r for r in doc["spend"] if r["tenancy_id"] == "proj-a")
    # The window's own figures: every reported day in it, every usage hour in it.
    assert Decimal(row["reported_usd"]) == sum(REPORTED.values())
    assert Decimal(row["estimated_usd"]) == (NOW - USAGE_FROM) // H * HOURLY_USD
    # Compared: only the whole days with reported cost and a whole day of usage.
    assert row["compared_days"] == {"from": day_label(COMPARED[0]), "to": day_label(COMPARED[-1]), "days": 2}
    assert Decimal(row["reported_usd_same_days"]) == sum(REPORTED[d] for d in COMPARED)
    assert Decimal(row["estimated_usd_same_days"]) == 48 * HOURLY_USD
    assert doc["total"]["compared_days"]["days"] == 2
    assert Decimal(doc["total"]["estimated_usd_same_days"]) == 48 * HOURLY_USD
    # No reported cost: nothing compared.
    other = next(r for r in doc["spend"] if r["tenancy_id"] == "proj-b")
    assert other["compared_days"] == {"from": None, "to": None, "days": 0}
    assert other["estimated_usd_same_days"] is None and other["reported_usd_same_days"] is None


def test_table_shows_the_same_days_estimate(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = report(capsys, "--config", str(config_path), "--now", str(NOW))
    assert "estimated USD" in out and "(same days)" in out and "UTC days" in out
    row = next(line for line in out.splitlines() if "Alpha Project" in line)
    span = f"{day_label(COMPARED[0])[5:]}..{day_label(COMPARED[-1])[5:]}"
    assert re.search(rf"{re.escape(span)}\s+{re.escape(str((48 * HOURLY_USD).quantize(Decimal('0.01'))))}\s*$",
                     row), row
    # The reported cost outside the compared days is said, not silently compared.
    assert f"reported USD on the compared days: {sum(REPORTED[d] for d in COMPARED):.2f}" in out


def test_unpriced_model_is_not_shown_as_free(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--config", str(config_path), "--now", str(NOW))
    doc = json.loads(report(capsys, *args, "--format", "json"))
    row = next(r for r in doc["spend"] if r["model"] == "mystery-1")
    hours = (NOW - USAGE_FROM) // H
    assert (row["estimated_usd"], row["unpriced"]) == (None, True)
    assert row["unpriced_tokens"] == row["tokens"] == hours * sum(HOURLY.values())
    priced = next(r for r in doc["spend"] if r["model"] == "gpt-x")
    assert (priced["unpriced"], priced["unpriced_tokens"]) == (False, 0)
    # The total's estimate is the priced rows' (it says how many tokens it leaves out).
    assert Decimal(doc["total"]["estimated_usd"]) == hours * HOURLY_USD
    assert doc["total"]["unpriced_tokens"] == row["tokens"]
    line = next(line for line in report(capsys, *args).splitlines() if "mystery-1" in line)
    # tokens, reported (none: 0.00), then the estimate
    assert re.search(rf"{row['tokens']:,}\s+0\.00\s+unpriced\s", line), line
    (csv_row,) = [r for r in csv.DictReader(io.StringIO(report(capsys, *args, "--format", "csv")))
                  if r["model"] == "mystery-1"]
    assert (csv_row["estimated_usd"], csv_row["unpriced"]) == ("", "true")
    # The demo's terminal summary says the same.
    with open_ledger(load_config(config_path).storage, readonly=True) as reader:
        summary = render_summary(reader, NOW)
    assert re.search(r"mystery-1 .*\s0\.00\s+unpriced$", summary, re.M), summary
    assert not re.search(r"gpt-x .*unpriced", summary), summary


def test_json_names_tenancies_by_id_and_name(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(report(capsys, "--config", str(config_path), "--now", str(NOW), "--format", "json"))
    assert {(r["tenancy_id"], r["tenancy_name"]) for r in doc["spend"]} == {
        ("proj-a", "Alpha Project"), ("proj-b", None)}
    assert all("tenancy" not in r for r in doc["spend"])
    out = report(capsys, "--config", str(config_path), "--now", str(NOW), "--format", "csv")
    assert {(r["tenancy_id"], r["tenancy_name"]) for r in csv.DictReader(io.StringIO(out))} == {
        ("proj-a", "Alpha Project"), ("proj-b", "")}


# ------------------------------------------------------------------------------------------- the demo's data
DEMO_NOW = calendar.timegm((2026, 12, 2, 16, 28, 0))  # a Wednesday, mid-day: no window below is day-aligned
SEED = 42


# The demo's backfill on PostgreSQL takes about a minute on a loaded 2-CPU machine: in the slow suite.
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def demo_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``demo`` command's configuration (as a file) and 14-day backfill, polled once at ``DEMO_NOW`` by the
    scheduler, on each engine."""
    directory = tmp_path_factory.mktemp("demo")
    with shared_store(request.param, request, directory) as store, pytest.MonkeyPatch.context() as env:
        raw = yaml.safe_load(DEMO_CONFIG)
        raw["storage"] = storage_section(store, env, "DEMO_LEDGER_DSN")
        raw["exporters"] = {}
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        receiver = Receiver(load_config(path), exporters=[], clock=lambda: float(DEMO_NOW))
        try:
            assert asyncio.run(poll_held(receiver, "demo")).ok
        finally:
            receiver.ledger.close()
        yield path


@pytest.fixture
def demo(demo_files: Path) -> Config:
    return load_config(demo_files)


def demo_estimate(config: Config, tenancy: str, model: str, days: list[int]) -> Decimal:
    """The estimated cost of one workload over whole days: the demo's settled minute buckets times the price book
    (the ledger prices each token type at the price in force, in whole pico-USD per token)."""
    prices = PriceBook(config.pricing.entries, use_genai_prices=config.pricing.genai_prices)
    (w,) = [w for w in WORKLOADS if (w.tenancy, w.model) == (tenancy, model)]
    picos = 0
    for day in days:
        by_type: dict[str, int] = {}
        for minute in range(day, day + D, 60):
            for token_type, n in full_bucket(SEED, w, minute, 60)[0].items():
                by_type[token_type] = by_type.get(token_type, 0) + n
        for token_type, n in by_type.items():
            attrs = {"gen_ai.provider.name": "demo", "gen_ai.request.model": model, "gen_ai.token.type": token_type}
            price = prices.price("demo", model, token_type, attrs, day)
            assert price is not None, (model, token_type)
            picos += price.picos * n
    return Decimal(picos) / 10**12


def test_demo_report_compares_the_same_days(demo: Config, demo_files: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(report(capsys, "--config", str(demo_files), "--since", "7d", "--now", str(DEMO_NOW),
                            "--format", "json"))
    today = DEMO_NOW // D * D
    days = list(range(today - 6 * D, today, D))  # the window's whole days; today's cost has not arrived yet
    names = {"Search": "proj-search", "Support Bot": "proj-support", "Research": "proj-research"}
    assert len(doc["spend"]) == len(WORKLOADS)
    for row in doc["spend"]:
        tenancy = names[row["tenancy_name"]]
        assert row["tenancy_id"] == tenancy
        assert row["compared_days"] == {"from": day_label(days[0]), "to": day_label(days[-1]), "days": 6}
        (w,) = [w for w in WORKLOADS if (w.tenancy, w.model) == (tenancy, row["model"])]
        reported = sum(daily_cost(SEED, w, d) for d in days)
        assert Decimal(row["reported_usd_same_days"]) == Decimal(row["reported_usd"]) == reported
        assert Decimal(row["estimated_usd_same_days"]) == demo_estimate(demo, tenancy, row["model"], days)
    total = doc["total"]
    reported, same_days = Decimal(total["reported_usd"]), Decimal(total["estimated_usd_same_days"])
    # Like with like: the estimate over the reported days is within 1% of the reported cost, where the estimate
    # over the whole window (a 7th, partial day more) is not.
    assert abs(same_days / reported - 1) < Decimal("0.01")
    assert Decimal(total["estimated_usd"]) / reported > Decimal("1.15")
    # Anomalies name their tenancy the same way.
    assert doc["anomalies"] and all(a["tenancy_name"] == {v: k for k, v in names.items()}[a["tenancy_id"]]
                                    for a in doc["anomalies"])
    assert all("tenancy_name" in r for r in doc["reconciliation"])


def test_demo_summary_compares_the_same_days(demo: Config) -> None:
    with open_ledger(demo.storage, readonly=True) as reader:
        out = render_summary(reader, DEMO_NOW)
    # The 14-day backfill starts at 00:00 UTC (model.first_window_start): its first day is whole; cost has
    # arrived up to yesterday.
    first = first_window_start(DEMO_NOW, 14 * D)
    days = list(range(first, DEMO_NOW // D * D, D))
    span = f"{day_label(days[0])[5:]}..{day_label(days[-1])[5:]}"
    total = next(line for line in out.splitlines() if line.startswith("total"))
    fields = total.split()
    assert fields[-3] == span
    reported = sum(daily_cost(SEED, w, d) for w in WORKLOADS for d in days)
    estimated = sum(demo_estimate(demo, w.tenancy, w.model, days) for w in WORKLOADS)
    cent = Decimal("0.01")
    assert Decimal(fields[-2].replace(",", "")) == reported.quantize(cent)
    assert Decimal(fields[-1].replace(",", "")) == estimated.quantize(cent)
    assert abs(estimated / reported - 1) < Decimal("0.01")


def test_docs_name_every_json_field_and_csv_column(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/report.md stays true: every field the JSON writes and every CSV column is described there."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text()
    doc = json.loads(report(capsys, "--config", str(config_path), "--now", str(NOW), "--format", "json"))
    fields = set(doc) | {k for r in doc["spend"] for k in r} | {k for r in doc["reconciliation"] for k in r}
    header = report(capsys, "--config", str(config_path), "--now", str(NOW), "--format", "csv").splitlines()[0]
    missing = sorted(f for f in fields | set(header.split(",")) if f"`{f}`" not in docs and f'"{f}"' not in docs)
    assert not missing, missing


def test_a_long_window_is_read_in_chunks_of_days(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Six years of whole days: more columns than SQLite allows in one query (a day is a column of the ledger's
    window sums), so the days are read in chunks; and the hours before the ledger's data are not scored."""
    doc = json.loads(report(capsys, "--config", str(config_path), "--now", str(NOW), "--since", f"{6 * 366}d",
                            "--format", "json"))
    row = next(r for r in doc["spend"] if r["tenancy_id"] == "proj-a")
    assert row["compared_days"]["days"] == 2
    assert Decimal(row["estimated_usd_same_days"]) == 48 * HOURLY_USD
