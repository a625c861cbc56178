"""The ``vertex_ai`` provider: Vertex AI (Gemini and partner models) and Gemini Developer API token usage.

Neither has a usage API: both report token counts as Cloud Monitoring DELTA metrics per project. Each poll
reads, for every configured project and source, the aligned ``[start, end)`` window where both ends sit on a
``bucket_width`` boundary (the in-progress bucket is read once it has ended), so a point always covers exactly
one bucket and re-reading the window reports the same buckets again (the ledger counts only growth).

Sources (``sources:``): ``vertex`` (default) reads ``publisher/online_serving/token_count`` and
``model_invocation_count`` on ``aiplatform.googleapis.com/PublisherModel``, as ``gen_ai.provider.name``
``gcp.vertex_ai``; ``gemini_api`` reads the Gemini Developer API's project-level token metrics as ``gcp.gemini``.
Money exists only in the Cloud Billing export: ``billing_export`` (``billing.py``) reads it on its own interval,
and usage and cost are separate sources: a failed cost query never costs the usage, nor the reverse
(`PollResult.failed_sources`). Project names come from Resource Manager (``names.py``).
See docs/providers/vertex_ai.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from ...chunks import reads_secondary, whole_window
from ...config_parse import Option
from ...config_providers import ProviderConfig
from ...errors import ProviderError
from ...model import COST, USAGE, CostRecord, PollResult, SourceFailure, UsageRecord, Window
from ..base import DAY, HOUR, ProbeResult, Provider, read_source
from . import billing, monitoring, names
from .options import VertexAIOptions
from .series import (
    GEMINI_INPUT_QUOTA,
    GEMINI_PROVIDER,
    GEMINI_QUOTA_PREFIX,
    VERTEX_ATTRIBUTES,
    VERTEX_PROVIDER,
    VERTEX_QUERIES,
    Query,
    RecordBuilder,
    gemini_queries,
)

log = logging.getLogger(__name__)

#: How long the list of Gemini input-token quota metrics of a project is trusted before it is listed again.
DESCRIPTOR_TTL = 6 * HOUR


class VertexAIProvider(Provider):
    """Token usage of Vertex AI publisher models (and, opt-in, the Gemini Developer API) per GCP project."""

    TYPE: ClassVar[str] = "vertex_ai"
    OPTIONS_TYPE: ClassVar[type[VertexAIOptions]] = VertexAIOptions
    OPTIONS: ClassVar[Mapping[str, Option]] = VertexAIOptions.schema()
    DEFAULT_LOOKBACK: ClassVar[float] = 3 * HOUR  # Monitoring points arrive minutes late
    MAX_BACKFILL: ClassVar[float | None] = 6 * 7 * DAY  # DELTA metric data are kept six weeks
    #: Billing export days are re-read up to 31 days back: their rows must outlive that, or a re-read would
    #: count a pruned day again.
    REVISION_HORIZON: ClassVar[float] = billing.MAX_LOOKBACK + DAY
    SOURCES: ClassVar[tuple[str, ...]] = (USAGE, COST)

    def __init__(self, config: ProviderConfig, options: VertexAIOptions | None = None) -> None:
        """``options`` default to the section's own (``VertexAIOptions.from_config``); invalid ones are refused
        with the ``key: message`` lines of ``VertexAIOptions.validate`` (``check`` reports the same lines), a
        missing SDK extra with its own line."""
        super().__init__(config)
        self.options = options = options if options is not None else VertexAIOptions.from_config(config)
        self.projects: tuple[str, ...] = options.projects
        self.sources: tuple[str, ...] = options.sources
        self.width = int(options.bucket_width)
        self.credentials_file: str | None = options.credentials_file
        self.max_retries = options.max_retries
        self.retry_initial_interval = options.retry_initial_interval
        problems = options.validate()
        if not problems:
            self.plaintext = monitoring.plaintext_target(options.endpoint) is not None
        self.billing: billing.BillingExport | None = None
        if options.billing_export:
            if not problems:
                self.billing = billing.BillingExport.parse(options.billing_export)
            if importlib.util.find_spec("google.cloud.bigquery") is None:
                problems.append(
                    "billing_export needs google-cloud-bigquery: pip install 'otel-llm-receiver[vertex-billing]'")
        if self.sources and importlib.util.find_spec("google.cloud.monitoring_v3") is None:
            problems.append("needs google-cloud-monitoring: pip install 'otel-llm-receiver[vertex]'")
        if problems:
            raise ProviderError(f"{self.name}: " + "; ".join(problems), provider=self.name, error_type="config")
        self._gemini_inputs: dict[str, tuple[float, tuple[str, ...]]] = {}  # project -> (listed at, types)
        self._warned_types: set[str] = set()
        self._billing_last_run: int | None = None  # window end of the last successful cost query
        self._billing_failed_at: int | None = None
        self._credentials: dict[tuple[str, ...], Any] = {}  # by scopes, loaded once (tokens are refreshed)
        self._names: names.ProjectNames | None = None
        # Against a loopback emulator there is no Resource Manager: names only from one given explicitly.
        emulated = self.plaintext or (
            self.billing is not None and monitoring.plaintext_target(self.billing.endpoint) is not None)
        if options.project_names and (options.resource_manager_endpoint or not emulated):
            self._names = names.ProjectNames(
                endpoint=options.resource_manager_endpoint, credentials=self._credentials_for(names.SCOPES),
                timeout=options.timeout, requests=self.api_requests, instance=self.name,
            )

    def _credentials_for(self, scopes: tuple[str, ...]) -> Any:
        """A loader of this instance's credentials for ``scopes``, loading them on first use only."""
        def load() -> Any:
            if scopes not in self._credentials:
                self._credentials[scopes] = monitoring.load_credentials(self.credentials_file, scopes)
            return self._credentials[scopes]
        return load

    def restore(self, cursors: Mapping[str, str]) -> None:
        """When the cost query last ran (saved with the poll that ran it), so a restart does not rerun it early."""
        value = cursors.get(billing.CURSOR)
        self._billing_last_run = None  # also called after a failed poll: only what was committed counts
        if value is not None and value.isdigit():
            self._billing_last_run = int(value)

    @property
    def data_sources(self) -> tuple[str, ...]:
        return ((USAGE,) if self.sources else ()) + ((COST,) if self.billing is not None else ())

    async def fetch(self, window: Window) -> PollResult:
        # Usage (Cloud Monitoring) and cost (the billing export) are separate sources: one failing never
        # blocks the other; the failed one is returned in failed_sources and its cursor does not move.
        failed: dict[str, SourceFailure] = {}
        polled: list[str] = []
        result = PollResult(complete_until=window.end)
        if self.sources:
            read = await read_source(USAGE, self._usage(window), failed)
            if read is not None:
                result = read
                polled.append(USAGE)
        found = await self._names.resolve(self.projects) if self._names is not None else {}
        # In a chunk of a long poll (chunks.py) the billing export is read once, in the first chunk, over the
        # whole window and as of its end.
        whole = whole_window(window)
        if self.billing is None or not reads_secondary() or not self._billing_due(whole.end):
            return PollResult(usage=result.usage, names=found, complete_until=result.complete_until,
                              polled_sources=polled, failed_sources=failed)
        billed: dict[tuple[str, str], str] = {}
        costs = await read_source(COST, self._costs(self.billing, whole, billed), failed)
        if costs is None:
            self._billing_failed_at = whole.end  # next try in min(interval, 1h)
            return PollResult(usage=result.usage, names=found, complete_until=result.complete_until,
                              polled_sources=polled, failed_sources=failed)
        self._billing_last_run, self._billing_failed_at = whole.end, None
        return PollResult(
            usage=result.usage, costs=costs, names={**billed, **found}, complete_until=result.complete_until,
            cursors={billing.CURSOR: str(whole.end)}, polled_sources=[*polled, COST], failed_sources=failed,
        )

    async def probe(self) -> list[ProbeResult]:
        """One line per project and usage source (Cloud Monitoring grants roles per project: one may be refused
        while the others answer), then the billing export when configured, read over one day only."""
        now = int(time.time())
        end = now - now % self.width
        results: list[ProbeResult] = []
        client = monitoring.make_client(self.options.endpoint, self._credentials_for(monitoring.SCOPES))
        reader = monitoring.MonitoringReader(
            client, timeout=self.options.timeout, requests=self.api_requests, max_retries=self.max_retries,
            retry_initial_interval=self.retry_initial_interval, max_retry_wait=self.options.timeout,
        )
        try:
            for project in self.projects:
                for source in self.sources:
                    label = f"{USAGE} {project}" if source == "vertex" else f"{USAGE}.{source} {project}"
                    try:
                        if source == "vertex":
                            found = len(await reader.series(project, VERTEX_QUERIES[0], end - self.width, end,
                                                            self.width))
                        else:
                            found = len(await reader.metric_types(project, GEMINI_QUOTA_PREFIX))
                    except ProviderError as exc:
                        results.append(ProbeResult(label, error=exc))
                        continue
                    results.append(ProbeResult(label, f"read, {found} series"))
        finally:
            await _close(client)
        if self.billing is not None:
            settings = dataclasses.replace(self.billing, lookback=0.0)
            try:
                costs = await self._costs(settings, Window(now - HOUR, now), {})
            except ProviderError as exc:
                results.append(ProbeResult(COST, error=exc))
            else:
                results.append(ProbeResult(COST, f"read, {len(costs)} record(s) from the billing export today"))
        return results

    async def aclose(self) -> None:
        if self._names is not None:
            self._names.close()

    def _billing_due(self, now: int) -> bool:
        assert self.billing is not None
        if self._billing_failed_at is not None:
            return now - self._billing_failed_at >= min(self.billing.interval, HOUR)
        return self._billing_last_run is None or now - self._billing_last_run >= self.billing.interval

    async def _costs(self, settings: billing.BillingExport, window: Window,
                     names: dict[tuple[str, str], str]) -> list[CostRecord]:
        """Whole UTC days from ``lookback`` (or the window start, if earlier) through today."""
        first = min(window.start, window.end - int(settings.lookback))
        start = first - first % DAY
        end = window.end - window.end % DAY + DAY
        reader = billing.BillingReader(
            settings, credentials=self._credentials_for(billing.SCOPES), timeout=self.options.timeout,
            requests=self.api_requests, max_retries=self.max_retries,
            retry_initial_interval=self.retry_initial_interval, max_retry_wait=self.config.collection_interval,
        )
        return await reader.costs(start, end, self.projects, gemini="gemini_api" in self.sources,
                                  tenant_names=names)

    async def _usage(self, window: Window) -> PollResult:
        start = window.start - window.start % self.width
        end = window.end - window.end % self.width
        if end <= start:
            return PollResult(complete_until=start)
        client = monitoring.make_client(self.options.endpoint, self._credentials_for(monitoring.SCOPES))
        reader = monitoring.MonitoringReader(
            client, timeout=self.options.timeout, requests=self.api_requests, max_retries=self.max_retries,
            retry_initial_interval=self.retry_initial_interval, max_retry_wait=self.config.collection_interval,
        )
        usage: list[UsageRecord] = []
        try:
            for project in self.projects:
                if "vertex" in self.sources:
                    usage += await self._read(
                        reader, project, VERTEX_PROVIDER, VERTEX_QUERIES, start, end,
                        attributes=VERTEX_ATTRIBUTES, model_label="resource.label.model_user_id", batch_flag=True)
                if "gemini_api" in self.sources:
                    queries = gemini_queries(await self._gemini_input_types(reader, project))
                    usage += await self._read(reader, project, GEMINI_PROVIDER, queries, start, end,
                                              attributes={}, model_label="metric.label.model", batch_flag=False)
        except ProviderError as exc:
            exc.provider = self.name
            raise
        finally:
            await _close(client)
        return PollResult(usage=usage, complete_until=end)

    async def _read(
        self, reader: monitoring.MonitoringReader, project: str, provider: str, queries: tuple[Query, ...],
        start: int, end: int, *, attributes: Mapping[str, str], model_label: str, batch_flag: bool,
    ) -> list[UsageRecord]:
        builder = RecordBuilder(provider, project, self.width, attributes=attributes, model_label=model_label,
                                batch_flag=batch_flag)
        for query in queries:
            for series in await reader.series(project, query, start, end, self.width):
                builder.add(query, series, where=f"projects/{project}", start=start)
        for label in sorted(builder.unknown_types - self._warned_types):
            self._warned_types.add(label)
            log.warning("%s: token_count type %r is not a known token type; its tokens are not counted",
                        self.name, label)
        return builder.records()

    async def _gemini_input_types(self, reader: monitoring.MonitoringReader, project: str) -> tuple[str, ...]:
        """The project's Gemini input-token quota usage metrics (one per quota tier), listed at most every 6h."""
        now = time.monotonic()
        cached = self._gemini_inputs.get(project)
        if cached is not None and now - cached[0] < DESCRIPTOR_TTL:
            return cached[1]
        types = tuple(sorted(t for t in await reader.metric_types(project, GEMINI_QUOTA_PREFIX)
                             if GEMINI_INPUT_QUOTA.fullmatch(t)))
        self._gemini_inputs[project] = (now, types)
        return types


async def _close(client: Any) -> None:
    """Close the poll's channel; a failure to close must not hide the poll's own result."""
    try:
        await client.transport.close()
    except Exception as exc:
        log.debug("closing the Monitoring channel failed: %s", exc)
