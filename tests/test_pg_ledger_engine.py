"""What only the PostgreSQL ledger engine has (issue 21): fencing an apply with a lease, replicas applying
different instances at the same time (series ids from the identity sequence, never colliding), and a lost
connection reported in one retryable line and healed by the next call. The accounting itself runs on both
engines in test_ledger.py and the other parametrised suites."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.errors import LedgerError
from otel_llm_receiver.ledger import METRIC_TOKENS, Ledger, open_ledger
from otel_llm_receiver.ledger.postgres import leases
from otel_llm_receiver.ledger.postgres.engine import PostgresConnectionLost, PostgresLedger
from otel_llm_receiver.ledger.postgres.leases import StaleLeaseError
from otel_llm_receiver.model import PollResult, UsageRecord
from tests.support.postgres import PostgresCluster

H = 3600


def usage(start: int, *, inp: int, model: str = "m1", tenancy: str = "t1") -> UsageRecord:
    return UsageRecord(provider="demo", model=model, operation="chat", tenancy_id=tenancy, bucket_start=start,
                       bucket_width=H, tokens={"input": inp, "output": 1}, requests=1)


def input_totals(ledger: Ledger) -> dict[tuple[str, str, str], int]:
    """(instance, model, tenancy) -> input tokens total."""
    out = {}
    for s in ledger.snapshot().series:
        attrs = json.loads(s.attrs)
        if s.metric == METRIC_TOKENS and attrs["gen_ai.token.type"] == "input":
            out[(s.instance, attrs["gen_ai.request.model"], attrs["llm.tenancy.id"])] = s.total
    return out


@pytest.fixture
def pg_store(pg_database: object, postgres_cluster: PostgresCluster, pg_ledger_template: str) -> Iterator[StorageConfig]:
    database = postgres_cluster.create_database(template=pg_ledger_template)
    try:
        yield StorageConfig(backend="postgresql", dsn=database.dsn)
    finally:
        postgres_cluster.start()
        postgres_cluster.drop_database(database.name)


@pytest.fixture
def opened(pg_store: StorageConfig) -> Iterator[Callable[..., PostgresLedger]]:
    ledgers: list[Ledger] = []

    def open_(**kwargs: object) -> PostgresLedger:
        ledger = open_ledger(pg_store, **kwargs)  # type: ignore[arg-type]
        assert isinstance(ledger, PostgresLedger)
        ledgers.append(ledger)
        return ledger

    yield open_
    for ledger in ledgers:
        ledger.close()


def _raw(store: StorageConfig) -> psycopg.Connection[tuple[object, ...]]:
    assert store.dsn is not None
    return psycopg.connect(store.dsn, autocommit=True)


# -- fencing ---------------------------------------------------------------------------------------------------


def test_a_current_lease_fences_the_apply_in(opened: Callable[..., PostgresLedger], pg_store: StorageConfig) -> None:
    ledger = opened()
    with _raw(pg_store) as conn:
        lease = leases.acquire(conn, "demo", "r1", 60.0)
    assert lease is not None
    ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]), cursor="c1", fence=lease)
    assert input_totals(ledger) == {("demo", "m1", "t1"): 5}
    assert ledger.cursor("demo") == "c1"


def test_a_stale_lease_applies_nothing(opened: Callable[..., PostgresLedger], pg_store: StorageConfig) -> None:
    """r1 held the lease, r2 took it over (epoch + 1); r1's late poll is rejected and nothing of it lands:
    no totals, no new series, no cursor."""
    ledger = opened()
    with _raw(pg_store) as conn:
        old = leases.acquire(conn, "demo", "r1", 60.0)
        assert old is not None
        ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]), cursor="c1", fence=old)
        leases.expire_now(conn, "demo")
        new = leases.acquire(conn, "demo", "r2", 60.0)
        assert new is not None and new.epoch == old.epoch + 1
    before = (input_totals(ledger), ledger.counts(), ledger.cursors("demo"))
    late = PollResult(usage=[usage(0, inp=50), usage(H, inp=7, model="m2")])
    with pytest.raises(StaleLeaseError, match="stale lease demo"):
        ledger.apply("demo", late, cursor="c2", fence=old)
    assert (input_totals(ledger), ledger.counts(), ledger.cursors("demo")) == before
    ledger.apply("demo", late, cursor="c2", fence=new)  # the holder's apply of the same poll counts it once
    assert input_totals(ledger) == {("demo", "m1", "t1"): 50, ("demo", "m2", "t1"): 7}
    assert ledger.cursor("demo") == "c2"


def test_a_fence_for_another_instance_is_refused(opened: Callable[..., PostgresLedger], pg_store: StorageConfig) -> None:
    ledger = opened()
    with _raw(pg_store) as conn:
        lease = leases.acquire(conn, "other", "r1", 60.0)
    assert lease is not None
    with pytest.raises(ValueError, match="not the applied instance"):
        ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]), fence=lease)
    assert ledger.counts()["series"] == 0


def test_sqlite_refuses_a_fence(tmp_path: Path) -> None:
    """SQLite has one writer (the file lock): a lease there is a mistake, refused, and nothing is applied."""
    lease = leases.Lease(name="demo", holder="r1", epoch=1, expires_at=None)  # type: ignore[arg-type]
    with Ledger(tmp_path / "ledger.db") as ledger:
        with pytest.raises(ValueError, match="SQLite has one writer"):
            ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]), cursor="c", fence=lease)
        assert ledger.counts()["series"] == 0 and ledger.cursor("demo") is None


# -- concurrent replicas ---------------------------------------------------------------------------------------


def test_replicas_applying_different_instances_at_once_never_share_a_series_id(
    opened: Callable[..., PostgresLedger], pg_store: StorageConfig
) -> None:
    """Two writers (replicas) apply polls of different instances at the same time, each creating new series
    in every poll, while a third session keeps taking ids from the series sequence: the writers' predicted
    ids are often wrong, and must be corrected (never a collision, never a point on another's series)."""
    writers = {"openai/a": opened(application_name="r1"), "openai/b": opened(application_name="r2")}
    rounds, models = 6, 20
    errors: list[BaseException] = []
    stop = threading.Event()

    def take_ids() -> None:
        with _raw(pg_store) as conn:
            seq = conn.execute("SELECT pg_get_serial_sequence('series', 'id')").fetchone()[0]  # type: ignore[index]
            while not stop.is_set():
                conn.execute(f"SELECT nextval('{seq}')")

    def run(instance: str) -> None:
        try:
            ledger = writers[instance]
            for r in range(rounds):
                records = [usage(h * H, inp=1000 * r + m + h, model=f"{instance}-r{r}-m{m}")
                           for m in range(models) for h in range(3)]
                ledger.apply(instance, PollResult(usage=records))
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    thief = threading.Thread(target=take_ids)
    thief.start()
    threads = [threading.Thread(target=run, args=(name,)) for name in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    thief.join(30)
    assert errors == []
    got = input_totals(writers["openai/a"])
    expected = {(instance, f"{instance}-r{r}-m{m}", "t1"): sum(1000 * r + m + h for h in range(3))
                for instance in writers for r in range(rounds) for m in range(models)}
    assert got == expected
    with _raw(pg_store) as conn:
        # Every bucket sits on a series of its own instance and model (the ids were remapped right).
        wrong = conn.execute(
            "SELECT count(*) FROM buckets AS b JOIN series AS s ON s.id = b.series_id"
            " WHERE s.attrs NOT LIKE '%' || s.instance || '-r%'").fetchone()
        assert wrong == (0,)


# -- staging -------------------------------------------------------------------------------------------------------


def test_points_staged_after_staged_was_read_are_summed_with_the_points_already_there(
    opened: Callable[..., PostgresLedger],
) -> None:
    """``staged`` has no key on PostgreSQL (its points are summed per bucket on the way in): slices COPYed after
    a statement read it are summed together with what it held, parts of one bucket adding up, each key once."""
    ledger = opened()
    with ledger._transaction() as tx:
        tx.execute(ledger._create_staged)
        tx.execute(ledger._clear_staged)
        ledger._stage(tx, [(1, 0, H, 5), (2, 0, H, 1), (1, 0, H, 2)])
        assert tx.execute("SELECT count(*) FROM staged").fetchone() == (2,)
        ledger._stage(tx, [(1, 0, H, 7), (3, H, H, 2)])
        ledger._stage(tx, [(2, 0, H, 10)])
        rows = tx.execute("SELECT * FROM staged ORDER BY series_id, bucket_start").fetchall()
        tx.execute(ledger._clear_staged)
    assert rows == [(1, 0, H, 14), (2, 0, H, 11), (3, H, H, 2)]


def test_a_value_beyond_64_bits_is_refused_in_one_line_before_anything_is_applied(
    opened: Callable[..., PostgresLedger],
) -> None:
    ledger = opened()
    ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]))
    with pytest.raises(LedgerError, match="exceeds 64-bit integers"):
        ledger.apply("demo", PollResult(usage=[usage(0, inp=2**63), usage(H, inp=3)]))
    assert input_totals(ledger) == {("demo", "m1", "t1"): 5}


# -- a lost connection -----------------------------------------------------------------------------------------


def _terminate(pg_store: StorageConfig, application_name: str) -> int:
    with _raw(pg_store) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,)).fetchall()
    return len(rows)


def test_a_terminated_backend_is_one_retryable_line_and_the_next_call_reconnects(
    opened: Callable[..., PostgresLedger], pg_store: StorageConfig
) -> None:
    ledger = opened(application_name="victim")
    reader = opened(readonly=True, application_name="victim-reader")
    ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]), cursor="c1")
    assert _terminate(pg_store, "victim") == 1 and _terminate(pg_store, "victim-reader") == 1
    with pytest.raises(PostgresConnectionLost) as caught:
        ledger.apply("demo", PollResult(usage=[usage(0, inp=9), usage(H, inp=4)]), cursor="c2")
    message = str(caught.value)
    assert "\n" not in message and "connection lost" in message and caught.value.retryable
    assert pg_store.dsn is not None and psycopg.conninfo.conninfo_to_dict(pg_store.dsn)["password"] not in message
    with pytest.raises(PostgresConnectionLost):
        reader.snapshot()
    # The next poll (the scheduler's retry) reconnects and applies the whole poll, exactly once.
    ledger.apply("demo", PollResult(usage=[usage(0, inp=9), usage(H, inp=4)]), cursor="c2")
    assert input_totals(reader) == {("demo", "m1", "t1"): 13}
    assert reader.cursor("demo") == "c2"


def test_a_restarted_server_is_caught_up_by_the_next_poll(
    opened: Callable[..., PostgresLedger], postgres_cluster: PostgresCluster
) -> None:
    ledger = opened()
    ledger.apply("demo", PollResult(usage=[usage(0, inp=5)]))
    postgres_cluster.restart()
    with pytest.raises(LedgerError, match="connection lost"):
        ledger.apply("demo", PollResult(usage=[usage(0, inp=6)]))
    ledger.apply("demo", PollResult(usage=[usage(0, inp=6)]))
    ledger.apply("demo", PollResult(usage=[usage(0, inp=6), usage(H, inp=1)]))
    assert input_totals(ledger) == {("demo", "m1", "t1"): 7}
