"""A takeover is polled at once (issue 21): a replica that takes an instance over polls it from the shared cursor
as soon as its lease is taken, not after the collection interval its poll loop was waiting out.

Why it matters: the failover time is the lease's lapse plus the wait for the new holder's first poll. An instance
this replica polled before (it held it alone, then handed it to a joining replica by the fair share) has a poll
loop sleeping out a collection interval; without being woken, that loop would poll the instance it took back up
to a whole interval later (here 60s).

In process: the receiver with its coordinator and poll loops (``run_forever`` on a thread of its own), and a bare
coordinator as the other replica, stopped without leaving (as a kill -9 would: its leases lapse).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.emitter import build_exporter
from otel_llm_receiver.ledger.postgres.connect import connect
from otel_llm_receiver.replicas import LEASE_DURATION_ENV, ReplicaCoordinator
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import Database
from tests.support.waiting import wait_for

INSTANCES = ("demo/a", "demo/b")
LEASE = 2.0
INTERVAL = 60.0  # far longer than the test: a poll after the takeover can only be the takeover's


def _config(dsn: str, sink: OTLPSink) -> Config:
    return parse_config({
        "storage": {"backend": "postgresql", "dsn": dsn},
        "health": {"endpoint": ""},
        "export_interval": "60s",
        "exporters": {"otlphttp": {"endpoint": sink.http_endpoint, "timeout": "2s"}},
        "providers": {name: {"backfill": "2h", "seed": i + 1, "tenant": name.split("/")[1],
                             "collection_interval": f"{INTERVAL:g}s"}
                      for i, name in enumerate(INSTANCES)},
        "pricing": {"genai_prices": False},
    })


def polled(dsn: str) -> dict[str, int]:
    """instance -> when its cursors were last written (ns): the last applied poll."""
    with connect(dsn, autocommit=True) as conn:
        return {str(i): int(t) for i, t in conn.execute("SELECT instance, max(updated_ns) FROM cursors GROUP BY instance")}


@pytest.fixture
def running(pg_database: Database, sink: OTLPSink, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """The receiver's ``run_forever`` on a thread; stopped (and its loop closed) at the end."""
    monkeypatch.setenv(LEASE_DURATION_ENV, str(LEASE))
    config = _config(pg_database.dsn, sink)
    receiver = Receiver(config, exporters=[(cfg, build_exporter(cfg)) for cfg in config.exporters])
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(loop.run_until_complete(receiver.run_forever(stop))),
                              name="receiver")
    thread.start()
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.run_until_complete(receiver.aclose())
        loop.close()
    assert outcome == [0]


def test_an_instance_taken_back_is_polled_at_once_not_after_its_collection_interval(
    running: Receiver, pg_database: Database,
) -> None:
    replicas = running.replicas
    assert replicas is not None
    wait_for(lambda: set(polled(pg_database.dsn)) == set(INSTANCES), what="the first polls of both instances")
    # Another replica joins: the fair share hands it one instance (whose poll loop here now sleeps out 60s).
    other = ReplicaCoordinator(pg_database.dsn, INSTANCES, LEASE, replica="other", round_interval=LEASE / 3)
    other.start()
    try:
        wait_for(lambda: len(replicas.held()) == 1 and len(other.held()) == 1, what="one instance each")
        theirs = next(iter(other.held()))
        before = polled(pg_database.dsn)[theirs]
        other.stop(leave=False)  # dies: its lease lapses after LEASE
        died = time.monotonic()
        wait_for(lambda: polled(pg_database.dsn)[theirs] > before, LEASE + 10,
                 "the receiver's poll of the instance it took back")
        took = time.monotonic() - died
    finally:
        other.stop(leave=False)
    assert theirs in replicas.held()
    # The lapse (at most LEASE), the takeover round and one poll: far below the 60s interval it was waiting out.
    assert took < LEASE + 5, f"first poll {took:.2f}s after the other replica died"
