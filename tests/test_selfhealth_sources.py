"""Self-health by source (issue 16.10): which failures make an instance unhealthy, and what ``polls`` counts."""

from __future__ import annotations

from collections import Counter

from otel_llm_receiver.model import SourceFailure
from otel_llm_receiver.selfhealth import SelfHealth

REFUSED = SourceFailure("auth", "HTTP 403 (needs Cost Management Reader)")


def test_a_failing_cost_source_is_listed_but_the_instance_stays_healthy() -> None:
    health = SelfHealth(clock=lambda: 1000.0)
    health.register("azure", 60)
    assert health.poll_succeeded("azure", 0.1, Counter(), None, polled=["usage"], failed={"cost": REFUSED})
    assert health.poll_succeeded("azure", 0.1, Counter(), None, polled=["usage"], failed={"cost": REFUSED})
    (status,) = health.statuses()
    assert health.healthy("azure") and status.consecutive_failures == 0
    assert status.failing_sources["cost"].consecutive_failures == 2 and status.failing_sources["cost"].since_unix == 1000
    assert health.reading().polls == {("azure", "usage", "success", ""): 2, ("azure", "cost", "failure", "auth"): 2}
    assert health.poll_succeeded("azure", 0.1, Counter(), None, polled=["usage", "cost"])
    assert health.statuses()[0].failing_sources == {}


def test_a_failing_usage_source_fails_the_instance_and_nothing_due_does_not() -> None:
    health = SelfHealth(clock=lambda: 1000.0)
    health.register("bedrock", 60)
    health.register("vertex-cost-only", 60)
    assert not health.poll_succeeded("bedrock", 0.1, Counter(), None, polled=["cost"], failed={"usage": REFUSED})
    bedrock = health.statuses()[0]
    assert bedrock.consecutive_failures == 1 and bedrock.last_error == f"usage: {REFUSED.message}"
    assert not health.healthy("bedrock")
    assert health.poll_succeeded("vertex-cost-only", 0.1, Counter(), None, polled=[], failed={})  # cost not due
    assert health.healthy("vertex-cost-only")
    health.poll_failed("bedrock", 0.1, "timeout", "timed out", ("usage", "cost"))  # a poll that fails whole
    assert health.reading().polls[("bedrock", "cost", "failure", "timeout")] == 1


def test_stale_writes_are_counted_per_instance_and_read_out() -> None:
    """Issue 21: a write rejected by the lease fence is counted (``llm.receiver.stale_writes``), per instance."""
    health = SelfHealth(clock=lambda: 1000.0)
    assert health.reading().stale_writes == {}
    assert health.stale_write("openai/prod") == 1
    assert health.stale_write("openai/prod") == 2
    assert health.stale_write("demo") == 1
    assert health.reading().stale_writes == {"openai/prod": 2, "demo": 1}
