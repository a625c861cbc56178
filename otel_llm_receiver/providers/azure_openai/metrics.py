"""Token and request counts per deployment from the Azure Monitor metrics REST API (api-version 2023-10-01).

``GET {account id}/providers/Microsoft.Insights/metrics`` with ``metricnames`` (several per call),
``aggregation=Total``, ``interval`` (our ``bucket_width``) and a ``$filter`` of ``Dim eq '*'`` clauses, which
splits the answer into one time series per dimension combination. The API has no paging: with a ``$filter`` it
returns only the first ``top`` series (default 10), so we send ``top`` and treat an answer with exactly
``top`` series as truncated: we ask once more with a larger ``top``, and fail the poll (naming ``max_series``)
if that is still not enough, rather than under-count in silence.

Two calls per account and time chunk: the token metrics (split by deployment, model and version) and the
request metric (split further by ``StatusCode``, a dimension the token metrics do not have).

Metric sets (``metric_set``), verified against the Azure Monitor supported-metrics reference:

* ``models`` (default): ``InputTokens`` / ``OutputTokens`` (dimensions include ``ModelName``), the Anthropic-on-
  Foundry cache metrics ``cacheReadInputTokens`` / ``ephemeral5mInputTokens`` / ``ephemeral1hInputTokens``, and
  ``ModelRequests``;
* ``azure_openai``: the older ``ProcessedPromptTokens`` / ``GeneratedTokens`` (no ``ModelName`` dimension: the
  model comes from the deployment) and ``AzureOpenAIRequests``.

Azure reports no cached-token count for OpenAI models, so their prompt tokens are all ``input``.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ProviderError, ResponseShapeError
from ...model import UsageRecord, Window
from .. import shape
from ..descriptors import genai_name
from ..http import ApiClient
from .discovery import Account, Deployment, model_label

log = logging.getLogger(__name__)

PROVIDER_NAME = genai_name("azure_openai")
METRICS_API_VERSION = "2023-10-01"
METRIC_NAMESPACE = "Microsoft.CognitiveServices/accounts"
#: Time grains the metrics API accepts, by our bucket width in seconds.
INTERVALS: Mapping[int, str] = {
    60: "PT1M", 300: "PT5M", 900: "PT15M", 1800: "PT30M", 3600: "PT1H", 21600: "PT6H", 43200: "PT12H",
    86400: "P1D",
}
#: At most this many buckets per series in one call (a 7-day backfill at 1h is one call per account).
MAX_BUCKETS_PER_CALL = 2000
#: A truncated answer is asked again once with ``top`` times this.
TOP_GROWTH = 10
MAX_TOP = 100_000

DEPLOYMENT = "modeldeploymentname"
MODEL_NAME = "modelname"
MODEL_VERSION = "modelversion"
STATUS_CODE = "statuscode"


@dataclass(frozen=True, slots=True)
class TokenMetric:
    """How one Azure token metric maps to our token types (``ttl`` for cache writes)."""

    token_type: str
    ttl: str | None = None


@dataclass(frozen=True, slots=True)
class MetricSet:
    tokens: Mapping[str, TokenMetric]
    token_dimensions: tuple[str, ...]
    requests: str
    request_dimensions: tuple[str, ...]
    #: Token metrics only some accounts define (Anthropic's cache metrics on Foundry): an account whose metric
    #: definitions lack them answers 400 for the whole call, so it is asked again without them.
    optional: frozenset[str] = frozenset()


METRIC_SETS: Mapping[str, MetricSet] = {
    "models": MetricSet(
        tokens={
            "InputTokens": TokenMetric("input"),
            "OutputTokens": TokenMetric("output"),
            "cacheReadInputTokens": TokenMetric("cache_read"),
            "ephemeral5mInputTokens": TokenMetric("cache_write", "5m"),
            "ephemeral1hInputTokens": TokenMetric("cache_write", "1h"),
        },
        token_dimensions=("ModelDeploymentName", "ModelName", "ModelVersion"),
        requests="ModelRequests",
        request_dimensions=("ModelDeploymentName", "ModelName", "ModelVersion", "StatusCode"),
        optional=frozenset({"cacheReadInputTokens", "ephemeral5mInputTokens", "ephemeral1hInputTokens"}),
    ),
    "azure_openai": MetricSet(
        tokens={"ProcessedPromptTokens": TokenMetric("input"), "GeneratedTokens": TokenMetric("output")},
        token_dimensions=("ModelDeploymentName", "ModelVersion"),
        requests="AzureOpenAIRequests",
        request_dimensions=("ModelDeploymentName", "ModelName", "ModelVersion", "StatusCode"),
    ),
}


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket of one series: the metric, its dimensions (names lower-cased), the bucket start, the total."""

    metric: str
    dimensions: Mapping[str, str]
    start: int
    value: int


def iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, where: str) -> int:
    """A ``timeStamp`` (ISO 8601; read as UTC without an offset) as Unix seconds."""
    return shape.timestamp(value, where)


def chunks(window: Window, width: int) -> list[Window]:
    """``window`` aligned down to ``width``, cut into spans of at most ``MAX_BUCKETS_PER_CALL`` buckets."""
    start = window.start - window.start % width
    step = MAX_BUCKETS_PER_CALL * width
    return [Window(s, min(s + step, window.end)) for s in range(start, window.end, step)]


def parse_metrics(body: Any, names: Sequence[str]) -> tuple[list[Point], dict[str, int]]:
    """The points of a metrics answer, and the number of series per metric (for truncation checks).

    Raises ``ResponseShapeError`` naming the field when the answer is not shaped like the documented ``Response``.
    """
    if not isinstance(body, dict) or not isinstance(body.get("value"), list):
        raise ResponseShapeError("value: the answer has no value[] list")
    wanted = {n.lower(): n for n in names}
    points: list[Point] = []
    series: dict[str, int] = {}
    for i, metric in enumerate(body["value"]):
        where = f"value[{i}]"
        metric = shape.as_object(metric, where)
        name = metric.get("name")
        raw_name = shape.text(name.get("value") if isinstance(name, dict) else None, f"{where}.name.value")
        canonical = wanted.get(raw_name.lower())
        if canonical is None:
            continue  # a metric we did not ask for: not ours to count
        code = metric.get("errorCode")
        if code not in (None, "Success"):
            raise ResponseShapeError(f"{where} ({raw_name}) errorCode {code!r}: {metric.get('errorMessage', '')}")
        timeseries = shape.as_list(metric.get("timeseries"), f"{where}.timeseries")
        series[canonical] = series.get(canonical, 0) + len(timeseries)
        for j, ts in enumerate(timeseries):
            points += _series_points(ts, canonical, f"{where}.timeseries[{j}]")
    return points, series


def _series_points(raw: object, metric: str, where: str) -> list[Point]:
    ts = shape.as_object(raw, where)
    dims: dict[str, str] = {}
    metadata = shape.as_list(ts.get("metadatavalues", []), f"{where}.metadatavalues")
    for k, md in enumerate(metadata):
        name = md.get("name") if isinstance(md, dict) else None
        key = name.get("value") if isinstance(name, dict) else None
        value = md.get("value") if isinstance(md, dict) else None
        if not isinstance(key, str) or not isinstance(value, str | None):
            raise ResponseShapeError(f"{where}.metadatavalues[{k}] needs name.value and value strings")
        dims[key.lower()] = value or ""  # the API lower-cases names it was asked for in any case
    data = shape.as_list(ts.get("data"), f"{where}.data")
    points = []
    for k, d in enumerate(data):
        d = shape.as_object(d, f"{where}.data[{k}]")
        start = parse_time(d.get("timeStamp"), f"{where}.data[{k}].timeStamp")
        total = d.get("total")
        if total is None:
            continue  # no data in this grain (the API sends the time stamp alone)
        points.append(Point(metric, dims, start, shape.measured_count(total, f"{where}.data[{k}].total")))
    return points


def operation_of(model: str) -> str:
    """``gen_ai.operation.name``: Azure Monitor does not split tokens by API, so it is told from the model."""
    return "embeddings" if "embedding" in model.lower() else "chat"


class MetricsReader:
    """Reads one account's token and request metrics for a window and turns them into ``UsageRecord``s."""

    def __init__(
        self, client: ApiClient, *, provider: str, metric_set: MetricSet, width: int, top: int
    ) -> None:
        self.client = client
        self.provider = provider
        self.metric_set = metric_set
        self.width = width
        self.interval = INTERVALS[width]
        self.top = top
        self._core_only: set[str] = set()  # accounts (keys) whose metric definitions lack the optional metrics

    async def usage(
        self, account: Account, deployments: Mapping[str, Deployment], window: Window
    ) -> list[UsageRecord]:
        records: list[UsageRecord] = []
        for chunk in chunks(window, self.width):
            tokens = await self._tokens(account, chunk)
            requests = await self._query(account, [self.metric_set.requests], self.metric_set.request_dimensions,
                                         chunk)
            records += self._records(account, deployments, chunk, tokens, requests)
        return records

    async def _tokens(self, account: Account, chunk: Window) -> list[Point]:
        """The token metrics; without the optional ones for an account that does not define them."""
        names = [n for n in self.metric_set.tokens if account.key not in self._core_only
                 or n not in self.metric_set.optional]
        try:
            return await self._query(account, names, self.metric_set.token_dimensions, chunk)
        except ProviderError as exc:
            if exc.error_type != "config" or not self.metric_set.optional.intersection(names):
                raise
        log.info("%s: %s does not define %s; reading its other token metrics", self.provider, account.name,
                 ", ".join(sorted(self.metric_set.optional)))
        self._core_only.add(account.key)
        names = [n for n in names if n not in self.metric_set.optional]
        return await self._query(account, names, self.metric_set.token_dimensions, chunk)

    async def _query(
        self, account: Account, names: list[str], dimensions: tuple[str, ...], chunk: Window
    ) -> list[Point]:
        truncated: list[str] = []
        for top in sorted({self.top, min(self.top * TOP_GROWTH, MAX_TOP)}):
            params = {
                "api-version": METRICS_API_VERSION,
                "metricnamespace": METRIC_NAMESPACE,
                "metricnames": ",".join(names),
                "timespan": f"{iso(chunk.start)}/{iso(chunk.end)}",
                "interval": self.interval,
                "aggregation": "Total",
                "$filter": " and ".join(f"{d} eq '*'" for d in dimensions),
                "top": str(top),
            }
            path = f"{account.id}/providers/Microsoft.Insights/metrics"
            try:
                body = await self.client.get_json(path, params, operation="monitor.metrics")
            except ProviderError as exc:
                if exc.error_type == "auth":
                    raise ProviderError(f"{exc} (needs Monitoring Reader on account {account.name})",
                                        provider=self.provider, error_type="auth") from None
                raise
            try:
                points, series = parse_metrics(body, names)
            except ResponseShapeError as exc:
                raise ProviderError(f"{account.name} metrics: {exc}", provider=self.provider,
                                    error_type="bad_response") from None
            truncated = [n for n, count in series.items() if count >= top]
            if not truncated:
                return [p for p in points if chunk.start <= p.start < chunk.end]
        raise ProviderError(
            f"{account.name}: {', '.join(truncated)} returned {top} series, as many as asked for (`top`), so the "
            f"answer may be truncated: raise max_series (now {self.top})",
            provider=self.provider, error_type="config",
        )

    def _records(
        self,
        account: Account,
        deployments: Mapping[str, Deployment],
        chunk: Window,
        tokens: list[Point],
        requests: list[Point],
    ) -> list[UsageRecord]:
        # Sum per (deployment, model, ttl, bucket): series that differ only in a dimension we do not keep
        # (none today, but Azure adds dimensions) must add up, not overwrite each other.
        token_sums: dict[tuple[str, str, str | None, int], dict[str, int]] = defaultdict(dict)
        for p in tokens:
            mapping = self.metric_set.tokens[p.metric]
            deployment, model = self._deployment_and_model(p.dimensions, deployments)
            by_type = token_sums[(deployment, model, mapping.ttl, p.start)]
            by_type[mapping.token_type] = by_type.get(mapping.token_type, 0) + p.value
        request_sums: dict[tuple[str, str, str, int], int] = defaultdict(int)
        for p in requests:
            deployment, model = self._deployment_and_model(p.dimensions, deployments)
            request_sums[(deployment, model, p.dimensions.get(STATUS_CODE) or "unknown", p.start)] += p.value
        records = []
        for (deployment, model, ttl, start), by_type in token_sums.items():
            dims = {"llm.deployment": deployment}
            if ttl is not None:
                dims["llm.cache.ttl"] = ttl
            records.append(UsageRecord(
                provider=PROVIDER_NAME, model=model, operation=operation_of(model), tenancy_id=account.tenancy_id,
                bucket_start=start, bucket_width=self.width, tokens=by_type, dimensions=dims,
            ))
        for (deployment, model, status, start), count in request_sums.items():
            records.append(UsageRecord(
                provider=PROVIDER_NAME, model=model, operation=operation_of(model), tenancy_id=account.tenancy_id,
                bucket_start=start, bucket_width=self.width, requests=count,
                dimensions={"llm.deployment": deployment, "llm.request.status_code": status},
            ))
        return records

    @staticmethod
    def _deployment_and_model(dims: Mapping[str, str], deployments: Mapping[str, Deployment]) -> tuple[str, str]:
        """The deployment, and its model as the point's own dimensions say, else as the deployment list says."""
        deployment = dims.get(DEPLOYMENT) or "unknown"
        known = deployments.get(deployment)
        name = dims.get(MODEL_NAME) or (known.model if known else "")
        version = dims.get(MODEL_VERSION) or (known.version if known and known.model == name else "")
        return deployment, model_label(name, version) if name else "unknown"


__all__ = [
    "INTERVALS", "METRIC_SETS", "PROVIDER_NAME", "MetricSet", "MetricsReader", "Point", "TokenMetric", "chunks",
    "iso", "operation_of", "parse_metrics", "parse_time",
]
