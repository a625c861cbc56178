"""The ``anthropic`` provider: the Claude API's Admin usage report, cost report and workspace names.

Each poll reads, in this order and through one shared ``ApiClient`` (retries, ``Retry-After``, 529 as a 503):

* ``GET /v1/organizations/usage_report/messages`` for ``[window.start, window.end)`` in ``bucket_width`` buckets
  (always sent: the API's own default is ``1d``), grouped by the configured dimensions, every page;
* ``GET /v1/organizations/cost_report`` in daily buckets for ``cost_lookback`` (``cost_backfill`` on a first
  poll), grouped by workspace and description so each row keeps its model and token or cost type;
* ``GET /v1/organizations/workspaces`` (archived included) for names, at most once per ``names_ttl``; a failed
  lookup is logged and the poll goes on with the names it has;
* optionally (``sources: [..., claude_code]``) ``GET /v1/organizations/usage_report/claude_code``, one UTC day per
  request, for the same days as the cost report (``claude_code.py``).

Every page of every report is checked against the documented shape before any record is built, so a bad page
fails its report as ``bad_response`` and nothing from it reaches the ledger. The reports are separate sources
(``usage``, ``cost``, ``claude_code``): one failing never blocks the others; the daily ones keep a cursor each
(the end of their last successful read) so that an outage of one is re-read once it recovers. The mapping itself lives in
``reports.py``; docs/providers/anthropic.md has the table and the API facts it rests on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from ...chunks import reads_secondary, whole_window
from ...config_parse import Option
from ...config_providers import ProviderConfig
from ...errors import ProviderError, ResponseShapeError
from ...model import CLAUDE_CODE, COST, USAGE, CostRecord, PollResult, SourceFailure, UsageRecord, Window
from ...progress import report_begin, report_page
from ..base import DAY, HOUR, ProbeResult, Provider, read_source
from ..http import ApiClient, client_from_config
from .claude_code import code_records, day_param, parse_code_page
from .options import (
    BUCKET_WIDTHS,
    REVISION_HORIZON_DAYS,
    SOURCES,
    AnthropicOptions,
)
from .reports import (
    DEFAULT_WORKSPACE,
    DIMENSIONS,
    Bucket,
    RowKeys,
    cost_identity,
    cost_record,
    parse_report_page,
    parse_workspaces_page,
    usage_records,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ENDPOINT = "https://api.anthropic.com"
USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"
WORKSPACES_PATH = "/v1/organizations/workspaces"
CLAUDE_CODE_PATH = "/v1/organizations/usage_report/claude_code"
CLAUDE_CODE_PAGE_LIMIT = 1000  # claude_code: limit 1..1000 records a page
FAST_MODE_BETA = "fast-mode-2026-02-01"  # the docs: needed to group the usage report by `speed`

COST_PAGE_LIMIT = 31  # cost_report: daily buckets only, limit 1..31
WORKSPACES_PAGE_LIMIT = 1000  # workspaces: limit 1..1000
DATA_DELAY = 5 * 60  # "typically appears within 5 minutes": buckets older than this count as complete
MAX_PAGES = 500  # a runaway pager (the same token forever) ends the poll instead of looping
#: Each report (``sources:``) as the data source it is (``llm.data.source`` on ``llm.receiver.polls``).
DATA_SOURCE = {"messages": USAGE, "cost": COST, "claude_code": CLAUDE_CODE}
DEFAULT_WORKSPACE_NAME = "Default Workspace"


def _rfc3339(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _floor(t: int, width: int) -> int:
    return t - t % width


def _ceil(t: int, width: int) -> int:
    return -(-t // width) * width


class AnthropicProvider(Provider):
    """Claude API usage (tokens by type, cache TTL, server tools) and reported cost, by workspace and model."""

    TYPE: ClassVar[str] = "anthropic"
    OPTIONS_TYPE: ClassVar[type[AnthropicOptions]] = AnthropicOptions
    OPTIONS: ClassVar[Mapping[str, Option]] = AnthropicOptions.schema()
    DEFAULT_LOOKBACK: ClassVar[float] = 2 * HOUR
    DEFAULT_BACKFILL: ClassVar[float] = DAY
    REVISION_HORIZON: ClassVar[float] = REVISION_HORIZON_DAYS * DAY

    def __init__(
        self,
        config: ProviderConfig,
        options: AnthropicOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``options`` default to the section's own (``AnthropicOptions.from_config``); invalid ones are refused
        with the ``key: message`` lines of ``AnthropicOptions.validate`` (``check`` reports the same lines)."""
        super().__init__(config)
        self.options = options = options if options is not None else AnthropicOptions.from_config(config)
        problems = options.validate()
        if problems:
            raise ProviderError("; ".join(problems), provider=self.name, error_type="config")
        self.width, self.page_limit = BUCKET_WIDTHS[options.bucket_width]
        self.dimensions: tuple[str, ...] = options.dimensions
        self.reports: tuple[str, ...] = options.sources
        self.cost_lookback = options.cost_lookback
        self.cost_backfill = options.cost_backfill
        self.names_ttl = options.names_ttl
        headers = {"x-api-key": str(options.admin_key), "anthropic-version": options.anthropic_version}
        if "speed" in self.dimensions:
            headers["anthropic-beta"] = FAST_MODE_BETA
        base_url = options.endpoint or DEFAULT_ENDPOINT
        self.client = client_from_config(
            provider=self.name, base_url=base_url, headers=headers, options=options, requests=self.api_requests
        )
        # Names are a nicety: one quick retry, never a long Retry-After wait that would delay usage.
        self.names_client = ApiClient(
            provider=self.name, base_url=base_url, headers=headers, timeout=options.timeout,
            max_retries=min(options.max_retries, 1), retry_initial_interval=options.retry_initial_interval,
            max_retry_wait=5.0, requests=self.api_requests, max_response_bytes=options.max_response_bytes,
        )
        self._clock = clock
        self._names: dict[str, str] = {}
        self._names_at: float | None = None
        self._read_until: dict[str, int] = {}  # daily report -> end of its last successful read (its cursor)

    # -- the poll -------------------------------------------------------------------------------------------------
    @property
    def data_sources(self) -> tuple[str, ...]:
        return tuple(DATA_SOURCE[report] for report in SOURCES if report in self.reports)

    def restore(self, cursors: Mapping[str, str]) -> None:
        """The daily reports' cursors (the end of each one's last successful read): after an outage of one, its
        next read reaches back to cover it, while the other sources went on."""
        self._read_until = {}  # also called after a failed poll: what was not committed never happened
        for source in (COST, CLAUDE_CODE):
            raw = cursors.get(source)
            if raw is not None and raw.isdigit():
                self._read_until[source] = int(raw)

    async def fetch(self, window: Window) -> PollResult:
        # The reports are separate sources: one failing (its error in failed_sources, its cursor unmoved)
        # never blocks the others.
        failed: dict[str, SourceFailure] = {}
        reads = {USAGE: self._usage, COST: self._costs, CLAUDE_CODE: self._claude_code}
        found: dict[str, Any] = {}
        # In a chunk of a long poll (chunks.py) the daily reports are read once, in the first chunk, over the
        # whole window (their reach is set from "now" by cost_lookback / cost_backfill).
        whole = whole_window(window)
        daily = reads_secondary()
        for report in SOURCES:
            if report in self.reports:
                source = DATA_SOURCE[report]
                if source != USAGE and not daily:
                    continue
                got = await read_source(
                    source, self._translated(reads[source](window if source == USAGE else whole)), failed)
                if got is not None:
                    found[source] = got
        usage: list[UsageRecord] = found.get(USAGE, [])
        costs: list[CostRecord] = found.get(COST, [])
        code: list[UsageRecord] = found.get(CLAUDE_CODE, [])
        cursors: dict[str, str] = {s: str(whole.end) for s in (COST, CLAUDE_CODE) if s in found}
        self._read_until.update({source: whole.end for source in cursors})
        names = {("tenancy", ident): name for ident, name in (await self._workspace_names()).items()} \
            if found else {}  # nothing landed (a wrong key): no names lookup either
        settled = window.end - DATA_DELAY
        return PollResult(
            usage=usage + code, costs=costs, names=names,
            complete_until=max(whole.start, min(_floor(settled, self.width), window.end)),
            data_until=self._data_until(window, usage, costs),
            cursors=cursors, polled_sources=list(found), failed_sources=failed,
        )

    async def _translated(self, read: Awaitable[T]) -> T:
        """One report's read, its errors made ours: a shape error is ``bad_response``, an auth error names the
        key it needs."""
        try:
            return await read
        except ResponseShapeError as exc:
            raise ProviderError(
                f"response does not match the documented shape: {exc}",
                provider=self.name, error_type="bad_response",
            ) from None
        except ProviderError as exc:
            if exc.error_type == "auth":
                raise ProviderError(
                    f"{exc} (the reports need an Admin API key, sk-ant-admin...; workspace keys are refused)",
                    provider=self.name, error_type="auth", retry_after=exc.retry_after,
                ) from None
            raise

    def _data_until(self, window: Window, usage: Sequence[UsageRecord], costs: Sequence[CostRecord]) -> int | None:
        """How current the data are, for ``llm.receiver.data.lag``: the end of the newest bucket that had rows in
        the main report (the usage report when polled, else the cost report), capped at now, since the growing
        current bucket (and any daily bucket) ends in the future."""
        if "messages" in self.reports:
            ends = [r.bucket_start + r.bucket_width for r in usage]
        else:
            ends = [c.bucket_start + c.bucket_width for c in costs]
        return min(max(ends), window.end) if ends else None

    def usage_params(self, window: Window) -> list[tuple[str, str]]:
        """Query of the usage report: aligned bucket bounds, so the growing last bucket is one key, not two."""
        params = [
            ("starting_at", _rfc3339(_floor(window.start, self.width))),
            ("ending_at", _rfc3339(_ceil(window.end, self.width))),
            ("bucket_width", next(k for k, (w, _) in BUCKET_WIDTHS.items() if w == self.width)),
            ("limit", str(self.page_limit)),
        ]
        params += [("group_by[]", DIMENSIONS[d][0]) for d in self.dimensions if d in DIMENSIONS]
        return params

    def daily_start(self, window: Window, source: str = COST) -> int:
        """First UTC day a daily report re-reads: ``cost_lookback`` back (``cost_backfill`` on a first poll), and
        never later than ``cost_lookback`` before that report's last successful read (an outage is covered)."""
        first_poll = self.backfill > 0 and window.end - window.start >= self.backfill
        reach = self.cost_backfill if first_poll else self.cost_lookback
        start = min(window.start, window.end - int(reach))
        last = self._read_until.get(source)
        if last is not None:
            floor = window.end - int(max(self.cost_backfill, self.cost_lookback))
            start = min(start, max(floor, last - int(self.cost_lookback)))
        return _floor(start, DAY)

    def cost_params(self, window: Window) -> list[tuple[str, str]]:
        """Query of the cost report: whole UTC days from ``daily_start`` through today."""
        return [
            ("starting_at", _rfc3339(self.daily_start(window))),
            ("ending_at", _rfc3339(_ceil(window.end, DAY))),
            ("bucket_width", "1d"),
            ("limit", str(COST_PAGE_LIMIT)),
            ("group_by[]", "workspace_id"),
            ("group_by[]", "description"),
        ]

    async def _usage(self, window: Window) -> list[UsageRecord]:
        records: list[UsageRecord] = []
        params = self.usage_params(window)
        keys = RowKeys([value for key, value in params if key == "group_by[]"])
        span = (_floor(window.start, self.width), window.end)
        for bucket in await self._report(USAGE_PATH, params, self.width, "usage_report", span):
            for i, row in enumerate(bucket.results):
                path = f"{bucket.path}.results[{i}]"
                records += usage_records(bucket, row, path, self.dimensions)
                keys.row(bucket.start, row, path)
        return records

    async def _costs(self, window: Window) -> list[CostRecord]:
        records: list[CostRecord] = []
        params = self.cost_params(window)
        keys = RowKeys([value for key, value in params if key == "group_by[]"])
        for bucket in await self._report(COST_PATH, params, DAY, "cost_report", (self.daily_start(window), window.end)):
            for i, row in enumerate(bucket.results):
                path = f"{bucket.path}.results[{i}]"
                record = cost_record(bucket, row, path, self.dimensions)
                keys.row(bucket.start, row, path, cost_identity(record))
                records.append(record)
        return records

    async def _claude_code(self, window: Window) -> list[UsageRecord]:
        """Claude Code analytics for every UTC day the cost report covers: one request (and its pages) a day."""
        records: list[UsageRecord] = []
        with_actor = "actor" in self.dimensions
        first = self.daily_start(window, CLAUDE_CODE)
        report_begin("claude_code", first, window.end)
        for day in range(first, window.end, DAY):
            page: str | None = None
            tokens: set[str] = set()
            for number in range(1, MAX_PAGES + 1):
                query = [("starting_at", day_param(day)), ("limit", str(CLAUDE_CODE_PAGE_LIMIT))]
                if page:
                    query.append(("page", page))
                what = f"claude_code({day_param(day)}, page {number})"
                rows, has_more, page = parse_code_page(await self.client.get_json(CLAUDE_CODE_PATH, query), what)
                report_page("claude_code", records=len(rows), newest=day + DAY if not has_more else day,
                            start=first, end=window.end)
                for i, row in enumerate(rows):
                    records += code_records(row, f"{what}.data[{i}]", day, with_actor=with_actor)
                if not has_more:
                    break
                assert page is not None
                if page in tokens:
                    raise ResponseShapeError(f"{what}.next_page: the token {page[:40]!r} repeated")
                tokens.add(page)
            else:
                raise ResponseShapeError(f"claude_code({day_param(day)}): still has_more after {MAX_PAGES} pages")
        return records

    async def _report(
        self, path: str, params: Sequence[tuple[str, str]], width: int, what: str, span: tuple[int, int]
    ) -> list[Bucket]:
        """Every bucket of a report, following ``has_more`` / ``next_page`` to the last page; each page is
        reported to the backfill's progress (``progress.report_page``) against ``span``, the report's window."""
        report_begin(what, *span)
        buckets: list[Bucket] = []
        starts: set[int] = set()
        tokens: set[str] = set()
        page: str | None = None
        for number in range(1, MAX_PAGES + 1):
            query = [*params, ("page", page)] if page else list(params)
            parsed = parse_report_page(await self.client.get_json(path, query), f"{what}(page {number})", width)
            for bucket in parsed.buckets:
                if bucket.start in starts:  # the same bucket twice would be counted twice
                    raise ResponseShapeError(f"{bucket.path}: bucket {_rfc3339(bucket.start)} came on two pages")
                starts.add(bucket.start)
            buckets += parsed.buckets
            report_page(what, records=sum(len(b.results) for b in parsed.buckets),
                        newest=max((b.end for b in parsed.buckets), default=None), start=span[0], end=span[1])
            if not parsed.has_more:
                return buckets
            assert parsed.next_page is not None  # parse_report_page guarantees it
            if parsed.next_page in tokens:
                raise ResponseShapeError(f"{what}.next_page: the token {parsed.next_page[:40]!r} repeated")
            tokens.add(parsed.next_page)
            page = parsed.next_page
        raise ResponseShapeError(f"{what}: still has_more after {MAX_PAGES} pages")

    # -- names ----------------------------------------------------------------------------------------------------
    async def _workspace_names(self) -> dict[str, str]:
        """Workspace id -> name, cached for ``names_ttl``; on failure the last good names (and one log line)."""
        now = self._clock()
        if self._names_at is not None and now - self._names_at < self.names_ttl:
            return self._names
        names: dict[str, str] = {DEFAULT_WORKSPACE: DEFAULT_WORKSPACE_NAME}
        after: str | None = None
        try:
            for _ in range(MAX_PAGES):
                query = [("limit", str(WORKSPACES_PAGE_LIMIT)), ("include_archived", "true")]
                if after:
                    query.append(("after_id", after))
                page, has_more, last_id = parse_workspaces_page(
                    await self.names_client.get_json(WORKSPACES_PATH, query)
                )
                names.update(page)
                if not has_more or last_id is None or last_id == after:
                    break
                after = last_id
        except (ProviderError, ResponseShapeError) as exc:
            log.warning("%s: workspace names not refreshed (usage goes on with the %d known): %s",
                        self.name, len(self._names), exc)
            return self._names or {DEFAULT_WORKSPACE: DEFAULT_WORKSPACE_NAME}
        self._names, self._names_at = names, now
        return names

    async def probe(self) -> list[ProbeResult]:
        """Every report (the default probe), plus one page of the workspaces list (names need it too)."""
        results = await super().probe()
        try:
            page, _more, _last = parse_workspaces_page(await self._translated(
                self.names_client.get_json(WORKSPACES_PATH, [("limit", "1"), ("include_archived", "true")])))
        except ResponseShapeError as exc:
            error = ProviderError(f"response does not match the documented shape: {exc}", provider=self.name)
            return [*results, ProbeResult("workspaces", error=error)]
        except ProviderError as exc:
            return [*results, ProbeResult("workspaces", error=exc)]
        return [*results, ProbeResult("workspaces", f"listed ({len(page)} on the first page)")]

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.names_client.aclose()


__all__ = ["AnthropicProvider"]
