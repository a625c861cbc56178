"""The ``bedrock`` provider: AWS Bedrock tokens from CloudWatch, spend from Cost Explorer, teams from profiles.

Bedrock has no usage API like OpenAI's: tokens live in CloudWatch (a few minutes late, revised as late data
points land: ``lookback`` 3h) and money in Cost Explorer (daily, a day late, restated for days:
``cost_lookback`` 72h). Each poll reads every configured region's usage; the cost source has its own rhythm
(``cost_interval``, default 6h, because every Cost Explorer page costs $0.01) and never re-asks for a day that
is already final (older than ``cost_lookback``). Its two cursors (``cost_checked``, ``cost_final_until``) are
returned in ``PollResult.cursors`` and come back through ``restore`` after a restart. Usage and cost are
separate sources: a Cost Explorer error never costs the CloudWatch tokens (nor the reverse); the failed source
is returned in ``PollResult.failed_sources`` with its cursors unmoved, and is read again on the next poll.

Mapping (docs/providers/bedrock.md has the table): ``gen_ai.provider.name`` ``aws.bedrock``; the model id
without its inference-profile prefix as ``gen_ai.request.model`` and the prefix as ``llm.inference_profile``;
``cloud.region``; application inference profiles as ``llm.tenancy.id`` / ``llm.tenancy.name`` (their tags are
saved as names of kind ``tag:<key>`` for attribution rules); everything else under the account id.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import ClassVar

from ...chunks import reads_secondary, whole_window
from ...config_parse import Option
from ...config_providers import ProviderConfig
from ...errors import ProviderError
from ...model import COST, USAGE, CostRecord, PollResult, SourceFailure, UsageRecord, Window
from ..base import DAY, HOUR, ProbeResult, Provider, read_source
from .aws import AwsApi
from .cloudwatch import MANTLE, RUNTIME, Namespace, read_usage
from .costs import PROVIDER, CostQuery
from .models import ModelRef, ProfileCache, looks_like_application_profile, parse_model_id
from .options import MAX_COST_LOOKBACK, BedrockOptions

log = logging.getLogger(__name__)

__all__ = ["BedrockProvider"]

COST_CHECKED = "cost_checked"
COST_FINAL_UNTIL = "cost_final_until"
THROTTLED = "llm.usage.throttled_requests"


def _operation(model: str) -> str:
    """Bedrock's metrics do not say the operation: embedding models embed, the rest is taken as chat."""
    return "embeddings" if "embed" in model.lower() else "chat"


class BedrockProvider(Provider):
    """AWS Bedrock usage (CloudWatch ``AWS/Bedrock`` and ``AWS/BedrockMantle``) and cost (Cost Explorer)."""

    TYPE: ClassVar[str] = "bedrock"
    OPTIONS_TYPE: ClassVar[type[BedrockOptions]] = BedrockOptions
    OPTIONS: ClassVar[Mapping[str, Option]] = BedrockOptions.schema()
    DEFAULT_LOOKBACK: ClassVar[float] = 3 * HOUR
    DEFAULT_BACKFILL: ClassVar[float] = 7 * DAY
    #: 5-minute CloudWatch data is kept 63 days (1-hour data 455 days).
    MAX_BACKFILL: ClassVar[float | None] = 63 * DAY
    #: Cost days are re-read up to cost_lookback (at most 14 days) back.
    REVISION_HORIZON: ClassVar[float] = MAX_COST_LOOKBACK + DAY
    SOURCES: ClassVar[tuple[str, ...]] = (USAGE, COST)

    def __init__(self, config: ProviderConfig, options: BedrockOptions | None = None) -> None:
        """``options`` default to the section's own (``BedrockOptions.from_config``); invalid ones are refused
        with the ``key: message`` lines of ``BedrockOptions.validate`` (``check`` reports the same lines)."""
        super().__init__(config)
        self.options = options = options if options is not None else BedrockOptions.from_config(config)
        problems = options.validate()
        try:  # an extra, not a base dependency: say how to get it rather than fail on first use
            import boto3  # noqa: F401
        except ImportError:
            problems.append("needs the AWS SDK: pip install 'otel-llm-receiver[bedrock]'")
        if problems:
            raise ProviderError("; ".join(problems), provider=self.name, error_type="config")
        self.regions: tuple[str, ...] = options.regions
        self.width = int(options.bucket_width)
        self.cost_interval = options.cost_interval
        self.cost_lookback = int(options.cost_lookback)
        self.cost_tag: str | None = options.cost_tag or None
        self.linked_accounts = options.linked_accounts
        self.namespaces: tuple[Namespace, ...] = (RUNTIME, MANTLE) if options.mantle else (RUNTIME,)
        self.costs_enabled = options.costs
        self.cost_metric = options.cost_metric
        self.cost_services = options.cost_services
        self._count_lock = threading.Lock()
        self.api = AwsApi(
            provider=self.name, timeout=options.timeout, max_attempts=options.max_attempts, count=self._count,
            endpoints=options.endpoint_url or {}, endpoint=options.endpoint, role_arn=options.role_arn or None,
        )
        self.profiles = ProfileCache(self.api.call, ttl=options.profile_ttl, provider=self.name)
        self._account: str | None = None
        self._cost_checked: int | None = None
        self._cost_final_until: int | None = None

    def _count(self, operation: str) -> None:
        with self._count_lock:  # botocore calls this from worker threads
            self.api_requests[operation] += 1

    # -- cursors --------------------------------------------------------------------------------------------
    def restore(self, cursors: Mapping[str, str]) -> None:
        # Also called after a failed poll: a cursor that was not committed must not survive in memory.
        self._cost_checked = self._cost_final_until = None
        for key in (COST_CHECKED, COST_FINAL_UNTIL):
            raw = cursors.get(key)
            if raw is None:
                continue
            try:
                value = int(raw)
            except ValueError:
                log.warning("%s: ignoring unreadable cursor %s=%r", self.name, key, raw)
                continue
            setattr(self, f"_{key}", value)

    def _cursors(self) -> dict[str, str]:
        cursors = {}
        if self._cost_checked is not None:
            cursors[COST_CHECKED] = str(self._cost_checked)
        if self._cost_final_until is not None:
            cursors[COST_FINAL_UNTIL] = str(self._cost_final_until)
        return cursors

    # -- polling --------------------------------------------------------------------------------------------
    @property
    def data_sources(self) -> tuple[str, ...]:
        return self.SOURCES if self.costs_enabled else (USAGE,)

    async def fetch(self, window: Window) -> PollResult:
        account = await self._account_id()  # the tenancy of both sources: without it neither can be read
        names: dict[tuple[str, str], str] = {}
        failed: dict[str, SourceFailure] = {}
        usage = await read_source(USAGE, self._all_regions(window, account, names), failed)
        polled = [USAGE] if usage is not None else []
        costs: list[CostRecord] = []
        whole = whole_window(window)  # a chunked poll (chunks.py) reads costs in its first chunk, as of now
        if reads_secondary() and self._cost_due(whole.end):
            read = await read_source(COST, self._costs(whole, account), failed)
            if read is not None:  # on a failure its cursors did not move: retried next poll
                costs = read
                polled.append(COST)
        current = window.end - window.end % self.width  # the bucket still filling in starts here
        return PollResult(usage=usage or [], costs=costs, names=names, complete_until=current,
                          cursors=self._cursors(), polled_sources=polled, failed_sources=failed)

    async def _all_regions(
        self, window: Window, account: str, names: dict[tuple[str, str], str]
    ) -> list[UsageRecord]:
        per_region = await asyncio.gather(*(self._usage(region, window, account, names) for region in self.regions))
        return [record for records in per_region for record in records]

    async def _account_id(self) -> str:
        """The account the credentials belong to: the tenancy of usage and spend not owned by a profile."""
        if self._account is None:
            identity = await self.api.call("sts", self.regions[0], "GetCallerIdentity")
            account = identity.get("Account")
            if not isinstance(account, str) or not account:
                raise ProviderError("GetCallerIdentity returned no Account", provider=self.name)
            self._account = account
        return self._account

    async def _usage(
        self, region: str, window: Window, account: str, names: dict[tuple[str, str], str]
    ) -> list[UsageRecord]:
        raw = await read_usage(self.api.call, region, self.namespaces, window, self.width)
        merged: dict[tuple[str, str, str | None], dict[int, dict[str, int]]] = {}
        for (_namespace, model_id), buckets in raw.items():
            ref = parse_model_id(model_id)
            tenancy = account
            if ref.application_profile is not None or looks_like_application_profile(model_id):
                found = await self.profiles.lookup(region, ref.application_profile or model_id)
                if found is not None:
                    ref = ModelRef(parse_model_id(found.model).model, "application", found.id)
                    tenancy = found.id
                    names[("tenancy", found.id)] = found.name
                    for key, tag in found.tags.items():
                        names[(f"tag:{key}", found.id)] = tag
                elif ref.application_profile is not None:
                    tenancy = ref.application_profile  # unresolved: the id still attributes the usage
            # Two ModelId spellings of one model (an ARN and an id, or both endpoints) add up to one series.
            target = merged.setdefault((tenancy, ref.model, ref.profile), {})
            for bucket, measures in buckets.items():
                slot = target.setdefault(bucket, {})
                for measure, count in measures.items():
                    slot[measure] = slot.get(measure, 0) + count
        records = []
        for (tenancy, model, profile), buckets in sorted(merged.items(), key=lambda kv: repr(kv[0])):
            dimensions = {"cloud.region": region}
            if profile is not None:
                dimensions["llm.inference_profile"] = profile
            for bucket, m in sorted(buckets.items()):
                records.append(UsageRecord(
                    provider=PROVIDER, model=model, operation=_operation(model), tenancy_id=tenancy,
                    bucket_start=bucket, bucket_width=self.width,
                    tokens={t: m[t] for t in ("input", "cache_read", "cache_write", "output") if t in m},
                    requests=m.get("requests"), dimensions=dimensions,
                    measures={THROTTLED: m["throttled"]} if "throttled" in m else {},
                ))
        return records

    def _cost_due(self, now: int) -> bool:
        """Cost Explorer is asked when ``cost_interval`` has passed since its last success."""
        return self.costs_enabled and (self._cost_checked is None or now - self._cost_checked >= self.cost_interval)

    async def _costs(self, window: Window, account: str) -> list[CostRecord]:
        """Cost Explorer: the days not yet final, up to today."""
        now = window.end
        first = now - int(self.backfill)
        start = max(first - first % DAY, self._cost_final_until or 0)
        end = now - now % DAY + DAY  # today (estimated, filling in) included
        query = CostQuery(metric=self.cost_metric, services=self.cost_services, account=account,
                          linked_accounts=self.linked_accounts, tag=self.cost_tag)
        records = await query.read(self.api.call, start, end) if start < end else []
        # Applied in the same transaction as these cursors: a failed poll moves neither.
        self._cost_checked = now
        final = now - self.cost_lookback
        self._cost_final_until = max(final - final % DAY, self._cost_final_until or 0)
        return records

    async def probe(self) -> list[ProbeResult]:
        """CloudWatch and Cost Explorer (the default probe), plus one page of each region's application
        inference profiles (they name the usage of a profile)."""
        results = await super().probe()
        for region in self.regions:
            source = f"inference_profiles {region}"
            try:
                page = await self.api.call("bedrock", region, "ListInferenceProfiles",
                                           typeEquals="APPLICATION", maxResults=1)
            except ProviderError as exc:
                results.append(ProbeResult(source, error=exc))
                continue
            listed = page.get("inferenceProfileSummaries")
            results.append(ProbeResult(source, f"listed ({len(listed) if isinstance(listed, list) else 0} "
                                               "on the first page)"))
        return results

    async def aclose(self) -> None:
        await asyncio.to_thread(self.api.close)
