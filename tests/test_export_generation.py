"""Exports while the ledger is unchanged reuse the last build's points (``Ledger.generation``), sent with their
own time; data landing between two exports (late rows for an old bucket, a new series, a renamed tenancy) is in
the next one. Real parts: a receiver, its ledger, and the OTLP sink."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import PollResult, UsageRecord
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink

H = 3600


def _ledger_totals(path: str) -> dict[tuple[str, str], int]:
    with Ledger(path, readonly=True) as reader:
        return {(s.metric, s.attrs): s.total for s in reader.snapshot().series if s.metric == "llm.usage.tokens"}


def _sent_tokens(sink: OTLPSink) -> tuple[int | float, set[int]]:
    points = sink.number_points("llm.usage.tokens")
    return sum(p.value for p in points.values()), {p.time_unix_nano for p in points.values()}


def test_unchanged_exports_repeat_the_points_and_late_data_lands_in_the_next(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    hour = int(time.time()) // H * H
    with OTLPSink() as sink:
        config = parse_config({
            "storage": {"path": path},
            "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}, "timeout": "5s"}},
            "providers": {"demo": {"backfill": "3h", "seed": 5}},
            "budgets": [{"name": "org-month", "amount": 1000, "period": "month", "source": "best"}],
        })
        receiver = Receiver(config)
        try:
            assert asyncio.run(receiver.run_once()) == 0
            first, times = _sent_tokens(sink)
            expected = sum(_ledger_totals(path).values())
            assert first == expected > 0
            budget_first = sink.number_points("llm.budget.spent")
            sink.clear()
            assert receiver.export_now() is True  # nothing changed: the same points, a later time
            again, later_times = _sent_tokens(sink)
            assert again == first and min(later_times) > max(times)
            assert {k: p.value for k, p in budget_first.items()} == {
                k: p.value for k, p in sink.number_points("llm.budget.spent").items()}
            for late in (
                [UsageRecord("openai", "gpt-4o", "chat", "proj-late", hour - 2 * H, H, {"input": 1234, "output": 56})],
                [UsageRecord("openai", "gpt-4o", "chat", "proj-late", hour - 2 * H, H, {"input": 2000, "output": 56})],
            ):
                receiver.ledger.apply("late/x", PollResult(usage=late, names={("tenancy", "proj-late"): "Late"}))
                sink.clear()
                assert receiver.export_now() is True
                sent, _ = _sent_tokens(sink)
                assert sent == sum(_ledger_totals(path).values())
                assert any(dict(k).get("llm.tenancy.name") == "Late" for k in sink.number_points("llm.usage.tokens"))
            assert sent == expected + 2000 + 56
            spent = {k: p.value for k, p in sink.number_points("llm.budget.spent").items()}
            assert spent != {k: p.value for k, p in budget_first.items()}  # the signals saw the late rows too
        finally:
            asyncio.run(receiver.aclose())
