"""The ledger's accounting: exactly once across overlapping, growing, shrinking and re-shaped buckets."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.errors import LedgerError
from otel_llm_receiver.ledger import (
    METRIC_COST,
    METRIC_COST_NON_USD,
    METRIC_REQUESTS,
    METRIC_TOKENS,
    SCHEMA_VERSION,
    Ledger,
    open_ledger,
)
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord, from_nanos
from tests.support.ledger_reads import rollup_totals_since

H = 3600
D = 86400


def usage(start: int, width: int = H, *, inp: int = 0, out: int = 0, req: int | None = None,
          model: str = "m1", tenancy: str = "t1", **tokens: int) -> UsageRecord:
    return UsageRecord(
        provider="demo", model=model, operation="chat", tenancy_id=tenancy, bucket_start=start,
        bucket_width=width, tokens={"input": inp, "output": out, **tokens}, requests=req,
    )


def totals(ledger: Ledger) -> dict[tuple[str, str], tuple[int, int]]:
    """(metric, token type or '') -> (total, adjustments), summed over series."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for s in ledger.snapshot().series:
        key = (s.metric, json.loads(s.attrs).get("gen_ai.token.type", ""))
        t, a = out.get(key, (0, 0))
        out[key] = (t + s.total, a + s.adjustments)
    return out


@pytest.fixture
def ledger(make_ledger: Callable[..., Ledger]) -> Ledger:
    """A fresh ledger on each engine (tests/conftest.py: ``ledger_backend``)."""
    return make_ledger()


def test_overlapping_windows_count_each_bucket_once(ledger: Ledger) -> None:
    first = PollResult(usage=[usage(0, inp=10, out=1, req=2), usage(H, inp=20, out=2, req=3)])
    second = PollResult(usage=[usage(H, inp=20, out=2, req=3), usage(2 * H, inp=5, out=1, req=1)])
    assert ledger.apply("demo", first).outcomes == {"new": 6}
    stats = ledger.apply("demo", second)
    assert stats.outcomes == {"unchanged": 3, "new": 3}
    t = totals(ledger)
    assert t[(METRIC_TOKENS, "input")] == (35, 0)
    assert t[(METRIC_TOKENS, "output")] == (4, 0)
    assert t[(METRIC_REQUESTS, "")] == (6, 0)
    # Re-applying everything changes nothing.
    ledger.apply("demo", first)
    ledger.apply("demo", second)
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (35, 0)


def test_growing_bucket_adds_only_the_growth(ledger: Ledger) -> None:
    for value in (3, 7, 7, 12):
        ledger.apply("demo", PollResult(usage=[usage(0, inp=value)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (12, 0)


def test_shrunk_bucket_never_lowers_the_counter(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    ledger.apply("demo", PollResult(usage=[usage(0, inp=100), usage(H, inp=50)]))
    stats = ledger.apply("demo", PollResult(usage=[usage(0, inp=80), usage(H, inp=50)]))
    assert stats.outcomes["shrunk"] == 1
    total, adjustments = totals(ledger)[(METRIC_TOKENS, "input")]
    assert (total, adjustments) == (150, 20)
    assert total - adjustments == 80 + 50
    assert any("shrank by 20" in r.getMessage() for r in caplog.records)
    # Growing back after a shrink counts the growth again: total - adjustments stays exact.
    ledger.apply("demo", PollResult(usage=[usage(0, inp=95)]))
    total, adjustments = totals(ledger)[(METRIC_TOKENS, "input")]
    assert total - adjustments == 95 + 50
    assert total == 165


def test_parts_of_one_bucket_in_one_poll_add_up(ledger: Ledger) -> None:
    """Two rows that normalize to the same series and bucket (e.g. a dimension we do not keep) are summed."""
    ledger.apply("demo", PollResult(usage=[usage(0, inp=4), usage(0, inp=6)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (10, 0)
    ledger.apply("demo", PollResult(usage=[usage(0, inp=4), usage(0, inp=6)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (10, 0)


def test_coarser_buckets_replace_finer_ones_without_double_counting(ledger: Ledger) -> None:
    hourly = [usage(h * H, inp=10 + h) for h in range(24)]
    ledger.apply("demo", PollResult(usage=hourly))
    hourly_sum = sum(10 + h for h in range(24))
    # The provider is reconfigured to daily buckets: the day bucket covers the 24 hourly ones.
    ledger.apply("demo", PollResult(usage=[usage(0, D, inp=hourly_sum + 5)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (hourly_sum + 5, 0)
    ledger.apply("demo", PollResult(usage=[usage(0, D, inp=hourly_sum + 5)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (hourly_sum + 5, 0)


def test_finer_buckets_refine_a_coarser_one(ledger: Ledger) -> None:
    ledger.apply("demo", PollResult(usage=[usage(0, D, inp=100)]))
    # Switched to hourly: the first hours are already inside the counted 100.
    ledger.apply("demo", PollResult(usage=[usage(0, inp=60), usage(H, inp=30)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (100, 0)
    # The day keeps filling in, hour by hour: only what goes beyond the day's 100 is new.
    ledger.apply("demo", PollResult(usage=[usage(0, inp=60), usage(H, inp=30), usage(2 * H, inp=25)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (115, 0)
    ledger.apply("demo", PollResult(usage=[usage(2 * H, inp=25), usage(3 * H, inp=5)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (120, 0)
    # Hours after the refined day are ordinary buckets again.
    ledger.apply("demo", PollResult(usage=[usage(D, inp=7)]))
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (127, 0)


def test_money_is_exact_over_a_year_of_cents(ledger: Ledger) -> None:
    costs = [
        CostRecord(provider="demo", tenancy_id="t1", bucket_start=d * D, bucket_width=D, amount=Decimal("0.01"))
        for d in range(365)
    ]
    ledger.apply("demo", PollResult(costs=costs))
    ledger.apply("demo", PollResult(costs=costs[-30:]))  # overlapping re-read
    (series,) = [s for s in ledger.snapshot().series if s.metric == METRIC_COST]
    assert from_nanos(series.total) == Decimal("3.65")
    # Float accumulation would not be exact here; integer nano-units are.
    assert sum([0.01] * 365) != 3.65


def test_money_near_2_to_the_62_stays_exact(ledger: Ledger) -> None:
    """Nano-units near 2**62 (4.6 billion USD) in buckets, totals, rollups and sums: 64-bit integers on both
    engines, never a float (a double has 53 bits: these values would lose their last digits)."""
    big = 2**62 - 123_456_789
    costs = [CostRecord("demo", "t1", 0, D, from_nanos(big)), CostRecord("demo", "t1", D, D, from_nanos(7))]
    ledger.apply("demo", PollResult(costs=costs))
    grown = [CostRecord("demo", "t1", D, D, from_nanos(big + 11))]
    ledger.apply("demo", PollResult(costs=grown))
    ledger.apply("demo", PollResult(costs=[CostRecord("demo", "t1", 0, D, from_nanos(big - 5))]))  # a shrink
    (series,) = [s for s in ledger.snapshot().series if s.metric == METRIC_COST]
    assert (series.total, series.adjustments) == (2 * big + 11, 5)
    assert int(float(series.total)) != series.total  # the point: a double could not hold these totals
    (summed,) = ledger.rollup_sums_between(0, 2 * D, [METRIC_COST])  # nano-units: cost is not a pico metric
    assert summed.value == (big - 5) + (big + 11)
    assert [s.value for s in ledger.bucket_sums_between(0, 2 * D)] == [2 * big + 6]
    assert rollup_totals_since(ledger, 0)[0].value == summed.value


def test_costs_in_other_currencies_are_separate_series(ledger: Ledger) -> None:
    ledger.apply("demo", PollResult(costs=[
        CostRecord("demo", "t1", 0, D, Decimal("1.5"), currency="usd"),
        CostRecord("demo", "t1", 0, D, Decimal("2"), currency="EUR"),
    ]))
    by_currency = {
        (s.metric, json.loads(s.attrs).get("llm.currency", "USD")): from_nanos(s.total)
        for s in ledger.snapshot().series
    }
    # EUR is kept, in a metric of its own: never in llm.usage.cost, whose unit is USD.
    assert by_currency == {(METRIC_COST, "USD"): Decimal("1.5"), (METRIC_COST_NON_USD, "EUR"): Decimal("2")}


def test_names_cursor_and_records_commit_together(ledger: Ledger) -> None:
    result = PollResult(usage=[usage(0, inp=1)], names={("tenancy", "t1"): "Search"}, cursors={"costs": "c-1"})
    ledger.apply("demo", result, cursor="3600")
    assert ledger.cursor("demo") == "3600"
    assert ledger.cursor("demo", "costs") == "c-1"
    assert ledger.snapshot().names == {("demo", "tenancy", "t1"): "Search"}


def test_invalid_point_rejects_the_whole_poll(ledger: Ledger) -> None:
    ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]), cursor="1")
    bad = PollResult(usage=[usage(0, inp=9), usage(H, inp=-1)])
    with pytest.raises(LedgerError, match="invalid point"):
        ledger.apply("demo", bad, cursor="2")
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (5, 0)
    assert ledger.cursor("demo") == "1"


def test_a_rolled_back_poll_leaves_no_trace_of_its_new_series(ledger: Ledger) -> None:
    bad = PollResult(usage=[usage(0, inp=3, model="new-model"), usage(H, inp=-1, model="new-model")])
    with pytest.raises(LedgerError):
        ledger.apply("demo", bad)
    assert ledger.snapshot().series == ()
    ledger.apply("demo", PollResult(usage=[usage(0, inp=3, model="other"), usage(0, inp=4, model="new-model")]))
    by_model = {json.loads(s.attrs)["gen_ai.request.model"]: s.total for s in ledger.snapshot().series
                if s.metric == METRIC_TOKENS and json.loads(s.attrs)["gen_ai.token.type"] == "input"}
    assert by_model == {"other": 3, "new-model": 4}


def test_pruned_buckets_are_never_counted_again(ledger: Ledger, tmp_path: Path) -> None:
    ledger.apply("demo", PollResult(usage=[usage(0, inp=10), usage(D, inp=20)]))
    ledger.apply("demo", PollResult(usage=[usage(D, inp=20)]), prune_before=D)
    assert ledger.counts()["buckets"] == 2  # input + output of the second day
    assert ledger.pruned_before("demo") == D
    stats = ledger.apply("demo", PollResult(usage=[usage(0, inp=11), usage(D, inp=20)]))
    assert stats.outcomes["rejected"] == 2
    assert totals(ledger)[(METRIC_TOKENS, "input")] == (30, 0)


def test_instances_are_separate(ledger: Ledger) -> None:
    ledger.apply("openai/a", PollResult(usage=[usage(0, inp=1)]), tenant="org-a")
    ledger.apply("openai/b", PollResult(usage=[usage(0, inp=2)]), tenant="org-b")
    tenants = {json.loads(s.attrs)["llm.tenant"]: s.total for s in ledger.snapshot().series
               if s.metric == METRIC_TOKENS and json.loads(s.attrs)["gen_ai.token.type"] == "input"}
    assert tenants == {"org-a": 1, "org-b": 2}


def test_totals_and_start_times_survive_reopening(ledger_store: StorageConfig) -> None:
    with open_ledger(ledger_store) as led:
        led.apply("demo", PollResult(usage=[usage(0, inp=10)]))
        before = led.snapshot().series
        instance_id = led.instance_id
    with open_ledger(ledger_store) as led:
        led.apply("demo", PollResult(usage=[usage(0, inp=10), usage(H, inp=1)]))
        after = {s.id: s for s in led.snapshot().series}
        assert led.instance_id == instance_id
    for s in before:
        assert after[s.id].start_time_ns == s.start_time_ns
    assert sum(s.total for s in after.values() if json.loads(s.attrs).get("gen_ai.token.type") == "input") == 11


def test_schema_is_versioned_and_newer_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        assert led.schema_version == SCHEMA_VERSION == 4
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="newer than this release"):
        Ledger(path)


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(blocker / "ledger.db")


def test_rollups_follow_the_latest_values(ledger: Ledger) -> None:
    ledger.apply("demo", PollResult(usage=[usage(0, 60, inp=5), usage(60, 60, inp=5), usage(H, 60, inp=1)]))
    ledger.apply("demo", PollResult(usage=[usage(60, 60, inp=2)]))  # shrink inside the first hour
    rows = {(m, a.get("gen_ai.token.type")): v for _, m, a, v in rollup_totals_since(ledger, 0)}
    assert rows[(METRIC_TOKENS, "input")] == 5 + 2 + 1
    hour_rows = {(m, a.get("gen_ai.token.type")): v for _, m, a, v in rollup_totals_since(ledger, H)}
    assert hour_rows[(METRIC_TOKENS, "input")] == 1
    assert ledger.prune_rollups(H) > 0
    rows = {(m, a.get("gen_ai.token.type")): v for _, m, a, v in rollup_totals_since(ledger, 0)}
    assert rows[(METRIC_TOKENS, "input")] == 1


def test_new_series_land_on_their_own_points_even_when_sqlite_picks_other_ids(tmp_path: Path) -> None:
    """New series' points are staged under the ids SQLite is expected to give them (max + 1, ...). When the
    largest rowid is taken SQLite picks ids at random instead: the apply must notice and still be exact."""
    path = tmp_path / "ledger.db"
    with Ledger(path) as led:
        led.apply("demo", PollResult(usage=[usage(0, inp=1)]))
    with sqlite3.connect(path) as raw:  # an old series at the largest possible id: no more max + 1
        raw.execute("INSERT INTO series (id, instance, metric, attrs, start_time_ns, updated_ns) "
                    "VALUES (9223372036854775807, 'other', 'llm.usage.tokens', '{}', 1, 1)")
    with Ledger(path) as led:
        led.apply("demo", PollResult(usage=[usage(0, inp=1, model=f"m{i}", out=i, req=i) for i in range(2, 40)]))
        by_model: dict[tuple[str, str], int] = {}
        for s in led.snapshot().series:
            a = json.loads(s.attrs)
            if s.instance == "demo" and s.metric == "llm.usage.tokens":
                by_model[(a["gen_ai.request.model"], a["gen_ai.token.type"])] = s.total
    assert all(by_model[(f"m{i}", "output")] == i and by_model[(f"m{i}", "input")] == 1 for i in range(2, 40))


def test_migration_4_renames_anthropic_tool_requests_so_a_re_read_counts_nothing_twice(tmp_path: Path) -> None:
    """A ledger written before Anthropic's server-tool requests became `execute_tool` (issue 16.11)."""
    path = tmp_path / "ledger.db"

    def tool(operation: str, n: int, provider: str = "anthropic") -> UsageRecord:
        return UsageRecord(provider=provider, model="claude-sonnet-4-5", operation=operation, tenancy_id="wrk",
                           bucket_start=0, bucket_width=H, dimensions={"gen_ai.tool.name": "web_search"},
                           measures={"llm.usage.tool_requests": n})

    with Ledger(path) as led:  # the old release's series: `chat`, for Anthropic and another provider
        led.apply("anthropic/prod", PollResult(usage=[tool("chat", 7)]))
        led.apply("other", PollResult(usage=[tool("chat", 5, provider="other")]))
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM schema_migrations WHERE version = 4")  # as the old release left it
    conn.commit()
    conn.close()
    with Ledger(path) as led:
        assert led.schema_version == 4
        led.apply("anthropic/prod", PollResult(usage=[tool("execute_tool", 9)]))  # the re-read bucket grew by 2
        series = {(s.instance, json.loads(s.attrs)["gen_ai.operation.name"]): s.total
                  for s in led.snapshot().series if s.metric == "llm.usage.tool_requests"}
    assert series == {("anthropic/prod", "execute_tool"): 9, ("other", "chat"): 5}


def test_rollup_readers_return_typed_rows(ledger: Ledger) -> None:
    ledger.apply("demo/a", PollResult(usage=[usage(0, inp=5, out=2), usage(H, inp=1)]))
    series = ledger.rollup_series([METRIC_TOKENS])
    row = next(r for r in series.values() if r.attrs["gen_ai.token.type"] == "input")
    assert (row.instance, row.metric, row.bucket_width, row.first_hour, row.last_hour) == (
        "demo/a", METRIC_TOKENS, H, 0, H)
    sums = {r.attrs["gen_ai.token.type"]: r.value for r in ledger.rollup_sums_between(0, 2 * H, [METRIC_TOKENS])}
    assert sums == {"input": 6, "output": 2}
    at = ledger.rollup_values_at([H], [METRIC_TOKENS])
    assert [(r.hour, r.value) for r in at if r.value] == [(H, 1)]
    instance, metric, _attrs, value = ledger.rollup_sums_between(0, H, [METRIC_TOKENS])[0]  # still unpacks
    assert (instance, metric) == ("demo/a", METRIC_TOKENS) and value in (5, 2, 0)


def test_a_width_change_is_found_by_the_series_own_widths_not_the_widest_in_the_ledger(ledger: Ledger) -> None:
    """The overlap check reads each series' own buckets (no ``max(bucket_width)`` over the whole ledger): a
    series with daily buckets beside it must not hide, nor stand in for, the widths of the one that changes."""
    other = [usage(d * D, D, inp=1000, model="daily") for d in range(3)]  # the widest buckets: another series
    hourly = [usage(h * H, inp=10 + h) for h in range(24)]
    ledger.apply("demo", PollResult(usage=other + hourly))
    hourly_sum = sum(10 + h for h in range(24))
    ledger.apply("demo", PollResult(usage=[usage(0, D, inp=hourly_sum + 5)]))  # coarser replaces the hours
    ledger.apply("demo", PollResult(usage=[usage(D, D, inp=50)]))  # the (now mixed) series' next day
    # Back to hourly inside day 2: found through the mixed series' own widest bucket, refined, not re-counted.
    ledger.apply("demo", PollResult(usage=[usage(D, inp=30), usage(D + H, inp=15)]))
    ledger.apply("demo", PollResult(usage=[usage(D, inp=30), usage(D + H, inp=15), usage(D + 2 * H, inp=20)]))
    inputs = {json.loads(s.attrs)["gen_ai.request.model"]: s.total for s in ledger.snapshot().series
              if s.metric == METRIC_TOKENS and json.loads(s.attrs)["gen_ai.token.type"] == "input"}
    assert inputs == {"daily": 3000, "m1": hourly_sum + 5 + 65}
    assert totals(ledger)[(METRIC_TOKENS, "input")][1] == 0  # nothing shrank on the way


def test_no_apply_statement_scans_the_buckets_or_refined_tables(tmp_path: Path) -> None:
    """Every statement a poll runs (new series, re-reads, growth, a width change, pruning) reads ``buckets``
    and ``refined`` by key, so an apply costs the same in a ledger of any size (EXPLAIN QUERY PLAN).
    SQLite only: its plans are what the statements are tuned for (PostgreSQL plans by statistics)."""
    ledger = Ledger(tmp_path / "ledger.db")
    statements: list[str] = []
    ledger._conn.set_trace_callback(statements.append)
    ledger.apply("demo", PollResult(usage=[usage(h * H, inp=h + 1) for h in range(48)]))
    ledger.apply("demo", PollResult(usage=[usage(h * H, inp=h + 2) for h in range(40, 48)]))
    ledger.apply("demo", PollResult(usage=[usage(D, D, inp=10_000)]))  # a width change
    ledger.apply("demo", PollResult(usage=[usage(D + 3 * H, 60, inp=1)]), prune_before=D)
    ledger._conn.set_trace_callback(None)
    scans = []
    for sql in dict.fromkeys(statements):
        if not any(t in sql for t in ("buckets", "refined")) or sql.lstrip().upper().startswith(("BEGIN", "COMMIT")):
            continue
        for row in ledger._conn.execute("EXPLAIN QUERY PLAN " + sql):
            detail = row[3]
            if detail.startswith("SCAN ") and detail.split()[1] in ("buckets", "refined", "b", "r"):
                scans.append((detail, sql))
    assert len(statements) > 50
    assert scans == []


def test_cached_series_ids_never_outlive_a_rolled_back_poll(ledger: Ledger) -> None:
    """A failed poll's new series are rolled back; their ids go to the next poll's series. The writer must not
    keep the failed poll's ids: a later poll of the first series would land on the other's counters."""
    bad = PollResult(usage=[usage(0, inp=3, model="first"), usage(H, inp=-1, model="first")])
    with pytest.raises(LedgerError):
        ledger.apply("demo", bad)
    ledger.apply("demo", PollResult(usage=[usage(0, inp=100, model="second")]))  # takes the rolled-back ids
    ledger.apply("demo", PollResult(usage=[usage(0, inp=3, model="first")]))
    ledger.apply("demo", PollResult(usage=[usage(0, inp=7, model="first"), usage(0, inp=100, model="second")]))
    by_model = {json.loads(s.attrs)["gen_ai.request.model"]: (s.id, s.total) for s in ledger.snapshot().series
                if s.metric == METRIC_TOKENS and json.loads(s.attrs)["gen_ai.token.type"] == "input"}
    assert {m: total for m, (_, total) in by_model.items()} == {"first": 7, "second": 100}
    assert by_model["first"][0] != by_model["second"][0]


def test_cached_series_ids_stay_right_after_pruning_and_reopening(ledger_store: StorageConfig) -> None:
    with open_ledger(ledger_store) as led:
        led.apply("demo", PollResult(usage=[usage(0, inp=5), usage(D, inp=6)]))
        led.apply("demo", PollResult(usage=[usage(D, inp=6), usage(D + H, inp=1)]), prune_before=D)
        assert led.counts()["buckets"] == 4  # input and output of the two hours of day 2
        led.apply("demo", PollResult(usage=[usage(D + H, inp=4), usage(D + 2 * H, inp=2)]))
        ids = {s.attrs: s.id for s in led.snapshot().series}
    with open_ledger(ledger_store) as led:  # a new writer: ids read from the ledger, the same series continue
        led.apply("demo", PollResult(usage=[usage(D + 2 * H, inp=3), usage(0, inp=50)]))
        assert {s.attrs: s.id for s in led.snapshot().series} == ids
        assert totals(led)[(METRIC_TOKENS, "input")] == (5 + 6 + 4 + 3, 0)


def test_a_poll_larger_than_one_range_is_applied_exactly(tmp_path: Path, ledger_store: StorageConfig) -> None:
    """Points are staged in slices and applied in ranges of whole series: a poll spanning many of each, with
    parts of one bucket far apart in the poll, counts exactly what one small poll would."""
    from otel_llm_receiver.ledger import planner, writer

    records = [usage(h * H, inp=h + m, out=1, model=f"m{m}") for h in range(60) for m in range(40)]
    parts = [usage(0, inp=1000, model=f"m{m}") for m in range(40)]  # a second part of bucket 0 of each series
    with Ledger(tmp_path / "small.db") as led:  # SQLite, one slice and range: the expected totals
        led.apply("demo", PollResult(usage=records + parts))
        led.apply("demo", PollResult(usage=[usage(59 * H, inp=1, model="m3")]))  # a shrink
        expected = totals(led)
    old = (planner.SLICE_POINTS, writer.RANGE_POINTS, writer.STAGE_ROWS)
    planner.SLICE_POINTS, writer.RANGE_POINTS, writer.STAGE_ROWS = 97, 50, 7
    try:
        with open_ledger(ledger_store) as led:  # each engine, many slices and ranges
            first = led.apply("demo", PollResult(usage=records + parts))
            second = led.apply("demo", PollResult(usage=[usage(59 * H, inp=1, model="m3")]))
            assert totals(led) == expected
    finally:
        planner.SLICE_POINTS, writer.RANGE_POINTS, writer.STAGE_ROWS = old
    assert first.outcomes == {"new": 40 * 60 * 2} and second.outcomes == {"shrunk": 2}  # input and output
    assert expected[(METRIC_TOKENS, "input")] == (sum(h + m for h in range(60) for m in range(40)) + 40_000, 61)


def test_awkward_text_round_trips_exactly(ledger: Ledger) -> None:
    """Quotes, backslashes, braces, commas, tabs, newlines and non-ASCII in ids, names and cursors come back
    exactly (PostgreSQL: they travel in array literals and COPY text, which have escapes of their own)."""
    awkward = ['q"uote', "back\\slash", "{br,ace}", "tab\tnew\nline", "ünï", "NULL", ""]
    records = [usage(0, inp=i + 1, tenancy=t) for i, t in enumerate(awkward)]
    names = {("tenancy", t): f"name of {t}" for t in awkward}
    cursors = {f"src{i}": t for i, t in enumerate(awkward)}
    ledger.apply("demo", PollResult(usage=records, names=names, cursors=cursors))
    ledger.apply("demo", PollResult(usage=records, names=names))  # found again: no second series
    inputs = {json.loads(s.attrs)["llm.tenancy.id"]: s.total for s in ledger.snapshot().series
              if s.metric == METRIC_TOKENS and json.loads(s.attrs)["gen_ai.token.type"] == "input"}
    assert inputs == {t: i + 1 for i, t in enumerate(awkward)}
    assert ledger.names() == {("demo", k, i): n for (k, i), n in names.items()}
    assert ledger.cursors("demo") == cursors
