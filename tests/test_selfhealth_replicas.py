"""Self-health series of replicas on a shared PostgreSQL ledger (issue 21): every replica exports under the
ledger's resource, so its own process-local ``llm.receiver.*`` counters carry ``llm.receiver.replica``; two
replicas' series never collide in the sink. A SQLite receiver's self-health attributes stay as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.emitter import build_exporter
from otel_llm_receiver.names import ATTR_LLM_RECEIVER_REPLICA
from otel_llm_receiver.replicas import REPLICA_ID_ENV, replica_label
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import Database
from tests.support.waiting import wait_for

INSTANCES = ("demo/a", "demo/b")


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
    first, second = two_replicas
    a, b = first.replicas, second.replicas
    assert a is not None and b is not None
    a.round_interval = b.round_interval = 0.2
    # The first replica holds and polls both instances, then the second joins and takes one over.
    a.start()
    wait_for(lambda: set(a.held()) == set(INSTANCES), what="the first replica holds both")
    for name in INSTANCES:
        assert asyncio.run(first.poll(name)).ok
    b.start()
    wait_for(lambda: len(a.held()) == 1 and len(b.held()) == 1, what="one instance each")
    kept, taken = next(iter(a.held())), next(iter(b.held()))
    assert asyncio.run(second.poll(taken)).ok
    assert first.export_now(wait=True)
    assert second.export_now(wait=True)

    la, lb = replica_label(a.replica), replica_label(b.replica)
    assert la != lb
    starts = {la: first.health.started_ns, lb: second.health.started_ns}
    assert starts[la] != starts[lb]
    polled: dict[str, set[str]] = {}
    for attrs, point in sink.number_points("llm.receiver.polls").items():
        labels = dict(attrs)
        replica = labels[ATTR_LLM_RECEIVER_REPLICA]  # every self-health point names its replica
        assert point.start_time_unix_nano == starts[replica]  # its own process's counter, never the other's
        polled.setdefault(replica, set()).add(labels["llm.source"])
    # Both replicas polled the instance that moved: two series that differ by the replica, not one that jumps.
    assert polled == {la: set(INSTANCES), lb: {taken}}
    for name in ("llm.receiver.records",):
        assert {dict(x)[ATTR_LLM_RECEIVER_REPLICA] for x in sink.number_points(name)} == {la, lb}
    durations = sink.histogram_points("llm.receiver.poll.duration")
    assert {dict(x)[ATTR_LLM_RECEIVER_REPLICA] for x in durations} == {la, lb}
    # Gauges come from the holder only: the first replica no longer reports the instance it handed over.
    for name in ("llm.receiver.last_success", "llm.receiver.data.lag"):
        sources = {(dict(x)[ATTR_LLM_RECEIVER_REPLICA], dict(x)["llm.source"]) for x in sink.number_points(name)}
        assert {s for r, s in sources if r == la} == {kept}, name
        assert {s for r, s in sources if r == lb} == {taken}, name
    # The usage series stay one resource's, without the replica.
    usage = sink.number_points("llm.usage.tokens")
    assert usage and not any(ATTR_LLM_RECEIVER_REPLICA in dict(x) for x in usage)


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
