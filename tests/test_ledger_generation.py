"""The ledger's generation (``Ledger.generation``): every transaction that changes what readers see bumps it in
the same transaction, and nothing else does. The exports and the money signals keep what they derived while it
is unchanged, so a change that failed to bump it would leave them stale; one that bumps it needlessly only
costs a recomputation."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_llm_receiver.errors import LedgerError
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook

H = 3600
T0 = 1_900_000_000 // H * H


def _usage(hour: int, tokens: int, tenancy: str = "proj-1") -> UsageRecord:
    return UsageRecord(provider="openai", model="gpt-4o", operation="chat", tenancy_id=tenancy, bucket_start=hour,
                       bucket_width=H, tokens={"input": tokens, "output": tokens // 10})


def test_applies_prunes_and_pricing_rebuilds_bump_the_generation_and_reads_do_not(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer, Ledger(path, readonly=True) as reader:
        start = reader.generation()
        ledger_id = ("service.instance.id", reader.instance_id)
        assert start == (ledger_id,)  # a new ledger: nothing applied yet
        seen = {start}

        def changed() -> dict[str, str]:
            now = reader.generation()
            assert now not in seen, "the generation did not change"
            seen.add(now)
            return dict(now)

        writer.apply("openai/a", PollResult(usage=[_usage(T0, 100)]))
        after_a = changed()
        assert set(after_a) == {"generation/openai/a", ledger_id[0]}
        reader.export_rows(0)
        reader.snapshot()
        assert dict(reader.generation()) == after_a  # reading changes nothing
        writer.apply("openai/b", PollResult(usage=[_usage(T0, 5)]))
        after_b = changed()
        assert after_b["generation/openai/a"] == after_a["generation/openai/a"]  # per instance
        writer.apply("openai/a", PollResult(usage=[_usage(T0, 100)]))  # unchanged values: still a new generation
        again = changed()
        assert again["generation/openai/b"] == after_b["generation/openai/b"]
        assert again["generation/openai/a"] != after_a["generation/openai/a"]
        before = reader.generation()
        assert writer.prune_rollups(T0 - H) == 0  # nothing older: nothing changed, no bump
        assert reader.generation() == before
        assert writer.prune_rollups(T0 + H) > 0
        assert "generation" in changed()  # ledger-wide
        writer.set_pricer(PriceBook())  # a rebuild of every schedule
        changed()


def test_a_failed_apply_leaves_the_generation_as_it_was(tmp_path: Path) -> None:
    """The bump is part of the apply's transaction: rolled back with it."""
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        writer.apply("openai/a", PollResult(usage=[_usage(T0, 100)]))
        before = writer.generation()
        bad = UsageRecord(provider="openai", model="gpt-4o", operation="chat", tenancy_id="p", bucket_start=T0,
                          bucket_width=H, tokens={"input": -1})
        with pytest.raises((LedgerError, ValueError)):
            writer.apply("openai/a", PollResult(usage=[bad]))
        assert writer.generation() == before
