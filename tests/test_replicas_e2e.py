"""Replicas on a shared PostgreSQL ledger, as real processes (issue 21): `otel-llm-receiver run` replicas poll six
instances of the fake OpenAI API and export to a real OTLP sink; the ledger must end equal to the fake's ground
truth, to the token and the nano-dollar, whatever is done to the replicas.

- three replicas, six instances: each instance held by exactly one replica (2-2-2), totals exact, every
  instance's series exported with the ledger's id as ``service.instance.id``;
- a holder killed with -9: another replica polls its instances after the lease duration; the exported series
  keep their start times and cumulative values (no new series, no reset);
- (slow) a kill -9 storm: 30 kills of random replicas, each restarted; totals exact, start times unchanged,
  failover times printed;
- SIGSTOP a holder past its lease, another takes over, SIGCONT: its late write is rejected (one log line,
  ``llm.receiver.stale_writes``), totals exact;
- PostgreSQL restarted while replicas poll: one line each, they catch up, nothing lost.

The lease duration is 1.5s through the test hook (the config's minimum is 5s). Waits poll conditions with
deadlines; the sleeps of the storm are its seeded kill schedule.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openai import FakeOpenAI
from tests.support.fork_server import ForkServer
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import Database, PostgresCluster
from tests.support.replica_world import (
    INSTANCES,
    LEADER,
    World,
    exact,
    openai_fakes,
    seed_fake,
    truth,
    write_config,
)
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
LEASE = 1.5
KILLS = 30
SEED = 2121


@pytest.fixture
def fakes() -> Iterator[list[FakeOpenAI]]:
    """One fake OpenAI organisation per instance, all seeded alike (the same ground truth)."""
    with openai_fakes(len(INSTANCES)) as made:
        yield made


def seed_all(fakes: list[FakeOpenAI]) -> tuple[int, dict[str, dict[str, dict[tuple[str, ...], int]]]]:
    now = int(time.time())
    usage_start = 0
    for f in fakes:
        usage_start = seed_fake(f, now, seed=SEED)
    return usage_start, expected_of(fakes, usage_start)


def expected_of(fakes: list[FakeOpenAI], usage_start: int) -> dict[str, dict[str, dict[tuple[str, ...], int]]]:
    return {i: truth(f, usage_start) for i, f in zip(INSTANCES, fakes, strict=True)}


def grow(fake: FakeOpenAI, n: int) -> None:
    """The current hour grows at one organisation: a revised bucket for whoever polls it next."""
    now = int(time.time())
    fake.add_usage("completions", now - now % 3600, {"project_id": "proj_000", "model": "gpt-test-0",
                                                     "batch": False, "service_tier": "default"},
                   text_in=1000 + n, text_out=7, requests=1)


@pytest.fixture
def world(tmp_path: Path, fakes: list[FakeOpenAI], sink: OTLPSink, pg_database: Database) -> Iterator[World]:
    server = ForkServer(ROOT)
    w = World(tmp_path, pg_database.dsn, write_config(tmp_path / "config.yaml", fakes, sink), server, LEASE)
    try:
        yield w
    finally:
        try:
            w.kill_all()
        finally:
            server.close()


def balanced(world: World, replicas: int) -> bool:
    """Every instance held, by ``replicas`` replicas, evenly."""
    held = world.holder_names()
    if set(held) != set(INSTANCES):
        return False
    counts = sorted(list(held.values()).count(r) for r in set(held.values()))
    share = len(INSTANCES) // replicas
    return counts == [share] * replicas


def exported_by_tenant(sink: OTLPSink) -> dict[str, dict[frozenset[tuple[str, object]], tuple[int, int]]]:
    """llm.usage.tokens as the sink last saw them: tenant -> series -> (value, start time)."""
    out: dict[str, dict[frozenset[tuple[str, object]], tuple[int, int]]] = {}
    for attrs, point in sink.number_points("llm.usage.tokens").items():
        tenant = str(dict(attrs).get("llm.tenant"))
        out.setdefault(tenant, {})[attrs] = (int(point.value), point.start_time_unix_nano)
    return out


def test_three_replicas_share_six_instances_and_count_exactly(
    world: World, fakes: list[FakeOpenAI], sink: OTLPSink,
) -> None:
    _, expected = seed_all(fakes)
    for name in ("r0", "r1", "r2"):
        world.start(name)
    wait_for(lambda: balanced(world, 3), 60, "2-2-2 over three replicas")
    wait_for(lambda: exact(world, expected), 60, "every instance's totals to equal the fake's")
    leaders = world.query("SELECT holder FROM leases WHERE name = %s AND expires_at > clock_timestamp()", (LEADER,))
    assert len(leaders) == 1 and str(leaders[0][0]).split("-")[0] in ("r0", "r1", "r2")
    # Every instance's series reach the sink, under the ledger's id whatever replica sends them.
    wait_for(lambda: set(exported_by_tenant(sink)) >= {f"t{i}" for i in range(len(INSTANCES))}, 30,
             "every tenant's tokens exported")
    assert sink.resource_attributes()["service.instance.id"] == world.ledger_id()
    assert balanced(world, 3)  # still: no replica idles, none holds more than its share
    world.stop_all()  # clean stops: every lease released at once
    assert world.holders() == {}
    assert exact(world, expected)


def test_a_killed_holders_instances_move_and_their_series_keep_start_and_value(
    world: World, fakes: list[FakeOpenAI], sink: OTLPSink,
) -> None:
    _, expected = seed_all(fakes)
    for name in ("r0", "r1"):
        world.start(name)
    wait_for(lambda: balanced(world, 2) and exact(world, expected), 60, "3-3 and exact totals")
    wait_for(lambda: len(exported_by_tenant(sink)) == len(INSTANCES), 30, "every tenant exported")
    victim = "r0"
    orphans = {i for i, h in world.holder_names().items() if h == victim}
    tenants = {f"t{INSTANCES.index(i)}" for i in orphans}
    before = {t: s for t, s in exported_by_tenant(sink).items() if t in tenants}
    polled_before = world.cursor_times()
    killed_ns = time.time_ns()
    world.kill(victim)
    killed = time.monotonic()
    wait_for(lambda: all(world.cursor_times()[i] > killed_ns for i in orphans)
             and set(world.holder_names().values()) == {"r1"}, 30, "r1 to poll the killed replica's instances")
    failover = time.monotonic() - killed
    assert all(polled_before[i] < killed_ns for i in orphans)
    # The survivor exports the orphans' series: same series (attributes), same start times, same or higher values.
    fresh = time.time_ns()
    wait_for(lambda: all(p.time_unix_nano > fresh for a, p in sink.number_points("llm.usage.tokens").items()
                         if dict(a).get("llm.tenant") in tenants), 30, "the survivor's exports of the orphans")
    after = exported_by_tenant(sink)
    for tenant, series in before.items():
        assert set(after[tenant]) == set(series), "a failover must create no new series"
        for attrs, (value, start) in series.items():
            assert after[tenant][attrs][1] == start, "the start time must not change"
            assert after[tenant][attrs][0] >= value, "a cumulative value must not go back"
    assert exact(world, expected)
    print(f"failover after kill -9 with lease_duration {LEASE}s, collection_interval 1s: {failover:.2f}s")
    assert failover < LEASE + 1.0 + 5.0  # lease + one interval, with room for a loaded machine


@pytest.mark.slow
def test_kill_9_storm_over_three_replicas_keeps_totals_and_start_times(
    world: World, fakes: list[FakeOpenAI],
) -> None:
    rng = random.Random(SEED)
    usage_start, _ = seed_all(fakes)
    names = ["r0", "r1", "r2"]
    for name in names:
        world.start(name)
    wait_for(lambda: len(world.holders()) == len(INSTANCES), 60, "every instance held")
    starts: dict[int, tuple[str, str, int]] = {}
    failovers: list[float] = []
    kills = 0
    t0 = time.monotonic()
    while kills < KILLS and time.monotonic() - t0 < 140:
        time.sleep(rng.uniform(0.0, 0.8))  # the kill schedule (seeded): at any moment of a poll or an export
        holders = world.holder_names()
        victim = rng.choice(names)
        orphans = {i for i, h in holders.items() if h == victim}
        killed_ns = time.time_ns()
        world.kill(victim)
        killed = time.monotonic()
        kills += 1
        world.start(victim)  # restarted at once under a new replica id: it competes for the orphans too
        if orphans:
            def taken_over(orphans: set[str] = orphans, killed_ns: int = killed_ns) -> bool:
                polled = world.cursor_times()
                return all(polled.get(i, 0) > killed_ns for i in orphans)

            wait_for(taken_over, 30, f"kill {kills}: the orphans polled again")
            failovers.append(time.monotonic() - killed)
        for sid, instance, metric, attrs, start, _, _ in world.series():
            identity = (instance, metric + str(sorted(attrs.items())), start)
            assert starts.setdefault(sid, identity) == identity, f"series {sid} changed after kill {kills}"
        if kills % 10 == 0:
            grow(fakes[rng.randrange(len(fakes))], kills)
    storm = time.monotonic() - t0
    expected = expected_of(fakes, usage_start)
    wait_for(lambda: exact(world, expected), 60, "totals to equal the fakes' after the storm")
    world.stop_all()
    assert exact(world, expected)
    after = {sid: (instance, metric + str(sorted(attrs.items())), start)
             for sid, instance, metric, attrs, start, _, _ in world.series()}
    assert all(after[sid] == identity for sid, identity in starts.items()), "start times must never change"
    assert kills == KILLS and len(failovers) >= 10, (kills, len(failovers))
    print(f"kill -9 storm: {kills} kills in {storm:.1f}s over 3 replicas, 6 instances; failover (kill -> orphans "
          f"polled again) median {statistics.median(failovers):.2f}s, max {max(failovers):.2f}s over "
          f"{len(failovers)} kills that orphaned instances (lease {LEASE}s, interval 1s); totals exact")


def test_a_paused_holders_late_write_is_rejected(world: World, fakes: list[FakeOpenAI], sink: OTLPSink) -> None:
    """r0 is SIGSTOPped mid-poll (its request to one instance's API stalled), r1 takes its instances over after
    the lease and polls them; r0 wakes up (SIGCONT), its stalled poll completes and tries to apply: the fence
    refuses it (one line, counted in llm.receiver.stale_writes), nothing of it is applied, totals stay exact."""
    usage_start, expected = seed_all(fakes)
    for name in ("r0", "r1"):
        world.start(name)
    wait_for(lambda: balanced(world, 2) and exact(world, expected), 60, "3-3 and exact totals")
    paused = world.replicas["r0"]
    orphans = {i for i, h in world.holder_names().items() if h == "r0"}
    stalled = sorted(orphans)[0]
    fake = fakes[INSTANCES.index(stalled)]
    path = "/v1/organization/usage/completions"
    seen = len(fake.api.requests_to(path))
    release = threading.Event()
    fake.api.fail_next(path, 500, hang=release)  # r0's next poll of it waits here (then retries: a 5xx)
    try:
        wait_for(lambda: len(fake.api.requests_to(path)) > seen, 30, "r0's poll to reach the stalled API")
        os.kill(paused.pid, signal.SIGSTOP)
        paused.stopped = True
        stopped_ns = time.time_ns()
        grow(fake, 4242)  # what r1 reads (and r0's stalled poll will read too, too late)
        expected = expected_of(fakes, usage_start)
        wait_for(lambda: all(world.cursor_times()[i] > stopped_ns for i in orphans)
                 and set(world.holder_names().values()) == {"r1"} and exact(world, expected), 30,
                 "r1 to take over r0's instances and count the growth")
    finally:
        release.set()  # the stalled request answers (a 500; the provider retries and reads the data)
    os.kill(paused.pid, signal.SIGCONT)
    paused.stopped = False
    stale = wait_for(lambda: [r for r in world.logs("r0") if "stale lease" in str(r.get("message", ""))], 30,
                     "r0's late write to be rejected")
    # The stalled poll, and any other of r0's polls that was in flight when it was stopped: all r0's instances.
    wait_for(lambda: stalled in {r.get("instance") for r in world.logs("r0") if "stale lease" in r["message"]}, 30,
             "the stalled poll's write to be rejected")
    assert {r.get("instance") for r in stale} <= orphans, stale
    assert "write rejected" in stale[0]["message"] and stale[0].get("level", "").lower().startswith("warn")
    wait_for(lambda: any(p.value >= 1 and dict(a).get("llm.source") == stalled
                         and dict(a).get("llm.receiver.replica") == "r0"  # r0's own counter, its own series
                         for a, p in sink.number_points("llm.receiver.stale_writes").items()), 30,
             "llm.receiver.stale_writes exported")
    wait_for(lambda: balanced(world, 2), 30, "r0 to rejoin and take its share again")
    assert exact(world, expected)
    world.stop_all()
    assert exact(world, expected)


def test_postgresql_restarted_mid_poll_costs_nothing(
    world: World, fakes: list[FakeOpenAI], postgres_cluster: PostgresCluster, pg_database: Database,
) -> None:
    usage_start, expected = seed_all(fakes)
    for name in ("r0", "r1"):
        world.start(name)
    wait_for(lambda: balanced(world, 2) and exact(world, expected), 60, "3-3 and exact totals")
    # A fast shutdown: in-flight transactions aborted, every connection cut. (Not "immediate": the test cluster runs
    # with synchronous_commit off, so a crash there would lose commits a real server would have kept.)
    postgres_cluster.restart(mode="fast")
    grow(fakes[0], 777)
    grow(fakes[5], 778)
    expected = expected_of(fakes, usage_start)
    restarted_ns = time.time_ns()
    wait_for(lambda: balanced(world, 2) and all(t > restarted_ns for t in world.cursor_times().values()), 60,
             "both replicas to hold and poll every instance again")
    wait_for(lambda: exact(world, expected), 60, "exact totals after the restart")
    records = world.logs()
    rounds = [r for r in records if "lease round failed" in str(r.get("message", ""))]
    assert 1 <= len(rounds) <= 2, rounds  # one line per replica for the outage, not one per retry
    assert not any(pg_database.password in str(r) for r in records)
    world.stop_all()
    assert exact(world, expected)
