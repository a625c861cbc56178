"""Leases on a real PostgreSQL (issue 21): exclusive holding, takeover after expiry with the next epoch, fencing
of a stale holder's write, the fair share (6 instances over 3 replicas: 2 each) and rebalancing as replicas join
and leave, the leader lease, and a holder killed with -9 in its own process.

Replicas are separate connections (and, for the kill, a separate process). Expiry uses short lease durations
and waits on the condition in the database (bounded), never on a bare sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from otel_llm_receiver.ledger.postgres import leases
from otel_llm_receiver.ledger.postgres.connect import PgConnection, connect
from otel_llm_receiver.ledger.postgres.leases import LEADER, Lease, StaleLeaseError
from tests.support.postgres import PostgresCluster
from tests.support.waiting import reap, wait_for

REPO = Path(__file__).resolve().parent.parent
SHORT = 1.0  # seconds: a lease that lapses within a test
LONG = 60.0  # seconds: a lease that does not lapse within a test
INSTANCES = [f"openai/p{i}" for i in range(6)]


@pytest.fixture
def replicas(ledger_dsn: str) -> Iterator[dict[str, PgConnection]]:
    """Three replicas' connections (autocommit: each lease call is its own transaction)."""
    conns = {name: connect(ledger_dsn, application_name=name, autocommit=True) for name in ("r1", "r2", "r3")}
    try:
        yield conns
    finally:
        for conn in conns.values():
            conn.close()


def lapsed(conn: PgConnection, name: str) -> bool:
    state = leases.current(conn, name)
    return state is not None and not state.live


# -- one lease -----------------------------------------------------------------------------------------------


def test_a_lease_is_held_by_one_replica_at_a_time(replicas: dict[str, PgConnection]) -> None:
    r1, r2 = replicas["r1"], replicas["r2"]
    mine = leases.acquire(r1, "openai/prod", "r1", LONG)
    assert mine is not None and mine.epoch == 1
    assert leases.acquire(r2, "openai/prod", "r2", LONG) is None
    again = leases.acquire(r1, "openai/prod", "r1", LONG)  # re-acquiring one's own live lease is a renewal
    assert again is not None and again.epoch == 1 and again.expires_at >= mine.expires_at
    state = leases.current(r2, "openai/prod")
    assert state is not None and (state.holder, state.epoch, state.live) == ("r1", 1, True)


def test_expiry_hands_the_lease_over_with_the_next_epoch(replicas: dict[str, PgConnection]) -> None:
    r1, r2 = replicas["r1"], replicas["r2"]
    first = leases.acquire(r1, "openai/prod", "r1", SHORT)
    assert first is not None and leases.acquire(r2, "openai/prod", "r2", SHORT) is None
    wait_for(lambda: lapsed(r2, "openai/prod"), what="r1's lease to lapse on the database clock")
    taken = leases.acquire(r2, "openai/prod", "r2", LONG)
    assert taken is not None and taken.epoch == first.epoch + 1 and taken.holder == "r2"
    assert leases.renew(r1, first, LONG) is None  # the old holder finds out at its next renewal
    assert leases.acquire(r1, "openai/prod", "r1", LONG) is None


def test_the_same_holder_after_a_lapse_starts_a_new_tenure(replicas: dict[str, PgConnection]) -> None:
    r1 = replicas["r1"]
    first = leases.acquire(r1, "openai/prod", "r1", LONG)
    assert first is not None
    leases.expire_now(r1, "openai/prod")
    assert leases.renew(r1, first, LONG) is None
    second = leases.acquire(r1, "openai/prod", "r1", LONG)
    assert second is not None and second.epoch == first.epoch + 1


def test_release_frees_the_lease_at_once(replicas: dict[str, PgConnection]) -> None:
    r1, r2 = replicas["r1"], replicas["r2"]
    lease = leases.acquire(r1, "openai/prod", "r1", LONG)
    assert lease is not None and leases.release(r1, lease)
    assert not leases.release(r1, lease)  # no longer ours
    taken = leases.acquire(r2, "openai/prod", "r2", LONG)
    assert taken is not None and taken.epoch == lease.epoch + 1


def test_renewal_extends_on_the_database_clock(replicas: dict[str, PgConnection]) -> None:
    r1 = replicas["r1"]
    lease = leases.acquire(r1, "openai/prod", "r1", 10.0)
    assert lease is not None
    renewed = leases.renew(r1, lease, 120.0)
    assert renewed is not None and renewed.epoch == lease.epoch
    now = r1.execute("SELECT clock_timestamp()").fetchone()
    assert now is not None
    remaining = (renewed.expires_at - now[0]).total_seconds()
    assert 100 < remaining <= 120


# -- fencing -------------------------------------------------------------------------------------------------


def _apply(conn: PgConnection, lease: Lease, value: int) -> None:
    """A stand-in for the ledger's apply: fence, then write the cursor, in one transaction."""
    conn.autocommit = False
    try:
        with conn.transaction():
            leases.fence(conn, lease.name, lease.epoch, lease.holder)
            conn.execute(
                "INSERT INTO cursors (instance, source, value, updated_ns) VALUES (%s, 'usage', %s, 0)"
                " ON CONFLICT (instance, source) DO UPDATE SET value = EXCLUDED.value",
                (lease.name, str(value)),
            )
    finally:
        conn.commit()
        conn.autocommit = True


def _cursor(conn: PgConnection, instance: str) -> str | None:
    row = conn.execute("SELECT value FROM cursors WHERE instance = %s", (instance,)).fetchone()
    return None if row is None else str(row[0])


def test_fencing_rejects_a_stale_holders_write(replicas: dict[str, PgConnection]) -> None:
    """r1 pauses past its lease (SIGSTOP, GC), r2 takes over and writes; r1 wakes up: its write is rejected."""
    r1, r2 = replicas["r1"], replicas["r2"]
    old = leases.acquire(r1, "openai/prod", "r1", SHORT)
    assert old is not None
    _apply(r1, old, 1)
    wait_for(lambda: lapsed(r2, "openai/prod"), what="r1's lease to lapse")
    new = leases.acquire(r2, "openai/prod", "r2", LONG)
    assert new is not None
    _apply(r2, new, 2)
    with pytest.raises(StaleLeaseError) as caught:
        _apply(r1, old, 999)
    error = caught.value
    assert (error.epoch, error.current_epoch, error.current_holder) == (old.epoch, new.epoch, "r2")
    assert str(error) == f"stale lease openai/prod epoch {old.epoch}: now epoch {new.epoch} held by r2; write rejected"
    assert _cursor(r2, "openai/prod") == "2"


def test_fencing_rejects_a_lapsed_lease_no_one_took(replicas: dict[str, PgConnection]) -> None:
    r1 = replicas["r1"]
    lease = leases.acquire(r1, "openai/prod", "r1", LONG)
    assert lease is not None
    leases.expire_now(r1, "openai/prod")
    with pytest.raises(StaleLeaseError, match="the lease expired") as caught:
        _apply(r1, lease, 5)
    assert caught.value.expired and _cursor(r1, "openai/prod") is None


def test_a_takeover_waits_for_the_fenced_apply_in_flight(replicas: dict[str, PgConnection]) -> None:
    """The fence's share lock holds to commit: while r1's apply is open no one can take the lease, even lapsed;
    once it commits, r2 takes it and reads what r1 wrote."""
    r1, r2 = replicas["r1"], replicas["r2"]
    lease = leases.acquire(r1, "openai/prod", "r1", SHORT)
    assert lease is not None
    r1.autocommit = False
    leases.fence(r1, lease.name, lease.epoch, "r1")
    r1.execute("INSERT INTO cursors VALUES ('openai/prod', 'usage', 'from r1', 0)")
    wait_for(lambda: lapsed(r2, "openai/prod"), what="the lease to lapse during the apply")
    assert leases.acquire(r2, "openai/prod", "r2", LONG) is None  # busy: locked by the apply in flight
    r1.commit()
    r1.autocommit = True
    taken = leases.acquire(r2, "openai/prod", "r2", LONG)
    assert taken is not None and taken.epoch == lease.epoch + 1
    assert _cursor(r2, "openai/prod") == "from r1"


def test_fence_outside_a_transaction_is_refused(replicas: dict[str, PgConnection]) -> None:
    r1 = replicas["r1"]
    lease = leases.acquire(r1, "openai/prod", "r1", LONG)
    assert lease is not None
    with pytest.raises(Exception, match="inside the apply's transaction"):
        leases.fence(r1, lease.name, lease.epoch)


# -- the fair share ------------------------------------------------------------------------------------------


def _round(conns: dict[str, PgConnection], names: list[str], duration: float) -> dict[str, leases.Assignment]:
    return {name: leases.balance(conns[name], name, INSTANCES, duration) for name in names}


def _settle(conns: dict[str, PgConnection], names: list[str], duration: float = LONG) -> dict[str, set[str]]:
    """Rounds in turn until two rounds in a row change nothing (one quiet round may only mean a replica's first
    heartbeat came after the others' turn), bounded: what each replica then holds."""
    quiet = 0
    for _ in range(8):
        outcome = _round(conns, names, duration)
        quiet = 0 if any(a.acquired or a.released or a.lost for a in outcome.values()) else quiet + 1
        if quiet == 2:
            return {name: set(a.held) for name, a in outcome.items()}
    raise AssertionError("the fair share did not settle in 8 rounds")


def _holders(conn: PgConnection) -> dict[str, str | None]:
    return {str(n): h for n, h in conn.execute("SELECT name, holder FROM leases WHERE name <> %s", (LEADER,))}


def test_fair_share_arithmetic() -> None:
    assert [leases.fair_share(6, n) for n in (0, 1, 2, 3, 4, 6, 7)] == [6, 6, 3, 2, 2, 1, 1]
    assert leases.fair_share(0, 3) == 0


def test_six_instances_spread_over_three_replicas_two_each(replicas: dict[str, PgConnection]) -> None:
    held = _settle(replicas, ["r1", "r2", "r3"])
    assert sorted(len(h) for h in held.values()) == [2, 2, 2]
    assert set().union(*held.values()) == set(INSTANCES)
    holders = _holders(replicas["r1"])
    assert all(holders[i] in held and i in held[holders[i] or ""] for i in INSTANCES)


def test_a_joining_replica_gets_its_share_and_a_leaving_one_hands_its_over(
    replicas: dict[str, PgConnection],
) -> None:
    alone = _settle(replicas, ["r1"])
    assert alone == {"r1": set(INSTANCES)}
    two = _settle(replicas, ["r1", "r2"])
    assert sorted(len(h) for h in two.values()) == [3, 3]
    three = _settle(replicas, ["r3", "r1", "r2"])
    assert sorted(len(h) for h in three.values()) == [2, 2, 2]
    assert two["r1"] >= three["r1"] and two["r2"] >= three["r2"]  # they shed instances, they did not reshuffle
    leases.leave(replicas["r3"], "r3")
    after = _settle(replicas, ["r1", "r2"])
    assert sorted(len(h) for h in after.values()) == [3, 3]
    assert after["r1"] >= three["r1"] and after["r2"] >= three["r2"]
    assert set(_holders(replicas["r1"]).values()) == {"r1", "r2"}


def test_the_fair_share_releases_instances_not_being_polled_first_and_defers_only_the_surplus_left(
    replicas: dict[str, PgConnection],
) -> None:
    """``may_release`` says no for instances with a poll in flight: others go instead; when every candidate is
    busy, the release is deferred for as many as the share is still over (the busy ones renewed, not released)."""
    assert _settle(replicas, ["r1"]) == {"r1": set(INSTANCES)}
    leases.heartbeat(replicas["r2"], "r2")  # r2 is live: r1's share drops to 3
    asked: list[str] = []
    busy = set(INSTANCES[:4])

    def may_release(name: str) -> bool:
        asked.append(name)
        return name not in busy

    some_busy = leases.balance(replicas["r1"], "r1", INSTANCES, LONG, may_release=may_release)
    # The two idle ones go; the share is still over by one, and the rest are busy: one of them is deferred.
    assert set(some_busy.released) == set(INSTANCES[4:]) and len(some_busy.deferred) == 1
    assert set(some_busy.deferred) <= busy and set(asked) == set(INSTANCES)
    assert len(some_busy.held) == 4 and set(INSTANCES[4:]).isdisjoint(some_busy.held)
    assert set(_holders(replicas["r1"]).values()) >= {"r1", None}
    everything_busy = leases.balance(replicas["r1"], "r1", INSTANCES, LONG, may_release=lambda _name: False)
    assert everything_busy.released == () and len(everything_busy.deferred) == 1  # over by one: defer one
    assert len(everything_busy.held) == 4 and set(everything_busy.deferred) <= set(everything_busy.held)
    assert all(lease.epoch == some_busy.held[n].epoch for n, lease in everything_busy.held.items())  # renewed


def test_a_dead_replicas_instances_are_taken_after_its_leases_lapse(replicas: dict[str, PgConnection]) -> None:
    """r3 stops heartbeating (killed): once its heartbeat is older than lease_duration and its leases lapsed, r1
    and r2 (renewing all along) take its instances with the next epoch, 3 each."""
    held = _settle(replicas, ["r1", "r2", "r3"], SHORT * 2)
    orphans = held["r3"]
    epochs = {n: e for n, e in replicas["r1"].execute("SELECT name, epoch FROM leases")}

    def survivors_hold_everything() -> bool:
        outcome = _round(replicas, ["r1", "r2"], SHORT * 2)
        return sorted(len(a.held) for a in outcome.values()) == [3, 3]

    wait_for(survivors_hold_everything, 30, "r1 and r2 to take r3's instances")
    assert leases.live_replicas(replicas["r1"], SHORT * 2) == ("r1", "r2")
    now_epochs = {n: e for n, e in replicas["r1"].execute("SELECT name, epoch FROM leases")}
    assert all(now_epochs[n] == epochs[n] + 1 for n in orphans)
    assert "r3" not in _holders(replicas["r1"]).values()


def test_concurrent_replicas_never_write_for_an_instance_they_do_not_hold(ledger_dsn: str) -> None:
    """Three replicas balancing at once in threads (own connections), each applying (fence + write) for every
    instance it believes it holds, as fast as it can. Whatever the interleaving: each (instance, epoch) was written
    by one replica only, and an instance's writes never go back to an older epoch. They settle at two each."""
    with connect(ledger_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE applies (seq bigserial PRIMARY KEY, instance text, holder text, epoch bigint)")
    stop = threading.Event()
    errors: list[BaseException] = []
    rejected: list[str] = []

    def run(name: str) -> None:
        try:
            with connect(ledger_dsn, application_name=name, autocommit=True) as conn:
                while not stop.is_set():
                    assignment = leases.balance(conn, name, INSTANCES, LONG)
                    for lease in assignment.held.values():
                        try:
                            with conn.transaction():
                                leases.fence(conn, lease.name, lease.epoch, name)
                                conn.execute("INSERT INTO applies (instance, holder, epoch) VALUES (%s, %s, %s)",
                                             (lease.name, name, lease.epoch))
                        except StaleLeaseError:
                            rejected.append(lease.name)  # released by balance between our read and the apply
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("r1", "r2", "r3")]
    for t in threads:
        t.start()
    try:
        with connect(ledger_dsn, autocommit=True) as observer:
            def settled() -> bool:
                rows = observer.execute(
                    "SELECT holder, count(*) FROM leases WHERE holder IS NOT NULL AND expires_at > clock_timestamp()"
                    " AND name <> %s GROUP BY holder", (LEADER,)).fetchall()
                return sorted(c for _, c in rows) == [2, 2, 2]

            wait_for(settled, 30, "three concurrent replicas to settle at 2 each")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors
    with connect(ledger_dsn, autocommit=True) as conn:
        shared = conn.execute("SELECT instance, epoch FROM applies GROUP BY instance, epoch"
                              " HAVING count(DISTINCT holder) > 1").fetchall()
        assert shared == []
        backwards = conn.execute(
            "SELECT count(*) FROM (SELECT epoch, lag(epoch) OVER (PARTITION BY instance ORDER BY seq) AS before"
            " FROM applies) AS ordered WHERE epoch < before").fetchone()
        assert backwards == (0,)
        written = conn.execute("SELECT count(DISTINCT instance), count(*) FROM applies").fetchone()
        assert written is not None and written[0] == len(INSTANCES) and written[1] > len(INSTANCES)


def test_leases_survive_a_postgresql_restart(postgres_cluster: PostgresCluster, ledger_dsn: str) -> None:
    """PostgreSQL restarted mid-poll: the replica's connection breaks (one error), a new one finds the lease
    still its own at the same epoch, and the fence accepts its next apply."""
    conn = connect(ledger_dsn, autocommit=True)
    lease = leases.acquire(conn, "openai/prod", "r1", LONG)
    assert lease is not None
    postgres_cluster.restart()
    with pytest.raises(psycopg.OperationalError):
        leases.renew(conn, lease, LONG)
    conn.close()
    with connect(ledger_dsn, autocommit=True) as again:
        renewed = leases.renew(again, lease, LONG)
        assert renewed is not None and renewed.epoch == lease.epoch
        _apply(again, renewed, 7)
        assert _cursor(again, "openai/prod") == "7"


# -- the leader ----------------------------------------------------------------------------------------------


def test_one_leader_and_a_new_one_when_it_lapses(replicas: dict[str, PgConnection]) -> None:
    r1, r2 = replicas["r1"], replicas["r2"]
    leader = leases.lead(r1, "r1", SHORT)
    assert leader is not None and leader.name == LEADER
    assert leases.lead(r2, "r2", SHORT) is None
    kept = leases.lead(r1, "r1", SHORT, leader)
    assert kept is not None and kept.epoch == leader.epoch
    wait_for(lambda: lapsed(r2, LEADER), what="the leader lease to lapse")
    successor = leases.lead(r2, "r2", LONG)
    assert successor is not None and successor.epoch == leader.epoch + 1
    assert leases.lead(r1, "r1", LONG, kept) is None


# -- a holder process killed with -9 -------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys
    from otel_llm_receiver.ledger.postgres import connect, leases
    conn = connect.connect(sys.argv[1], application_name="holder", autocommit=True)
    lease = leases.acquire(conn, "openai/prod", "holder", float(sys.argv[2]))
    print(lease.epoch, flush=True)
    sys.stdin.read()  # hold the connection until killed
""")


def test_a_holder_killed_with_sigkill_loses_its_lease_after_the_duration(ledger_dsn: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, ledger_dsn, str(SHORT * 2)], cwd=REPO, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        epoch = int(holder.stdout.readline())
        with connect(ledger_dsn, autocommit=True) as conn:
            assert leases.acquire(conn, "openai/prod", "survivor", LONG) is None
            holder.send_signal(signal.SIGKILL)
            holder.wait(30)
            killed = time.monotonic()
            taken = wait_for(lambda: leases.acquire(conn, "openai/prod", "survivor", LONG), 30,
                             "the killed holder's lease to be taken")
            failover = time.monotonic() - killed
    finally:
        reap(holder)
    assert taken.epoch == epoch + 1 and taken.holder == "survivor"
    assert failover <= SHORT * 2 + 5  # the lease duration, plus the polling and a loaded machine's slack


def test_stale_lease_error_is_a_ledger_error() -> None:
    from otel_llm_receiver.errors import LedgerError

    error = StaleLeaseError("openai/prod", 3, holder="r1", current_holder=None, current_epoch=None, expired=True)
    assert isinstance(error, LedgerError) and "no such lease" in str(error)

