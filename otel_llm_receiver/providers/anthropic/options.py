"""The ``anthropic`` provider's options: every key, its kind and its default, written once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..base import DAY, HOUR
from ..options import HttpOptions, option
from .reports import DIMENSIONS

__all__ = [
    "API_VERSION",
    "BUCKET_WIDTHS",
    "CODE_DIMENSIONS",
    "DEFAULT_DIMENSIONS",
    "DEFAULT_SOURCES",
    "MAX_COST_WINDOW",
    "REQUIRED_DIMENSIONS",
    "REVISION_HORIZON_DAYS",
    "SOURCES",
    "AnthropicOptions",
]

API_VERSION = "2023-06-01"
#: ``bucket_width`` -> (seconds, the most buckets one page may hold, per the API reference).
BUCKET_WIDTHS: Mapping[str, tuple[int, int]] = {"1m": (60, 1440), "1h": (HOUR, 168), "1d": (DAY, 31)}
REVISION_HORIZON_DAYS = 8
MAX_COST_WINDOW = (REVISION_HORIZON_DAYS - 1) * DAY  # cost is re-read within the ledger's revision horizon
DEFAULT_DIMENSIONS = ("workspace", "model", "service_tier", "context_window", "inference_geo")
REQUIRED_DIMENSIONS = ("workspace", "model")
SOURCES = ("messages", "cost", "claude_code")
DEFAULT_SOURCES = ("messages", "cost")
#: Dimensions of the Claude Code report only (not a usage report group_by[]).
CODE_DIMENSIONS = ("actor",)


@dataclass(frozen=True, kw_only=True)
class AnthropicOptions(HttpOptions):
    """An ``anthropic`` section's own keys (docs/providers/anthropic.md), plus the shared HTTP ones.

    An empty ``dimensions`` or ``sources`` list means the default one.
    """

    admin_key: str | None = option(
        "secret", required=True,
        description="Admin API key (sk-ant-admin...), sent as x-api-key. Workspace API keys are refused.",
    )
    anthropic_version: str = option("str", API_VERSION, description="The anthropic-version header.")
    bucket_width: str = option(
        "str", "1h", choices=tuple(BUCKET_WIDTHS),
        description="Usage bucket width (the API's own default is 1d, so it is always sent).",
    )
    cost_lookback: float = option(
        "duration", 72 * HOUR, description="Cost days re-read every poll (Anthropic restates recent days)."
    )
    cost_backfill: float = option("duration", 7 * DAY, description="Cost days read on a first poll.")
    names_ttl: float = option("duration", HOUR, description="How long workspace names are cached.")
    dimensions: tuple[str, ...] = option(
        "list[str]", DEFAULT_DIMENSIONS, choices=(*DIMENSIONS, *CODE_DIMENSIONS),
        description="Usage group_by[] dimensions; workspace and model are required; api_key, speed and actor "
        "(Claude Code) opt in.",
    )
    sources: tuple[str, ...] = option("list[str]", DEFAULT_SOURCES, choices=SOURCES, description="Which reports to poll.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "dimensions", tuple(self.dimensions or DEFAULT_DIMENSIONS))
        object.__setattr__(self, "sources", tuple(self.sources or DEFAULT_SOURCES))

    def validate(self) -> list[str]:
        problems = [f"dimensions: must include {d}" for d in REQUIRED_DIMENSIONS if d not in self.dimensions]
        problems += [
            f"{key}: must be at most {MAX_COST_WINDOW // DAY}d (the ledger's revision horizon for cost days)"
            for key, value in (("cost_lookback", self.cost_lookback), ("cost_backfill", self.cost_backfill))
            if value > MAX_COST_WINDOW
        ]
        if not self.admin_key:
            problems.append("admin_key: is required")
        return problems
