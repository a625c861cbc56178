"""The ``demo`` provider: deterministic synthetic usage that behaves like a real provider's usage API.

It exists so that ``otel-llm-receiver demo`` works with no account and no key, and so that tests have a
source whose ground truth is known exactly. Every value is a pure function of ``(seed, series, bucket,
as_of)`` where ``as_of`` is the poll's window end, and it misbehaves the way real APIs do:

* buckets arrive late: a bucket shows up half a bucket width after it starts;
* buckets fill in: a bucket's values grow linearly until one bucket width after it ends, then stay final,
  so successive polls re-read grown buckets (the ledger must count only the growth);
* reported cost comes daily and late: a UTC day's cost appears one hour after the day ends.

The organisation: three projects (tenancies), six (tenancy, model) pairs of chat and embeddings traffic with a
business-hours daily rhythm (peak 13:00 UTC), quieter weekends, cached input on most chat models, and one
injected spike: every Wednesday 14:00-15:00 UTC the ``proj-research`` project's ``gpt-4o`` traffic runs at
8x (a runaway batch job), so any 7-day window contains exactly one spike for anomaly detection to find (the
``demo`` command backfills 14 days, so that week has a week of baseline before it).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from ..chunks import poll_now, reads_secondary, whole_window
from ..config_parse import Option
from ..config_providers import ProviderConfig
from ..errors import ProviderError
from ..model import USAGE, CostRecord, PollResult, UsageRecord, Window
from ..progress import report_begin, report_page
from .base import DAY, HOUR, Provider
from .descriptors import genai_name
from .options import ProviderOptions, option

PROVIDER_NAME = genai_name("demo")

TENANCIES: dict[str, str] = {
    "proj-search": "Search",
    "proj-support": "Support Bot",
    "proj-research": "Research",
}


@dataclass(frozen=True, slots=True)
class Workload:
    """One (tenancy, model) pair's traffic shape."""

    tenancy: str
    model: str
    operation: str
    input_per_minute: int  # all input-side tokens (uncached + cache read + cache write) at the daily peak
    output_ratio: float  # output tokens per input-side token
    cache_read_share: float  # share of input-side tokens read from the cache
    cache_write_share: float  # share of input-side tokens written to the cache
    prompt_tokens: int  # input-side tokens per request


WORKLOADS: tuple[Workload, ...] = (
    Workload("proj-search", "gpt-4o-mini", "chat", 12_000, 0.15, 0.40, 0.0, 1_500),
    Workload("proj-search", "text-embedding-3-small", "embeddings", 30_000, 0.0, 0.0, 0.0, 500),
    Workload("proj-support", "gpt-4o", "chat", 6_000, 0.25, 0.30, 0.0, 2_000),
    Workload("proj-support", "claude-sonnet-4", "chat", 4_000, 0.20, 0.50, 0.05, 3_000),
    Workload("proj-research", "gpt-4o", "chat", 2_500, 0.30, 0.10, 0.0, 4_000),
    Workload("proj-research", "claude-opus-4", "chat", 800, 0.30, 0.20, 0.05, 6_000),
)

#: The documented anomaly: (weekday Monday=0, hour UTC, tenancy, model, factor).
SPIKE = (2, 14, "proj-research", "gpt-4o", 8)

#: Demo list prices in USD per million tokens, by token type (roughly public list prices of late 2025).
PRICES_PER_MTOK: dict[str, dict[str, Decimal]] = {
    "gpt-4o-mini": {"input": Decimal("0.15"), "cache_read": Decimal("0.075"), "output": Decimal("0.60")},
    "text-embedding-3-small": {"input": Decimal("0.02")},
    "gpt-4o": {"input": Decimal("2.50"), "cache_read": Decimal("1.25"), "output": Decimal("10.00")},
    "claude-sonnet-4": {
        "input": Decimal("3.00"), "cache_read": Decimal("0.30"), "cache_write": Decimal("3.75"),
        "output": Decimal("15.00"),
    },
    "claude-opus-4": {
        "input": Decimal("15.00"), "cache_read": Decimal("1.50"), "cache_write": Decimal("18.75"),
        "output": Decimal("75.00"),
    },
}

COST_DELAY = HOUR  # a day's cost appears this long after the day ends
COST_LOOKBACK = 2 * DAY  # every poll re-reads this much of the cost report, like real billing APIs need


def _unit(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) that depends only on its inputs (stable across runs and platforms)."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _rhythm(t: int) -> float:
    """Traffic level at time t: business-hours peak at 13:00 UTC, a floor at night, quieter weekends."""
    hour = (t % DAY) / HOUR
    daily = 0.25 + 0.75 * max(0.0, math.sin(math.pi * (hour - 7) / 12)) if 7 <= hour <= 19 else 0.25
    weekday = (t // DAY + 3) % 7  # 1970-01-01 was a Thursday (3)
    return daily * (0.35 if weekday >= 5 else 1.0)


def _spike(t: int, w: Workload) -> int:
    weekday, hour, tenancy, model, factor = SPIKE
    in_spike = (t // DAY + 3) % 7 == weekday and (t % DAY) // HOUR == hour
    return factor if in_spike and w.tenancy == tenancy and w.model == model else 1


def full_bucket(seed: int, w: Workload, start: int, width: int) -> tuple[dict[str, int], int]:
    """The final (settled) token counts by type and the request count of one bucket."""
    mid = start + width // 2
    noise = 0.8 + 0.4 * _unit(seed, w.tenancy, w.model, start, width)
    input_side = int(w.input_per_minute * width / 60 * _rhythm(mid) * noise * _spike(mid, w))
    cache_read = int(input_side * w.cache_read_share)
    cache_write = int(input_side * w.cache_write_share)
    tokens = {"input": input_side - cache_read - cache_write}
    if w.cache_read_share:
        tokens["cache_read"] = cache_read
    if w.cache_write_share:
        tokens["cache_write"] = cache_write
    if w.output_ratio:
        tokens["output"] = int(input_side * w.output_ratio * (0.9 + 0.2 * _unit(seed, "out", w.model, start)))
    requests = input_side // w.prompt_tokens
    return tokens, requests


def bucket_as_of(
    seed: int, w: Workload, start: int, width: int, as_of: int
) -> tuple[dict[str, int], int] | None:
    """What the demo API reports for a bucket at time ``as_of``: None before it arrives, then filling in."""
    elapsed = as_of - start
    if elapsed < width // 2:
        return None
    tokens, requests = full_bucket(seed, w, start, width)
    if elapsed >= 2 * width:
        return tokens, requests
    # Integer arithmetic: monotone in as_of, exact, and the same on every platform.
    return {t: v * elapsed // (2 * width) for t, v in tokens.items()}, requests * elapsed // (2 * width)


def daily_cost(seed: int, w: Workload, day_start: int) -> Decimal:
    """The demo's reported cost of one workload for one UTC day, from hourly token volumes and list prices."""
    prices = PRICES_PER_MTOK[w.model]
    total = Decimal(0)
    for hour in range(24):
        tokens, _ = full_bucket(seed, w, day_start + hour * HOUR, HOUR)
        total += sum((prices.get(t, Decimal(0)) * n for t, n in tokens.items()), Decimal(0))
    return (total / 1_000_000).quantize(Decimal("0.000001"))


def usage_records(
    seed: int, workloads: tuple[Workload, ...], window: Window, width: int, as_of: int | None = None
) -> Iterator[UsageRecord]:
    """Every usage record the demo API returns for ``window`` as of ``as_of`` (default: ``window.end``)."""
    first = window.start - window.start % width
    when = window.end if as_of is None else as_of
    for start in range(first, window.end, width):
        for w in workloads:
            values = bucket_as_of(seed, w, start, width, when)
            if values is not None:
                yield UsageRecord(
                    provider=PROVIDER_NAME, model=w.model, operation=w.operation, tenancy_id=w.tenancy,
                    bucket_start=start, bucket_width=width, tokens=values[0], requests=values[1],
                )


def cost_records(seed: int, workloads: tuple[Workload, ...], window: Window) -> Iterator[CostRecord]:
    """Daily cost records for the days that overlap the window (re-read COST_LOOKBACK) and have arrived."""
    start = window.start - COST_LOOKBACK
    for day in range(start - start % DAY, window.end, DAY):
        if window.end < day + DAY + COST_DELAY:
            break
        for w in workloads:
            yield CostRecord(
                provider=PROVIDER_NAME, tenancy_id=w.tenancy, bucket_start=day, bucket_width=DAY,
                amount=daily_cost(seed, w, day), currency="USD", model=w.model, line_item="tokens",
            )


@dataclass(frozen=True, kw_only=True)
class DemoOptions(ProviderOptions):
    """A ``demo`` section's own keys, written once (no HTTP: the data is made up)."""

    seed: int = option("int", 42, description="Seed of the synthetic data: same seed, same numbers.")
    models: tuple[str, ...] | None = option(
        "list[str]", None, choices=tuple(sorted({w.model for w in WORKLOADS})),
        description="Only these models (default: all).",
    )
    bucket_width: float = option("duration", 60.0, description="Usage bucket width (1m .. 1d).")

    def validate(self) -> list[str]:
        width = int(self.bucket_width)
        if width < 60 or DAY % width:
            return [f"bucket_width: must divide a day and be at least 1m, not {width}s"]
        return []


class DemoProvider(Provider):
    """Synthetic usage for demos and tests (see the module docstring for the shape of the data)."""

    TYPE: ClassVar[str] = "demo"
    OPTIONS_TYPE: ClassVar[type[DemoOptions]] = DemoOptions
    OPTIONS: ClassVar[Mapping[str, Option]] = DemoOptions.schema()
    DEFAULT_BACKFILL: ClassVar[float] = 7 * DAY
    REVISION_HORIZON: ClassVar[float] = COST_LOOKBACK + DAY

    def __init__(self, config: ProviderConfig, options: DemoOptions | None = None) -> None:
        super().__init__(config)
        self.options = options = options if options is not None else DemoOptions.from_config(config)
        problems = options.validate()
        if problems:
            raise ProviderError(f"{self.name}: " + "; ".join(problems), provider=self.name, error_type="config")
        self.seed = options.seed
        self.workloads = tuple(w for w in WORKLOADS if not options.models or w.model in options.models)
        self.width = int(options.bucket_width)

    @property
    def lookback(self) -> float:
        # Buckets settle one width after they end: re-read well past that unless configured otherwise.
        return self.config.lookback if self.config.lookback is not None else 5 * self.width

    async def fetch(self, window: Window) -> PollResult:
        # A day of buckets at a time, like a paging API: each "page" is reported to a backfill's progress and
        # the event loop gets a turn between them (the demo's summary shows the backfill as it goes).
        # In a chunk of a long poll (chunks.py) the data are as of the poll's "now", not the chunk's end, and
        # the daily costs are read once, in the first chunk, over the whole window.
        usage: list[UsageRecord] = []
        now = poll_now(window)
        first = window.start - window.start % self.width
        report_begin(USAGE, first, window.end)
        for start in range(first, window.end, DAY):
            end = min(start + DAY, window.end)
            page = list(usage_records(self.seed, self.workloads, Window(start, end), self.width, now))
            usage += page
            report_page(USAGE, records=len(page), newest=end, start=first, end=window.end)
            await asyncio.sleep(0)
        costs = list(cost_records(self.seed, self.workloads, whole_window(window))) if reads_secondary() else []
        settled = window.end - 2 * self.width
        complete_until = settled - settled % self.width + self.width
        return PollResult(
            usage=usage,
            costs=costs,
            names={("tenancy", t): n for t, n in TENANCIES.items()},
            complete_until=min(complete_until, window.end),
        )
