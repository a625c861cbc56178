"""Run the real receiver (scheduler windows, provider, ledger) against ``FakeAnthropic`` with a settable clock.

Contract tests poll through ``Receiver.poll`` so that cursors, lookback and the ledger transaction are the
production ones; only time is the test's. Totals are read back from the ledger as ``total - adjustments``, which
DESIGN.md promises equals the latest value the provider reported for every bucket.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import from_nanos
from otel_llm_receiver.scheduler import PollOutcome, Receiver
from tests.fakes.anthropic import ADMIN_KEY, FakeAnthropic

INSTANCE = "anthropic/test"


class Harness:
    """One receiver over one ledger file; ``restart()`` builds a fresh receiver on the same file."""

    def __init__(self, tmp_path: Path, fake: FakeAnthropic, now: int, **options: Any) -> None:
        self.path = tmp_path / "ledger.db"
        self.now = now
        section: dict[str, Any] = {
            "admin_key": ADMIN_KEY, "endpoint": fake.base_url, "tenant": "acme", "timeout": "5s",
            "retry_initial_interval": "10ms",
            # the provider's own requests and paging, read in one fetch (chunked polls: tests/test_backfill_chunks.py)
            "backfill_chunk": "31d", **options,
        }
        self.config = parse_config({"storage": {"path": str(self.path)}, "providers": {INSTANCE: section}})
        self.receiver = Receiver(self.config, exporters=[], clock=lambda: self.now)

    async def poll(self) -> PollOutcome:
        return await self.receiver.poll(INSTANCE)

    async def restart(self) -> None:
        await self.receiver.aclose()
        self.receiver = Receiver(self.config, exporters=[], clock=lambda: self.now)

    async def close(self) -> None:
        await self.receiver.aclose()

    def series(self, metric: str) -> list[tuple[dict[str, str], int, int]]:
        """(attributes, total, adjustments) of every series of ``metric``."""
        with Ledger(self.path, readonly=True) as reader:
            snap = reader.snapshot()
        return [(json.loads(s.attrs), s.total, s.adjustments) for s in snap.series if s.metric == metric]

    def names(self) -> dict[str, str]:
        with Ledger(self.path, readonly=True) as reader:
            return {ident: name for (_, kind, ident), name in reader.snapshot().names.items() if kind == "tenancy"}

    def tokens(self) -> dict[tuple[str, str, str, str | None], int]:
        out: dict[tuple[str, str, str, str | None], int] = defaultdict(int)
        for a, total, adj in self.series("llm.usage.tokens"):
            key = (a["llm.tenancy.id"], a["gen_ai.request.model"], a["gen_ai.token.type"], a.get("llm.cache.ttl"))
            out[key] += total - adj
        return {k: v for k, v in out.items() if v}

    def tool_requests(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = defaultdict(int)
        for a, total, adj in self.series("llm.usage.tool_requests"):
            assert a["gen_ai.tool.name"] == "web_search"
            out[(a["llm.tenancy.id"], a["gen_ai.request.model"])] += total - adj
        return {k: v for k, v in out.items() if v}

    def cost_usd(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = defaultdict(Decimal)
        for a, total, adj in self.series("llm.usage.cost"):
            assert "llm.currency" not in a  # USD
            out[a["llm.tenancy.id"]] += from_nanos(total - adj)
        return {k: v for k, v in out.items() if v}

    def adjustments(self, metric: str) -> int:
        return sum(adj for _, _, adj in self.series(metric))


def nonzero(d: dict[Any, Any]) -> dict[Any, Any]:
    return {k: v for k, v in d.items() if v}


def code_totals(h: Harness) -> dict[str, dict[tuple[str, ...], int]]:
    """Claude Code counters from the ledger, keyed like ``FakeAnthropic.truth_code``."""
    out: dict[str, dict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
    for metric in ("llm.usage.code.sessions", "llm.usage.code.commits", "llm.usage.code.pull_requests",
                   "llm.usage.code.lines", "llm.usage.code.tool_actions", "llm.usage.code.tokens"):
        for a, total, adj in h.series(metric):
            key: tuple[str, ...] = (a["llm.code.customer_type"],)
            if metric == "llm.usage.code.lines":
                key += (a["llm.code.change"],)
            elif metric == "llm.usage.code.tool_actions":
                key += (a["gen_ai.tool.name"], a["llm.code.decision"])
            elif metric == "llm.usage.code.tokens":
                key += (a["gen_ai.request.model"], a["gen_ai.token.type"])
            out[metric][key] += total - adj
    return {m: {k: v for k, v in d.items() if v} for m, d in out.items()}
