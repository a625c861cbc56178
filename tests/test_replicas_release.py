"""The fair share never wastes a poll in flight (issue 21): when a replica joins and another must hand it an
instance, the instance it hands over is one it is not polling; when every surplus instance is being polled, the
release waits for the poll in flight, which commits (its records land, once), and then the instance moves. The
wait is bounded by ``lease_duration``: a poll still in flight by then is handed over anyway and the fence rejects
its write (logged at info, not a stale write: nothing was paused).

In process: two receivers (each with its own coordinator) on one PostgreSQL ledger, polling two instances of the
fake OpenAI API; a poll is held in flight by holding the fake's answer to its first usage request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.emitter import build_exporter
from otel_llm_receiver.replicas import LEASE_DURATION_ENV
from otel_llm_receiver.scheduler import PollOutcome, Receiver
from tests.fakes.api import Request, Response
from tests.fakes.openai import ADMIN_KEY, FakeOpenAI
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import Database
from tests.support.replica_world import exact, openai_fakes, seed_fake, truth
from tests.support.waiting import wait_for

INSTANCES = ("openai/p0", "openai/p1")
LEASE = 2.0
USAGE = "/v1/organization/usage/completions"
SEED = 2122
T = TypeVar("T")


class Loop:
    """One event loop on a thread of its own for both receivers: their providers' HTTP clients live on it, so
    a poll started from the test, or in flight while the test goes on, always runs where its connections are."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="receivers-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Gate:
    """Holds the fake's answer to the next usage request until opened: the poll that sent it is in flight."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()
        self._armed = True
        fake.api.observers.append(self._observe)

    def _observe(self, request: Request, _response: Response) -> None:
        if request.path == USAGE and self._armed:
            self._armed = False
            self.reached.set()
            self.opened.wait(30)

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def fakes() -> Iterator[list[FakeOpenAI]]:
    with openai_fakes(len(INSTANCES)) as made:
        yield made


def _config(dsn: str, sink: OTLPSink, fakes: list[FakeOpenAI], *, chunked: bool) -> Config:
    """Steady polls of one chunk each, or (``chunked``) a two-day backfill read a day at a time."""
    chunking = {"backfill": "48h", "backfill_chunk": "1d"} if chunked else {"backfill_chunk": "7d"}
    return parse_config({
        "storage": {"backend": "postgresql", "dsn": dsn},
        "health": {"endpoint": ""},
        "exporters": {"otlphttp": {"endpoint": sink.http_endpoint, "timeout": "2s"}},
        "providers": {name: {"admin_key": ADMIN_KEY, "tenant": f"t{i}", "endpoint": fakes[i].base_url,
                             "retry_initial_interval": "10ms", **chunking}
                      for i, name in enumerate(INSTANCES)},
        "pricing": {"genai_prices": False},
    })


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def chunked() -> bool:
    return False


@pytest.fixture
def receivers(pg_database: Database, sink: OTLPSink, fakes: list[FakeOpenAI], monkeypatch: pytest.MonkeyPatch,
              loop: Loop, chunked: bool) -> Iterator[tuple[Receiver, Receiver]]:
    monkeypatch.setenv(LEASE_DURATION_ENV, str(LEASE))
    config = _config(pg_database.dsn, sink, fakes, chunked=chunked)
    made = [Receiver(config, exporters=[(cfg, build_exporter(cfg)) for cfg in config.exporters]) for _ in "ab"]
    for r in made:
        assert r.replicas is not None
        r.replicas.round_interval = 0.1
    try:
        yield made[0], made[1]
    finally:
        for r in made:
            loop.run(r.aclose())


def _grow(fake: FakeOpenAI, n: int) -> None:
    now = int(time.time())
    fake.add_usage("completions", now - now % 3600, {"project_id": "proj_000", "model": "gpt-test-0",
                                                     "batch": False, "service_tier": "default"},
                   text_in=1000 + n, text_out=7, requests=1)


def _start(fakes: list[FakeOpenAI], first: Receiver, dsn: str, loop: Loop) -> tuple[int, dict[str, Any]]:
    """The first replica alone holds and polls both instances; the ledger equals the fakes'."""
    now = int(time.time())
    usage_start = 0
    for f in fakes:
        usage_start = seed_fake(f, now, seed=SEED)
    assert first.replicas is not None
    first.replicas.start()
    wait_for(lambda: set(first.replicas.held()) == set(INSTANCES), what="the first replica holds both")  # type: ignore[union-attr]

    async def both() -> list[PollOutcome]:
        return list(await asyncio.gather(*(first.poll(n) for n in INSTANCES)))

    assert all(o.ok for o in loop.run(both()))
    expected = {i: truth(f, usage_start) for i, f in zip(INSTANCES, fakes, strict=True)}
    assert exact(dsn, expected)
    return usage_start, expected


def _polls_in_flight(first: Receiver, loop: Loop) -> tuple[threading.Thread, list[PollOutcome]]:
    outcomes: list[PollOutcome] = []

    def run() -> None:
        async def both() -> list[PollOutcome]:
            return list(await asyncio.gather(*(first.poll(n) for n in INSTANCES)))

        outcomes.extend(loop.run(both()))

    thread = threading.Thread(target=run, name="polls-in-flight")
    thread.start()
    return thread, outcomes


def test_a_poll_in_flight_commits_before_its_instance_is_handed_over_and_counts_once(
    receivers: tuple[Receiver, Receiver], fakes: list[FakeOpenAI], pg_database: Database,
    caplog: pytest.LogCaptureFixture, loop: Loop,
) -> None:
    caplog.set_level(logging.INFO, logger="otel_llm_receiver")
    first, second = receivers
    a, b = first.replicas, second.replicas
    assert a is not None and b is not None
    usage_start, _ = _start(fakes, first, pg_database.dsn, loop)
    for n, f in enumerate(fakes):
        _grow(f, n)  # what the polls in flight read
    expected = {i: truth(f, usage_start) for i, f in zip(INSTANCES, fakes, strict=True)}
    gates = [Gate(f) for f in fakes]
    thread, outcomes = _polls_in_flight(first, loop)
    try:
        for gate in gates:
            assert gate.reached.wait(30), "the polls to reach the fake"
        b.start()  # a replica joins: the fair share is one instance each
        wait_for(lambda: a.state()["fair_share"] == 1, 30, "the first replica's round to see two replicas")
        rounds = a.rounds
        wait_for(lambda: a.rounds >= rounds + 3, 30, "three more rounds with both polls in flight")
        # Both surplus candidates are being polled: nothing was handed over under them.
        assert set(a.held()) == set(INSTANCES) and b.held() == {}
        assert all(a.handing_over(n) or a.lease(n) is not None for n in INSTANCES)
    finally:
        for gate in gates:
            gate.open()
        thread.join(60)
    assert len(outcomes) == 2 and all(o.ok for o in outcomes), outcomes
    assert exact(pg_database.dsn, expected)  # the polls in flight committed the growth
    wait_for(lambda: len(a.held()) == 1 and len(b.held()) == 1, 30, "one instance each once the polls ended")
    moved = next(iter(b.held()))
    assert loop.run(second.poll(moved)).ok  # the new holder re-reads from the cursor: nothing counted twice
    assert exact(pg_database.dsn, expected)
    assert first.health.reading().stale_writes == {}
    assert not [r for r in caplog.records if "during the poll" in r.getMessage()]


def test_a_poll_still_in_flight_after_a_lease_duration_is_handed_over_and_its_write_rejected(
    receivers: tuple[Receiver, Receiver], fakes: list[FakeOpenAI], pg_database: Database,
    caplog: pytest.LogCaptureFixture, loop: Loop,
) -> None:
    caplog.set_level(logging.INFO, logger="otel_llm_receiver")
    first, second = receivers
    a, b = first.replicas, second.replicas
    assert a is not None and b is not None
    usage_start, _ = _start(fakes, first, pg_database.dsn, loop)
    for n, f in enumerate(fakes):
        _grow(f, n)
    expected = {i: truth(f, usage_start) for i, f in zip(INSTANCES, fakes, strict=True)}
    gates = [Gate(f) for f in fakes]
    thread, outcomes = _polls_in_flight(first, loop)
    try:
        for gate in gates:
            assert gate.reached.wait(30), "the polls to reach the fake"
        started = time.monotonic()
        b.start()
        wait_for(lambda: len(b.held()) == 1, 30, "the second replica to get its share anyway")
        assert time.monotonic() - started >= LEASE * 0.9  # not before the bound (a lease duration)
        moved = next(iter(b.held()))
    finally:
        for gate in gates:
            gate.open()
        thread.join(60)
    by_name = {o.instance: o for o in outcomes}
    assert by_name[moved].error_type == "stale_lease", by_name  # fenced off: nothing of it applied
    kept = next(n for n in INSTANCES if n != moved)
    assert by_name[kept].ok
    assert first.health.reading().stale_writes == {}  # handed over on purpose: not a paused replica
    assert any("released to another replica during the poll" in r.getMessage() for r in caplog.records)
    assert loop.run(second.poll(moved)).ok
    assert exact(pg_database.dsn, expected)


@pytest.mark.parametrize("chunked", [True])
def test_a_chunked_poll_being_handed_over_stops_after_its_chunk_in_flight_and_the_other_completes(
    receivers: tuple[Receiver, Receiver], fakes: list[FakeOpenAI], pg_database: Database,
    caplog: pytest.LogCaptureFixture, loop: Loop,
) -> None:
    """Two backfills in flight (three chunks each), one instance must go: only the one handed over stops, after
    the chunk in flight (applied, not wasted); the other backfill completes. The new holder reads on."""
    caplog.set_level(logging.INFO, logger="otel_llm_receiver")
    first, second = receivers
    a, b = first.replicas, second.replicas
    assert a is not None and b is not None
    now = int(time.time())
    usage_start = 0
    for f in fakes:
        usage_start = seed_fake(f, now, seed=SEED)
    expected = {i: truth(f, usage_start) for i, f in zip(INSTANCES, fakes, strict=True)}
    a.start()
    wait_for(lambda: set(a.held()) == set(INSTANCES), what="the first replica holds both")
    gates = [Gate(f) for f in fakes]
    thread, outcomes = _polls_in_flight(first, loop)
    try:
        for gate in gates:
            assert gate.reached.wait(30), "the backfills to reach the fake"
        b.start()
        wait_for(lambda: any(a.handing_over(n) for n in INSTANCES), 30, "one instance pending release")
        going = [n for n in INSTANCES if a.handing_over(n)]
        assert len(going) == 1 and set(a.held()) == set(INSTANCES)  # only as many as the share is over
    finally:
        for gate in gates:
            gate.open()
        thread.join(60)
    by_name = {o.instance: o for o in outcomes}
    kept = next(n for n in INSTANCES if n not in going)
    assert by_name[kept].ok, by_name
    assert by_name[going[0]].error_type == "stale_lease", by_name  # stopped between chunks, nothing rejected
    handed = [r.getMessage() for r in caplog.records if "after 1 chunks of the poll" in r.getMessage()]
    assert handed and going[0] in handed[0]
    wait_for(lambda: set(b.held()) == set(going) and set(a.held()) == {kept}, 30, "the handover")
    assert loop.run(second.poll(going[0])).ok
    assert exact(pg_database.dsn, expected)
    assert first.health.reading().stale_writes == {}
