"""PostgreSQL's statements for a range of series a poll creates count exactly what the general path counts.

Why: on PostgreSQL a new range's estimated cost is one statement (``writer.SQL_INSERT_PRICED_NEW`` or
``SQL_APPLY_PRICED_NEW``: the join of ``staged`` with ``pricing`` made once, feeding the targets' rollups in a
data-modifying CTE and their totals in the UPDATE around it), with ``pricing`` restricted to the range's series
so the join is hashed; and a poll whose points all have keys of their own (``PointPlanner.distinct``) is
sorted into ``staged`` without summing parts of one bucket. Each test applies the same polls to a PostgreSQL ledger (shortcuts on) and to an SQLite
one on the general path (``fast_paths = False``) and compares everything an apply writes; a poll that fails (an
invalid point, an estimated cost beyond 64 bits, the backend lost just before the commit) must leave nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from otel_llm_receiver.errors import LedgerError
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.ledger.postgres.engine import PostgresConnectionLost, PostgresLedger
from otel_llm_receiver.model import PollResult, UsageRecord
from tests.test_ledger_fast_paths import MAR, NOW_NS, _book, _contents, _planned

H = 3600
pytestmark = pytest.mark.parametrize("ledger_backend", ["postgresql"])


def _usage(model: str, tenancy: str, start: int, value: int, *, width: int = H, provider: str = "acme",
           cache_write: bool = False) -> UsageRecord:
    tokens = {"input": value, "output": value // 3 + 1, "cache_read": value // 7}
    if cache_write:
        tokens["cache_write"] = value // 5 + 2
    return UsageRecord(provider, model, "chat", tenancy, start, width, tokens, requests=value % 13 + 1)


def _polls() -> list[PollResult]:
    """Four polls, each creating series: hourly acme series across the price change at MAR (two pricing periods,
    every target its own: plain inserts); zeta series and acme cache writes (no price) sharing one unpriced
    target, with parts of one bucket; series of 1h and 2h buckets in one poll (no plain inserts: upserts); and
    grown known series beside a new zeta tenancy whose unpriced target the ledger already has."""
    hours = range(-6, 6)
    first = [_usage(m, t, MAR + h * H, 1_000 * (h + 7) + 37 * i)
             for i, (m, t) in enumerate((m, t) for m in ("acme-1", "acme-2") for t in ("t1", "t2", "t3"))
             for h in hours]
    second = [_usage("z-1", t, MAR + h * H, 500 + h, provider="zeta") for t in ("t1", "t2") for h in hours]
    second += [_usage("acme-3", "t1", MAR + h * H, 9_000 + h, cache_write=True) for h in hours]
    second += [_usage("z-1", "t1", MAR, 11, provider="zeta"), _usage("acme-3", "t1", MAR + H, 5, cache_write=True)]
    third = [_usage("acme-4", "t1", MAR + h * 2 * H, 7_000 + h, width=2 * H) for h in range(-3, 3)]
    third += [_usage("acme-5", "t1", MAR + h * H, 3_000 + h) for h in hours]
    fourth = [_usage("acme-1", "t1", MAR + h * H, 1_000 * (h + 7) + 500) for h in hours]
    fourth += [_usage("z-1", "t9", MAR + h * H, 40 + h, provider="zeta") for h in hours]
    return [PollResult(usage=poll) for poll in (first, second, third, fourth)]


def _targets_fed_by(ledger: Ledger) -> dict[int, int]:
    """Priced target id -> how many series price into it."""
    return {t: n for t, n in ledger._conn.execute("SELECT target_id, count(DISTINCT series_id) FROM pricing "
                                                   "GROUP BY target_id")}


def test_new_series_with_estimated_cost_count_what_the_general_path_counts(
    tmp_path: Path, make_ledger: Callable[..., Ledger]
) -> None:
    fast = make_ledger()
    assert isinstance(fast, PostgresLedger)
    with Ledger(tmp_path / "general.db") as general:
        general.fast_paths = False
        for ledger in (fast, general):
            ledger.set_pricer(_book(), now_ns=NOW_NS)
        for n, poll in enumerate(_polls()):
            # Staged sorted only where no two points share a key; the second poll has parts of one bucket.
            assert _planned(poll)[0].distinct == (n != 1)
            a = fast.apply("acme", poll, now_ns=NOW_NS + n)
            b = general.apply("acme", poll, now_ns=NOW_NS + n)
            assert (a.outcomes, a.series_created) == (b.outcomes, b.series_created)
            assert a.series_created > 0
            assert _contents(fast) == _contents(general)
            fed = _targets_fed_by(fast)
            if n == 0:  # every target its own series': the plain inserts
                assert set(fed.values()) == {1}
            else:  # the unpriced target is shared: its rollups are upserted
                assert max(fed.values()) >= 3
        contents = _contents(fast)
    # Both pricing periods were used, and the estimated cost is there (not only zeros that compare equal).
    periods = {f for (_, f), _ in contents["pricing"].items()}  # type: ignore[attr-defined]
    assert len(periods) == 2
    costs = [v[0] for (m, _), v in contents["series"].items() if m == "llm.usage.cost.estimated"]  # type: ignore[attr-defined]
    assert costs and all(c > 0 for c in costs)


def _failing_poll_leaves_nothing(
    tmp_path: Path, make_ledger: Callable[..., Ledger], bad: PollResult, error: type[Exception], match: str,
) -> None:
    """A first poll applied, then ``bad`` fails on both engines and leaves each ledger as it was."""
    fast = make_ledger()
    with Ledger(tmp_path / "general.db") as general:
        general.fast_paths = False
        for ledger in (fast, general):
            ledger.set_pricer(_book(), now_ns=NOW_NS)
            ledger.apply("acme", _polls()[0], cursor="c1", now_ns=NOW_NS)
        before = _contents(fast)
        assert before == _contents(general)
        with pytest.raises(error, match=match):
            fast.apply("acme", bad, cursor="c2", now_ns=NOW_NS + 1)
        with pytest.raises(LedgerError):
            general.apply("acme", bad, cursor="c2", now_ns=NOW_NS + 1)
        assert _contents(fast) == before == _contents(general)
        assert fast.cursor("acme") == general.cursor("acme") == "c1"
        # The next poll applies in full, exactly once.
        fine = _polls()[1]
        for ledger in (fast, general):
            ledger.apply("acme", fine, cursor="c3", now_ns=NOW_NS + 2)
        assert _contents(fast) == _contents(general)


def test_an_invalid_point_of_a_new_series_applies_nothing(tmp_path: Path, make_ledger: Callable[..., Ledger]) -> None:
    points = [_usage("acme-9", "t1", MAR + h * H, 2_000 + h) for h in range(-3, 3)]
    points.append(UsageRecord("acme", "acme-9", "chat", "t2", MAR, H, {"input": 5, "output": -1}))
    _failing_poll_leaves_nothing(tmp_path, make_ledger, PollResult(usage=points), LedgerError, "invalid point")


def test_an_estimated_cost_beyond_64_bits_applies_nothing(tmp_path: Path, make_ledger: Callable[..., Ledger]) -> None:
    """Its tokens fit in 64 bits, their estimated cost (pico-USD) does not: the priced statement fails."""
    points = [_usage("acme-9", "t1", MAR + h * H, 2_000 + h) for h in range(-3, 3)]
    points.append(UsageRecord("acme", "acme-9", "chat", "t2", MAR, H, {"input": 2**62}))
    _failing_poll_leaves_nothing(tmp_path, make_ledger, PollResult(usage=points), LedgerError, "64-bit")


def test_a_backend_lost_after_the_estimated_cost_leaves_nothing_and_the_retry_counts_once(
    tmp_path: Path, make_ledger: Callable[..., Ledger],
) -> None:
    """The backend dies (a trigger on the poll's cursor terminates it) after every point, total, rollup and
    estimated cost of the poll was written, before the commit: nothing of it stays, and the retry counts it once."""
    fast = make_ledger()
    dsn = fast._dsn  # type: ignore[attr-defined]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("CREATE FUNCTION crash() RETURNS trigger LANGUAGE plpgsql AS "
                      "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$")
        admin.execute("CREATE TRIGGER crash BEFORE INSERT ON cursors FOR EACH ROW EXECUTE FUNCTION crash()")
    with Ledger(tmp_path / "general.db") as general:
        general.fast_paths = False
        for ledger in (fast, general):
            ledger.set_pricer(_book(), now_ns=NOW_NS)
        before = _contents(fast)
        assert before == _contents(general)
        with pytest.raises(PostgresConnectionLost):
            fast.apply("acme", _polls()[0], cursor="c1", now_ns=NOW_NS)
        assert _contents(fast) == before
        assert fast.cursor("acme") is None
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP TRIGGER crash ON cursors")
        for ledger in (fast, general):
            ledger.apply("acme", _polls()[0], cursor="c1", now_ns=NOW_NS)
        assert _contents(fast) == _contents(general) != before
        assert fast.cursor("acme") == "c1"


def test_distinct_points_are_sorted_into_staged_and_any_others_summed(make_ledger: Callable[..., Ledger]) -> None:
    """What the flush of the staged slices does: distinct points sorted into key order, parts of one bucket (or
    points staged after ``staged`` was read, which may meet its keys) summed, each key once."""
    ledger = make_ledger()
    assert isinstance(ledger, PostgresLedger)
    with ledger._transaction() as tx:
        tx.execute(ledger._create_staged)
        tx.execute(ledger._clear_staged)
        ledger._stage(tx, [(2, H, H, 5), (1, H, H, 1)])
        ledger._stage(tx, [(1, 0, H, 7), (2, 0, H, 3)])
        ledger._staged_all(tx, distinct=True)
        assert tx.execute("SELECT * FROM staged").fetchall() == [(1, 0, H, 7), (1, H, H, 1), (2, 0, H, 3),
                                                                 (2, H, H, 5)]
        ledger._stage(tx, [(1, 0, H, 10), (3, 0, H, 2)])
        ledger._staged_all(tx, distinct=True)  # distinct among themselves, not with what ``staged`` holds
        assert tx.execute("SELECT * FROM staged").fetchall() == [(1, 0, H, 17), (1, H, H, 1), (2, 0, H, 3),
                                                                 (2, H, H, 5), (3, 0, H, 2)]
        tx.execute(ledger._clear_staged)
        ledger._stage(tx, [(4, 0, H, 1), (4, 0, H, 2)])
        ledger._staged_all(tx, distinct=False)
        assert tx.execute("SELECT * FROM staged").fetchall() == [(4, 0, H, 3)]
        tx.execute(ledger._clear_staged)
