"""The ``azure_openai`` provider's options: every key, its kind and its default, written once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..base import DAY, HOUR
from ..options import HttpOptions, option
from .discovery import parse_account_id
from .metrics import INTERVALS, METRIC_SETS

__all__ = ["MAX_COST_LOOKBACK", "AzureOpenAIOptions"]

#: Spend older than this is final: cost queries never re-read further back.
MAX_COST_LOOKBACK = 7 * DAY
_CREDENTIAL_KEYS = ("tenant_id", "client_id", "client_secret")


@dataclass(frozen=True, kw_only=True)
class AzureOpenAIOptions(HttpOptions):
    """An ``azure_openai`` section's keys (docs/providers/azure_openai.md), after the shared HTTP ones."""

    OWN_KEYS_FIRST: ClassVar[bool] = False

    subscriptions: tuple[str, ...] = option(
        "list[str]", (), description="Subscription ids whose OpenAI / AIServices accounts are polled.")
    resources: tuple[str, ...] = option(
        "list[str]", (), description="Account resource ids to poll (besides those found in `subscriptions`).")
    tenant_id: str | None = option("str", description="Entra ID tenant of a service principal (with client_id/secret).")
    client_id: str | None = option("str", description="Service principal application id.")
    client_secret: str | None = option(
        "secret", description="Service principal secret, e.g. ${env:AZURE_CLIENT_SECRET}.")
    authority_host: str | None = option(
        "str", description="Entra ID authority for sovereign clouds (https), e.g. login.microsoftonline.us.")
    management_endpoint: str | None = option(
        "str", description="Resource Manager endpoint (default https://management.azure.com; the common "
                           "`endpoint` key is an alias). The token scope is ENDPOINT/.default.")
    bucket_width: float = option("duration", HOUR, description="Metrics time grain: 1m, 5m, 15m, 30m or 1h.")
    metric_set: str = option(
        "str", "models", choices=tuple(METRIC_SETS),
        description="`models`: InputTokens/OutputTokens (+ Anthropic cache metrics, ModelRequests); "
                    "`azure_openai`: ProcessedPromptTokens/GeneratedTokens, AzureOpenAIRequests.")
    max_series: int = option("int", 1000, description="`top` of each metrics query: series per metric per account.")
    discovery_interval: float = option(
        "duration", HOUR, description="How long account and deployment lists are cached.")
    cost: bool = option("bool", True, description="Query Cost Management for spend.")
    cost_interval: float = option("duration", 6 * HOUR, description="How often spend is queried.")
    cost_lookback: float = option(
        "duration", 72 * HOUR, description="How far back each cost query re-reads (at most 7d).")
    cost_scopes: tuple[str, ...] = option(
        "list[str]", (),
        description="Cost query scopes (/subscriptions/ID[/resourceGroups/RG]); default: the accounts' "
                    "subscriptions.")
    cost_query_spacing: float = option(
        "duration", 15.0, description="Least time between two cost queries to one scope.")

    def validate(self) -> list[str]:
        problems = []
        width = int(self.bucket_width)
        if width not in INTERVALS or width > HOUR:
            problems.append(f"bucket_width: must be 1m, 5m, 15m, 30m or 1h, not {width}s")
        if not self.subscriptions and not self.resources:
            problems.append("subscriptions: set subscriptions or resources: there is nothing to poll")
        for index, resource in enumerate(self.resources):
            try:
                parse_account_id(resource)
            except ValueError as exc:
                problems.append(f"resources[{index}]: {exc}")
        if self.cost_lookback > MAX_COST_LOOKBACK:
            problems.append("cost_lookback: is at most 7d (older spend is final)")
        if self.max_series < 1:
            problems.append("max_series: must be at least 1")
        given = [key for key in _CREDENTIAL_KEYS if getattr(self, key)]
        if given and len(given) < len(_CREDENTIAL_KEYS):
            missing = [key for key in _CREDENTIAL_KEYS if key not in given]
            problems.append(
                f"{missing[0]}: {', '.join(given)} set without {', '.join(missing)}: set all three for a service "
                "principal, or none for DefaultAzureCredential"
            )
        return problems
