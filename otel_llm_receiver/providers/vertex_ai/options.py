"""The ``vertex_ai`` provider's options: every key, its kind and its default, written once.

Vertex reads over gRPC (Cloud Monitoring) and BigQuery, not the shared HTTP client, but takes the same retry
settings (``HttpOptions``) and the section's common ``timeout`` / ``endpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..base import DAY, HOUR
from ..options import HttpOptions, option
from . import billing, monitoring

__all__ = ["SOURCES", "VertexAIOptions"]

SOURCES = ("vertex", "gemini_api")


@dataclass(frozen=True, kw_only=True)
class VertexAIOptions(HttpOptions):
    """A ``vertex_ai`` section's own keys (docs/providers/vertex_ai.md), plus the shared HTTP ones."""

    projects: tuple[str, ...] = option(
        "list[str]", (), required=True, description="GCP project ids to read (the tenancies)."
    )
    sources: tuple[str, ...] = option(
        "list[str]", ("vertex",), choices=SOURCES,
        description="What to read: `vertex` (Vertex AI publisher models), `gemini_api` (Gemini Developer "
                    "API, per project).",
    )
    bucket_width: float = option("duration", HOUR, description="Alignment period of the buckets (1m .. 1d).")
    credentials_file: str | None = option(
        "secret",
        description="Service-account or other Google credentials JSON (a path, or the JSON via ${file:...}); "
                    "default: Application Default Credentials.",
    )
    billing_export: Mapping[str, str] | None = option(
        "map[str,str]",
        description="Reported cost from the Cloud Billing export: `table` (project.dataset.table), optional "
                    "`project` (runs the query), `interval` (6h), `lookback` (3d), `location`.",
    )
    project_names: bool = option(
        "bool", True,
        description="Look project display names up in Resource Manager (resourcemanager.projects.get).",
    )
    resource_manager_endpoint: str | None = option(
        "str", description="Resource Manager base URL (default https://cloudresourcemanager.googleapis.com)."
    )

    def validate(self) -> list[str]:
        problems = []
        if not self.projects:
            problems.append("projects: must name at least one GCP project id")
        width = int(self.bucket_width)
        if width < 60 or DAY % width:
            problems.append(f"bucket_width: must divide a day and be at least 1m, not {width}s")
        try:
            plaintext = monitoring.plaintext_target(self.endpoint) is not None
        except ValueError as exc:
            problems.append(f"endpoint: {exc}")
        else:
            if plaintext and self.credentials_file:
                problems.append("credentials_file: cannot be used with a plaintext (http://) endpoint")
        try:
            monitoring.plaintext_target(self.resource_manager_endpoint)
        except ValueError as exc:
            problems.append(f"resource_manager_endpoint: {exc}")
        if self.billing_export:
            try:
                billing.BillingExport.parse(self.billing_export)
            except ValueError as exc:  # one "billing_export.KEY: message" per bad key
                problems += str(exc).split("; ")
        elif not self.sources:
            problems.append("sources: is empty and no billing_export is configured: nothing to read")
        return problems
