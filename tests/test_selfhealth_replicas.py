"""Self-health series of replicas on a shared PostgreSQL ledger (issue 21): every replica exports under the
ledger's resource, so its own process-local ``llm.receiver.*`` counters carry ``llm.receiver.replica``; two
replicas' series never collide in the sink. A SQLite receiver's self-health attributes stay as they were.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.emitter import build_exporter
from otel_llm_receiver.names import ATTR_LLM_RECEIVER_REPLICA
from otel_llm_receiver.replicas import REPLICA_ID_ENV, replica_label
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import Database

INSTANCES = ("demo/a", "demo/b")
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _config(storage: dict[str, Any], sink: OTLPSink) -> Config:
    return parse_config({
        "storage": storage,
        "health": {"endpoint": ""},
        "exporters": {"otlphttp": {"endpoint": sink.http_endpoint, "timeout": "2s"}},
        "providers": {name: {"backfill": "2h", "seed": i + 1, "tenant": name.split("/")[1]}
                      for i, name in enumerate(INSTANCES)},
        "pricing": {"genai_prices": False},
    })


def _receiver(config: Config) -> Receiver:
    return Receiver(config, exporters=[(cfg, build_exporter(cfg)) for cfg in config.exporters])


@pytest.fixture
def no_platform_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both in-process replicas take their label from their own (random) replica id."""
    monkeypatch.delenv(REPLICA_ID_ENV, raising=False)
    monkeypatch.delenv("POD_NAME", raising=False)


@pytest.fixture
def two_replicas(pg_database: Database, sink: OTLPSink, no_platform_name: None) -> Iterator[tuple[Receiver, Receiver]]:
    storage = {"backend": "postgresql", "dsn": pg_database.dsn, "lease_duration": "5s"}
    first = _receiver(_config(storage, sink))
    second = _receiver(_config(storage, sink))
    try:
        yield first, second
    finally:
        asyncio.run(first.aclose())
        asyncio.run(second.aclose())


def test_two_replicas_self_health_series_differ_by_replica_and_never_collide(
    two_replicas: tuple[Receiver, Receiver], sink: OTLPSink,
) -> None:
    receivers = two_replicas
    coordinators = [r.replicas for r in receivers]
    assert coordinators[0] is not None and coordinators[1] is not None
    for c in coordinators:
        assert c is not None
        c.round_interval = 0.2
        c.start()
    wait_for(lambda: all(c is not None and len(c.held()) == 1 for c in coordinators), what="one instance each")
    for r, c in zip(receivers, coordinators, strict=True):
        assert c is not None
        mine = next(iter(c.held()))
        outcome = asyncio.run(r.poll(mine))
        assert outcome.ok, outcome
        assert r.export_now(wait=True)

    labels = {replica_label(c.replica) for c in coordinators if c is not None}
    assert len(labels) == 2
    starts = {replica_label(c.replica): r.health.started_ns
              for r, c in zip(receivers, coordinators, strict=True) if c is not None}
    polls = sink.number_points("llm.receiver.polls")
    by_replica: dict[str, set[str]] = {}
    for attrs, point in polls.items():
        a = dict(attrs)
        replica = a[ATTR_LLM_RECEIVER_REPLICA]  # every self-health point names its replica
        assert point.start_time_unix_nano == starts[replica]
        by_replica.setdefault(replica, set()).add(a["llm.source"])
    # Each replica's counters are its own series (the instance it polled), none shared with the other.
    assert set(by_replica) == labels
    assert all(len(sources) == 1 for sources in by_replica.values())
    assert by_replica[labels.pop()] != by_replica[labels.pop()]
    for name in ("llm.receiver.records", "llm.receiver.last_success"):
        assert {dict(a)[ATTR_LLM_RECEIVER_REPLICA] for a in sink.number_points(name)} == set(starts)
    durations = sink.histogram_points("llm.receiver.poll.duration")
    assert {dict(a)[ATTR_LLM_RECEIVER_REPLICA] for a in durations} == set(starts)
    # The usage series stay one resource's, without the replica.
    assert sink.number_points("llm.usage.tokens")
    assert not any(ATTR_LLM_RECEIVER_REPLICA in dict(a) for a in sink.number_points("llm.usage.tokens"))


def test_a_sqlite_receivers_self_health_has_no_replica_attribute(tmp_path: Path, sink: OTLPSink) -> None:
    r = _receiver(_config({"path": str(tmp_path / "ledger.db")}, sink))
    try:
        assert r.replicas is None
        outcome = asyncio.run(r.poll(INSTANCES[0]))
        assert outcome.ok, outcome
        assert r.export_now(wait=True)
    finally:
        asyncio.run(r.aclose())
    polls = sink.number_points("llm.receiver.polls")
    assert polls
    assert {frozenset(dict(a)) for a in polls} == {frozenset({"llm.source", "llm.data.source", "llm.outcome"})}
    assert all(point.start_time_unix_nano == r.health.started_ns for point in polls.values())
    for name in ("llm.receiver.records", "llm.receiver.last_success"):
        assert not any(ATTR_LLM_RECEIVER_REPLICA in dict(a) for a in sink.number_points(name))


def test_the_replica_label_is_the_platform_name_when_given_else_the_full_replica_id() -> None:
    assert replica_label("pod-7-42-a1b2c3", {REPLICA_ID_ENV: "pod-7"}) == "pod-7"
    assert replica_label("pod-8-42-a1b2c3", {"POD_NAME": " pod-8 "}) == "pod-8"
    assert replica_label("host-42-a1b2c3", {REPLICA_ID_ENV: "", "POD_NAME": ""}) == "host-42-a1b2c3"
    assert replica_label("host-42-a1b2c3", {}) == "host-42-a1b2c3"
