"""Failover of replicas on a shared PostgreSQL ledger (issue 21): from kill -9 of a lease holder to the first
successful poll of its instances by another replica.

Run by hand: ``python benchmarks/failover.py [--repeat 3] [--interval 10s] [--lease 30s]``. It starts a throw-away
PostgreSQL cluster (tests/support/postgres.py), six fake OpenAI organisations on loopback, an OTLP sink, and per
run a fresh database with two ``otel-llm-receiver run`` replicas (forked from a preloaded server, as the fault
tests do) sharing six instances, 3 each. Once both poll, the holder of three is killed with SIGKILL; the figure is
the time until every one of its instances has a poll applied by the survivor (the poll cursor's ``updated_ns``
in the ledger, written in the same transaction as the poll's records). Medians of ``--repeat`` (>= 3) runs; the kill lands at a
random point of a lease round, and the two replicas start a random part of a round apart (seeded). Beside it, what the survivor adds to the lapse: from the last of the
killed replica's leases lapsing to the survivor taking them (the database's clock), and to its first polls.

The lease duration is the config's (default 30s; ``--lease`` below 5s uses the test hook); the goal is
``lease_duration + one collection_interval``. The killed replica's leases lapse ``lease_duration`` after its last
renewal (renewals come every third of it, so 2/3 to all of ``lease_duration`` after the kill); the survivor runs a
round right as they lapse (it read their expiry on the database's clock at its previous round), takes the
instances and polls them at once. So the figure is between about 2/3 and all of ``lease_duration``, plus one
poll. Wall-clock figures: the machine's load moves them by a poll's length.

``BENCH_CODE=/path/to/checkout`` measures that checkout's receiver: the replicas are forked from a server started
in it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import CODE, machine, table  # first: BENCH_CODE decides what is imported
from otel_llm_receiver.durations import parse_duration
from tests.fakes.openai import FakeOpenAI
from tests.support.fork_server import ForkServer
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import running_cluster
from tests.support.replica_world import INSTANCES, World, seed_fake, write_config
from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Run:
    """One failover: seconds from the kill to the survivor's first polls of all the killed replica's instances
    (the goal's figure), and from the last of their leases' lapse to the survivor's last takeover of them (the
    database's clock) and to those first polls (what the survivor adds to the lapse)."""

    failover: float
    lapse_to_takeover: float
    lapse_to_polls: float


def one_run(world: World, lease: float, interval: float, offset: float, phase: float) -> Run:
    """Start two replicas ``offset`` seconds apart, wait until they share the six instances and poll them, wait
    ``phase`` seconds, kill the holder of three: the seconds until the survivor has polled each of them.

    Why ``offset`` and ``phase`` (each drawn from one lease round): replicas started together tick their lease
    rounds almost in step, so the survivor's regular round would always come right after the killed replica's
    leases lapse; in production replicas start at unrelated times. And "as soon as they share" falls right after
    a renewal; the pause sets where in the round the kill lands (and so when its leases lapse)."""
    world.start("a")
    time.sleep(offset)  # the scenario: the replicas' rounds out of step (not a synchronisation)
    world.start("b")
    settle = 3 * lease + 4 * interval + 60

    def shared() -> bool:
        held = world.holder_names()
        polled = world.cursor_times()
        return (set(held) == set(INSTANCES) and sorted(list(held.values()).count(r) for r in ("a", "b")) == [3, 3]
                and set(polled) == set(INSTANCES))

    wait_for(shared, settle, "two replicas sharing six instances, each polled")
    time.sleep(phase)  # the scenario: where in the round the kill lands (not a synchronisation)
    orphans = {i for i, h in world.holder_names().items() if h == "a"}
    killed_ns = time.time_ns()
    world.kill("a")
    killed = time.monotonic()
    # Read once the holder is dead (it renews no more) and long before its leases lapse.
    lapses = [int(e) for (e,) in world.query(
        "SELECT EXTRACT(EPOCH FROM expires_at) * 1e9 FROM leases WHERE name = ANY(%s)", (sorted(orphans),))]
    wait_for(lambda: all(world.cursor_times()[i] > killed_ns for i in orphans), 2 * lease + 3 * interval + 60,
             "the survivor's first polls of the killed replica's instances")
    seconds = time.monotonic() - killed
    taken = [int(a) for (a,) in world.query(
        "SELECT EXTRACT(EPOCH FROM acquired_at) * 1e9 FROM leases WHERE name = ANY(%s)", (sorted(orphans),))]
    polled = max(world.cursor_times()[i] for i in orphans)  # the same host's clock as the database's
    world.kill_all()
    return Run(seconds, (max(taken) - max(lapses)) / 1e9, (polled - max(lapses)) / 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", default="10s", help="collection_interval of every instance (default 10s)")
    parser.add_argument("--lease", default="30s", help="storage.lease_duration (default 30s, the config's)")
    args = parser.parse_args()
    repeat = max(3, args.repeat)
    interval, lease = parse_duration(args.interval), parse_duration(args.lease)
    print(machine())
    print(f"code: {CODE}")
    runs: list[Run] = []
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp, running_cluster() as cluster, OTLPSink() as sink:
        fakes = [FakeOpenAI(page_buckets=8) for _ in INSTANCES]
        server = ForkServer(CODE)  # the replicas run the measured checkout's code
        try:
            now = int(time.time())
            for fake in fakes:
                seed_fake(fake, now, seed=7)
            for run in range(repeat):
                root = Path(tmp) / f"run{run}"
                root.mkdir()
                database = cluster.create_database("failover")
                hooked = lease < 5  # below the config's minimum: the test hook
                config = write_config(root / "config.yaml", fakes, sink, interval=args.interval,
                                      lease=None if hooked else args.lease)
                world = World(root, database.dsn, config, server, lease if hooked else None)
                try:
                    one = one_run(world, lease, interval, rng.uniform(0, lease / 3), rng.uniform(0, lease / 3))
                finally:
                    world.kill_all()
                runs.append(one)
                print(f"run {run + 1}: kill -9 -> first polls by the survivor: {one.failover:.2f}s; lease lapse -> "
                      f"takeover {one.lapse_to_takeover:.2f}s, -> first polls {one.lapse_to_polls:.2f}s", flush=True)
        finally:
            server.close()
            for fake in fakes:
                fake.api.close()
    goal = lease + interval
    figures = [r.failover for r in runs]
    takeovers = [r.lapse_to_takeover for r in runs]
    polls = [r.lapse_to_polls for r in runs]
    print(table([[f"{lease:g}s", f"{interval:g}s", str(len(figures)), f"{statistics.median(figures):.2f}",
                  f"{min(figures):.2f}", f"{max(figures):.2f}", f"<= {goal:g}",
                  "met" if max(figures) <= goal else "NOT met",
                  f"{statistics.median(takeovers):.2f} ({max(takeovers):.2f})",
                  f"{statistics.median(polls):.2f} ({max(polls):.2f})"]],
                ["lease", "interval", "runs", "median s", "min s", "max s", "goal s", "goal (every run)",
                 "lapse->takeover s (max)", "lapse->polls s (max)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
