"""Readiness of a replica that takes instances over (issue 21): an instance's start-up grace counts from the moment
this replica took its lease, not from the process start.

Why it matters: Kubernetes takes a replica out of the Service while ``/ready`` answers 503. A replica that has run
for hours and then takes over a dead replica's instance has not polled it yet; counting the grace from its process
start made it fail ``/ready`` during every failover, exactly when it is needed. The grace must still end: a taken
instance that is not polled successfully within 3 intervals of the takeover fails ``/ready``.

In process: the receiver (its coordinator, its health server on loopback) and a bare coordinator as the other
replica, stopped without leaving (as a kill -9 would: its leases lapse). The receiver's clock is the wall clock
plus an offset the test moves, so "hours later" and "past the grace" take no waiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.emitter import build_exporter
from otel_llm_receiver.health import HealthServer
from otel_llm_receiver.ledger.postgres import leases
from otel_llm_receiver.ledger.postgres.connect import connect
from otel_llm_receiver.replicas import LEASE_DURATION_ENV, ReplicaCoordinator
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import Database
from tests.support.waiting import wait_for

INSTANCES = ("demo/a", "demo/b")
LEASE = 1.0
INTERVAL = 1.0  # so the grace is 3s of the receiver's clock


def _config(dsn: str, sink: OTLPSink) -> Config:
    return parse_config({
        "storage": {"backend": "postgresql", "dsn": dsn},
        "health": {"endpoint": ""},
        "exporters": {"otlphttp": {"endpoint": sink.http_endpoint, "timeout": "2s"}},
        "providers": {name: {"backfill": "2h", "seed": i + 1, "tenant": name.split("/")[1],
                             "collection_interval": f"{INTERVAL:g}s"}
                      for i, name in enumerate(INSTANCES)},
        "pricing": {"genai_prices": False},
    })


class Clock:
    """The wall clock plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def ready(server: HealthServer) -> int:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def receiver(pg_database: Database, sink: OTLPSink, clock: Clock, monkeypatch: pytest.MonkeyPatch,
             ) -> Iterator[Receiver]:
    monkeypatch.setenv(LEASE_DURATION_ENV, str(LEASE))
    config = _config(pg_database.dsn, sink)
    r = Receiver(config, exporters=[(cfg, build_exporter(cfg)) for cfg in config.exporters], clock=clock)
    try:
        yield r
    finally:
        asyncio.run(r.aclose())


def test_ready_stays_200_through_a_takeover_and_fails_once_the_taken_instance_is_past_its_grace(
    receiver: Receiver, pg_database: Database, clock: Clock,
) -> None:
    replicas = receiver.replicas
    assert replicas is not None
    replicas.round_interval = 0.1
    other = ReplicaCoordinator(pg_database.dsn, INSTANCES, LEASE, replica="aaa-other", round_interval=0.1)
    other.run_round()  # the other replica holds everything first; the receiver joins and gets its share
    server = HealthServer("127.0.0.1:0", receiver.health_report).start()
    try:
        replicas.start()
        other.start()
        wait_for(lambda: len(replicas.held()) == 1 and len(other.held()) == 1, what="one instance each")
        mine, theirs = next(iter(replicas.held())), next(iter(other.held()))
        # Long after this process started (past any start-up grace), the receiver polls its own instance.
        clock.offset += 20 * INTERVAL
        assert asyncio.run(receiver.poll(mine)).ok
        assert ready(server) == 200

        # The other replica dies (no clean leave: its leases lapse). /ready is sampled all through the takeover.
        statuses: list[tuple[bool, int]] = []  # (the receiver held both when sampled, /ready's status)
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                held_both = set(replicas.held()) == set(INSTANCES)
                statuses.append((held_both, ready(server)))

        sampler = threading.Thread(target=sample, name="ready-sampler")
        other.stop(leave=False)
        taken_at = time.time()
        sampler.start()
        try:
            wait_for(lambda: set(replicas.held()) == set(INSTANCES), 30, "the receiver to take the lapsed instance")
            # Keep sampling for a while after the takeover, inside the taken instance's grace.
            wait_for(lambda: sum(1 for held, _ in statuses if held) >= 5, 30, "samples after the takeover")
        finally:
            sampling.set()
            sampler.join(30)
        after = [status for held, status in statuses if held]
        assert after and all(status == 200 for _, status in statuses), statuses
        _, doc = receiver.health_report()
        instances = doc["instances"]
        assert isinstance(instances, dict)
        entry = instances[theirs]
        assert entry["held"] and entry["healthy"] and entry["last_success_unix"] is None
        assert entry["held_since_unix"] is not None and entry["held_since_unix"] >= taken_at + clock.offset - 1

        # Past the taken instance's grace (3 intervals from the takeover) without a successful poll: 503, even
        # though the receiver's own instance is fresh.
        clock.offset += 4 * INTERVAL
        assert asyncio.run(receiver.poll(mine)).ok
        assert ready(server) == 503
        healthy, doc = receiver.health_report()
        instances = doc["instances"]
        assert isinstance(instances, dict)
        assert not healthy and not instances[theirs]["healthy"] and instances[mine]["healthy"]
        # Its first poll under the new lease makes the replica ready again.
        assert asyncio.run(receiver.poll(theirs)).ok
        assert ready(server) == 200
    finally:
        server.stop()
        other.stop(leave=False)


def test_an_instance_retaken_after_a_lapse_starts_its_health_afresh(
    receiver: Receiver, pg_database: Database, clock: Clock,
) -> None:
    """A lease this replica held long ago and takes again: its old last success and data lag describe polls of an
    earlier tenure, so they are not shown (nor exported as gauges) until the new tenure's first poll; the grace
    counts from the new tenure."""
    replicas = receiver.replicas
    assert replicas is not None
    replicas.round_interval = 0.1
    replicas.start()
    wait_for(lambda: set(replicas.held()) == set(INSTANCES), what="both leases")
    name = INSTANCES[0]
    assert asyncio.run(receiver.poll(name)).ok
    status = next(s for s in receiver.health.statuses() if s.name == name)
    assert status.last_success_unix is not None and status.newest_bucket_end is not None
    epoch = replicas.held()[name].epoch
    clock.offset += 20 * INTERVAL  # much later, the lease lapses and this replica takes it again
    with connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("UPDATE leases SET expires_at = clock_timestamp() - interval '1 second', holder = NULL"
                     " WHERE name = %s", (name,))
        assert leases.current(conn, name) is not None
    wait_for(lambda: name in replicas.held() and replicas.held()[name].epoch > epoch, 30, "the lease retaken")
    _healthy, doc = receiver.health_report()
    instances = doc["instances"]
    assert isinstance(instances, dict)
    entry = instances[name]
    assert entry["healthy"] and entry["last_success_unix"] is None and entry["data_lag_s"] is None
    reading = receiver.health.reading()
    assert name not in reading.last_success and name not in reading.data_lag
    assert reading.polls  # the process's own counters keep counting
    assert asyncio.run(receiver.poll(name)).ok
    assert name in receiver.health.reading().last_success
