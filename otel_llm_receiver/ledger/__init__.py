"""The ledger: the receiver's persistent memory, where every token and cent is counted exactly once.

A package of one job per module (docs/architecture.md):

* ``engine``: the seam where the SQL engine is made (SQLite connection, pragmas, transactions, writer lock);
* ``schema``: the tables and their numbered migrations;
* ``writer``: ``apply`` (one poll, one transaction, DESIGN.md invariants 1-3), pricing of deltas, pruning;
* ``reader``: totals for the emitter and rollups for budgets, signals, FOCUS and reports;
* ``check`` and ``lock``: the start-up integrity check and the single-writer guard.

The normalise step that turns records into series and points is ``otel_llm_receiver.series`` (no database),
and metric names come from ``otel_llm_receiver.names``; both are re-exported here for existing callers.

A "point" is one value of one series in one bucket: one ``UsageRecord`` yields a point per token type, one for
requests and one per other measure (``UsageRecord.measures``). Money, and billed quantities (which may be
fractional), are stored as integer nano-units (see ``model.to_nanos``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LedgerError
from ..names import (
    CURRENCY_ATTR,
    LEVEL_METRICS,
    MEASURE_OF_METRIC,
    METRIC_BILLED_QUANTITY,
    METRIC_CODE_COMMITS,
    METRIC_CODE_LINES,
    METRIC_CODE_PULL_REQUESTS,
    METRIC_CODE_SESSIONS,
    METRIC_CODE_TOKENS,
    METRIC_CODE_TOOL_ACTIONS,
    METRIC_COST,
    METRIC_COST_ESTIMATED,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_THROTTLED,
    METRIC_TOKENS,
    METRIC_TOOL_REQUESTS,
    METRIC_UNPRICED,
    MONEY_METRICS,
    NANO_METRICS,
    ROLLUP_PICO_METRICS,
)
from ..series import PICOS_PER_NANO, PricingPeriod, SeriesPricer, canonical_attrs
from .reader import (
    ExportRows,
    HourValue,
    LedgerReader,
    RollupSeries,
    SeriesHourValue,
    SeriesSum,
    SeriesTotal,
    Snapshot,
)
from .schema import LEGACY_CURRENCY_ATTR, MIGRATIONS, SCHEMA_VERSION
from .writer import UNPRICEABLE_METRICS, ApplyStats, LedgerWriter

if TYPE_CHECKING:
    from ..config_storage import StorageConfig

__all__ = [
    "CURRENCY_ATTR",
    "LEGACY_CURRENCY_ATTR",
    "LEVEL_METRICS",
    "MEASURE_OF_METRIC",
    "METRIC_BILLED_QUANTITY",
    "METRIC_CODE_COMMITS",
    "METRIC_CODE_LINES",
    "METRIC_CODE_PULL_REQUESTS",
    "METRIC_CODE_SESSIONS",
    "METRIC_CODE_TOKENS",
    "METRIC_CODE_TOOL_ACTIONS",
    "METRIC_COST",
    "METRIC_COST_ESTIMATED",
    "METRIC_COST_NON_USD",
    "METRIC_REQUESTS",
    "METRIC_THROTTLED",
    "METRIC_TOKENS",
    "METRIC_TOOL_REQUESTS",
    "METRIC_UNPRICED",
    "MIGRATIONS",
    "MONEY_METRICS",
    "NANO_METRICS",
    "PICOS_PER_NANO",
    "ROLLUP_PICO_METRICS",
    "SCHEMA_VERSION",
    "UNPRICEABLE_METRICS",
    "ApplyStats",
    "ExportRows",
    "HourValue",
    "Ledger",
    "PricingPeriod",
    "RollupSeries",
    "SeriesHourValue",
    "SeriesPricer",
    "SeriesSum",
    "SeriesTotal",
    "Snapshot",
    "canonical_attrs",
    "open_ledger",
]


class Ledger(LedgerWriter, LedgerReader):
    """One connection to the ledger file, reading and (unless ``readonly``) writing. One per thread.

    The scheduler owns the only writer; the emitter and the terminal summary open their own readers, which
    WAL lets run beside the writer without blocking it.
    """


def open_ledger(storage: StorageConfig, *, readonly: bool = False, application_name: str | None = None) -> Ledger:
    """The ledger ``storage`` names: the SQLite file at ``storage.path`` (``backend: sqlite``) or the shared
    PostgreSQL database at ``storage.dsn`` (``backend: postgresql``). Same API either way; callers above the
    ledger never ask which. ``readonly``: a reader (no writer lock on SQLite, no migration on PostgreSQL).
    ``application_name`` (PostgreSQL): how this connection shows in ``pg_stat_activity`` (e.g. the replica).
    """
    if storage.backend == "postgresql":
        if not storage.dsn:
            raise LedgerError("storage.backend postgresql needs storage.dsn")
        from .postgres.engine import PostgresLedger  # psycopg only when PostgreSQL is configured

        return PostgresLedger(storage.dsn, readonly=readonly,
                              application_name=application_name or "otel-llm-receiver")
    if storage.backend != "sqlite":
        raise LedgerError(f"unknown storage.backend {storage.backend!r} (sqlite or postgresql)")
    return Ledger(storage.path, readonly=readonly)
