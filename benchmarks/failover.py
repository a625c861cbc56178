"""Failover of replicas on a shared PostgreSQL ledger (issue 21): from kill -9 of a lease holder to the first
successful poll of its instances by another replica.

Run by hand: ``python benchmarks/failover.py [--repeat 3] [--interval 10s] [--lease 30s]``. It starts a throw-away
PostgreSQL cluster (tests/support/postgres.py), six fake OpenAI organisations on loopback, an OTLP sink, and per
run a fresh database with two ``otel-llm-receiver run`` replicas (forked from a preloaded server, as the fault
tests do) sharing six instances, 3 each. Once both poll, the holder of three is killed with SIGKILL; the figure is
the time until every one of its instances has a poll applied by the survivor (the poll cursor's ``updated_ns``
in the ledger, written in the same transaction as the poll's records). Medians of ``--repeat`` (>= 3) runs.

The lease duration is the config's (default 30s; ``--lease`` below 5s uses the test hook); the goal is
``lease_duration + one collection_interval``: the lease must lapse, then the survivor's next round (every third of
the lease) takes the instance and its poll loop starts at once. Wall-clock figures: the machine's load moves
them by the length of one round at most.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
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


def one_run(world: World, lease: float, interval: float) -> float:
    """Start two replicas, wait until they share the six instances and poll them, kill the holder of three: the
    seconds until the survivor has polled each of them."""
    for name in ("a", "b"):
        world.start(name)
    settle = 3 * lease + 4 * interval + 60

    def shared() -> bool:
        held = world.holder_names()
        polled = world.cursor_times()
        return (set(held) == set(INSTANCES) and sorted(list(held.values()).count(r) for r in ("a", "b")) == [3, 3]
                and set(polled) == set(INSTANCES))

    wait_for(shared, settle, "two replicas sharing six instances, each polled")
    orphans = {i for i, h in world.holder_names().items() if h == "a"}
    killed_ns = time.time_ns()
    world.kill("a")
    killed = time.monotonic()
    wait_for(lambda: all(world.cursor_times()[i] > killed_ns for i in orphans), 2 * lease + 3 * interval + 60,
             "the survivor's first polls of the killed replica's instances")
    seconds = time.monotonic() - killed
    world.kill_all()
    return seconds


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
    figures: list[float] = []
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp, running_cluster() as cluster, OTLPSink() as sink:
        fakes = [FakeOpenAI(page_buckets=8) for _ in INSTANCES]
        server = ForkServer(Path(__file__).resolve().parent.parent)
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
                    seconds = one_run(world, lease, interval)
                finally:
                    world.kill_all()
                figures.append(seconds)
                print(f"run {run + 1}: kill -9 -> first polls by the survivor: {seconds:.2f}s", flush=True)
        finally:
            server.close()
            for fake in fakes:
                fake.api.close()
    goal = lease + interval
    print(table([[f"{lease:g}s", f"{interval:g}s", str(len(figures)), f"{statistics.median(figures):.2f}",
                  f"{min(figures):.2f}", f"{max(figures):.2f}", f"<= {goal:g}",
                  "met" if statistics.median(figures) <= goal else "NOT met"]],
                ["lease", "interval", "runs", "median s", "min s", "max s", "goal s", "goal"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
