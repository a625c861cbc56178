"""The ``bedrock`` provider's options: every key, its kind and its default, written once.

Bedrock is read through botocore, not the shared HTTP client: its retries are ``max_attempts`` (botocore's
own), and it takes the section's common ``timeout`` and ``endpoint`` directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ...config_providers import DEFAULT_PROVIDER_TIMEOUT
from ..base import DAY, HOUR
from ..options import ProviderOptions, common, option
from .aws import SERVICES

__all__ = ["MAX_COST_LOOKBACK", "BedrockOptions"]

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]")
MAX_COST_LOOKBACK = 14 * DAY
_DEFAULT_SERVICES = ("*Bedrock*",)


@dataclass(frozen=True, kw_only=True)
class BedrockOptions(ProviderOptions):
    """A ``bedrock`` section's own keys (docs/providers/bedrock.md); an empty ``cost_services`` is the default."""

    regions: tuple[str, ...] = option("list[str]", ("us-east-1",), description="Regions whose CloudWatch to read.")
    bucket_width: float = option("duration", HOUR, description="CloudWatch period: 5m .. 1d, dividing a day.")
    mantle: bool = option("bool", True, description="Also read AWS/BedrockMantle (bedrock-mantle endpoint).")
    costs: bool = option("bool", True, description="Read spend from Cost Explorer ($0.01 a request).")
    cost_interval: float = option("duration", 6 * HOUR, description="How often to ask Cost Explorer.")
    cost_lookback: float = option("duration", 3 * DAY, description="Recent days re-read (restated); at most 14d.")
    cost_metric: str = option("str", "UnblendedCost", choices=("UnblendedCost", "NetUnblendedCost"))
    cost_services: tuple[str, ...] = option(
        "list[str]", _DEFAULT_SERVICES,
        description="Services that are Bedrock spend (shell patterns, case-insensitive).",
    )
    cost_tag: str | None = option("str", description="Cost-allocation tag whose value owns the spend (llm.tenancy.id).")
    linked_accounts: bool = option("bool", False, description="Spend per linked account (payer view).")
    role_arn: str | None = option("str", description="IAM role to assume with the default credential chain.")
    endpoint_url: Mapping[str, str] | None = option(
        "map[str,str]", description="URL per service: cloudwatch, ce, bedrock, sts."
    )
    profile_ttl: float = option("duration", HOUR, description="How long inference profiles are cached.")
    max_attempts: int = option("int", 3, description="botocore attempts per call (throttling, 5xx).")
    #: the section's ``timeout`` (per call) and ``endpoint`` (one URL for every service)
    timeout: float = common(DEFAULT_PROVIDER_TIMEOUT)
    endpoint: str | None = common()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost_services", tuple(self.cost_services or _DEFAULT_SERVICES))

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not self.regions:
            problems.append("regions: must list at least one region")
        problems += [
            f"regions[{i}]: {r!r} is not an AWS region name" for i, r in enumerate(self.regions) if not _REGION.fullmatch(r)
        ]
        width = int(self.bucket_width)
        if width < 300 or width % 60 or DAY % width:
            problems.append(f"bucket_width: must divide a day and be at least 5m, not {width}s")
        if self.cost_lookback > MAX_COST_LOOKBACK:
            problems.append("cost_lookback: must be at most 14d")
        if self.cost_tag and self.linked_accounts:
            problems.append("cost_tag: cannot be used together with linked_accounts "
                            "(Cost Explorer groups by two keys at most)")
        problems += [
            f"endpoint_url.{k}: is not one of {', '.join(SERVICES)}" for k in self.endpoint_url or {} if k not in SERVICES
        ]
        if self.max_attempts < 1:
            problems.append("max_attempts: must be at least 1")
        return problems
