"""The ``openai`` provider's options: every key, its kind and its default, written once."""

from __future__ import annotations

from dataclasses import dataclass

from ...durations import format_duration
from ..base import DAY, HOUR
from ..options import HttpOptions, option
from .endpoints import DIMENSION_FIELDS, USAGE_ENDPOINTS

__all__ = ["BUCKET_WIDTHS", "MAX_COST_LOOKBACK", "OpenAIOptions"]

BUCKET_WIDTHS: dict[str, int] = {"1m": 60, "1h": HOUR, "1d": DAY}
#: Costs are re-read at most this far back: bucket rows live one day longer (the provider's REVISION_HORIZON).
MAX_COST_LOOKBACK = 7 * DAY


@dataclass(frozen=True, kw_only=True)
class OpenAIOptions(HttpOptions):
    """An ``openai`` section's own keys (docs/providers/openai.md), plus the shared HTTP ones."""

    admin_key: str | None = option("secret", required=True, description="An OpenAI Admin API key (sk-admin-...).")
    usage_endpoints: tuple[str, ...] = option(
        "list[str]", tuple(e.name for e in USAGE_ENDPOINTS), choices=tuple(e.name for e in USAGE_ENDPOINTS),
        description="Usage types to poll (default: all).",
    )
    costs: bool = option("bool", True, description="Poll /v1/organization/costs (daily, reported spend).")
    bucket_width: str = option(
        "str", "1h", choices=tuple(BUCKET_WIDTHS), description="Usage bucket width: 1m, 1h or 1d."
    )
    dimensions: tuple[str, ...] = option(
        "list[str]", ("project", "model", "batch"), choices=tuple(DIMENSION_FIELDS),
        description="Group usage by these (api_key and user add per-key / per-user series: opt in).",
    )
    cost_lookback: float = option(
        "duration", 3 * DAY, description="How far back each poll re-reads costs (at most 7d)."
    )
    cost_backfill: float = option("duration", 7 * DAY, description="How far back the first poll reads costs.")
    names_ttl: float = option("duration", HOUR, description="How long project names are cached.")
    project_ids: tuple[str, ...] | None = option(
        "list[str]", None, description="Only these projects (passed to the API)."
    )

    def validate(self) -> list[str]:
        problems = []
        if not self.admin_key:
            problems.append("admin_key: is required")
        if self.cost_lookback > MAX_COST_LOOKBACK:
            problems.append(
                f"cost_lookback: must be at most 7d (buckets older than 8d are pruned), "
                f"not {format_duration(self.cost_lookback)}"
            )
        return problems
