"""The periodic FOCUS writer: one file per UTC day, rewritten atomically and only when that day changed.

Restatements, late usage, final days, a changed version, a crash in the middle of a rewrite (a real child
process, killed), and ``run`` writing the files itself. After every pass the files' totals equal the ledger's,
read straight from its rollups.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from otel_llm_receiver.config import Config, load_config, parse_config
from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.focus import FocusWriter, WritePass, context_for
from otel_llm_receiver.ledger import (
    METRIC_COST,
    METRIC_COST_ESTIMATED,
    METRIC_COST_NON_USD,
    Ledger,
    open_ledger,
)
from otel_llm_receiver.model import PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.scheduler import Receiver

from .support import focus_world as world
from .support.focus_conformance import check, read_back

D = world.D
TODAY = world.NOW // D * D
ROOT = Path(__file__).resolve().parent.parent


def write_pass(config: Config, directory: Path, now: int, *, fmt: str = "parquet", version: str = "1.2",
               final_after: float = 30 * D) -> WritePass:
    """One pass of a writer with its own read-only ledger connection (as ``run`` has)."""
    prices = PriceBook(config.pricing.entries, use_genai_prices=False)
    with open_ledger(config.storage, readonly=True) as ledger:
        focus = FocusWriter(ledger, directory, version=version, fmt=fmt, final_after=final_after,
                            context=lambda reader: context_for(config, reader, prices))
        return focus.write_pass(now)


def file_totals(path: Path, fmt: str) -> dict[tuple[str, str], Decimal]:
    """(source, currency) -> sum of BilledCost in one day file."""
    _, rows = read_back(path, fmt)
    out: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for r in rows:
        out[(r["x_CostSource"] or "", r["BillingCurrency"] or "")] += Decimal(r["BilledCost"] or "x")
    return dict(out)


def ledger_totals(config: Config, day: int) -> dict[tuple[str, str], Decimal]:
    """The same, from the ledger's rollups: reported cost by currency, and the estimated cost of the instances
    that reported nothing that day."""
    out: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    with open_ledger(config.storage, readonly=True) as ledger:
        sums = ledger.rollup_sums_between(day, day + D, [METRIC_COST, METRIC_COST_NON_USD, METRIC_COST_ESTIMATED])
    reported = {i for i, m, _, _ in sums if m != METRIC_COST_ESTIMATED}
    for instance, metric, attrs, value in sums:
        if metric == METRIC_COST_ESTIMATED:
            if instance not in reported and value:
                out[("estimated", "USD")] += Decimal(value) / 10**12
        elif value:
            out[("reported", attrs.get("llm.currency", "USD"))] += Decimal(value) / 10**9
    return dict(out)


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (inode, bytes) of every day file: a rewrite (a rename) changes the inode."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(directory.iterdir())
            if not p.name.startswith(".")}


@pytest.fixture
def config(tmp_path: Path, ledger_store: StorageConfig) -> Config:
    """The FOCUS world's ledger on each engine (the writer's passes read it as ``run`` does)."""
    return world.build(tmp_path, storage=ledger_store)


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Config:
    """The world on SQLite only: for a child process that loads the config file (its storage.path)."""
    return world.build(tmp_path)


def test_first_pass_writes_every_day_and_totals_equal_the_ledger(config: Config, tmp_path: Path) -> None:
    out = tmp_path / "focus"
    result = write_pass(config, out, world.NOW)
    days = [*world.DAYS, TODAY]
    assert result.written == [_name(d) for d in days]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        f"{_name(d)}.parquet" for d in days]
    for day in days:
        assert file_totals(out / f"{_name(day)}.parquet", "parquet") == ledger_totals(config, day)
        columns, rows = read_back(out / f"{_name(day)}.parquet", "parquet")
        assert rows and all(r["ChargePeriodStart"] == f"{_name(day)}T00:00:00Z" for r in rows)
        assert all(rule.startswith(("ListUnitPrice", "ConsumedQuantity", "PricingQuantity"))
                   for rule, _ in check("1.2", columns, rows))
    # Nothing changed: a second pass rewrites nothing.
    before = snapshot(out)
    again = write_pass(config, out, world.NOW + 3600)
    assert (again.written, again.unchanged) == ([], len(days))
    assert snapshot(out) == before


def _name(day: int) -> str:
    from otel_llm_receiver.focus.writer import day_name

    return day_name(day)


def test_a_restated_day_rewrites_exactly_that_file(config: Config, tmp_path: Path) -> None:
    out = tmp_path / "focus"
    write_pass(config, out, world.NOW)
    before = snapshot(out)
    restated_day = world.DAYS[1]
    new_total = world.restate(config, "anthropic/main", restated_day, Decimal("1.1"))
    result = write_pass(config, out, world.NOW + 60)
    assert result.written == [_name(restated_day)]
    after = snapshot(out)
    changed = {n for n in after if after[n] != before[n]}
    assert changed == {f"{_name(restated_day)}.parquet"}
    assert file_totals(out / f"{_name(restated_day)}.parquet", "parquet") == ledger_totals(config, restated_day)
    _, rows = read_back(out / f"{_name(restated_day)}.parquet", "parquet")
    anthropic = sum((Decimal(r["BilledCost"] or "x") for r in rows if r["BillingAccountId"] == "anthropic/main"),
                    Decimal(0))
    assert anthropic == new_total != world.daily_cost(world.WORKLOADS[1], restated_day)


def test_late_usage_rewrites_its_own_day_only(config: Config, tmp_path: Path) -> None:
    out = tmp_path / "focus"
    write_pass(config, out, world.NOW, fmt="csv")
    before = snapshot(out)
    w = world.WORKLOADS[4]  # Vertex AI: usage only, so the day's rows are estimated from tokens
    late = UsageRecord(provider=w.provider, model=w.model, operation="chat", tenancy_id=w.tenancy,
                       bucket_start=world.DAYS[2] + 5 * 3600, bucket_width=3600,
                       tokens={t: n * 2 for t, n in w.tokens.items()}, requests=10, dimensions=dict(w.dims))
    with open_ledger(config.storage) as ledger:
        ledger.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
        ledger.apply(w.instance, PollResult(usage=[late]))
    result = write_pass(config, out, world.NOW + 60, fmt="csv")
    assert result.written == [_name(world.DAYS[2])]
    after = snapshot(out)
    assert {n for n in after if after[n] != before[n]} == {f"{_name(world.DAYS[2])}.csv"}
    assert file_totals(out / f"{_name(world.DAYS[2])}.csv", "csv") == ledger_totals(config, world.DAYS[2])


def test_final_days_are_never_rewritten_and_a_version_change_rewrites_the_rest(config: Config, tmp_path: Path) -> None:
    out = tmp_path / "focus"
    final_after = D + 10 * 3600  # DAYS[0] and DAYS[1] ended at least this long before NOW: final
    write_pass(config, out, world.NOW, final_after=final_after)
    before = snapshot(out)
    world.restate(config, "anthropic/main", world.DAYS[0], Decimal("2"))
    result = write_pass(config, out, world.NOW, final_after=final_after)
    assert (result.written, result.final) == ([], 2)
    assert snapshot(out) == before
    # A changed FOCUS version rewrites every day that is not final (and leaves final ones as they are).
    result = write_pass(config, out, world.NOW, final_after=final_after, version="1.3")
    assert result.written == [_name(world.DAYS[2]), _name(TODAY)]
    after = snapshot(out)
    assert {n for n in after if after[n] != before[n]} == {f"{_name(world.DAYS[2])}.parquet",
                                                           f"{_name(TODAY)}.parquet"}
    columns, _ = read_back(out / f"{_name(TODAY)}.parquet", "parquet")
    assert "ServiceProviderName" in columns
    # A final day whose file is missing is written once.
    (out / f"{_name(world.DAYS[0])}.parquet").unlink()
    result = write_pass(config, out, world.NOW, final_after=final_after, version="1.3")
    assert result.written == [_name(world.DAYS[0])]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_crash_during_a_rewrite_leaves_the_previous_file_intact(sqlite_config: Config, tmp_path: Path,
                                                                  fmt: str) -> None:
    config = sqlite_config
    out = tmp_path / "focus"
    day = world.DAYS[1]
    write_pass(config, out, world.NOW, fmt=fmt)
    target = out / f"{_name(day)}.{fmt}"
    previous = target.read_bytes()
    previous_rows = read_back(target, fmt)
    world.restate(config, "anthropic/main", day, Decimal("3"))  # the rewrite would change the file
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.focus_crash_child", str(tmp_path / "config.yaml"), str(day),
         str(target), fmt],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline().strip() == "MIDWAY"  # it is inside the rewrite now
        temps = [p for p in out.iterdir() if p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp")]
        assert len(temps) == 1  # the new file is being written beside the old one
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    assert target.read_bytes() == previous
    assert read_back(target, fmt) == previous_rows
    # The next pass of a (restarted) writer brings the day up to date and removes the crashed write's leftover.
    result = write_pass(config, out, world.NOW + 60, fmt=fmt)
    assert _name(day) in result.written
    assert file_totals(target, fmt) == ledger_totals(config, day)
    assert not temps[0].exists() and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_run_writes_the_day_files(tmp_path: Path) -> None:
    """``run --once`` with a ``focus:`` section: the receiver polls the demo provider and writes the files."""
    cfg = parse_config({
        "storage": {"path": str(tmp_path / "ledger.db")},
        "providers": {"demo": {"backfill": "50h", "bucket_width": "1h"}},
        "pricing": {"genai_prices": True},
        "focus": {"path": str(tmp_path / "focus"), "version": "1.3", "format": "jsonl", "interval": "1h"},
    })
    receiver = Receiver(cfg, exporters=[])
    try:
        assert asyncio.run(receiver.run_once()) == 0
    finally:
        asyncio.run(receiver.aclose())
    files = sorted((tmp_path / "focus").glob("*.jsonl"))
    with Ledger(cfg.storage.path, readonly=True) as ledger:
        span = ledger.rollup_range()
    assert span is not None  # the backfill's usage and the demo's daily cost (re-read 2 days further back)
    assert [p.stem for p in files] == [_name(d) for d in range(span[0] // D * D, span[1] + 1, D)]
    for path in files:
        columns, rows = read_back(path, "jsonl")
        assert rows and "HostProviderName" in columns
    assert (tmp_path / "focus" / ".focus-state.json").exists()
    assert f"focus: FOCUS 1.3 jsonl every 1h into {tmp_path / 'focus'}" in cfg.describe()  # what `check` prints
    # check picks the section up, and an unknown key is an error with its key path
    path = tmp_path / "c.yaml"
    path.write_text("providers: {demo: {}}\nfocus: {path: ./f, formt: csv}\n")
    with pytest.raises(Exception) as info:
        load_config(path)
    assert "focus.formt: unknown key" in str(getattr(info.value, "problems", info.value))


def test_run_forever_writes_the_day_files_and_a_failed_pass_is_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The long-running receiver: a pass after the backfill and one at stop; a pass that cannot write (the
    directory is a file) is one warning and the receiver goes on."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    for path, ok in ((tmp_path / "focus", True), (blocked, False)):
        cfg = parse_config({
            "storage": {"path": str(tmp_path / f"ledger-{ok}.db")},
            "providers": {"demo": {"backfill": "26h", "bucket_width": "1h"}},
            "focus": {"path": str(path), "format": "csv"},
        })
        receiver = Receiver(cfg, exporters=[])

        async def scenario(receiver: Receiver = receiver) -> int:
            stop = asyncio.Event()

            async def stop_after_backfill() -> None:
                await receiver.first_round.wait()
                stop.set()

            stopper = asyncio.create_task(stop_after_backfill())
            code = await receiver.run_forever(stop)
            await stopper
            return code

        try:
            caplog.clear()
            assert asyncio.run(scenario()) == 0
        finally:
            asyncio.run(receiver.aclose())
        warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("focus: day files not")]
        if ok:
            assert warnings == [] and len(list(path.glob("*.csv"))) >= 2
        else:
            assert len(warnings) >= 1 and all("FileExistsError" in w or "NotADirectoryError" in w for w in warnings)
