"""The columns a FOCUS file of each supported version holds, in order, with their data types.

FOCUS defines Mandatory, Conditional and Recommended columns. A file carries every Mandatory column of its
version, the Conditional and Recommended ones whose condition our data meets (sub accounts, regions, SKUs, tags,
consumed quantities, list prices), and then our own ``x_`` columns (custom columns MUST be prefixed ``x_`` and
SHOULD follow the FOCUS ones). Columns whose condition we never meet (commitment discounts, capacity
reservations, pricing currencies, allocations, contracts) are left out rather than written all-null, because a
present Conditional column brings its nullability rules with it. Two are present although always null:
``SkuPriceDetails`` (1.2 requires it when the file publishes list prices; it may be null) and ``InvoiceId``
(Recommended in 1.2; no usage or cost API names the invoice).

The column tables this was written from are test data (``tests/support/focus_spec_*.yaml``, each naming the spec
file it came from); ``tests/test_focus_conformance.py`` checks every output against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["string", "decimal", "datetime", "json"]
VERSIONS: Final = ("1.0", "1.2", "1.3")
DEFAULT_VERSION: Final = "1.2"
#: The file formats ``formats`` writes, and each one's file name suffix (here, with the versions: the ``focus``
#: command's options need them, and ``--help`` must not load the writers).
FORMATS: Final = ("csv", "parquet", "jsonl")
SUFFIX: Final = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    since: str = "1.0"  # first FOCUS version that defines it (custom columns: "1.0")


# FOCUS columns, alphabetical like the spec's own column list.
_FOCUS: Final[tuple[Column, ...]] = (
    Column("BilledCost", "decimal"),
    Column("BillingAccountId", "string"),
    Column("BillingAccountName", "string"),
    Column("BillingCurrency", "string"),
    Column("BillingPeriodEnd", "datetime"),
    Column("BillingPeriodStart", "datetime"),
    Column("ChargeCategory", "string"),
    Column("ChargeClass", "string"),
    Column("ChargeDescription", "string"),
    Column("ChargeFrequency", "string"),
    Column("ChargePeriodEnd", "datetime"),
    Column("ChargePeriodStart", "datetime"),
    Column("ConsumedQuantity", "decimal"),
    Column("ConsumedUnit", "string"),
    Column("ContractedCost", "decimal"),
    Column("EffectiveCost", "decimal"),
    Column("HostProviderName", "string", since="1.3"),
    Column("InvoiceId", "string", since="1.2"),
    Column("InvoiceIssuerName", "string"),
    Column("ListCost", "decimal"),
    Column("ListUnitPrice", "decimal"),
    Column("PricingQuantity", "decimal"),
    Column("PricingUnit", "string"),
    Column("ProviderName", "string"),
    Column("PublisherName", "string"),
    Column("RegionId", "string"),
    Column("RegionName", "string"),
    Column("ServiceCategory", "string"),
    Column("ServiceName", "string"),
    Column("ServiceProviderName", "string", since="1.3"),
    Column("ServiceSubcategory", "string", since="1.1"),
    Column("SkuId", "string"),
    Column("SkuMeter", "string", since="1.1"),
    Column("SkuPriceDetails", "json", since="1.1"),
    Column("SkuPriceId", "string"),
    Column("SubAccountId", "string"),
    Column("SubAccountName", "string"),
    Column("Tags", "json"),
)
# Ours: x_ prefixed, after the FOCUS columns.
_CUSTOM: Final[tuple[Column, ...]] = (
    Column("x_ChargeKey", "string"),     # stable id of the row's key (instance, series, day): upsert on it
    Column("x_CostSource", "string"),    # reported (the provider's billing API) or estimated (tokens x list price)
    Column("x_CoverageStart", "datetime"),  # where a day's usage data starts mid-day (partial quantities); else null
    Column("x_Dimensions", "json"),      # the series' other bounded attributes (service tier, cache TTL, ...)
    Column("x_ListPriceSource", "string"),  # published (the price catalog) or derived (BilledCost / quantity)
    Column("x_Model", "string"),
    Column("x_Operation", "string"),
    Column("x_TokenType", "string"),     # input, cache_read, cache_write, output; null for other charges
)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def columns(version: str) -> tuple[Column, ...]:
    """The columns of a file of FOCUS ``version``, in file order."""
    if version not in VERSIONS:
        raise ValueError(f"FOCUS version {version!r} is not supported (one of {', '.join(VERSIONS)})")
    return tuple(c for c in _FOCUS if _key(c.since) <= _key(version)) + _CUSTOM


def column_names(version: str) -> tuple[str, ...]:
    return tuple(c.name for c in columns(version))
