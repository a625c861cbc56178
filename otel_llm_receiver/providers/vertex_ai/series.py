"""What this provider asks Cloud Monitoring for, and how the answers become canonical records (pure, no I/O).

Each source is a set of ``Query``s: one metric type, a filter, an ``ALIGN_SUM`` aligner and a ``REDUCE_SUM``
reducer grouped by the labels we keep. Aligned DELTA points cover exactly one ``bucket_width`` ending at the
point's end time, so a bucket's identity is ``(series labels, end - width)`` and a re-read of the same window
reports the same bucket again, never a second one: the ledger keeps the latest value per bucket.

Metric facts (Google Cloud metrics list, "aiplatform" section; see docs/providers/vertex_ai.md):

* ``aiplatform.googleapis.com/publisher/online_serving/token_count`` — DELTA, INT64, on the monitored resource
  ``aiplatform.googleapis.com/PublisherModel`` (resource labels ``resource_container``, ``location``,
  ``publisher``, ``model_user_id``, ``model_version_id``); metric labels ``type`` (input/output),
  ``max_token_size``, ``request_type`` (dedicated/shared), ``explicit_caching``, ``accounting_resource``,
  ``modality``, ``source``.
* ``.../publisher/online_serving/model_invocation_count`` — DELTA, INT64, same resource; no ``type`` label.
* ``consumed_token_throughput`` is deliberately not read: it applies the burndown rate, so it is not raw tokens.

Gemini Developer API (``gemini_api`` source): ``generativelanguage.googleapis.com/
generate_content_usage_output_token_count`` (DELTA, INT64, label ``model``) for output tokens and the
``quota/generate_content_*_input_token_count/usage`` quota metrics for input tokens, per project, not per key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ...errors import ProviderError
from ...model import UsageRecord

VERTEX_PROVIDER = "gcp.vertex_ai"
GEMINI_PROVIDER = "gcp.gemini"
OPERATION = "generate_content"

PUBLISHER_MODEL = "aiplatform.googleapis.com/PublisherModel"
TOKEN_COUNT = "aiplatform.googleapis.com/publisher/online_serving/token_count"
INVOCATION_COUNT = "aiplatform.googleapis.com/publisher/online_serving/model_invocation_count"
GEMINI_OUTPUT_TOKENS = "generativelanguage.googleapis.com/generate_content_usage_output_token_count"
#: Input tokens of the Gemini Developer API exist only as quota usage, one metric per quota tier
#: (``generate_content_free_tier_input_token_count``, ``..._paid_tier_input_token_count``, ``..._paid_tier_3_...``):
#: the descriptors under this prefix are listed and every ``*_input_token_count/usage`` one is read.
GEMINI_QUOTA_PREFIX = "generativelanguage.googleapis.com/quota/generate_content_"
GEMINI_INPUT_QUOTA = re.compile(
    re.escape(GEMINI_QUOTA_PREFIX) + r"[a-z0-9_]*input_token_count/usage"
)

#: The Vertex dimensions kept as attributes (bounded: regions, publishers, two traffic types, a flag).
VERTEX_GROUP_BY: tuple[str, ...] = (
    "resource.label.model_user_id",
    "resource.label.location",
    "resource.label.publisher",
    "metric.label.request_type",
    "metric.label.explicit_caching",
)
#: label path -> record attribute (``model_user_id`` becomes the record's model)
VERTEX_ATTRIBUTES: Mapping[str, str] = {
    "resource.label.location": "cloud.region",
    "resource.label.publisher": "llm.publisher",
    "metric.label.request_type": "llm.request_type",
    "metric.label.explicit_caching": "llm.cache.explicit",
}
GEMINI_GROUP_BY: tuple[str, ...] = ("metric.label.model",)


@dataclass(frozen=True, slots=True)
class Query:
    """One ``ListTimeSeries`` question: a metric, its filter and how its series are grouped."""

    metric_type: str
    group_by: tuple[str, ...]
    resource_type: str | None = None
    split_by_type: bool = False  # the metric's ``type`` label says which token type a series is
    measure: str = "tokens"  # "tokens" or "requests"
    token_type: str | None = None  # the fixed token type of a metric without a ``type`` label

    @property
    def filter(self) -> str:
        parts = [f'metric.type = "{self.metric_type}"']
        if self.resource_type:
            parts.append(f'resource.type = "{self.resource_type}"')
        return " AND ".join(parts)

    @property
    def group_by_fields(self) -> list[str]:
        return [*self.group_by, "metric.label.type"] if self.split_by_type else list(self.group_by)


#: ``token_count``'s ``source`` is the serving region or ``global``, prefixed ``batch_`` for batch prediction
#: (billed at a discount): grouped by it so that ``llm.batch`` can say which tokens were batch. Only this metric
#: has the label, so only its query groups by it.
SOURCE_LABEL = "metric.label.source"

VERTEX_QUERIES: tuple[Query, ...] = (
    Query(TOKEN_COUNT, (*VERTEX_GROUP_BY, SOURCE_LABEL), PUBLISHER_MODEL, split_by_type=True),
    Query(INVOCATION_COUNT, VERTEX_GROUP_BY, PUBLISHER_MODEL, measure="requests"),
)


def gemini_queries(input_metric_types: Iterable[str]) -> tuple[Query, ...]:
    """The Gemini Developer API queries: output tokens, then every input-token quota usage metric found."""
    inputs = tuple(Query(m, GEMINI_GROUP_BY, token_type="input") for m in sorted(set(input_metric_types)))
    return (Query(GEMINI_OUTPUT_TOKENS, GEMINI_GROUP_BY, token_type="output"), *inputs)


def token_type_of(label: str) -> str | None:
    """Our token type for a ``type`` label value, or None for a value we do not know (never guessed into one).

    Google documents ``input`` and ``output``; partner models have been seen reporting ``cache_read_input`` and
    ``cache_write_1h_input`` too (not in Google's list), which map onto the cache types.
    """
    if label in ("input", "output"):
        return label
    if label.startswith("cache_read"):
        return "cache_read"
    if label.startswith("cache_write"):
        return "cache_write"
    return None


@dataclass(frozen=True, slots=True)
class Point:
    """One aligned point as the client library returned it, in plain values (seconds since the epoch)."""

    start: int
    end: int
    value: int


@dataclass(frozen=True, slots=True)
class Series:
    """One aligned, reduced series: its labels by path (``resource.label.x`` / ``metric.label.y``) and points."""

    labels: Mapping[str, str]
    points: tuple[Point, ...]


#: (model, sorted attribute pairs, bucket start): the identity of one record
_Key = tuple[str, tuple[tuple[str, str], ...], int]


@dataclass
class RecordBuilder:
    """Merges token and request series of one source into one ``UsageRecord`` per (series, bucket)."""

    provider: str
    tenancy_id: str
    width: int
    attributes: Mapping[str, str] = field(default_factory=dict)  # label path -> attribute
    model_label: str = "resource.label.model_user_id"
    #: Derive ``llm.batch`` = ``true`` from a ``batch_`` ``source`` (Vertex). Otherwise the attribute is absent, so
    #: online tokens and the invocation counts (which have no ``source``) share one series.
    batch_flag: bool = False
    unknown_types: set[str] = field(default_factory=set)
    _tokens: dict[_Key, dict[str, int]] = field(default_factory=dict)
    _requests: dict[_Key, int] = field(default_factory=dict)

    def add(self, query: Query, series: Series, *, where: str, start: int | None = None) -> None:
        """Fold one series in; a series that does not have the shape we asked for fails the poll.

        A point ending at or before ``start`` (the interval's start) would cover a bucket only partly inside
        the interval: it is skipped, so the edge of a re-read window can never report a bucket short.
        """
        model = series.labels.get(self.model_label, "")
        if not model:
            raise ProviderError(f"{where}: a {query.metric_type} series has no {self.model_label}")
        pairs = [(attr, series.labels.get(path, "")) for path, attr in self.attributes.items()]
        if self.batch_flag:
            source = series.labels.get(SOURCE_LABEL, "")
            pairs.append(("llm.batch", "true" if source.startswith("batch_") else ""))  # "" is dropped
        dims = tuple(sorted(pairs))
        token_type = query.token_type
        if query.split_by_type:
            label = series.labels.get("metric.label.type", "")
            token_type = token_type_of(label)
            if token_type is None:
                self.unknown_types.add(label)
                return
        for point in series.points:
            if start is not None and point.end <= start:
                continue
            bucket_start = self._bucket_start(point, query, where)
            key = (model, dims, bucket_start)
            if query.measure == "requests":
                self._requests[key] = self._requests.get(key, 0) + point.value
            else:
                assert token_type is not None
                tokens = self._tokens.setdefault(key, {})
                tokens[token_type] = tokens.get(token_type, 0) + point.value

    def _bucket_start(self, point: Point, query: Query, where: str) -> int:
        if point.value < 0:
            raise ProviderError(f"{where}: {query.metric_type} has a negative point ({point.value})")
        if point.end % self.width or (point.start and point.start != point.end - self.width):
            raise ProviderError(
                f"{where}: {query.metric_type} point [{point.start}, {point.end}) is not aligned to "
                f"{self.width}s buckets"
            )
        return point.end - self.width

    def records(self) -> list[UsageRecord]:
        """One record per (model, attributes, bucket), tokens and requests together; empty labels dropped."""
        return [
            UsageRecord(
                provider=self.provider, model=key[0], operation=OPERATION, tenancy_id=self.tenancy_id,
                bucket_start=key[2], bucket_width=self.width, tokens=dict(self._tokens.get(key, {})),
                requests=self._requests.get(key), dimensions={k: v for k, v in key[1] if v},
            )
            for key in sorted(set(self._tokens) | set(self._requests))
        ]
