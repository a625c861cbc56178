"""The replica coordinator on a real PostgreSQL (issue 21): three coordinators share 6 instances 2-2-2, a clean
leave hands its instances over within one round, a replica killed with -9 (its own process) hands them over after
``lease_duration``, a lost database is one log line and the leases age out locally, and the leader is one.

Coordinators run their rounds on their own threads, as in ``run``; the tests wait on conditions with deadlines.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_llm_receiver.ledger.postgres import leases
from otel_llm_receiver.ledger.postgres.connect import connect
from otel_llm_receiver.replicas import (
    LEASE_DURATION_ENV,
    ReplicaCoordinator,
    expiry_margin,
    lease_duration,
    replica_id,
    takeover_at,
    writer_dsn,
)
from tests.support.postgres import PostgresCluster
from tests.support.waiting import reap, wait_for

REPO = Path(__file__).resolve().parent.parent
INSTANCES = [f"openai/p{i}" for i in range(6)]
DURATION = 2.0  # seconds: short enough for a takeover within a test


@pytest.fixture
def coordinators(ledger_dsn: str) -> Iterator[list[ReplicaCoordinator]]:
    made: list[ReplicaCoordinator] = []
    yield made
    for c in made:
        c.stop(leave=False)


def start(made: list[ReplicaCoordinator], dsn: str, name: str, duration: float = DURATION) -> ReplicaCoordinator:
    c = ReplicaCoordinator(dsn, INSTANCES, duration, replica=name).start()
    made.append(c)
    return c


def shares(cs: list[ReplicaCoordinator]) -> list[set[str]]:
    return [set(c.held()) for c in cs]


def partitioned(cs: list[ReplicaCoordinator], sizes: list[int]) -> bool:
    """Every instance held by exactly one coordinator, in shares of ``sizes``."""
    held = shares(cs)
    everything = [n for h in held for n in h]
    return sorted(len(h) for h in held) == sorted(sizes) and sorted(everything) == sorted(INSTANCES)


def holders(dsn: str) -> dict[str, str | None]:
    with connect(dsn, autocommit=True) as conn:
        return {str(n): h for n, h in conn.execute(
            "SELECT name, holder FROM leases WHERE name <> %s AND expires_at > clock_timestamp()",
            (leases.LEADER,))}


def test_replica_ids_are_unique_per_process_and_name_the_pod() -> None:
    a, b = replica_id({"POD_NAME": "rx-7f9"}), replica_id({"POD_NAME": "rx-7f9"})
    assert a.startswith(f"rx-7f9-{os.getpid()}-") and a != b
    assert replica_id({"OTEL_LLM_RECEIVER_REPLICA_ID": "mine", "POD_NAME": "p"}).startswith("mine-")


def test_the_lease_duration_test_hook_is_bounded() -> None:
    assert lease_duration(30.0, {}) == 30.0
    assert lease_duration(30.0, {LEASE_DURATION_ENV: "1.5"}) == 1.5
    for bad in ("0.1", "x", "1000"):
        with pytest.raises(Exception, match=LEASE_DURATION_ENV):
            lease_duration(30.0, {LEASE_DURATION_ENV: bad})


def test_three_replicas_share_six_instances_two_each(
    ledger_dsn: str, coordinators: list[ReplicaCoordinator],
) -> None:
    cs = [start(coordinators, ledger_dsn, f"r{i}") for i in range(3)]
    wait_for(lambda: partitioned(cs, [2, 2, 2]), what="2-2-2")
    in_db = holders(ledger_dsn)
    for c in cs:  # what each believes it holds is what the database says
        assert {n for n, h in in_db.items() if h == c.replica} == set(c.held())
        for name, held in c.held().items():
            assert c.lease(name) == held.lease and held.lease.holder == c.replica
    leaders = [c for c in cs if c.is_leader]
    assert len(leaders) == 1
    doc = cs[0].state()
    assert doc["replica"] == "r0" and doc["leader"] == {"replica": leaders[0].replica, "self": leaders[0] is cs[0]}
    assert set(doc["leases"]) == set(cs[0].held())  # type: ignore[call-overload]


def test_a_clean_leave_hands_the_instances_over_within_one_round(
    ledger_dsn: str, coordinators: list[ReplicaCoordinator],
) -> None:
    """Long leases (60s): only the leave can explain a handover within a round or two."""
    cs = [start(coordinators, ledger_dsn, f"r{i}", duration=60.0) for i in range(3)]
    for c in cs:
        c.round_interval = 0.5
    wait_for(lambda: partitioned(cs, [2, 2, 2]), what="2-2-2")
    leaving = cs[2]
    orphans = set(leaving.held())
    was_leader = leaving.is_leader
    left_at = time.monotonic()
    leaving.stop(leave=True)
    assert leaving.held() == {} and not leaving.is_leader
    survivors = cs[:2]
    wait_for(lambda: partitioned(survivors, [3, 3]), timeout=10, what="the survivors to take 3 each")
    took = time.monotonic() - left_at
    assert took < 3 * 0.5 + 2.0, f"handover took {took:.2f}s"  # a round or two, never the 60s lease
    assert orphans <= set().union(*shares(survivors))
    if was_leader:
        wait_for(lambda: any(c.is_leader for c in survivors), timeout=10, what="a new leader")


_REPLICA = textwrap.dedent("""
    import sys
    from otel_llm_receiver.replicas import ReplicaCoordinator
    c = ReplicaCoordinator(sys.argv[1], [f"openai/p{i}" for i in range(6)], float(sys.argv[2]), replica="doomed")
    c.start()
    while len(c.held()) < 2:
        c.wait_for_round(c.rounds, 5)
    print(" ".join(sorted(c.held())), flush=True)
    sys.stdin.read()  # hold until killed
""")


def test_a_replica_killed_with_sigkill_hands_over_after_the_lease_duration(
    ledger_dsn: str, coordinators: list[ReplicaCoordinator],
) -> None:
    cs = [start(coordinators, ledger_dsn, f"r{i}") for i in range(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    doomed = subprocess.Popen([sys.executable, "-c", _REPLICA, ledger_dsn, str(DURATION)], cwd=REPO, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert doomed.stdout is not None
        orphans = set(doomed.stdout.readline().split())
        assert len(orphans) == 2
        wait_for(lambda: sorted(len(h) for h in shares(cs)) == [2, 2] and set(holders(ledger_dsn)) == set(INSTANCES)
                 and orphans.isdisjoint(set().union(*shares(cs))), what="2-2-2")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(30)
        killed = time.monotonic()
        wait_for(lambda: partitioned(cs, [3, 3]), what="the survivors to take the killed replica's instances")
        failover = time.monotonic() - killed
    finally:
        reap(doomed)
    # Not before its leases lapsed (less the round it may have renewed just before dying), and not long after.
    assert DURATION * 0.5 < failover < DURATION + 2 * (DURATION / 3) + 2.0, f"failover {failover:.2f}s"
    assert "doomed" not in holders(ledger_dsn).values()


def test_a_lost_database_is_one_line_and_the_leases_age_out_locally(
    postgres_cluster: PostgresCluster, ledger_dsn: str, coordinators: list[ReplicaCoordinator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = start(coordinators, ledger_dsn, "alone")
    c.round_interval = 0.2
    wait_for(lambda: len(c.held()) == 6 and c.is_leader, what="all six held")
    caplog.set_level(logging.INFO, logger="otel_llm_receiver.replicas")
    postgres_cluster.stop()
    try:
        stopped = time.monotonic()
        wait_for(lambda: c.held() == {} and not c.is_leader, timeout=DURATION + 5, what="the leases to age out locally")
        aged = time.monotonic() - stopped
        assert aged <= DURATION + 0.5
        rounds = c.rounds
        wait_for(lambda: c.rounds >= rounds + 3, what="more failed rounds")
        failures = [r for r in caplog.records if "lease round failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert postgres_cluster.password not in failures[0].getMessage()
        assert c.state()["database_error"]
    finally:
        postgres_cluster.start()
    wait_for(lambda: len(c.held()) == 6, what="the leases taken again once the database is back")
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert c.state()["database_error"] is None


def test_a_transaction_a_paused_holder_left_open_does_not_hold_its_instance(ledger_dsn: str) -> None:
    """A replica paused mid-apply keeps its fence's row lock: with ``writer_dsn`` the server ends the idle
    transaction after the lease duration, so another replica takes the instance over (as from a dead one)."""
    dsn = writer_dsn(ledger_dsn, DURATION)
    assert "idle_in_transaction_session_timeout=2000" in dsn
    writer = connect(dsn)  # not autocommit: the apply's transaction
    lease = leases.acquire(writer, "openai/p0", "paused", DURATION)
    assert lease is not None
    writer.commit()
    leases.fence(writer, lease.name, lease.epoch, "paused")  # the apply began ... and the replica stopped
    try:
        with connect(ledger_dsn, autocommit=True) as other:
            taken = wait_for(lambda: leases.acquire(other, "openai/p0", "other", 60.0), DURATION * 4,
                             "the paused transaction to end and the lease to be taken")
            assert taken.epoch == lease.epoch + 1
    finally:
        writer.close()


def test_writer_dsn_keeps_the_dsns_own_options() -> None:
    dsn = writer_dsn("postgresql://u:pw@h:5432/db?options=-c%20search_path%3Dledger", 30.0)
    assert "search_path=ledger" in dsn and "idle_in_transaction_session_timeout=30000" in dsn and "pw" in dsn


_FROZEN_HOLDER = textwrap.dedent("""
    import sys
    from otel_llm_receiver.replicas import ReplicaCoordinator
    c = ReplicaCoordinator(sys.argv[1], sys.argv[3].split(","), float(sys.argv[2]), replica="doomed",
                           round_interval=float(sys.argv[4])).start()
    print("started", flush=True)
    sys.stdin.readline()  # the test's cue: no more regular rounds ...
    c.stop(leave=False)
    c.run_round()  # ... but this one: the last renewal, at a moment the test chose
    print(" ".join(sorted(c.held())), "leader" if c.is_leader else "-", flush=True)
    sys.stdin.read()  # hold until killed
""")


def test_a_dead_holders_leases_are_taken_as_they_lapse_not_a_round_later(
    ledger_dsn: str, coordinators: list[ReplicaCoordinator],
) -> None:
    """The survivor's regular rounds are 2.5s apart (lengthened from a third of the 3s lease) and the holder's
    last renewal comes just after one of them: its leases lapse 0.5s after the survivor's next round, so on the
    regular tick alone they would be taken a round later, about 2s after the lapse. Measured on the database's
    clock: the new tenure's ``acquired_at`` against the old lease's ``expires_at``."""
    lease, tick = 3.0, 2.5
    names = INSTANCES[:4]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", _FROZEN_HOLDER, ledger_dsn, str(lease), ",".join(names), "0.5"],
                              cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "started"
        wait_for(lambda: len(holders(ledger_dsn)) == 4, what="the holder alone taking all four")
        survivor = ReplicaCoordinator(ledger_dsn, names, lease, replica="survivor", round_interval=tick)
        coordinators.append(survivor.start())
        wait_for(lambda: len(survivor.held()) == 2 and len(holders(ledger_dsn)) == 4,
                 timeout=20, what="two instances each")
        rounds = survivor.wait_for_round(survivor.rounds, 2 * tick + 5)  # a survivor round just ended ...
        holder.stdin.write("last\n")  # ... and the holder renews for the last time now
        holder.stdin.flush()
        last = holder.stdout.readline().split()
        orphans = set(last) - {"leader", "-"}
        assert len(orphans) == 2 and "leader" in last, last
        with connect(ledger_dsn, autocommit=True) as conn:
            lapses = {str(n): e for n, e in conn.execute("SELECT name, expires_at FROM leases WHERE holder = 'doomed'")}
        assert set(lapses) == orphans | {leases.LEADER}
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        wait_for(lambda: len(survivor.held()) == 4 and survivor.is_leader, timeout=lease + 3 * tick + 5,
                 what="the survivor to take the dead holder's instances and the lead")
        took = survivor.rounds - rounds
    finally:
        reap(holder)
    with connect(ledger_dsn, autocommit=True) as conn:
        tenures = {str(n): (h, a) for n, h, a in conn.execute(
            "SELECT name, holder, acquired_at FROM leases WHERE name = ANY(%s)", (list(lapses),))}
    for name, expired in lapses.items():
        holder_now, acquired = tenures[name]
        assert holder_now == "survivor"
        late = (acquired - expired).total_seconds()
        # Never before the lapse; well within the 2s a regular round later would take (margin: load).
        assert 0 <= late < 1.2, f"{name} taken {late:.3f}s after its lease lapsed"
    # Bounded cost: the regular rounds (two or three in that time), one takeover round for the lapse the last
    # renewal moved on, one for the lapse itself; never a round per poll of the clock.
    assert took <= 6, f"{took} rounds"


def test_takeover_rounds_batch_close_expiries_and_ignore_lapsed_ones() -> None:
    assert takeover_at(100.0, [], batch=0.5, margin=0.1) is None
    assert takeover_at(100.0, [-1.0, -0.01], batch=0.5, margin=0.1) is None  # lapsed: free, or another's to take
    assert takeover_at(100.0, [2.0, 2.3, 2.4, 9.0], batch=0.5, margin=0.1) == pytest.approx(102.5)  # one batch
    assert takeover_at(100.0, [9.0, 2.0], batch=0.5, margin=0.1) == pytest.approx(102.1)
    assert expiry_margin(30.0) == 0.5 and expiry_margin(3.0) == 0.06 and expiry_margin(0.5) == 0.05


def test_healthy_peers_cost_no_extra_rounds(ledger_dsn: str, coordinators: list[ReplicaCoordinator]) -> None:
    """Peers that renew on time never lapse: no takeover round is due, each replica runs its regular ticks."""
    cs = [start(coordinators, ledger_dsn, f"r{i}", duration=3.0) for i in range(3)]
    for c in cs:
        c.round_interval = 0.3
    wait_for(lambda: partitioned(cs, [2, 2, 2]), what="2-2-2")
    before = [c.rounds for c in cs]
    wait_for(lambda: cs[0].rounds >= before[0] + 10, what="ten rounds of r0")
    ran = [c.rounds - b for c, b in zip(cs, before, strict=True)]
    assert all(r <= 12 for r in ran), ran  # ten ticks each (give or take the start), no takeover rounds
