"""End to end: the receiver exports every money signal to a real OTLP sink, with values the ledger backs."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from otel_llm_receiver.catalog import CATALOG
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import METRIC_COST_ESTIMATED, METRIC_UNPRICED, Ledger
from otel_llm_receiver.scheduler import Receiver
from tests.support.ledger_reads import exact_totals
from tests.support.otlp_sink import OTLPSink

NEW_METRICS = {
    "llm.usage.cost.estimated", "llm.pricing.unpriced_tokens", "llm.pricing.token_price",
    "llm.cost.reconciliation.ratio", "llm.budget.limit", "llm.budget.spent", "llm.budget.utilization",
    "llm.budget.projected", "llm.budget.burn_rate", "llm.anomaly.score", "llm.attribution.coverage",
}


def test_the_sink_receives_every_new_metric(tmp_path: Path) -> None:
    with OTLPSink() as sink:
        config = parse_config({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}}},
            # 5-minute buckets over 6 days: enough history for anomaly scores, reported days to reconcile
            "providers": {"demo": {"backfill": "144h", "bucket_width": "5m", "seed": 3}},
            # claude-* has no price here, so its tokens are counted as unpriced
            "pricing": {"genai_prices": False, "overrides": [
                {"provider": "demo", "model": "gpt-4o*", "prices": {"input": "2.5", "cache_read": "1.25", "output": "10"}},
                {"provider": "demo", "model": "text-embedding-*", "prices": {"input": "0.02"}},
            ]},
            "budgets": [{"name": "all", "amount": 5000, "period": "month"}],
            "attribution": {"rules": [{"tenancy": "Research", "team": "research"}]},
        })
        receiver = Receiver(config)
        try:
            assert asyncio.run(receiver.run_once()) == 0
        finally:
            asyncio.run(receiver.aclose())
        assert sink.metric_names() >= NEW_METRICS
        for name in NEW_METRICS:
            assert sink.metric_info(name).unit == CATALOG.metrics[name].unit
        with Ledger(tmp_path / "ledger.db", readonly=True) as ledger:
            estimated = sum(t for _, _, t, _ in exact_totals(ledger, METRIC_COST_ESTIMATED))
            unpriced = {a["gen_ai.request.model"]: t for _, a, t, _ in exact_totals(ledger, METRIC_UNPRICED)}
        wire = sum(p.value for p in sink.number_points("llm.usage.cost.estimated").values())
        assert abs(Decimal(str(wire)) - Decimal(estimated) / 10**12) < Decimal("1e-6")
        assert set(unpriced) == {"claude-sonnet-4", "claude-opus-4"}
        on_wire = {dict(k)["gen_ai.request.model"]: p.value for k, p in sink.number_points(
            "llm.pricing.unpriced_tokens").items()}
        assert on_wire == unpriced
        budget = {dict(k)["llm.budget.name"]: p.value for k, p in sink.number_points("llm.budget.limit").items()}
        assert budget == {"all": 5000.0}
        windows = {dict(k)["llm.budget.window"] for k in sink.number_points("llm.budget.burn_rate")}
        assert windows == {"1h", "6h"}
        prices = {(dict(k)["gen_ai.request.model"], dict(k)["gen_ai.token.type"]): p.value
                  for k, p in sink.number_points("llm.pricing.token_price").items()}
        assert prices[("gpt-4o", "output")] == 10 / 1_000_000
        assert ("claude-opus-4", "input") not in prices
