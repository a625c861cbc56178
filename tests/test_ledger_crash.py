"""Atomic polls (invariant 2): a process killed between any two SQL statements of a poll leaves the ledger
exactly as it was before that poll or exactly as it is after it, never in between.

The crash is real: a forked child applies the poll and calls ``os._exit`` from SQLite's statement trace hook
just before statement N runs, for every N until the poll completes. No part of the ledger is mocked.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord

H = 3600
NOW_NS = 1_800_000_000_000_000_000
TABLES = ("series", "buckets", "refined", "rollups", "cursors", "horizons", "names", "meta", "schema_migrations")


def _u(start: int, inp: int, model: str = "m1", width: int = H) -> UsageRecord:
    return UsageRecord("demo", model, "chat", "t1", start, width, {"input": inp, "output": inp // 2}, inp // 10)


FIRST = PollResult(usage=[_u(0, 100), _u(H, 50), _u(0, 10, width=60)], names={("tenancy", "t1"): "Old name"})
SECOND = PollResult(
    usage=[_u(0, 120), _u(H, 40), _u(2 * H, 7), _u(0, 5, model="m2"), _u(0, 40, width=1800)],
    costs=[CostRecord("demo", "t1", 0, 86400, Decimal("1.25"))],
    names={("tenancy", "t1"): "New name"},
    cursors={"costs": "after"},
)


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        conn.close()


def _apply_second(ledger: Ledger) -> None:
    ledger.apply("demo", SECOND, cursor="7200", prune_before=60, now_ns=NOW_NS + 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() to kill a process mid-transaction")
def test_crash_between_any_two_statements_leaves_before_or_after(tmp_path: Path) -> None:
    base = tmp_path / "base.db"
    with Ledger(base) as ledger:
        ledger.apply("demo", FIRST, cursor="3600", now_ns=NOW_NS)
    before = dump(base)
    complete = tmp_path / "complete.db"
    shutil.copy(base, complete)
    with Ledger(complete) as ledger:
        _apply_second(ledger)
    after = dump(complete)
    assert before != after

    outcomes = {"before": 0, "after": 0}
    n = 1
    while True:
        trial = tmp_path / f"trial-{n}.db"
        shutil.copy(base, trial)
        pid = os.fork()
        if pid == 0:  # the child: crash just before statement n of the poll
            try:
                ledger = Ledger(trial)
                count = 0

                def crash_at_n(_statement: str, crash_before: int = n) -> None:
                    nonlocal count
                    count += 1
                    if count == crash_before:
                        os._exit(17)

                ledger._conn.set_trace_callback(crash_at_n)
                _apply_second(ledger)
                os._exit(0)  # the poll completed before statement n: we have covered every statement
            except BaseException:
                os._exit(99)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 17), f"child failed unexpectedly with {code} at statement {n}"
        state = dump(trial)
        with Ledger(trial):  # reopening (recovery from the WAL) must work after the crash
            pass
        state_reopened = dump(trial)
        assert state == state_reopened
        if state == before:
            outcomes["before"] += 1
        else:
            assert state == after, f"crash before statement {n} left a half-applied poll"
            outcomes["after"] += 1
        if code == 0:
            break
        n += 1
    # The poll has many statements and we crashed before each of them: most crashes leave "before",
    # and the poll completed once.
    assert outcomes["before"] >= 10
    assert outcomes["after"] >= 1
