"""FOCUS conformance of every version we emit (1.0, 1.2, 1.3) in every format, against the spec's own tables.

The files are written by the real ``focus`` command from a ledger holding every shape of cost data the export
meets (tests/support/focus_world.py), read back with plain readers (csv, json, pyarrow) and checked by
tests/support/focus_conformance.py, whose column tables are the spec files' (tests/support/focus_spec_*.yaml).

Every row meets every rule: the charges no published price explains (Azure meters, Bedrock usage types, the
demo's ``tokens`` line item, EUR) carry a derived ListUnitPrice (``x_ListPriceSource`` = ``derived``).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.cli import main
from otel_llm_receiver.focus import column_names
from otel_llm_receiver.focus.formats import timestamp

from .support import focus_world as world
from .support.focus_conformance import check, read_back, spec


@pytest.fixture(scope="module")
def ledger_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("focus-world")
    world.build(tmp)
    return tmp / "config.yaml"


def export(config: Path, out: Path, version: str, fmt: str) -> None:
    code = main(["focus", "--config", str(config), "--now", str(world.NOW), "--since", "4d",
                 "--version", version, "--format", fmt, "--out", str(out)])
    assert code == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
@pytest.mark.parametrize("version", ["1.0", "1.2", "1.3"])
def test_conformance(ledger_config: Path, tmp_path: Path, version: str, fmt: str) -> None:
    out = tmp_path / f"focus.{fmt}"
    export(ledger_config, out, version, fmt)
    columns, rows = read_back(out, fmt)
    assert columns == list(column_names(version))
    # Every instance, both sources, every day: the data set the rules are checked on is the whole world.
    assert {(r["BillingAccountId"], r["x_CostSource"]) for r in rows} == {
        *((w.instance, "reported") for w in world.WORKLOADS if w.instance != "vertex/p1"),
        *((w.instance, "estimated") for w in world.WORKLOADS),
    }
    assert {r["ChargePeriodStart"] for r in rows} == {timestamp(d) for d in (*world.DAYS, world.NOW // world.D * world.D)}
    assert check(version, columns, rows) == set()


@pytest.mark.parametrize("version", ["1.0", "1.2", "1.3"])
def test_every_mandatory_column_and_only_spec_or_x_columns(version: str) -> None:
    """The column list itself, against the spec table: Mandatory present, the rest FOCUS columns or x_."""
    table = spec(version)["columns"]
    names = column_names(version)
    mandatory = {n for n, c in table.items() if c["level"] == "Mandatory"}
    assert mandatory <= set(names)
    focus = [n for n in names if not n.startswith("x_")]
    assert set(focus) <= set(table)
    assert names[: len(focus)] == tuple(focus)  # x_ columns last
    counts = {"1.0": 43, "1.2": 57, "1.3": 65}
    assert len(table) == counts[version]


def test_the_checker_catches_what_it_claims(ledger_config: Path, tmp_path: Path) -> None:
    """The checker is real: each kind of broken value is reported (so an empty violation set means something)."""
    out = tmp_path / "focus.csv"
    export(ledger_config, out, "1.2", "csv")
    columns, rows = read_back(out, "csv")
    good = next(r for r in rows if r["x_CostSource"] == "estimated")
    broken = [
        ({"BilledCost": "1,000.00"}, "BilledCost: not a NumericFormat decimal: '1,000.00'"),
        ({"BilledCost": "+5"}, "BilledCost: not a NumericFormat decimal: '+5'"),
        ({"ChargePeriodStart": "2026-11-16 00:00:00"},
         "ChargePeriodStart: not DateTimeFormat (YYYY-MM-DDTHH:mm:ssZ): '2026-11-16 00:00:00'"),
        ({"ChargeCategory": "Consumption"}, "ChargeCategory: 'Consumption' is not an allowed value"),
        ({"ServiceSubcategory": "Virtual Machines"}, "ServiceSubcategory: its parent is not the row's ServiceCategory"),
        ({"Tags": '{"team": {"nested": 1}}'}, "Tags: not KeyValueFormat (a flat JSON object): '{\"team\": {\"nested\": 1}}'"),
        ({"ListCost": "999"}, "ListCost: not ListUnitPrice x PricingQuantity"),
        ({"ProviderName": None}, "ProviderName: null in a column that allows no nulls"),
        ({"SubAccountName": None}, "SubAccountName: null exactly when SubAccountId is null"),
        ({"ChargeFrequency": "Usage-Based", "ChargeCategory": "Purchase"},
         "ChargeFrequency: Usage-Based on a Purchase (chargefrequency.md)"),
    ]
    # Null-aware: "ChargeClass is not Correction" holds for a null ChargeClass, on Usage and on Purchase rows.
    assert good["ChargeClass"] is None
    broken += [
        ({"PricingQuantity": None, "PricingUnit": None}, "PricingQuantity: null on a Usage row (pricingquantity.md)"),
        ({"ConsumedQuantity": None, "ConsumedUnit": None},
         "ConsumedQuantity: null on a Usage row (consumedquantity.md)"),
        ({"ListUnitPrice": None}, "ListUnitPrice: null on a Usage row (listunitprice.md)"),
        ({"ChargeCategory": "Purchase", "ChargeFrequency": "One-Time", "ListUnitPrice": None},
         "ListUnitPrice: null on a Purchase row (listunitprice.md)"),
        ({"ChargeCategory": "Purchase", "ChargeFrequency": "One-Time", "PricingQuantity": None, "PricingUnit": None},
         "PricingQuantity: null on a Purchase row (pricingquantity.md)"),
        ({"SkuPriceId": None, "SkuPriceDetails": '{"x_Tier": "a"}'},
         "SkuPriceDetails: not null while SkuPriceId is null"),
    ]
    for change, rule in broken:
        assert rule in {r for r, _ in check("1.2", columns, [{**good, **change}])}, change
    # A correction is exempt from them.
    correction = {**good, "ChargeClass": "Correction", "PricingQuantity": None, "PricingUnit": None,
                  "ConsumedQuantity": None, "ConsumedUnit": None, "ListUnitPrice": None, "ListCost": good["BilledCost"]}
    assert check("1.2", columns, [correction]) == set()
    # SkuPriceDetails must be present in a file that publishes list prices (1.1+; 1.0 has no such column).
    without = [c for c in columns if c != "SkuPriceDetails"]
    assert ("SkuPriceDetails: missing while list unit prices are published (skupricedetails.md)", -1) in check(
        "1.2", without, [good])
    assert check("1.2", [c for c in columns if c != "BilledCost"], [good]) >= {("BilledCost: Mandatory column missing", -1)}
    assert ("x_Foo", -1) not in check("1.2", [*columns, "Foo"], [good])
    assert ("Foo: not a FOCUS 1.2 column and not x_ prefixed", -1) in check("1.2", [*columns, "Foo"], [good])


def test_reported_bedrock_and_azure_rows_carry_the_billed_quantity(ledger_config: Path, tmp_path: Path) -> None:
    """The quantity of a Bedrock / Azure charge is what its billing API billed (UsageQuantity), per day and token
    type, in Tokens, priced per million."""
    out = tmp_path / "focus.csv"
    export(ledger_config, out, "1.2", "csv")
    _, rows = read_back(out, "csv")
    got = {(r["BillingAccountId"], r["ChargePeriodStart"], r["x_TokenType"]):
           (Decimal(r["ConsumedQuantity"]), r["ConsumedUnit"], Decimal(r["PricingQuantity"]), r["PricingUnit"])
           for r in rows if r["x_CostSource"] == "reported" and r["BillingAccountId"] in ("azure/eu", "bedrock/us")}
    want = {}
    for w in world.WORKLOADS:
        if w.instance in ("azure/eu", "bedrock/us"):
            for d in world.DAYS:
                for t in w.tokens:
                    tokens = world.billed_tokens(w, t, d)
                    want[(w.instance, timestamp(d), t)] = (tokens, "Tokens", tokens / 1_000_000, "1000000 Tokens")
    assert got == want
