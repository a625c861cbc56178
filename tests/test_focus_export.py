"""The one-off ``focus`` export: its money equals the ledger's (computed here from the records applied), rows are
attributed, named and priced, each currency stays in its own rows, and bad arguments give one clear line."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.cli import main
from otel_llm_receiver.config import ProviderConfig
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import Window
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.providers import demo

from .support import focus_world as world
from .support.demo_truth import demo_truth
from .support.focus_conformance import read_back

D = world.D
TODAY = world.NOW // D * D


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("focus-export")
    world.build(tmp)
    return tmp / "config.yaml"


def export_csv(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str | None]]:
    capsys.readouterr()
    assert main(["focus", *args, "--out", "-"]) == 0
    text = capsys.readouterr().out
    return [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]


def test_billed_cost_equals_what_each_provider_reported_and_today_is_estimated(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = export_csv(capsys, "--config", str(config_path), "--now", str(world.NOW), "--since", "4d")
    sums: dict[tuple[str | None, str | None, str | None, str | None], Decimal] = defaultdict(Decimal)
    for r in rows:
        sums[(r["BillingAccountId"], r["x_CostSource"], r["BillingCurrency"], r["ChargePeriodStart"])] += Decimal(
            r["BilledCost"] or "x")
        assert r["BilledCost"] == r["EffectiveCost"] == r["ContractedCost"]
    expected: dict[tuple[str | None, str | None, str | None, str | None], Decimal] = {}
    for w in world.WORKLOADS:
        for day in world.DAYS:
            stamp = f"{_date(day)}T00:00:00Z"
            if w.instance == "vertex/p1":  # usage only: every day is estimated, exact to the pico-dollar
                expected[(w.instance, "estimated", "USD", stamp)] = world.estimated_cost(w, day, day + D)
            else:
                currency = "EUR" if w.instance == "azure/eu" else "USD"
                expected[(w.instance, "reported", currency, stamp)] = world.daily_cost(w, day)
        # Today's cost has not arrived anywhere: estimated rows, never mixed with reported ones.
        expected[(w.instance, "estimated", "USD", f"{_date(TODAY)}T00:00:00Z")] = world.estimated_cost(
            w, TODAY, world.NOW)
    assert dict(sums) == expected


def _date(day: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(day, dt.UTC).strftime("%Y-%m-%d")


def test_rows_carry_names_tags_regions_publishers_and_list_prices(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = export_csv(capsys, "--config", str(config_path), "--now", str(world.NOW), "--since", "4d",
                      "--version", "1.3")
    by = defaultdict(list)
    for r in rows:
        by[(r["BillingAccountId"], r["x_CostSource"])].append(r)
    # Anthropic: a named workspace matched by an attribution rule -> Tags with team and cost center.
    for r in by[("anthropic/main", "reported")]:
        assert (r["SubAccountId"], r["SubAccountName"]) == ("wrkspc_1", "Platform Workspace")
        assert json.loads(r["Tags"] or "") == {"team": "platform", "cost_center": "CC-42"}
        assert (r["ProviderName"], r["PublisherName"], r["InvoiceIssuerName"], r["ServiceName"]) == (
            "Anthropic", "Anthropic", "Anthropic", "Claude API")
    assert json.loads(by[("openai/prod", "reported")][0]["Tags"] or "") == {"team": "unattributed"}
    # OpenAI: the "<model>, <kind>" line item finds its usage: quantities and the list price of its token type.
    day = f"{_date(world.DAYS[1])}T00:00:00Z"
    openai = {r["x_TokenType"]: r for r in by[("openai/prod", "reported")] if r["ChargePeriodStart"] == day}
    w = world.WORKLOADS[0]
    for token_type, per_hour in w.tokens.items():
        r = openai[token_type]
        assert Decimal(r["ConsumedQuantity"] or "x") == per_hour * 24
        assert (r["ConsumedUnit"], r["PricingUnit"]) == ("Tokens", "1000000 Tokens")
        assert Decimal(r["PricingQuantity"] or "x") == Decimal(per_hour * 24) / 1_000_000
        assert Decimal(r["ListUnitPrice"] or "x") == world.PRICES[w.model][token_type]
        assert Decimal(r["ListCost"] or "x") == world.PRICES[w.model][token_type] * per_hour * 24 / 1_000_000
        assert r["x_Model"] == w.model and r["SkuMeter"] in ("Input Tokens", "Cache Read Tokens", "Output Tokens")
    # Clouds: the cloud provides, hosts and invoices; the model's maker publishes and, on a marketplace (Claude
    # on Bedrock), is the 1.3 ServiceProviderName: the seller, not the marketplace operator.
    bedrock = by[("bedrock/us", "estimated")][0]
    assert (bedrock["ProviderName"], bedrock["ServiceProviderName"], bedrock["HostProviderName"],
            bedrock["InvoiceIssuerName"], bedrock["PublisherName"], bedrock["ServiceName"], bedrock["RegionId"]) == (
        "AWS", "Anthropic", "AWS", "AWS", "Anthropic", "Amazon Bedrock", "us-east-1")
    assert {(r["ServiceProviderName"], r["PublisherName"]) for r in by[("azure/eu", "reported")]} == {
        ("Microsoft", "OpenAI")}  # Azure sells OpenAI models as its own service
    vertex = by[("vertex/p1", "estimated")][0]
    assert (vertex["ProviderName"], vertex["PublisherName"], vertex["RegionId"], vertex["RegionName"]) == (
        "Google Cloud", "Meta", "us-central1", "us-central1")
    azure = by[("azure/eu", "reported")][0]
    assert (azure["ProviderName"], azure["PublisherName"], azure["InvoiceIssuerName"], azure["BillingCurrency"]) == (
        "Microsoft", "OpenAI", "Microsoft", "EUR")
    # No list price in EUR is published: one is derived from the billed cost, and ListCost is unit price x
    # quantity (FOCUS listunitprice.md), the billed cost to within the rounding of a 12-place decimal.
    for r in by[("azure/eu", "reported")]:
        price, quantity = Decimal(r["ListUnitPrice"] or "x"), Decimal(r["PricingQuantity"] or "x")
        assert r["x_ListPriceSource"] == "derived" and Decimal(r["ListCost"] or "x") == price * quantity
        assert abs(price * quantity - Decimal(r["BilledCost"] or "x")) <= quantity * Decimal("0.5e-6")
    assert {r["x_ListPriceSource"] for r in by[("openai/prod", "reported")]} == {"published"}
    # Every row has a distinct, stable key.
    keys = [r["x_ChargeKey"] for r in rows]
    assert len(set(keys)) == len(keys)
    again = export_csv(capsys, "--config", str(config_path), "--now", str(world.NOW), "--since", "4d")
    assert [r["x_ChargeKey"] for r in again] == keys


def test_formats_hold_the_same_exact_values(config_path: Path, tmp_path: Path) -> None:
    tables = {}
    for fmt in ("csv", "parquet", "jsonl"):
        out = tmp_path / f"f.{fmt}"
        assert main(["focus", "--config", str(config_path), "--now", str(world.NOW), "--since", "4d",
                     "--out", str(out)]) == 0  # the format follows the suffix
        tables[fmt] = read_back(out, fmt)
    assert tables["csv"] == tables["parquet"] == tables["jsonl"]
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "f.parquet")
    assert str(schema.field("BilledCost").type) == "decimal128(38, 12)"
    assert str(schema.field("ChargePeriodStart").type) == "timestamp[ms, tz=UTC]"
    # Estimated money keeps all 12 decimals it has (pico-dollars), in every format.
    assert any(len((r["BilledCost"] or "").partition(".")[2]) > 6 for r in tables["csv"][1])


def test_bad_arguments_are_one_line_each(config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--config", str(config_path), "--format", "parquet", "--out", "-"], 2, "parquet cannot go to stdout"),
        (["--storage", str(tmp_path / "missing.db"), "--out", str(tmp_path / "x.csv")], 1, "no ledger at"),
        (["--config", str(config_path), "--from", "2026-11-10", "--to", "2026-11-01", "--out", "-"], 2,
         "--to must be after --from"),
        (["--config", str(config_path), "--from", "last tuesday", "--out", "-"], 2, "focus: "),
        # Issue 18.6: a suffix the export does not write is refused, not silently written as CSV.
        (["--config", str(config_path), "--out", str(tmp_path / "spend.xlsx")], 2,
         "cannot tell the format of"),
    ]
    for args, code, message in cases:
        capsys.readouterr()
        assert main(["focus", *args]) == code
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "spend.xlsx").exists()
    # With --format the name is the user's choice.
    assert main(["focus", "--config", str(config_path), "--format", "csv", "--out", str(tmp_path / "s.txt")]) == 0
    assert "BilledCost" in (tmp_path / "s.txt").read_text(encoding="utf-8").splitlines()[0]


def test_a_closed_pipe_ends_the_export_quietly(config_path: Path) -> None:
    """Issue 18.6: `focus --out - | head -1` prints no `[Errno 32] Broken pipe` and exits as Unix tools do."""
    import fcntl
    import signal
    import subprocess

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the export (30 KB) cannot fit: the writer must block
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_llm_receiver", "focus", "--config", str(config_path), "--out", "-"],
        stdout=write_end, stderr=subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        header = reader.readline()  # the reader goes away, as `head -1` does, long before the export ends
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE, err
    assert b"BilledCost" in header and err == ""


def test_demo_week_billed_cost_equals_the_demos_reported_cost_and_estimates_its_estimated_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo provider, polled for 8 days through the ledger, exported for 7: the reported rows add up to the
    demo's own daily costs and today's estimated rows to its tokens at list price, both computed here from the
    demo's pure functions (not from the ledger)."""
    now = world.NOW
    first = now - 8 * D
    ledger_path = tmp_path / "demo.db"
    book = PriceBook()
    with Ledger(ledger_path) as ledger:
        ledger.set_pricer(book)
        provider = demo.DemoProvider(ProviderConfig(name="demo", type="demo", options={"bucket_width": 3600}))
        ledger.apply("demo", asyncio.run(provider.fetch(Window(first, now))))
    rows = export_csv(capsys, "--storage", str(ledger_path), "--now", str(now), "--since", "7d")
    start = (now - 7 * D) // D * D
    reported = sum((Decimal(r["BilledCost"] or "x") for r in rows if r["x_CostSource"] == "reported"), Decimal(0))
    expected_reported = sum((demo.daily_cost(42, w, day) for day in range(start, TODAY, D) for w in demo.WORKLOADS),
                            Decimal(0))
    assert reported == expected_reported
    assert reported.quantize(Decimal("0.01")) == expected_reported.quantize(Decimal("0.01"))
    estimated = sum((Decimal(r["BilledCost"] or "x") for r in rows if r["x_CostSource"] == "estimated"), Decimal(0))
    assert {r["ChargePeriodStart"] for r in rows if r["x_CostSource"] == "estimated"} == {f"{_date(TODAY)}T00:00:00Z"}
    tokens_today, _, _ = demo_truth(42, TODAY, now, 3600)
    expected_estimated = Decimal(0)
    for (tenancy, model, token_type), n in tokens_today.items():
        attrs = {"gen_ai.provider.name": "demo", "gen_ai.request.model": model, "gen_ai.token.type": token_type,
                 "llm.tenancy.id": tenancy}
        price = book.price("demo", model, token_type, attrs, TODAY)
        assert price is not None, (model, token_type)
        expected_estimated += price.usd * n
    assert estimated == expected_estimated
    assert estimated.quantize(Decimal("0.01")) == expected_estimated.quantize(Decimal("0.01"))
    assert estimated > 0 and reported > 0


def test_a_cost_split_the_usage_also_has_is_matched_on_it(tmp_path: Path) -> None:
    """Anthropic reports 5-minute and 1-hour cache writes apart (``llm.cache.ttl``) in both its usage and its
    cost report: each cost row's quantity is its own TTL's tokens, not both."""
    from otel_llm_receiver.focus import RowContext, day_rows
    from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord

    day = TODAY - D
    usage = [UsageRecord(provider="anthropic", model="claude-sonnet-4", operation="chat", tenancy_id="w",
                         bucket_start=day + h * 3600, bucket_width=3600, tokens={"cache_write": n},
                         dimensions={"llm.cache.ttl": ttl})
             for h in range(24) for ttl, n in (("5m", 1_000), ("1h", 7))]
    costs = [CostRecord(provider="anthropic", tenancy_id="w", bucket_start=day, bucket_width=D, amount=amount,
                        model="claude-sonnet-4", line_item="cache_write", dimensions={"llm.cache.ttl": ttl})
             for ttl, amount in (("5m", Decimal("0.09")), ("1h", Decimal("0.01")))]
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.apply("anthropic/main", PollResult(usage=usage, costs=costs))
        rows = day_rows(ledger, day, RowContext(names=ledger.names()))
    quantities = {json.loads(r["x_Dimensions"])["llm.cache.ttl"]: r["ConsumedQuantity"] for r in rows}
    assert quantities == {"5m": 24_000, "1h": 24 * 7}
    assert {r["x_CostSource"] for r in rows} == {"reported"}


def test_csv_and_jsonl_need_no_pyarrow_and_parquet_says_which_extra(config_path: Path, tmp_path: Path) -> None:
    """A real process in which pyarrow cannot be imported: JSON Lines (and CSV) work, Parquet is one clear line
    (from the command and from the config), and nothing is written for it."""
    import subprocess
    import sys

    block = "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None; "
    run = "from otel_llm_receiver.cli import main; sys.exit(main(sys.argv[1:]))"

    def focus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", block + run, *args], capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parent.parent)

    common = ["focus", "--config", str(config_path), "--now", str(world.NOW), "--since", "2d"]
    done = focus(*common, "--out", str(tmp_path / "f.jsonl"))  # (CSV and JSON Lines share their imports)
    assert done.returncode == 0, done.stderr
    assert "pyarrow" not in done.stderr and read_back(tmp_path / "f.jsonl", "jsonl")[1]
    done = focus(*common, "--out", str(tmp_path / "f.parquet"))
    assert done.returncode == 1
    assert done.stderr.strip() == ("focus: Parquet output needs pyarrow: pip install 'otel-llm-receiver[focus]' "
                                   "(or use --format csv / jsonl)")
    assert not (tmp_path / "f.parquet").exists() and not list(tmp_path.glob(".f.parquet.*"))
    config = tmp_path / "parquet.yaml"
    config.write_text(config_path.read_text() + "focus: {path: ./focus, format: parquet}\n")
    done = focus("check", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "focus.format: parquet needs pyarrow: pip install 'otel-llm-receiver[focus]' (or use csv)")


def test_parquet_refuses_to_round_a_decimal() -> None:
    """decimal128(38, 12) holds every amount the ledger keeps (pico-units); a finer value is one clear error,
    never silently rounded."""
    from otel_llm_receiver.focus import FocusError
    from otel_llm_receiver.focus.formats import ParquetWriter
    from otel_llm_receiver.focus.schema import Column

    writer = ParquetWriter(io.BytesIO(), (Column("BilledCost", "decimal"),))
    writer.write([{"BilledCost": Decimal("0.000000000001")}, {"BilledCost": Decimal("1.0000000000001")}])
    with pytest.raises(FocusError, match="Parquet column BilledCost: Rescaling Decimal value would cause data loss"):
        writer.close()
