"""The receiver as one replica on a shared PostgreSQL ledger (issue 21), in process: ``/health`` shows the replica,
its leases and the leader; an export sends only the series of the instances this replica holds, and the
ledger-wide gauges only while it leads; the resource's ``service.instance.id`` is the ledger's id.

The other replica is a bare ``ReplicaCoordinator`` (its own connection), enough to take a share of the leases.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from otel_llm_receiver import cli
from otel_llm_receiver.builder import MetricsBuilder, make_resource
from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.emitter import build_exporter
from otel_llm_receiver.ledger import ExportRows
from otel_llm_receiver.replicas import ReplicaCoordinator
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink
from tests.support.postgres import Database
from tests.support.waiting import wait_for

INSTANCES = ("demo/a", "demo/b")


def _config(dsn: str, sink: OTLPSink) -> Config:
    return parse_config({
        "storage": {"backend": "postgresql", "dsn": dsn, "lease_duration": "5s"},
        "health": {"endpoint": ""},
        "exporters": {"otlphttp": {"endpoint": sink.http_endpoint, "timeout": "2s"}},
        "providers": {name: {"backfill": "2h", "seed": i + 1, "tenant": name.split("/")[1]}
                      for i, name in enumerate(INSTANCES)},
        "budgets": [{"name": "monthly", "amount": 1000, "period": "month", "source": "best"}],
        "pricing": {"genai_prices": False},
    })


@pytest.fixture
def receiver(pg_database: Database, sink: OTLPSink) -> Iterator[Receiver]:
    config = _config(pg_database.dsn, sink)
    r = Receiver(config, exporters=[(cfg, build_exporter(cfg)) for cfg in config.exporters])
    try:
        yield r
    finally:
        asyncio.run(r.aclose())


def test_health_shows_the_replica_its_leases_and_the_leader(receiver: Receiver, pg_database: Database) -> None:
    replicas = receiver.replicas
    assert replicas is not None
    replicas.round_interval = 0.2
    replicas.start()
    wait_for(lambda: set(replicas.held()) == set(INSTANCES) and replicas.is_leader, what="both leases and @leader")
    _healthy, doc = receiver.health_report()
    assert doc["replica"] == replicas.replica
    leases = doc["leases"]
    assert isinstance(leases, dict) and set(leases) == set(INSTANCES)
    assert all(v["epoch"] >= 1 and "T" in v["expires_at"] for v in leases.values())
    assert doc["leader"] == {"replica": replicas.replica, "self": True}
    instances = doc["instances"]
    assert isinstance(instances, dict) and all(instances[i]["held"] for i in INSTANCES)
    ledger = doc["ledger"]
    assert isinstance(ledger, dict) and ledger["ok"] and ledger["backend"] == "postgresql"
    assert pg_database.password not in str(doc)
    # A second replica joins: one instance each; the one not held is shown so and does not count against health.
    other = ReplicaCoordinator(pg_database.dsn, INSTANCES, 5.0, replica="other", round_interval=0.2).start()
    try:
        wait_for(lambda: len(replicas.held()) == 1 and len(other.held()) == 1, what="one instance each")
        _, doc = receiver.health_report()
        mine = set(replicas.held())
        assert set(doc["leases"]) == mine  # type: ignore[call-overload]
        instances = doc["instances"]
        assert isinstance(instances, dict)
        for name in INSTANCES:
            assert instances[name]["held"] == (name in mine)
            if name not in mine:
                assert instances[name]["healthy"]
        assert doc["leader"]["replica"] in (replicas.replica, "other")  # type: ignore[index]
    finally:
        other.stop()


def test_an_export_sends_only_held_instances_and_gauges_only_from_the_leader(
    receiver: Receiver, pg_database: Database, sink: OTLPSink,
) -> None:
    replicas = receiver.replicas
    assert replicas is not None
    replicas.round_interval = 0.2
    # Another replica leads and holds demo/b before this one starts: it gets demo/a only, and does not lead.
    other = ReplicaCoordinator(pg_database.dsn, INSTANCES, 5.0, replica="aaa-other", round_interval=0.2)
    other.run_round()
    assert other.is_leader and set(other.held()) == set(INSTANCES)
    replicas.start()
    other.start()
    try:
        wait_for(lambda: len(replicas.held()) == 1 and len(other.held()) == 1, what="one instance each")
        mine = next(iter(replicas.held()))
        theirs = next(iter(other.held()))

        async def poll_mine() -> None:
            outcome = await receiver.poll(mine)
            assert outcome.ok, outcome
            not_mine = await receiver.poll(theirs)  # never polled: not held
            assert not not_mine.ok and not_mine.error_type == "not_held"

        asyncio.run(poll_mine())
        assert receiver.export_now(wait=True)
        tenants = {dict(a).get("llm.tenant") for a in sink.number_points("llm.usage.tokens")}
        assert tenants == {mine.split("/")[1]}
        assert not any(name.startswith("llm.budget.") for name in sink.metric_names())
        assert sink.resource_attributes()["service.instance.id"] == receiver.ledger.instance_id
        other.stop()  # leaves: this replica takes the other instance and the lead at its next round
        wait_for(lambda: set(replicas.held()) == set(INSTANCES) and replicas.is_leader, what="the takeover")
        asyncio.run(receiver.poll(theirs))
        assert receiver.export_now(wait=True)
        tenants = {dict(a).get("llm.tenant") for a in sink.number_points("llm.usage.tokens")}
        assert tenants == {"a", "b"}
        assert any(name.startswith("llm.budget.") for name in sink.metric_names())
    finally:
        other.stop()


def test_a_series_committed_below_the_described_ids_is_described_at_the_next_export() -> None:
    """Replicas insert series concurrently on PostgreSQL: ids come from a sequence, so series 2 can commit after
    series 3 was read and described. The builder must not skip it for good: it asks for it again."""
    builder = MetricsBuilder(make_resource("ledger-id"))
    attrs = '{"gen_ai.token.type":"input","llm.tenant":"%s"}'
    first = ExportRows([(1, 10, 0, 5), (3, 30, 0, 5)], [(1, "demo/a", "llm.usage.tokens", attrs % "a"),
                                                         (3, "demo/b", "llm.usage.tokens", attrs % "c")], {})
    assert builder.build(first, None, 100).points == 2 and builder.known_series == 3
    late = ExportRows([(1, 10, 0, 5), (2, 20, 0, 5), (3, 30, 0, 5)], [], {})  # 2 committed late, not read
    assert builder.build(late, None, 200).points == 2
    assert builder.known_series == 1 and builder.missing_series  # the next read starts below the hole
    again = ExportRows([(1, 10, 0, 5), (2, 20, 0, 5), (3, 30, 0, 5)],
                       [(2, "demo/a", "llm.usage.tokens", attrs % "b"), (3, "demo/b", "llm.usage.tokens", attrs % "c")],
                       {})
    assert builder.build(again, None, 300).points == 3 and builder.known_series == 3
    assert not builder.missing_series


def test_run_once_report_focus_and_history_on_a_postgresql_ledger(
    pg_database: Database, sink: OTLPSink, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`run --once` with backend postgresql polls what its round gives it (alone: everything) and leaves; the
    readers (`report`, `focus`, `history`) read the same PostgreSQL ledger."""
    path = tmp_path / "config.yaml"
    path.write_text(f"""
storage: {{backend: postgresql, dsn: "${{env:LEDGER_DSN}}", lease_duration: 5s}}
health: {{endpoint: ""}}
exporters: {{otlphttp: {{endpoint: {sink.http_endpoint}, timeout: 2s}}}}
providers:
  demo/a: {{backfill: 2h, seed: 1, tenant: a}}
  demo/b: {{backfill: 2h, seed: 2, tenant: b}}
pricing: {{genai_prices: false}}
""")
    env = {"LEDGER_DSN": pg_database.dsn}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert cli.main(["run", "--once", "--config", str(path)]) == 0
        assert {dict(a).get("llm.tenant") for a in sink.number_points("llm.usage.tokens")} == {"a", "b"}
        capsys.readouterr()
        assert cli.main(["report", "--config", str(path), "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report and pg_database.password not in json.dumps(report)
        assert cli.main(["focus", "--config", str(path), "--since", "2d", "--out", "-", "--format", "csv"]) == 0
        rows = capsys.readouterr().out.splitlines()
        assert len(rows) > 1 and "BilledCost" in rows[0]
        out = tmp_path / "history.om"
        assert cli.main(["history", "--config", str(path), "--out", str(out)]) == 0
        assert "llm_usage_tokens" in out.read_text() or "llm.usage.tokens" in out.read_text()
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:  # every run left: no lease is held
        held = conn.execute("SELECT count(*) FROM leases WHERE holder IS NOT NULL"
                            " AND expires_at > clock_timestamp()").fetchone()
        assert held == (0,)
