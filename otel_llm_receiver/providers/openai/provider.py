"""The ``openai`` provider: organization usage (every type), daily costs, and project names.

One poll reads, for the scheduler's window ``[start, now)``:

* every enabled usage type from ``start`` aligned down to ``bucket_width`` (an unaligned ``start_time`` makes
  the API's first bucket start there, so the same hour would show up under two keys and count twice), with
  ``bucket_width`` always sent (the API's default is ``1d``) and the page ``limit`` the API allows per width;
* costs (``1d`` buckets only) from ``now - cost_lookback``, or ``now - cost_backfill`` on a first poll or after
  an outage as long as the backfill: OpenAI finalises a day's cost well after the day ends, so cost is
  re-read much further back than usage; the ledger turns re-reads into nothing or into the exact difference;
* the projects list (archived included) when the cached names are older than ``names_ttl`` or an unknown
  project shows up; a failed lookup is logged and never fails the poll.

Usage and costs are separate sources, read side by side: a failure of one never blocks the other (the failed
one is returned in ``PollResult.failed_sources``). The cost source keeps its own cursor (``cost``: the end of
its last successful read), so after a cost outage the next read reaches back to cover it.

All requests go through the shared ``ApiClient`` (429 + ``Retry-After``, 5xx and timeouts retried with backoff;
other 4xx fail the poll with their ``error.type``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping
from contextlib import aclosing
from typing import Any, ClassVar

from ...chunks import reads_secondary, whole_window
from ...config_parse import Option
from ...config_providers import ProviderConfig
from ...errors import ProviderError, ResponseShapeError
from ...model import COST, USAGE, CostRecord, PollResult, SourceFailure, UsageColumns, UsageRecord, Window
from ...progress import report_begin
from ..base import DAY, HOUR, PROBE_WINDOW, ProbeResult, Provider, read_source
from ..http import client_from_config
from . import pages
from .endpoints import (
    COST_PAGE_LIMIT,
    USAGE_ENDPOINTS,
    USAGE_PAGE_LIMITS,
    UsageEndpoint,
    group_by,
)
from .fields import mapping
from .keys import RowKeys
from .normalize import ALL_PROJECTS, UNKNOWN_PROJECT, Notes, Row, cost
from .options import BUCKET_WIDTHS, MAX_COST_LOOKBACK, OpenAIOptions
from .reader import UsageReader

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.openai.com"
COST_GROUP_BY = ("project_id", "line_item")
#: Concurrent requests of one poll: the endpoints are independent, and OpenAI rate-limits per organization.
CONCURRENCY = 4
#: After a failed names lookup, wait at least this long (or names_ttl, if shorter) before trying again.
NAMES_RETRY = 300.0
_AUTH_HINT = (
    " (the usage and costs APIs need an OpenAI Admin API key, sk-admin-...; project and user keys are refused)"
)


class OpenAIProvider(Provider):
    """OpenAI organization usage and costs (see the module docstring and docs/providers/openai.md)."""

    TYPE: ClassVar[str] = "openai"
    OPTIONS_TYPE: ClassVar[type[OpenAIOptions]] = OpenAIOptions
    OPTIONS: ClassVar[Mapping[str, Option]] = OpenAIOptions.schema()
    DEFAULT_LOOKBACK: ClassVar[float] = 2 * HOUR
    DEFAULT_BACKFILL: ClassVar[float] = DAY
    #: Costs are re-read up to 7 days back (cost_lookback): bucket rows must live a day longer than that.
    REVISION_HORIZON: ClassVar[float] = 8 * DAY
    MAX_COST_LOOKBACK: ClassVar[float] = MAX_COST_LOOKBACK
    SOURCES: ClassVar[tuple[str, ...]] = (USAGE, COST)

    def __init__(self, config: ProviderConfig, options: OpenAIOptions | None = None) -> None:
        """``options`` default to the section's own (``OpenAIOptions.from_config``); invalid ones are refused
        with the ``key: message`` lines of ``OpenAIOptions.validate`` (``check`` reports the same lines)."""
        super().__init__(config)
        self.options = options = options if options is not None else OpenAIOptions.from_config(config)
        problems = options.validate()
        if problems:
            raise ProviderError(f"{self.name}: " + "; ".join(problems), provider=self.name, error_type="config")
        self.width = BUCKET_WIDTHS[options.bucket_width]
        self.endpoints: tuple[UsageEndpoint, ...] = tuple(
            e for e in USAGE_ENDPOINTS if e.name in options.usage_endpoints
        )
        self.costs = options.costs
        self.dimensions: tuple[str, ...] = tuple(dict.fromkeys(options.dimensions))
        self.cost_lookback = options.cost_lookback
        self.cost_backfill = options.cost_backfill
        self.names_ttl = options.names_ttl
        self.project_ids: tuple[str, ...] = tuple(options.project_ids or ())
        base_url = (options.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        base_url = base_url.removesuffix("/v1")  # paths carry /v1 already
        self.client = client_from_config(
            provider=self.name, base_url=base_url, headers={"authorization": f"Bearer {options.admin_key}"},
            options=options, requests=self.api_requests,
        )
        self._names: dict[str, str] = {}
        self._names_at = float("-inf")  # monotonic time of the last successful lookup
        self._names_retry_at = float("-inf")
        self._semaphore = asyncio.Semaphore(CONCURRENCY)
        self._source_ends: dict[str, int] = {}  # this poll's newest bucket end per endpoint
        self._cost_read_until: int | None = None  # end of the last successful cost read (the cost cursor)

    # -- the poll ----------------------------------------------------------------------------------------------
    @property
    def data_sources(self) -> tuple[str, ...]:
        return self.SOURCES if self.costs else (USAGE,)

    def restore(self, cursors: Mapping[str, str]) -> None:
        """The cost source's cursor (the end of its last successful read): after a cost outage the next read
        reaches back from there, so no day is skipped while usage went on."""
        self._cost_read_until = None  # also called after a failed poll: what was not committed never happened
        raw = cursors.get(COST)
        if raw is not None:
            try:
                self._cost_read_until = int(raw)
            except ValueError:
                log.warning("%s: ignoring unreadable cost cursor %r", self.name, raw)

    def cost_start(self, window: Window) -> int:
        """First day the cost read asks for: ``cost_lookback`` back (``cost_backfill`` on a first poll or after
        an outage as long as the backfill), and never later than ``cost_lookback`` before its last success."""
        now = window.end
        catch_up = window.end - window.start >= self.backfill
        start = min(window.start, now - int(self.cost_backfill if catch_up else self.cost_lookback))
        if self._cost_read_until is not None:
            floor = now - int(max(self.cost_backfill, self.cost_lookback))
            start = min(start, max(floor, self._cost_read_until - int(self.cost_lookback)))
        return start - start % DAY

    async def fetch(self, window: Window) -> PollResult:
        now = window.end
        usage_start = window.start - window.start % self.width
        notes = Notes()
        self._source_ends = {}
        failed: dict[str, SourceFailure] = {}
        reads: list[Awaitable[Any]] = [read_source(USAGE, self._all_usage(usage_start, now, notes), failed)]
        # In a chunk of a long poll (chunks.py) costs are read once, in the first chunk, over the whole window.
        costs_now = self.costs and reads_secondary()
        whole = whole_window(window)
        if costs_now:
            reads.append(read_source(
                COST, self._cost_source(self.cost_start(whole), whole.end, notes), failed))
        # usage and cost are separate sources, read side by side: a failure of one never blocks the other
        found = await asyncio.gather(*reads)
        usage, blocks = found[0] or ([], [])
        costs: list[CostRecord] = (found[1] or []) if costs_now else []
        polled = [source for source, got in zip((USAGE, COST), found, strict=False) if got is not None]
        cursors = {COST: str(whole.end)} if COST in polled else {}
        if COST in polled:
            self._cost_read_until = whole.end
        self._log_notes(notes)
        tenancies = {r.tenancy_id for r in usage} | {b.tenancy_id for b in blocks} | {c.tenancy_id for c in costs}
        return PollResult(
            usage=usage,
            costs=costs,
            usage_columns=blocks,
            names=await self._names_for(tenancies),
            complete_until=now - now % self.width,
            source_data_until={source: min(end, now) for source, end in self._source_ends.items()},
            cursors=cursors,
            polled_sources=polled,
            failed_sources=failed,
        )

    async def _all_usage(
        self, start: int, end: int, notes: Notes
    ) -> tuple[list[UsageRecord], list[UsageColumns]]:
        """Every enabled usage type, as records and blocks (``_usage``); one endpoint failing fails the usage
        source (the others are cancelled)."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._usage(e, start, end, notes)) for e in self.endpoints]
        except* Exception as failures:  # report the one that failed
            raise self._one_error(failures) from None
        return ([record for task in tasks for record in task.result()[0]],
                [block for task in tasks for block in task.result()[1]])

    async def _cost_source(self, start: int, end: int, notes: Notes) -> list[CostRecord]:
        try:
            return await self._costs(start, end, notes)
        except ResponseShapeError as exc:
            raise ProviderError(f"bad response: {exc}", provider=self.name, error_type="bad_response") from None

    async def _buckets(
        self, path: str, label: str, params: list[tuple[str, Any]], *, decimals: bool = False
    ) -> AsyncGenerator[pages.Bucket, None]:
        """Every bucket of one query, page after page, each page handed on as soon as it is read (so that it is
        normalised and freed before the next one arrives: one page's JSON in memory at a time, not all)."""
        span = dict(params)  # counted in the backfill's progress before it waits its turn (CONCURRENCY)
        report_begin(label, span.get("start_time"), span.get("end_time"))
        newest: int | None = None
        async with self._semaphore:
            try:
                async for bucket in pages.buckets(self.client, path, label, params, decimals=decimals):
                    newest = bucket.end_time if newest is None else max(newest, bucket.end_time)
                    yield bucket
                if newest is not None:  # how current this endpoint is: the end of the newest bucket it returned
                    self._source_ends[label] = newest
            except ProviderError as exc:
                if exc.error_type == "auth":
                    raise ProviderError(str(exc) + _AUTH_HINT, provider=self.name, error_type="auth") from None
                raise

    async def _usage(
        self, endpoint: UsageEndpoint, start: int, end: int, notes: Notes
    ) -> tuple[list[UsageRecord], list[UsageColumns]]:
        """Every record of one usage type for buckets ``[start, end)``: the rows read one by one as records, the
        buckets read whole as ``UsageColumns`` blocks (``reader.UsageReader``)."""
        width = self.width
        grouped = group_by(endpoint, self.dimensions)
        n_buckets = -(-(end - start) // width)
        params: list[tuple[str, Any]] = [
            ("start_time", start), ("end_time", end), ("bucket_width", _width_name(width)),
            ("limit", max(1, min(USAGE_PAGE_LIMITS[width], n_buckets))),
        ]
        params += [("group_by", g) for g in grouped]
        params += [("project_ids", p) for p in self.project_ids]
        records: list[UsageRecord] = []
        reader = UsageReader(endpoint.mapper, endpoint.result_object, grouped, width, notes)
        async with aclosing(self._buckets(endpoint.path, endpoint.name, params)) as buckets:
            async for bucket in buckets:
                _check_bucket(bucket, start, width)
                reader.bucket(bucket.start_time, bucket.results, bucket.path, records)
        return records, reader.blocks()

    async def _costs(self, start: int, end: int, notes: Notes) -> list[CostRecord]:
        """Daily cost records for ``[start, end)``, grouped by project and line item."""
        grouped = COST_GROUP_BY + (("api_key_id",) if "api_key" in self.dimensions else ())
        params: list[tuple[str, Any]] = [
            ("start_time", start), ("end_time", end), ("bucket_width", "1d"),
            ("limit", max(1, min(COST_PAGE_LIMIT, -(-(end - start) // DAY)))),
        ]
        params += [("group_by", g) for g in grouped]
        params += [("project_ids", p) for p in self.project_ids]
        records: list[CostRecord] = []
        group_set = frozenset(grouped)
        keys = RowKeys(grouped)
        async with aclosing(self._buckets("/v1/organization/costs", "costs", params, decimals=True)) as buckets:
            async for bucket in buckets:
                _check_bucket(bucket, start, DAY)
                keys.bucket(bucket.start_time, bucket.path)
                for j, raw in enumerate(bucket.results):
                    at = Row(bucket.start_time, DAY, group_set, bucket.path, j)
                    row = mapping(raw, at.path)
                    if row.get("object") != "organization.costs.result":
                        raise ResponseShapeError(
                            f"{at.path}.object: expected 'organization.costs.result', got {row.get('object')!r}"
                        )
                    record = cost(row, at, notes)
                    keys.row(bucket.start_time, row, at.path)
                    if record is not None:
                        records.append(record)
        return records

    # -- names ---------------------------------------------------------------------------------------------------
    async def _names_for(self, tenancies: set[str]) -> dict[tuple[str, str], str]:
        """Project names, from the cache or a fresh lookup; a failed lookup keeps the cache and is logged."""
        now = time.monotonic()
        unknown = tenancies - self._names.keys() - {ALL_PROJECTS, UNKNOWN_PROJECT}
        due = now - self._names_at >= self.names_ttl or (bool(unknown) and now - self._names_at >= 60)
        if due and now >= self._names_retry_at:
            try:
                async with self._semaphore:
                    self._names = await asyncio.wait_for(pages.project_names(self.client), self.config.timeout)
                self._names_at = now
            except (ProviderError, ResponseShapeError, TimeoutError) as exc:
                self._names_retry_at = now + min(self.names_ttl, NAMES_RETRY)
                log.warning(
                    "%s: project names lookup failed (usage is kept; names retried later): %s",
                    self.name, exc or type(exc).__name__,
                )
        return {("tenancy", ident): name for ident, name in self._names.items()}

    def _one_error(self, failures: ExceptionGroup[Exception]) -> Exception:
        """The first failure of a poll's endpoints, as the error the scheduler classifies and logs."""
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, ResponseShapeError):
            return ProviderError(f"bad response: {first}", provider=self.name, error_type="bad_response")
        return first if isinstance(first, Exception) else failures

    def _log_notes(self, notes: Notes) -> None:
        if notes.uncached_disagrees:
            log.warning(
                "%s: %d completions row(s) had input_uncached_tokens != input_tokens - input_cached_tokens - "
                "input_cache_write_tokens; input_tokens was kept as the total", self.name, notes.uncached_disagrees,
            )
        if notes.modality_unsplit:
            log.warning(
                "%s: %d completions row(s) had audio/image counts larger than their totals; counted as text",
                self.name, notes.modality_unsplit,
            )
        if notes.costs_without_amount:
            log.warning("%s: %d cost row(s) had no amount and were skipped", self.name, notes.costs_without_amount)
        if notes.currencies:
            log.warning(
                "%s: costs in %s are kept apart from USD (attribute llm.currency), never added into it",
                self.name, ", ".join(sorted(notes.currencies)),
            )

    async def probe(self) -> list[ProbeResult]:
        """One line per enabled usage endpoint (each may be refused on its own), costs, and the projects list
        when names are used (the ``project`` dimension): the last hour of usage, the last day of costs."""
        now = int(time.time())
        start = now - PROBE_WINDOW
        notes = Notes()
        results = [
            await self._probe_one(f"{USAGE}.{e.name}", self._usage_records(e, start - start % self.width, now, notes))
            for e in self.endpoints
        ]
        if self.costs:
            results.append(await self._probe_one(COST, self._costs(now - now % DAY, now, notes)))
        if "project" in self.dimensions:
            names = await self._probe_one("projects", pages.project_names(self.client), what="listed")
            results.append(names)
        return results

    async def _usage_records(self, endpoint: UsageEndpoint, start: int, end: int, notes: Notes) -> list[UsageRecord]:
        """The records of one usage type (``_usage``'s blocks row by row): what a probe counts."""
        records, blocks = await self._usage(endpoint, start, end, notes)
        return records + [record for block in blocks for record in block.records()]

    async def _probe_one(self, source: str, read: Awaitable[Any], what: str = "read") -> ProbeResult:
        try:
            found = await read
        except ResponseShapeError as exc:
            return ProbeResult(source, error=ProviderError(f"bad response: {exc}", provider=self.name))
        except ProviderError as exc:
            if exc.error_type == "auth" and _AUTH_HINT not in str(exc):
                exc = ProviderError(str(exc) + _AUTH_HINT, provider=self.name, error_type="auth")
            return ProbeResult(source, error=exc)
        return ProbeResult(source, f"{what}, {len(found)} record(s)")

    async def aclose(self) -> None:
        await self.client.aclose()


def _width_name(width: int) -> str:
    return next(name for name, seconds in BUCKET_WIDTHS.items() if seconds == width)


def _check_bucket(bucket: pages.Bucket, start: int, width: int) -> None:
    """A bucket must start on the grid we asked for: an off-grid start would be counted under a second key."""
    if bucket.start_time < start or bucket.start_time % width:
        raise ResponseShapeError(
            f"{bucket.path}.start_time: {bucket.start_time} is not on the {width}s grid from {start}"
        )
    if bucket.end_time <= bucket.start_time or bucket.end_time > bucket.start_time + width:
        raise ResponseShapeError(f"{bucket.path}.end_time: {bucket.end_time} is not within one bucket of its start")
