"""The ``vertex_ai`` provider: Vertex AI (Gemini and partner models) and Gemini Developer API token usage.

Neither has a usage API: both report token counts as Cloud Monitoring DELTA metrics per project. Each poll
reads, for every configured project and source, the aligned ``[start, end)`` window where both ends sit on a
``bucket_width`` boundary (the in-progress bucket is read once it has ended), so a point always covers exactly
one bucket and re-reading the window reports the same buckets again (the ledger counts only growth).

Sources (``sources:``): ``vertex`` (default) reads ``publisher/online_serving/token_count`` and
``model_invocation_count`` on ``aiplatform.googleapis.com/PublisherModel``, as ``gen_ai.provider.name``
``gcp.vertex_ai``; ``gemini_api`` reads the Gemini Developer API's project-level token metrics as ``gcp.gemini``.
Cost is not read here (Google bills through the Cloud Billing export only): see docs/providers/vertex_ai.md.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any, ClassVar

from ...config import Option, ProviderConfig
from ...errors import ProviderError
from ...model import PollResult, UsageRecord, Window
from ..base import DAY, HOUR, Provider
from ..http import HTTP_OPTIONS
from . import monitoring
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

SOURCES = ("vertex", "gemini_api")
#: How long the list of Gemini input-token quota metrics of a project is trusted before it is listed again.
DESCRIPTOR_TTL = 6 * HOUR


class VertexAIProvider(Provider):
    """Token usage of Vertex AI publisher models (and, opt-in, the Gemini Developer API) per GCP project."""

    TYPE: ClassVar[str] = "vertex_ai"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "projects": Option("list[str]", required=True, description="GCP project ids to read (the tenancies)."),
        "sources": Option(
            "list[str]", default=("vertex",), choices=SOURCES,
            description="What to read: `vertex` (Vertex AI publisher models), `gemini_api` (Gemini Developer "
                        "API, per project).",
        ),
        "bucket_width": Option("duration", default="1h", description="Alignment period of the buckets (1m .. 1d)."),
        "credentials_file": Option(
            "secret", default=None,
            description="Service-account or other Google credentials JSON (a path, or the JSON via ${file:...}); "
                        "default: Application Default Credentials.",
        ),
        **HTTP_OPTIONS,
    }
    DEFAULT_LOOKBACK: ClassVar[float] = 3 * HOUR  # Monitoring points arrive minutes late
    MAX_BACKFILL: ClassVar[float | None] = 6 * 7 * DAY  # DELTA metric data are kept six weeks

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.projects: tuple[str, ...] = tuple(opts.get("projects") or ())
        self.sources: tuple[str, ...] = tuple(opts.get("sources") or ("vertex",))
        self.width = int(opts.get("bucket_width") or HOUR)
        self.credentials_file: str | None = opts.get("credentials_file")
        self.max_retries = int(opts.get("max_retries", 4))
        self.retry_initial_interval = float(opts.get("retry_initial_interval") or 1.0)
        problems = []
        if not self.projects:
            problems.append("projects must name at least one GCP project id")
        if self.width < 60 or DAY % self.width:
            problems.append(f"bucket_width must divide a day and be at least 1m, not {self.width}s")
        try:
            self.plaintext = monitoring.plaintext_target(config.endpoint) is not None
        except ValueError as exc:
            problems.append(str(exc))
        else:
            if self.plaintext and self.credentials_file:
                problems.append("credentials_file cannot be used with a plaintext (http://) endpoint")
        if importlib.util.find_spec("google.cloud.monitoring_v3") is None:
            problems.append("needs google-cloud-monitoring: pip install 'otel-llm-receiver[vertex]'")
        if problems:
            raise ProviderError(f"{self.name}: " + "; ".join(problems), provider=self.name, error_type="config")
        self._gemini_inputs: dict[str, tuple[float, tuple[str, ...]]] = {}  # project -> (listed at, types)
        self._warned_types: set[str] = set()

    async def fetch(self, window: Window) -> PollResult:
        start = window.start - window.start % self.width
        end = window.end - window.end % self.width
        if end <= start:
            return PollResult(complete_until=start)
        client = monitoring.make_client(self.config.endpoint, self.credentials_file)
        reader = monitoring.MonitoringReader(
            client, timeout=self.config.timeout, requests=self.api_requests, max_retries=self.max_retries,
            retry_initial_interval=self.retry_initial_interval, max_retry_wait=self.config.collection_interval,
        )
        usage: list[UsageRecord] = []
        try:
            for project in self.projects:
                if "vertex" in self.sources:
                    usage += await self._read(reader, project, VERTEX_PROVIDER, VERTEX_QUERIES, start, end,
                                              attributes=VERTEX_ATTRIBUTES, model_label="resource.label.model_user_id")
                if "gemini_api" in self.sources:
                    queries = gemini_queries(await self._gemini_input_types(reader, project))
                    usage += await self._read(reader, project, GEMINI_PROVIDER, queries, start, end,
                                              attributes={}, model_label="metric.label.model")
        except ProviderError as exc:
            exc.provider = self.name
            raise
        finally:
            await _close(client)
        return PollResult(usage=usage, complete_until=end)

    async def _read(
        self, reader: monitoring.MonitoringReader, project: str, provider: str, queries: tuple[Query, ...],
        start: int, end: int, *, attributes: dict[str, str] | Any, model_label: str,
    ) -> list[UsageRecord]:
        builder = RecordBuilder(provider, project, self.width, attributes=attributes, model_label=model_label)
        for query in queries:
            for series in await reader.series(project, query, start, end, self.width):
                builder.add(query, series, where=f"projects/{project}")
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
