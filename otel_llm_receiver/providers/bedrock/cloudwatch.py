"""Bedrock usage from CloudWatch: ``ListMetrics`` to find the models with data, ``GetMetricData`` for the sums.

Namespaces and metrics (docs.aws.amazon.com/bedrock/latest/userguide/monitoring-runtime-metrics.html and
monitoring-mantle-metrics.html; docs/providers/bedrock.md says what was checked):

* ``AWS/Bedrock`` (the ``bedrock-runtime`` endpoint), dimension ``ModelId``: ``Invocations``,
  ``InputTokenCount``, ``OutputTokenCount``, ``InvocationThrottles``, and ``CacheReadInputTokenCount`` /
  ``CacheWriteInputTokenCount`` where the account has them (they are missing from AWS's metrics table; we
  query only what ``ListMetrics`` lists, so their absence costs nothing). ``InputTokenCount`` counts uncached
  input only (cache reads and writes are their own counts), so the four token counts partition the tokens.
* ``AWS/BedrockMantle`` (the OpenAI-compatible ``bedrock-mantle`` endpoint): ``Inferences``,
  ``TotalInputTokens``, ``TotalOutputTokens`` at its per-model level: the series with a single dimension
  whose name says model.

Every query asks ``Stat: Sum`` over ``Period`` = ``bucket_width`` from a period-aligned start, up to 500
queries per call (the API's limit), following ``NextToken`` until the results are whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...errors import ProviderError, ResponseShapeError
from ...model import Window
from .. import shape

__all__ = ["MANTLE", "MAX_QUERIES", "RUNTIME", "Namespace", "Series", "read_usage"]

#: GetMetricData accepts at most 500 MetricDataQuery structures per call.
MAX_QUERIES = 500

Call = Callable[..., Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Namespace:
    """A CloudWatch namespace Bedrock publishes to, and what each of its metrics measures."""

    name: str
    #: metric name -> measure: a token type (input, cache_read, cache_write, output), requests or throttled
    metrics: Mapping[str, str]
    #: the per-model dimension's name; None: the single dimension whose name contains "model"
    model_dimension: str | None


RUNTIME = Namespace(
    "AWS/Bedrock",
    {
        "Invocations": "requests",
        "InvocationThrottles": "throttled",
        "InputTokenCount": "input",
        "OutputTokenCount": "output",
        "CacheReadInputTokenCount": "cache_read",
        "CacheWriteInputTokenCount": "cache_write",
    },
    "ModelId",
)
MANTLE = Namespace(
    "AWS/BedrockMantle",
    {"Inferences": "requests", "TotalInputTokens": "input", "TotalOutputTokens": "output"},
    None,
)


@dataclass(frozen=True, slots=True)
class Series:
    """One CloudWatch metric of one model: what to ask ``GetMetricData`` for."""

    namespace: str
    metric: str
    dimension: str
    model_id: str


def _model_dimension(ns: Namespace, dimensions: Any) -> tuple[str, str] | None:
    """(name, value) of the per-model dimension when ``dimensions`` is exactly that one, else None."""
    if not isinstance(dimensions, list) or len(dimensions) != 1 or not isinstance(dimensions[0], dict):
        return None
    name, value = dimensions[0].get("Name"), dimensions[0].get("Value")
    if not isinstance(name, str) or not isinstance(value, str) or not value:
        return None
    wanted = name == ns.model_dimension if ns.model_dimension else "model" in name.lower()
    return (name, value) if wanted else None


async def list_series(call: Call, region: str, ns: Namespace) -> list[Series]:
    """Every per-model series of ``ns`` in ``region`` that ``ListMetrics`` knows (data in the last 2 weeks)."""
    found: set[Series] = set()
    token: str | None = None
    while True:
        params: dict[str, Any] = {"Namespace": ns.name}
        if token:
            params["NextToken"] = token
        page = await call("cloudwatch", region, "ListMetrics", **params)
        metrics = page.get("Metrics")
        if not isinstance(metrics, list):
            raise ProviderError("ListMetrics: the response has no Metrics list", error_type="bad_response")
        for m in metrics:
            if not isinstance(m, dict) or m.get("MetricName") not in ns.metrics:
                continue
            dim = _model_dimension(ns, m.get("Dimensions"))
            if dim is not None:
                found.add(Series(ns.name, str(m["MetricName"]), dim[0], dim[1]))
        token = page.get("NextToken")
        if not token:
            return sorted(found, key=lambda s: (s.model_id, s.metric))


def _epoch(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    raise ProviderError(f"GetMetricData: timestamp {value!r} is not a time", error_type="bad_response")


def _count(value: Any, path: str) -> int:
    """A data point's value: a whole count as CloudWatch sends it (a float), checked by the shared reader."""
    try:
        return shape.measured_count(value, path)
    except ResponseShapeError as exc:
        raise ProviderError(f"GetMetricData: {exc}", error_type="bad_response") from None


async def read_points(
    call: Call, region: str, series: list[Series], window: Window, width: int
) -> dict[Series, dict[int, int]]:
    """Sum per bucket for every series over the buckets overlapping ``window``: {series: {bucket_start: n}}."""
    start = window.start - window.start % width
    end = window.end - window.end % width + width  # the bucket still filling in is read too
    points: dict[Series, dict[int, int]] = {s: {} for s in series}
    for first in range(0, len(series), MAX_QUERIES):
        batch = series[first:first + MAX_QUERIES]
        by_id = {f"q{i}": s for i, s in enumerate(batch)}
        queries = [
            {
                "Id": qid,
                "MetricStat": {
                    "Metric": {"Namespace": s.namespace, "MetricName": s.metric,
                               "Dimensions": [{"Name": s.dimension, "Value": s.model_id}]},
                    "Period": width,
                    "Stat": "Sum",
                },
                "ReturnData": True,
            }
            for qid, s in by_id.items()
        ]
        token: str | None = None
        while True:
            params: dict[str, Any] = {
                "MetricDataQueries": queries,
                "StartTime": datetime.fromtimestamp(start, UTC),
                "EndTime": datetime.fromtimestamp(end, UTC),
                "ScanBy": "TimestampAscending",
            }
            if token:
                params["NextToken"] = token
            page = await call("cloudwatch", region, "GetMetricData", **params)
            _merge_page(page, by_id, points, width)
            token = page.get("NextToken")
            if not token:
                break
    return points


def _merge_page(
    page: Mapping[str, Any], by_id: Mapping[str, Series], points: dict[Series, dict[int, int]], width: int
) -> None:
    results = page.get("MetricDataResults")
    if not isinstance(results, list):
        raise ProviderError("GetMetricData: the response has no MetricDataResults list", error_type="bad_response")
    for result in results:
        s = by_id.get(str(result.get("Id"))) if isinstance(result, dict) else None
        if s is None:
            raise ProviderError(f"GetMetricData: a result for an unknown query id {result!r:.80}",
                                error_type="bad_response")
        status = result.get("StatusCode")
        if status == "Forbidden":
            raise ProviderError(f"GetMetricData: access to {s.namespace} {s.metric} is forbidden "
                                "(the IAM policy must allow cloudwatch:GetMetricData)", error_type="auth")
        if status == "InternalError":
            raise ProviderError(f"GetMetricData: CloudWatch failed on {s.metric} ({s.model_id})",
                                error_type="server_error")
        timestamps, values = result.get("Timestamps"), result.get("Values")
        if not isinstance(timestamps, list) or not isinstance(values, list) or len(timestamps) != len(values):
            raise ProviderError(f"GetMetricData: Timestamps and Values of {s.metric} do not pair up",
                                error_type="bad_response")
        buckets = points[s]
        for ts, value in zip(timestamps, values, strict=True):
            t = _epoch(ts)
            # Pages split a result, never a data point: a bucket seen twice would be counted twice.
            bucket = t - t % width
            if bucket in buckets:
                raise ProviderError(f"GetMetricData: {s.metric} ({s.model_id}) has bucket {bucket} twice",
                                    error_type="bad_response")
            buckets[bucket] = _count(value, f"{s.metric} ({s.model_id}) value")


async def read_usage(
    call: Call, region: str, namespaces: Iterable[Namespace], window: Window, width: int
) -> dict[tuple[str, str], dict[int, dict[str, int]]]:
    """Usage of ``region`` by (namespace, ModelId): {bucket_start: {measure: count}} for every bucket with data."""
    measures = {ns.name: ns.metrics for ns in namespaces}
    series: list[Series] = []
    for ns in namespaces:
        series += await list_series(call, region, ns)
    usage: dict[tuple[str, str], dict[int, dict[str, int]]] = {}
    if not series:
        return usage
    for s, buckets in (await read_points(call, region, series, window, width)).items():
        measure = measures[s.namespace][s.metric]
        per_model = usage.setdefault((s.namespace, s.model_id), {})
        for bucket, value in buckets.items():
            per_model.setdefault(bucket, {})[measure] = value
    return usage
