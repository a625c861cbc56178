"""The ``azure_openai`` provider: Azure Monitor token metrics per deployment, Cost Management spend.

One poll: discover the accounts (cached), then for each account its deployments (cached) and its token and
request metrics for the window (a few accounts at a time), and, when ``cost_interval`` has passed since the
last cost query, the daily spend of the last ``cost_lookback`` (the whole backfill on the first one). The cost
source keeps its own cursor (``PollResult.cursors["cost"]``, the time of its last success), saved with the
poll's data, so a restart neither repeats nor skips it.

Usage and cost are separate sources (``llm.data.source``): a failing cost query does not cost the usage, nor
a failing usage read the cost. The failed source is returned in ``PollResult.failed_sources`` (the scheduler
counts it in ``llm.receiver.polls`` and logs one line naming the failure, and the missing role for 401/403)
and tries again on the next poll: its cursor did not move. Only a failed first discovery fails the poll whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ...config_parse import Option
from ...config_providers import ProviderConfig
from ...errors import ProviderError
from ...model import COST, USAGE, CostRecord, PollResult, SourceFailure, UsageRecord, Window
from ..base import DAY, HOUR, ProbeResult, Provider, read_source
from ..http import HTTP_OPTIONS, client_from_config
from .auth import BearerAuth, build_credential, token_scope
from .costs import CostReader, Pacer, cost_window
from .discovery import Account, Discovery, parse_account_id
from .metrics import INTERVALS, METRIC_SETS, MetricsReader

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

PUBLIC_MANAGEMENT_ENDPOINT = "https://management.azure.com"
#: Azure Monitor ingests platform metrics within minutes; a bucket counts as complete this long after it ends.
METRICS_SETTLE = 10 * 60
#: Accounts polled at once: enough to overlap latency, few enough to stay clear of ARM's read throttling.
ACCOUNT_CONCURRENCY = 4
COST_CURSOR = "cost"


class AzureOpenAIProvider(Provider):
    """Azure OpenAI / AI Foundry accounts: usage from Azure Monitor, spend from Cost Management."""

    TYPE: ClassVar[str] = "azure_openai"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        **HTTP_OPTIONS,
        "subscriptions": Option(
            "list[str]", default=(), description="Subscription ids whose OpenAI / AIServices accounts are polled."),
        "resources": Option(
            "list[str]", default=(),
            description="Account resource ids to poll (besides those found in `subscriptions`)."),
        "tenant_id": Option("str", description="Entra ID tenant of a service principal (with client_id/secret)."),
        "client_id": Option("str", description="Service principal application id."),
        "client_secret": Option("secret", description="Service principal secret, e.g. ${env:AZURE_CLIENT_SECRET}."),
        "authority_host": Option(
            "str", description="Entra ID authority for sovereign clouds (https), e.g. login.microsoftonline.us."),
        "management_endpoint": Option(
            "str", description="Resource Manager endpoint (default https://management.azure.com; the common "
                               "`endpoint` key is an alias). The token scope is ENDPOINT/.default."),
        "bucket_width": Option("duration", default="1h", description="Metrics time grain: 1m, 5m, 15m, 30m or 1h."),
        "metric_set": Option(
            "str", default="models", choices=tuple(METRIC_SETS),
            description="`models`: InputTokens/OutputTokens (+ Anthropic cache metrics, ModelRequests); "
                        "`azure_openai`: ProcessedPromptTokens/GeneratedTokens, AzureOpenAIRequests."),
        "max_series": Option(
            "int", default=1000, description="`top` of each metrics query: series per metric per account."),
        "discovery_interval": Option(
            "duration", default="1h", description="How long account and deployment lists are cached."),
        "cost": Option("bool", default=True, description="Query Cost Management for spend."),
        "cost_interval": Option("duration", default="6h", description="How often spend is queried."),
        "cost_lookback": Option(
            "duration", default="72h", description="How far back each cost query re-reads (at most 7d)."),
        "cost_scopes": Option(
            "list[str]", default=(),
            description="Cost query scopes (/subscriptions/ID[/resourceGroups/RG]); default: the accounts' "
                        "subscriptions."),
        "cost_query_spacing": Option(
            "duration", default="15s", description="Least time between two cost queries to one scope."),
    }
    DEFAULT_LOOKBACK: ClassVar[float] = 3 * HOUR
    DEFAULT_BACKFILL: ClassVar[float] = DAY
    MAX_BACKFILL: ClassVar[float | None] = 30 * DAY
    #: Cost rows change for up to cost_lookback (at most 7d) after their day: keep a day more than that.
    REVISION_HORIZON: ClassVar[float] = 8 * DAY
    MAX_COST_LOOKBACK: ClassVar[float] = 7 * DAY
    SOURCES: ClassVar[tuple[str, ...]] = (USAGE, COST)

    def __init__(
        self,
        config: ProviderConfig,
        *,
        credential: TokenCredential | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(config)
        opts = config.options
        problems = []
        self.width = int(opts.get("bucket_width") or HOUR)
        if self.width not in INTERVALS or self.width > HOUR:
            problems.append(f"bucket_width must be 1m, 5m, 15m, 30m or 1h, not {self.width}s")
        subscriptions = tuple(opts.get("subscriptions") or ())
        resources = tuple(opts.get("resources") or ())
        if not subscriptions and not resources:
            problems.append("set subscriptions or resources: there is nothing to poll")
        for r in resources:
            try:
                parse_account_id(r)
            except ValueError as exc:
                problems.append(f"resources: {exc}")
        self.cost_enabled = bool(opts.get("cost", True))
        self.cost_interval = _duration(opts.get("cost_interval"), 6 * HOUR)
        self.cost_lookback = _duration(opts.get("cost_lookback"), 72 * HOUR)
        if self.cost_lookback > self.MAX_COST_LOOKBACK:
            problems.append("cost_lookback is at most 7d (older spend is final)")
        max_series = int(opts.get("max_series") or 1000)
        if max_series < 1:
            problems.append("max_series must be at least 1")
        if problems:
            raise ProviderError(f"{self.name}: " + "; ".join(problems), provider=self.name, error_type="config")

        endpoint = str(opts.get("management_endpoint") or config.endpoint or PUBLIC_MANAGEMENT_ENDPOINT)
        self.credential = credential if credential is not None else build_credential(self.name, opts)
        self.auth = BearerAuth(self.credential, token_scope(endpoint), provider=self.name, clock=clock)
        self.client = client_from_config(
            provider=self.name, base_url=endpoint, headers={}, timeout=config.timeout, options=opts,
            requests=self.api_requests, auth=self.auth,
        )
        self.discovery = Discovery(
            self.client, provider=self.name, subscriptions=subscriptions, resources=resources,
            ttl=_duration(opts.get("discovery_interval"), HOUR),
        )
        self.metrics = MetricsReader(
            self.client, provider=self.name, metric_set=METRIC_SETS[str(opts.get("metric_set") or "models")],
            width=self.width, top=max_series,
        )
        self.cost_reader = CostReader(
            self.client, provider=self.name, scopes=tuple(opts.get("cost_scopes") or ()),
            pacer=Pacer(_duration(opts.get("cost_query_spacing"), 15.0), sleep=sleep),
        )
        self._cost_polled_at: int | None = None

    def restore(self, cursors: Mapping[str, str]) -> None:
        """The cost cursor of the last process: spend is not queried again before ``cost_interval`` has passed."""
        value = cursors.get(COST_CURSOR)
        self._cost_polled_at = None  # also called after a failed poll: what was not committed never happened
        if value is not None:
            try:
                self._cost_polled_at = int(value)
            except ValueError:
                log.warning("%s: ignoring unreadable cost cursor %r", self.name, value)

    @property
    def data_sources(self) -> tuple[str, ...]:
        return self.SOURCES if self.cost_enabled else (USAGE,)

    async def fetch(self, window: Window) -> PollResult:
        accounts = await self.discovery.accounts()  # without accounts neither source has anything to read
        failed: dict[str, SourceFailure] = {}
        usage = await read_source(USAGE, self._usage(accounts, window), failed)
        polled = [USAGE] if usage is not None else []
        costs: list[CostRecord] = []
        unmatched = 0
        cursors: dict[str, str] = {}
        now = window.end
        if self.cost_enabled and accounts and self._cost_due(now):
            lookback = self.cost_lookback if self._cost_polled_at is not None else max(
                self.cost_lookback, float(window.end - window.start))
            read = await read_source(COST, self.cost_reader.costs(accounts, cost_window(now, lookback)), failed)
            if read is not None:
                costs, unmatched = read
                self._cost_polled_at = now
                cursors[COST_CURSOR] = str(now)
                polled.append(COST)
        settled = now - METRICS_SETTLE
        return PollResult(
            usage=usage or [],
            costs=costs,
            names={("tenancy", a.tenancy_id): a.name for a in accounts},
            complete_until=settled - settled % self.width,
            cursors=cursors,
            unmatched_records={COST: unmatched} if unmatched else {},
            polled_sources=polled,
            failed_sources=failed,
        )

    async def probe(self) -> list[ProbeResult]:
        """The account list first (Reader on each subscription): without it neither source has anything to
        read, so its failure is the one line that matters; then Monitor and Cost Management (the default)."""
        try:
            accounts = await self.discovery.accounts()
        except ProviderError as exc:
            return [ProbeResult("accounts", error=exc)]
        return [ProbeResult("accounts", f"listed {len(accounts)} account(s)"), *await super().probe()]

    def _cost_due(self, now: int) -> bool:
        return self._cost_polled_at is None or now - self._cost_polled_at >= self.cost_interval

    async def _usage(self, accounts: list[Account], window: Window) -> list[UsageRecord]:
        gate = asyncio.Semaphore(ACCOUNT_CONCURRENCY)

        async def one(account: Account) -> list[UsageRecord]:
            async with gate:
                deployments = await self.discovery.deployments(account)
                return await self.metrics.usage(account, deployments, window)

        tasks = [asyncio.ensure_future(one(a)) for a in accounts]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one account failed the poll: stop the others' requests now
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for records in results for r in records]

    async def aclose(self) -> None:
        await self.client.aclose()
        close: Any = getattr(self.credential, "close", None)
        if callable(close):
            close()


def _duration(value: object, default: float) -> float:
    """A duration option in seconds; ``0s`` is a valid value, not "unset"."""
    return default if value is None else float(value)  # type: ignore[arg-type]


__all__ = ["AzureOpenAIProvider"]
