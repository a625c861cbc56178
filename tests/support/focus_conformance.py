"""FOCUS conformance checks, written from the spec text of each version we emit.

The column tables (presence level, type, nullability, allowed values) are data: ``focus_spec_<version>.yaml``,
each naming the spec file and commit it was taken from. The row rules below cite the column file they come from
(v1.2 wording unless noted; the 1.0 text says the same for every rule used here unless the rule is marked).

``check(version, columns, rows)`` reads back what a file holds (column names in file order; rows as dicts of
text-or-None from CSV/JSON Lines, or of Python values from Parquet, see ``normalize``) and returns every
violation as ``(rule, row index)`` so a test can compare the set with exactly the deviations it expects.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
#: attributes/numeric_format.md: integers, decimals, E-notation; no '+', commas, currency symbols or units.
NUMERIC = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE]-?[0-9]+)?")
#: attributes/datetime_format.md: ISO 8601 extended, UTC, 'Z': YYYY-MM-DDTHH:mm:ssZ.
DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
#: attributes/currency_format.md: ISO 4217 alphabetic codes.
CURRENCY = re.compile(r"[A-Z]{3}")
#: column_handling.md: custom columns are prefixed "x_"; FOCUS column ids are PascalCase alphanumerics.
CUSTOM = re.compile(r"x_[A-Za-z0-9_]+")


@cache
def spec(version: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((HERE / f"focus_spec_{version.replace('.', '_')}.yaml").read_text())
    return data


def normalize(value: Any) -> str | None:
    """A value read back from any format as FOCUS text (Parquet decimals/timestamps become their text)."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _dec(text: str) -> Decimal:
    return Decimal(text)


def check(version: str, columns: Sequence[str], rows: Sequence[Mapping[str, str | None]]) -> set[tuple[str, int]]:
    """Every violation of the rules below in a file of FOCUS ``version``: (rule, row index; -1 for the file)."""
    table = spec(version)
    cols: dict[str, dict[str, Any]] = table["columns"]
    allowed: dict[str, list[str]] = table["allowed_values"]
    parents: dict[str, str] = table.get("service_subcategories", {})
    out: set[tuple[str, int]] = set()

    # ---- the file: column presence, names and order (columns.mdpp, column_handling.md)
    for name, c in cols.items():
        if c["level"] == "Mandatory" and name not in columns:
            out.add((f"{name}: Mandatory column missing", -1))
    seen_custom = False
    for name in columns:
        if CUSTOM.fullmatch(name):
            seen_custom = True
        elif name not in cols:
            out.add((f"{name}: not a FOCUS {version} column and not x_ prefixed", -1))
        elif seen_custom:
            out.add((f"{name}: FOCUS column after a custom (x_) column", -1))
    if len(set(columns)) != len(columns):
        out.add(("duplicate column names", -1))
    # skupricedetails.md (1.1+): MUST be present when the provider publishes unit prices (ours: ListUnitPrice).
    if "SkuPriceDetails" in cols and "ListUnitPrice" in columns and "SkuPriceDetails" not in columns:
        out.add(("SkuPriceDetails: missing while list unit prices are published (skupricedetails.md)", -1))

    for i, row in enumerate(rows):
        def v(name: str, row: Mapping[str, str | None] = row) -> str | None:
            return row.get(name)

        # ---- every column: nullability and data type (each column's Content Constraints table)
        for name in columns:
            value = v(name)
            c = cols.get(name)
            if value == "":
                out.add((f"{name}: empty string instead of null (null_handling.md)", i))
            if c is None:
                continue
            if value is None:
                if not c["nullable"]:
                    out.add((f"{name}: null in a column that allows no nulls", i))
                continue
            kind = c["type"]
            if kind == "Decimal" and not NUMERIC.fullmatch(value):
                out.add((f"{name}: not a NumericFormat decimal: {value!r}", i))
            elif kind == "Date/Time" and not DATETIME.fullmatch(value):
                out.add((f"{name}: not DateTimeFormat (YYYY-MM-DDTHH:mm:ssZ): {value!r}", i))
            elif kind == "JSON" and not _key_value(value):
                out.add((f"{name}: not KeyValueFormat (a flat JSON object): {value!r}", i))

        # ---- allowed values (each column's 'Allowed values' table)
        for name, values in allowed.items():
            if name in columns and v(name) is not None and v(name) not in values:
                out.add((f"{name}: {v(name)!r} is not an allowed value", i))
        if "ServiceSubcategory" in columns and v("ServiceSubcategory") is not None:
            parent = parents.get(v("ServiceSubcategory") or "")
            if parent is None:
                out.add(("ServiceSubcategory: not an allowed value", i))
            elif parent != v("ServiceCategory"):
                out.add(("ServiceSubcategory: its parent is not the row's ServiceCategory", i))
        if v("BillingCurrency") is not None and not CURRENCY.fullmatch(v("BillingCurrency") or ""):
            out.add(("BillingCurrency: not an ISO 4217 code (currency_format.md)", i))

        # ---- charge periods (chargeperiodstart.md / chargeperiodend.md / billingperiod*.md)
        start, end = v("ChargePeriodStart"), v("ChargePeriodEnd")
        if start and end and not start < end:
            out.add(("ChargePeriodEnd: not after ChargePeriodStart", i))
        bstart, bend = v("BillingPeriodStart"), v("BillingPeriodEnd")
        if start and bstart and bend and not bstart <= start < bend:
            out.add(("ChargePeriodStart: outside its billing period", i))
        if v("ChargeCategory") == "Purchase" and v("ChargeFrequency") == "Usage-Based":
            out.add(("ChargeFrequency: Usage-Based on a Purchase (chargefrequency.md)", i))

        # ---- the conditional rules of charges that are not corrections. "ChargeClass is not Correction" is
        # true of a null ChargeClass (the usual one): a checker that tests ChargeClass == something, or skips
        # rows whose ChargeClass is null, checks nothing on our files.
        not_correction = v("ChargeClass") != "Correction"
        category = v("ChargeCategory")
        for name, source, categories, versions in (
            ("ConsumedQuantity", "consumedquantity.md", ("Usage",), "all"),
            ("PricingQuantity", "pricingquantity.md", ("Usage", "Purchase"), "all"),
            ("ListUnitPrice", "listunitprice.md", ("Usage", "Purchase"), "all"),
            ("SkuId", "skuid.md", ("Usage", "Purchase"), "all"),
            ("SkuPriceId", "skupriceid.md", ("Usage", "Purchase"), "all"),
            # 1.0 says it of the units directly; 1.2 ties each unit to its quantity (below).
            ("PricingUnit", "pricingunit.md (1.0)", ("Usage", "Purchase"), "1.0"),
            ("ConsumedUnit", "consumedunit.md (1.0)", ("Usage",), "1.0"),
        ):
            if versions not in ("all", version) or not not_correction or category not in categories:
                continue
            if name in columns and v(name) is None:
                out.add((f"{name}: null on a {category} row ({source})", i))
        # Quantity/unit pairs (consumedunit.md, pricingunit.md, 1.2 wording).
        for qty, unit in (("ConsumedQuantity", "ConsumedUnit"), ("PricingQuantity", "PricingUnit")):
            if unit in columns and (v(qty) is None) != (v(unit) is None):
                out.add((f"{unit}: null exactly when {qty} is null", i))
        # listunitprice.md / listcost.md / pricingquantity.md: unit price x quantity = cost.
        if v("ListUnitPrice") is not None and v("PricingQuantity") is not None:
            if _dec(v("ListUnitPrice") or "0") * _dec(v("PricingQuantity") or "0") != _dec(v("ListCost") or "0"):
                out.add(("ListCost: not ListUnitPrice x PricingQuantity", i))
            if _dec(v("ListUnitPrice") or "0") < 0:
                out.add(("ListUnitPrice: negative", i))
        # listcost.md: with no unit price, a charge unrelated to other charges has ListCost = BilledCost.
        if "ListUnitPrice" in columns and v("ListUnitPrice") is None and v("ListCost") != v("BilledCost"):
            out.add(("ListCost: not BilledCost where ListUnitPrice is null", i))
        # skumeter.md (1.1+): null when SkuId is null.
        if "SkuMeter" in columns and v("SkuId") is None and v("SkuMeter") is not None:
            out.add(("SkuMeter: not null while SkuId is null", i))
        # skupricedetails.md (1.1+): null when SkuPriceId is null.
        if "SkuPriceDetails" in columns and v("SkuPriceId") is None and v("SkuPriceDetails") is not None:
            out.add(("SkuPriceDetails: not null while SkuPriceId is null", i))
        # regionname.md (1.2): null exactly when RegionId is null.
        if "RegionName" in columns and (v("RegionId") is None) != (v("RegionName") is None):
            out.add(("RegionName: null exactly when RegionId is null", i))
        # subaccountname.md (1.2): null exactly when SubAccountId is null.
        if "SubAccountName" in columns and (v("SubAccountId") is None) != (v("SubAccountName") is None):
            out.add(("SubAccountName: null exactly when SubAccountId is null", i))
        # hostprovidername.md (1.3): not null for a deployed service that is not Tax/Adjustment.
        if "HostProviderName" in cols and v("ChargeCategory") in ("Usage", "Purchase") and v("HostProviderName") is None:
            out.add(("HostProviderName: null on a Usage row", i))
    return out


def _key_value(text: str) -> bool:
    """key_value_format.md: a JSON object with unique keys whose values are strings, numbers, booleans or null."""
    pairs: list[tuple[str, Any]] = []
    try:
        json.loads(text, object_pairs_hook=lambda p: pairs.extend(p) or dict(p))
        value = json.loads(text)
    except (ValueError, InvalidOperation):
        return False
    if not isinstance(value, dict) or len(pairs) != len(value):
        return False
    return all(isinstance(x, str | int | float | bool) or x is None for x in value.values())


def read_back(path: Path, fmt: str) -> tuple[list[str], list[dict[str, str | None]]]:
    """(column names in file order, rows as FOCUS text or None) of a file we wrote, read with a plain reader."""
    import csv

    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            return header, [{k: (x if x != "" else None) for k, x in zip(header, r, strict=True)} for r in reader]
    if fmt == "jsonl":
        lines = [json.loads(line, parse_float=Decimal, parse_int=Decimal)
                 for line in path.read_text(encoding="utf-8").splitlines()]
        header = list(lines[0]) if lines else []
        return header, [{k: normalize(x) for k, x in line.items()} for line in lines]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.column_names, [{k: normalize(x) for k, x in r.items()} for r in table.to_pylist()]
