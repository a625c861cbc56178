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

from ...chunks import reads_secondary, whole_window
from ...config_parse import Option
from ...config_providers import ProviderConfig
from ...errors import ProviderError
from ...model import COST, USAGE, CostRecord, PollResult, SourceFailure, UsageRecord, Window
from ..base import DAY, HOUR, ProbeResult, Provider, read_source
from ..http import client_from_config
from .auth import BearerAuth, build_credential, token_scope
from .costs import CostReader, Pacer, cost_window
from .discovery import Account, Discovery
from .metrics import METRIC_SETS, MetricsReader
from .options import MAX_COST_LOOKBACK, AzureOpenAIOptions

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
    OPTIONS_TYPE: ClassVar[type[AzureOpenAIOptions]] = AzureOpenAIOptions
    OPTIONS: ClassVar[Mapping[str, Option]] = AzureOpenAIOptions.schema()
    DEFAULT_LOOKBACK: ClassVar[float] = 3 * HOUR
    DEFAULT_BACKFILL: ClassVar[float] = DAY
    MAX_BACKFILL: ClassVar[float | None] = 30 * DAY
    #: Cost rows change for up to cost_lookback (at most 7d) after their day: keep a day more than that.
    REVISION_HORIZON: ClassVar[float] = 8 * DAY
    MAX_COST_LOOKBACK: ClassVar[float] = MAX_COST_LOOKBACK
    SOURCES: ClassVar[tuple[str, ...]] = (USAGE, COST)

    def __init__(
        self,
        config: ProviderConfig,
        options: AzureOpenAIOptions | None = None,
        *,
        credential: TokenCredential | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``options`` default to the section's own (``AzureOpenAIOptions.from_config``); invalid ones are
        refused with the ``key: message`` lines of ``AzureOpenAIOptions.validate`` (``check`` reports them)."""
        super().__init__(config)
        self.options = options = options if options is not None else AzureOpenAIOptions.from_config(config)
        problems = options.validate()
        if problems:
            raise ProviderError(f"{self.name}: " + "; ".join(problems), provider=self.name, error_type="config")
        self.width = int(options.bucket_width)
        self.cost_enabled = options.cost
        self.cost_interval = options.cost_interval
        self.cost_lookback = options.cost_lookback

        endpoint = options.management_endpoint or options.endpoint or PUBLIC_MANAGEMENT_ENDPOINT
        credentials = {
            "tenant_id": options.tenant_id, "client_id": options.client_id,
            "client_secret": options.client_secret, "authority_host": options.authority_host,
        }
        self.credential = credential if credential is not None else build_credential(self.name, credentials)
        self.auth = BearerAuth(self.credential, token_scope(endpoint), provider=self.name, clock=clock)
        self.client = client_from_config(
            provider=self.name, base_url=endpoint, headers={}, options=options, requests=self.api_requests,
            auth=self.auth,
        )
        self.discovery = Discovery(
            self.client, provider=self.name, subscriptions=options.subscriptions, resources=options.resources,
            ttl=options.discovery_interval,
        )
        self.metrics = MetricsReader(
            self.client, provider=self.name, metric_set=METRIC_SETS[options.metric_set], width=self.width,
            top=options.max_series,
        )
        self.cost_reader = CostReader(
            self.client, provider=self.name, scopes=options.cost_scopes,
            pacer=Pacer(options.cost_query_spacing, sleep=sleep),
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
        whole = whole_window(window)  # a chunked poll (chunks.py) reads costs in its first chunk, as of now
        if self.cost_enabled and accounts and reads_secondary() and self._cost_due(whole.end):
            lookback = self.cost_lookback if self._cost_polled_at is not None else max(
                self.cost_lookback, float(whole.end - whole.start))
            read = await read_source(
                COST, self.cost_reader.costs(accounts, cost_window(whole.end, lookback)), failed)
            if read is not None:
                costs, unmatched = read
                self._cost_polled_at = whole.end
                cursors[COST_CURSOR] = str(whole.end)
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


__all__ = ["AzureOpenAIProvider"]
