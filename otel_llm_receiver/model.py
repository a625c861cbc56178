"""Canonical records: the one shape every provider normalizes into and the ledger accepts.

Times are integer Unix seconds (UTC) and bucket widths integer seconds, so bucket identity never depends on
float rounding. Token counts are integers; money is ``Decimal`` here and integer nano-units in the ledger, so a
year of cents still adds up to the cent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final, Literal

TokenType = Literal["input", "cache_read", "cache_write", "output"]
#: The token types partition all tokens: summing over them gives every token once (DESIGN.md).
TOKEN_TYPES: tuple[TokenType, ...] = ("input", "cache_read", "cache_write", "output")

CostSource = Literal["reported", "estimated"]

#: Money is kept as integer nano-units of its currency (1e-9): exact, and 9.2 billion units fit in 64 bits.
NANOS_PER_UNIT = 1_000_000_000
_NANO = Decimal(1).scaleb(-9)

#: The largest count one bucket row may report (tokens, requests, images, bytes, ...): 2^53 - 1. No bucket holds
#: 2^53 tokens, and every count stays exact as a float and far below SQLite's 64-bit integer limit after summing,
#: so a ledger total never overflows into REAL. A larger value is an implausible, malformed response.
MAX_COUNT = 2**53 - 1
#: The largest amount of money one bucket row may report, in nano-units: 2^60 (about 1.15e9 currency units).
#: Eight such rows still fit in a signed 64-bit integer; anything larger is a malformed response.
MAX_NANOS = 2**60
#: ``MAX_NANOS`` as an amount of currency, for checks on ``Decimal`` amounts before conversion.
MAX_AMOUNT = Decimal(MAX_NANOS).scaleb(-9)


def plausible_count(value: int) -> bool:
    """True when ``value`` is a count one bucket row can hold (0 <= value <= ``MAX_COUNT``)."""
    return 0 <= value <= MAX_COUNT


def plausible_amount(amount: Decimal) -> bool:
    """True when ``amount`` (currency units) is finite, non-negative and at most ``MAX_AMOUNT``."""
    return amount.is_finite() and 0 <= amount <= MAX_AMOUNT


def to_nanos(amount: Decimal | int | str) -> int:
    """Convert an amount of money to integer nano-units, rounding half-even past the ninth decimal."""
    return int((Decimal(amount) * NANOS_PER_UNIT).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nanos(nanos: int) -> Decimal:
    """The exact ``Decimal`` for an amount of nano-units."""
    return (Decimal(nanos) * _NANO).normalize() if nanos else Decimal(0)


#: A UTC day in seconds: a backfill of a day or more starts on one's boundary.
UTC_DAY = 86_400


def first_window_start(now: int, backfill: int, max_backfill: int | None = None) -> int:
    """Where a first poll (the backfill) starts: ``backfill`` before ``now``, moved back to 00:00 UTC when the
    backfill is a day or more.

    Billing APIs report cost per whole UTC day; usage read from 16:28 on beside that day's cost makes the day
    wrong in every per-token figure (a FOCUS row's quantity, a reconciliation). Starting at midnight makes the
    first day whole. A provider that keeps only ``max_backfill`` of data starts at the next midnight instead,
    so its first day is whole too (and one shorter).
    """
    start = now - backfill
    if backfill >= UTC_DAY:
        start -= start % UTC_DAY
        if max_backfill is not None and start < now - max_backfill:
            start += UTC_DAY
    if max_backfill is not None:
        start = max(start, now - max_backfill)
    return start


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open time range ``[start, end)`` in Unix seconds that a poll asks a provider for."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"window end {self.end} is before its start {self.start}")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Usage of one model by one tenancy in one time bucket, as the provider reported it at poll time.

    ``tokens`` maps token types (``TOKEN_TYPES``) to counts; a type that is absent was not reported, which is
    different from a reported zero only in that no series is created for it. ``dimensions`` holds extra bounded
    attributes (e.g. ``llm.cache.ttl``) that split the series further. ``measures`` holds other integer
    usage measures by catalog metric name (``llm.usage.images``, ``llm.usage.tool_requests``,
    ``llm.usage.throttled_requests``, ``llm.usage.storage``, ...), in the metric's unit: each becomes a series
    with the record's attributes, so a provider adds a measure without a new record type.

    ``sparse`` records create no series for zero values: a zero still overwrites a bucket of a series the
    ledger already has (so a bucket corrected down to zero is exact), but a part that is always zero (e.g. the
    audio tokens of a text-only model) adds no series. Providers use it for splits they must report in full.
    """

    provider: str
    model: str
    operation: str
    tenancy_id: str
    bucket_start: int
    bucket_width: int
    tokens: Mapping[str, int] = field(default_factory=dict)
    requests: int | None = None
    tenant: str | None = None
    dimensions: Mapping[str, str] = field(default_factory=dict)
    measures: Mapping[str, int] = field(default_factory=dict)
    sparse: bool = False


#: ``UsageRecord``'s fields in declaration order: the parameters of ``usage_record``, which sets exactly these.
USAGE_RECORD_FIELDS: Final = ("provider", "model", "operation", "tenancy_id", "bucket_start", "bucket_width",
                              "tokens", "requests", "tenant", "dimensions", "measures", "sparse")
if (tuple(f.name for f in fields(UsageRecord)) != USAGE_RECORD_FIELDS or hasattr(UsageRecord, "__post_init__")
        or not all(f.init for f in fields(UsageRecord))):  # pragma: no cover (a programming error)
    raise TypeError("UsageRecord changed: update USAGE_RECORD_FIELDS and usage_record with it")


def _usage_record_builder() -> Callable[
    [str, str, str, str, int, int, Mapping[str, int], int | None, str | None, Mapping[str, str],
     Mapping[str, int], bool],
    UsageRecord,
]:
    """``usage_record``: the slot descriptors of the final (slotted) class, bound once."""
    new = object.__new__
    (provider_, model_, operation_, tenancy_, start_, width_, tokens_, requests_, tenant_, dims_, measures_,
     sparse_) = (getattr(UsageRecord, name).__set__ for name in USAGE_RECORD_FIELDS)

    def usage_record(
        provider: str, model: str, operation: str, tenancy_id: str, bucket_start: int, bucket_width: int,
        tokens: Mapping[str, int], requests: int | None, tenant: str | None, dimensions: Mapping[str, str],
        measures: Mapping[str, int], sparse: bool,
    ) -> UsageRecord:
        record: UsageRecord = new(UsageRecord)
        provider_(record, provider)
        model_(record, model)
        operation_(record, operation)
        tenancy_(record, tenancy_id)
        start_(record, bucket_start)
        width_(record, bucket_width)
        tokens_(record, tokens)
        requests_(record, requests)
        tenant_(record, tenant)
        dims_(record, dimensions)
        measures_(record, measures)
        sparse_(record, sparse)
        return record

    return usage_record


#: ``UsageRecord(provider, model, operation, tenancy_id, bucket_start, bucket_width, tokens, requests, tenant,
#: dimensions, measures, sparse)`` for hot paths (a provider mapping hundreds of thousands of rows a poll): every
#: field given, positionally, and the same object the constructor makes, at about half its cost.
#:
#: Why: a frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__`` looked up by
#: name, which is most of the cost of a record; this sets each slot through its descriptor directly. It does no
#: more than ``__init__`` does (``UsageRecord`` has no ``__post_init__``, no field without ``init``; the field
#: check above fails at import if the fields change), and ``tests/test_model.py`` compares the two on
#: randomized records.
usage_record = _usage_record_builder()


@dataclass(frozen=True, slots=True)
class UsageColumns:
    """Many ``UsageRecord``s of one identity, column-wise: one row per bucket start, one column per measure.

    Row ``i`` is the record ``UsageRecord(provider, model, operation, tenancy_id, starts[i], bucket_width,
    {t: tokens[t][i] for t in tokens}, requests[i] if requests is not None else None, tenant, dimensions,
    {m: measures[m][i] for m in measures}, sparse)`` (``records`` makes them). Every column holds a value for
    every start: a row that lacks a measure belongs in another block.

    Why: a large organisation's backfill is hundreds of thousands of API rows a poll, each of which became four
    records (one per modality, one for requests): building those objects, and reading their fields back one by
    one in the ledger's planner, cost more than decoding the JSON. A provider that reads many rows of one group
    hands them over as columns; the planner resolves the identity's series once per block and turns each column
    into points without looking at a row on its own. Columns are any sequences (tuples, lists); they are not
    copied.
    """

    provider: str
    model: str
    operation: str
    tenancy_id: str
    bucket_width: int
    starts: Sequence[int]
    tokens: Mapping[str, Sequence[int]] = field(default_factory=dict)
    requests: Sequence[int] | None = None
    tenant: str | None = None
    dimensions: Mapping[str, str] = field(default_factory=dict)
    measures: Mapping[str, Sequence[int]] = field(default_factory=dict)
    sparse: bool = False

    def __post_init__(self) -> None:
        n = len(self.starts)
        columns = [*self.tokens.values(), *self.measures.values(),
                   *(() if self.requests is None else (self.requests,))]
        if any(len(column) != n for column in columns):
            raise ValueError(f"usage columns of {n} bucket starts have a column of another length")

    def __len__(self) -> int:
        return len(self.starts)

    def records(self) -> Iterator[UsageRecord]:
        """The records the block stands for, one per bucket start, in order."""
        requests = self.requests
        for i, start in enumerate(self.starts):
            yield UsageRecord(
                self.provider, self.model, self.operation, self.tenancy_id, start, self.bucket_width,
                {t: column[i] for t, column in self.tokens.items()}, None if requests is None else requests[i],
                self.tenant, self.dimensions, {m: column[i] for m, column in self.measures.items()}, self.sparse,
            )


@dataclass(frozen=True, slots=True)
class CostRecord:
    """Money spent by one tenancy (and line item / model, when the provider says) in one time bucket.

    ``quantity`` / ``quantity_unit`` are what the provider billed for that money (e.g. ``10000`` ``tokens``),
    when its billing API says: they become ``llm.usage.billed_quantity`` so that cost per unit can be checked.
    """

    provider: str
    tenancy_id: str
    bucket_start: int
    bucket_width: int
    amount: Decimal
    currency: str = "USD"
    model: str | None = None
    line_item: str | None = None
    source: CostSource = "reported"
    tenant: str | None = None
    dimensions: Mapping[str, str] = field(default_factory=dict)
    quantity: Decimal | None = None
    quantity_unit: str | None = None


#: The sources of a provider instance's data, each polled (and failing) on its own: ``llm.data.source`` on
#: ``llm.receiver.polls``. ``usage`` carries the instance's poll cursor; the others keep their own.
USAGE: Final = "usage"
COST: Final = "cost"
CLAUDE_CODE: Final = "claude_code"


@dataclass(frozen=True, slots=True)
class SourceFailure:
    """Why one source of a poll failed (its ``error.type`` and one redactable line), while the others landed."""

    error_type: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of one provider instance produced; applied to the ledger in one transaction.

    ``names`` resolves ids to display names, keyed by ``(kind, id)`` (kind ``tenancy`` for now).
    ``complete_until`` is the end of the newest bucket the provider considers complete: the next poll
    re-reads ``lookback`` before it. ``cursors`` are extra per-source cursors saved in the same transaction.
    """

    usage: Sequence[UsageRecord] = ()
    costs: Sequence[CostRecord] = ()
    #: More usage, column-wise (``UsageColumns``): applied exactly as the records each block stands for. A
    #: provider may hand over any mix of ``usage`` and ``usage_columns``.
    usage_columns: Sequence[UsageColumns] = ()
    names: Mapping[tuple[str, str], str] = field(default_factory=dict)
    complete_until: int | None = None
    cursors: Mapping[str, str] = field(default_factory=dict)
    #: How far the provider's data reach, when bucket ends overstate it (a daily cost bucket "ends" tomorrow).
    data_until: int | None = None
    #: How far each of the provider's sources reaches (usage endpoint, cost API, ...), for a data-lag gauge per
    #: source: one stale endpoint is visible even while the others are current.
    source_data_until: Mapping[str, int] = field(default_factory=dict)
    #: Rows a source reported that matched nothing the provider knows (an Azure cost row of no discovered
    #: account), by source (``usage``, ``cost``): kept under their own id, and counted here
    #: (``llm.receiver.unmatched_records``) so that they are seen, never silently dropped.
    unmatched_records: Mapping[str, int] = field(default_factory=dict)
    #: The sources this poll read (successfully): each counts one successful poll of its own. A provider that
    #: does not say read its usage.
    polled_sources: Sequence[str] = (USAGE,)
    #: Sources that failed while the others landed: their data are absent from this result, their cursors
    #: did not move, and the scheduler counts and logs each one (a failed ``usage`` keeps the poll cursor).
    failed_sources: Mapping[str, SourceFailure] = field(default_factory=dict)

    @property
    def newest_bucket_end(self) -> int | None:
        """End of the newest bucket in this result (for the data-lag gauge), or None when it is empty."""
        if self.data_until is not None:
            return self.data_until
        ends = [r.bucket_start + r.bucket_width for r in self.usage]
        ends += [max(b.starts) + b.bucket_width for b in self.usage_columns if b.starts]
        ends += [c.bucket_start + c.bucket_width for c in self.costs]
        return max(ends) if ends else None

    @property
    def usage_count(self) -> int:
        """How many usage records this result stands for (``usage`` and the rows of ``usage_columns``)."""
        return len(self.usage) + sum(len(b.starts) for b in self.usage_columns)

    def usage_records(self) -> Iterator[UsageRecord]:
        """Every usage record of this result: ``usage``, then each block of ``usage_columns`` row by row (for
        readers that want records; the ledger takes the columns as they are)."""
        yield from self.usage
        for block in self.usage_columns:
            yield from block.records()
