"""Raw Cloud Monitoring data shaped like a real Vertex AI project's, and the ground truth computed from it.

The truth is computed from the fake's raw points with plain sums, never through the provider's code: a point
belongs to the bucket its end time falls in, ``(bucket_start, bucket_start + width]``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from tests.fakes.monitoring import FakeMonitoring

TOKENS = "aiplatform.googleapis.com/publisher/online_serving/token_count"
INVOCATIONS = "aiplatform.googleapis.com/publisher/online_serving/model_invocation_count"
PUBLISHER_MODEL = "aiplatform.googleapis.com/PublisherModel"
GEMINI_OUT = "generativelanguage.googleapis.com/generate_content_usage_output_token_count"
GEMINI_IN_FREE = "generativelanguage.googleapis.com/quota/generate_content_free_tier_input_token_count/usage"
GEMINI_IN_PAID = "generativelanguage.googleapis.com/quota/generate_content_paid_tier_input_token_count/usage"
GEMINI_IN_LIMIT = "generativelanguage.googleapis.com/quota/generate_content_paid_tier_input_token_count/limit"
GEMINI_RESOURCE = "generativelanguage.googleapis.com/Location"
HOUR = 3600
T0 = 1_795_564_800  # 2026-11-25 00:00 UTC


@dataclass(frozen=True)
class Model:
    """One publisher model as the PublisherModel resource labels name it, and how it is called."""

    project: str
    model_user_id: str
    model_version_id: str
    publisher: str
    location: str
    request_type: str  # dedicated (Provisioned Throughput) / shared
    accounting_resource: str = ""  # set for Provisioned Throughput only

    def resource_labels(self) -> dict[str, str]:
        return {"resource_container": self.project, "location": self.location, "publisher": self.publisher,
                "model_user_id": self.model_user_id, "model_version_id": self.model_version_id}


MODELS = (
    Model("acme-prod", "gemini-2.5-flash", "", "google", "us-central1", "shared"),
    Model("acme-prod", "gemini-2.5-pro", "", "google", "global", "dedicated", "projects/123456789012"),
    Model("acme-prod", "claude-sonnet-4", "20250514", "anthropic", "us-east5", "shared"),
    Model("acme-research", "gemini-2.5-flash", "", "google", "europe-west4", "shared"),
    Model("acme-research", "llama-4-maverick-17b-128e-instruct-maas", "", "meta", "us-east5", "shared"),
)


def seed_vertex(fake: FakeMonitoring, start: int, end: int, *, seed: int = 1, models: tuple[Model, ...] = MODELS
                ) -> None:
    """Per-minute DELTA points in ``[start, end)`` for every model: tokens split by type, modality and caching
    (labels the provider must reduce away or keep), invocations split by response code and method."""
    rng = random.Random(seed)
    for m in models:
        for minute in range(start, end, 60):
            if rng.random() < 0.3:
                continue  # minutes without traffic have no point, as in Monitoring
            for explicit in ("false", "true") if m.publisher == "google" else ("false",):
                for modality in ("TEXT", "IMAGE") if explicit == "false" else ("TEXT",):
                    for token_type, scale in (("input", 4000), ("output", 600)):
                        # Google models also run batch prediction jobs: `source` says so with a `batch_` prefix.
                        for source in (m.location, f"batch_{m.location}") if m.publisher == "google" else (
                                m.location,):
                            labels = {"type": token_type, "max_token_size": "4K", "request_type": m.request_type,
                                      "explicit_caching": explicit, "accounting_resource": m.accounting_resource,
                                      "modality": modality, "source": source}
                            fake.add_point(m.project, TOKENS, PUBLISHER_MODEL, m.resource_labels(), labels,
                                           minute, minute + 60, rng.randint(1, scale))
                for code, method in (("200", "GenerateContent"), ("429", "StreamGenerateContent")):
                    labels = {"response_code": code, "method": method, "request_type": m.request_type,
                              "explicit_caching": explicit, "error_category": "" if code == "200" else "capacity",
                              "input_token_size": "4K", "output_token_size": "1K", "max_token_size": "4K",
                              "accounting_resource": m.accounting_resource}
                    fake.add_point(m.project, INVOCATIONS, PUBLISHER_MODEL, m.resource_labels(), labels,
                                   minute, minute + 60, rng.randint(1, 9))


def seed_gemini(fake: FakeMonitoring, project: str, start: int, end: int, *, seed: int = 2) -> None:
    """Gemini Developer API metrics: output tokens by model, input tokens as quota usage of two tiers."""
    rng = random.Random(seed)
    resource = {"resource_container": project, "location": "global"}
    for model in ("gemini-2.5-flash", "gemini-2.5-pro"):
        for minute in range(start, end, 60):
            fake.add_point(project, GEMINI_OUT, GEMINI_RESOURCE, resource, {"model": model},
                           minute, minute + 60, rng.randint(1, 500))
            tier = GEMINI_IN_FREE if minute < start + (end - start) // 2 else GEMINI_IN_PAID
            fake.add_point(project, tier, GEMINI_RESOURCE, resource, {"model": model, "limit_name": "x"},
                           minute, minute + 60, rng.randint(1, 3000))
            fake.add_point(project, GEMINI_IN_LIMIT, GEMINI_RESOURCE, resource, {"model": model},
                           minute, minute + 60, 1_000_000)  # a limit, never usage


#: provider, project, model, region, publisher, request type, explicit caching, batch, token type
TokenKey = tuple[str, str, str, str, str, str, str, str, str]


def truth(fake: FakeMonitoring, start: int, end: int, width: int = HOUR
          ) -> tuple[dict[TokenKey, int], dict[tuple[str, ...], int]]:
    """Expected token and request totals for buckets ending in ``(start, end]`` (both on bucket boundaries)."""
    tokens: dict[TokenKey, int] = defaultdict(int)
    requests: dict[tuple[str, ...], int] = defaultdict(int)
    for s in fake.raw_series():
        r: Mapping[str, str] = s.resource_labels
        lab: Mapping[str, str] = s.metric_labels
        total = sum(p.value for p in s.points if start < p.end <= end)
        if not total:
            continue
        if s.metric_type == TOKENS:
            batch = "true" if lab.get("source", "").startswith("batch_") else ""
            tokens[("gcp.vertex_ai", s.project, r["model_user_id"], r["location"], r["publisher"],
                    lab["request_type"], lab["explicit_caching"], batch, lab["type"])] += total
        elif s.metric_type == INVOCATIONS:
            requests[("gcp.vertex_ai", s.project, r["model_user_id"], r["location"], r["publisher"],
                      lab["request_type"], lab["explicit_caching"])] += total
        elif s.metric_type == GEMINI_OUT:
            tokens[("gcp.gemini", s.project, lab["model"], "", "", "", "", "", "output")] += total
        elif s.metric_type in (GEMINI_IN_FREE, GEMINI_IN_PAID):
            tokens[("gcp.gemini", s.project, lab["model"], "", "", "", "", "", "input")] += total
    return dict(tokens), dict(requests)
