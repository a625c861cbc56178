"""Ledger migrations against a ledger an older release wrote (tests/support/ledger_v2.sql, schema version 2).

Why a checked-in file: a migration must be tested on the shape the old release really left on disk, not on one
this release would write and then rewrite; the file is what 0.1.0's schema and series look like.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.ledger import (
    CURRENCY_ATTR,
    METRIC_COST_NON_USD,
    SCHEMA_VERSION,
    Ledger,
    canonical_attrs,
)
from otel_llm_receiver.model import CostRecord, PollResult, from_nanos

V2_DUMP = Path(__file__).parent / "support" / "ledger_v2.sql"
DAY = 1_795_996_800  # the day the dump's buckets are in
INSTANCE = "azure/eu"


@pytest.fixture
def v2_ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.executescript(V2_DUMP.read_text(encoding="utf-8"))
    conn.close()
    return path


def _series(path: Path) -> dict[int, tuple[str, str, int, int, int]]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT id, metric, attrs, total, adjustments, start_time_ns FROM series").fetchall()
    conn.close()
    return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}


def _eur_cost(amount: str) -> CostRecord:
    """The Azure cost row that made series 1 (and series 2, its billed quantity)."""
    return CostRecord("azure.ai.openai", "acct", DAY, 86400, Decimal(amount), currency="EUR",
                      line_item="gpt-4o Input", quantity=Decimal("3"), quantity_unit="1000_tokens")


def test_the_dump_is_schema_2_with_bare_currency(v2_ledger: Path) -> None:
    conn = sqlite3.connect(v2_ledger)
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (2,)
    conn.close()
    assert json.loads(_series(v2_ledger)[1][1])["currency"] == "EUR"


def test_currency_becomes_llm_currency_in_place(v2_ledger: Path) -> None:
    before = _series(v2_ledger)
    with Ledger(v2_ledger) as led:
        assert led.schema_version == SCHEMA_VERSION == 4
        instance_id = led.instance_id
    after = _series(v2_ledger)
    # same series: ids, metrics, totals, adjustments and start times (no counter restarts)
    assert {sid: (m, t, a, s) for sid, (m, _, t, a, s) in after.items()} == \
        {sid: (m, t, a, s) for sid, (m, _, t, a, s) in before.items()}
    for sid, (_, attrs, *_rest) in after.items():
        values = json.loads(attrs)
        assert "currency" not in values
        assert attrs == canonical_attrs(values)  # what a new record with these attributes looks up
        old = json.loads(before[sid][1])
        if "currency" in old:
            assert values == {**{k: v for k, v in old.items() if k != "currency"}, CURRENCY_ATTR: old["currency"]}
        else:
            assert attrs == before[sid][1]  # untouched, byte for byte
    assert json.loads(after[4][1])["llm.cost.line_item"] == 'note: "currency": GBP'  # values are not renamed
    with Ledger(v2_ledger) as led:  # reopening applies nothing twice and keeps the instance id
        assert led.instance_id == instance_id and led.schema_version == 4


def test_polls_after_the_migration_continue_the_same_series(v2_ledger: Path) -> None:
    before = _series(v2_ledger)
    with Ledger(v2_ledger) as led:
        # the bucket as the old release last saw it: nothing new, no new series
        stats = led.apply(INSTANCE, PollResult(costs=[_eur_cost("1.75")]), tenant="acme")
        assert stats.series_created == 0 and stats.outcomes["unchanged"] == stats.points
        # the bucket grows: the same series counts only the growth
        stats = led.apply(INSTANCE, PollResult(costs=[_eur_cost("2.50")]), tenant="acme")
        assert stats.series_created == 0
        series = {s.id: s for s in led.snapshot().series}
    assert set(series) == set(before)
    eur = series[1]
    assert eur.metric == METRIC_COST_NON_USD and json.loads(eur.attrs)[CURRENCY_ATTR] == "EUR"
    assert from_nanos(eur.total) == Decimal("2.75") and from_nanos(eur.adjustments) == Decimal("0.25")
    assert eur.start_time_ns == before[1][4]
