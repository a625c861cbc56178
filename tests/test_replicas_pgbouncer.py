"""Replicas through PgBouncer (issue 21): a real PgBouncer (Debian's package, our own process on a loopback port)
in front of the test cluster.

- ``pool_mode = session`` works: the connection settings reach the server (PgBouncer refuses an ``options``
  startup parameter, so they are set after connecting), and two replica processes polling six instances through
  it count exactly, through a kill -9 of one of them.
- ``pool_mode = transaction`` (and ``statement``) is refused at start in one line naming the fix, ``pool_mode =
  session``: the receiver keeps session state that such a pooler would lose or share between clients.

The DSN's password is in no log line, no error, no output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_llm_receiver import cli
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.connect import check_connect
from otel_llm_receiver.errors import LedgerError
from otel_llm_receiver.ledger.postgres.connect import Timeouts, connect
from otel_llm_receiver.ledger.postgres.pooler import sessions_pinned
from otel_llm_receiver.scheduler import Receiver
from tests.fakes.openai import FakeOpenAI
from tests.support.fork_server import ForkServer
from tests.support.otlp_sink import OTLPSink
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import Database, PostgresCluster
from tests.support.replica_world import INSTANCES, World, exact, openai_fakes, seed_fake, truth, write_config
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
LEASE = 1.5
SEED = 2123


def _bouncer(cluster: PostgresCluster, mode: str) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(cluster, pool_mode=mode).start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def session_bouncer(postgres_cluster: PostgresCluster) -> Iterator[PgBouncer]:
    yield from _bouncer(postgres_cluster, "session")


@pytest.fixture(params=["transaction", "statement"])
def pooling_bouncer(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> Iterator[PgBouncer]:
    yield from _bouncer(postgres_cluster, str(request.param))


def test_connections_through_pgbouncer_in_session_mode_carry_their_settings(
    session_bouncer: PgBouncer, pg_database: Database,
) -> None:
    dsn = session_bouncer.dsn(pg_database.name) + "?options=-c%20work_mem%3D8MB"
    with connect(dsn, application_name="replica-a", timeouts=Timeouts(statement=2.5, lock=1.5)) as conn:
        row = conn.execute("SELECT current_setting('application_name'), current_setting('statement_timeout'),"
                           " current_setting('lock_timeout'), current_setting('work_mem')").fetchone()
    assert row == ("replica-a", "2500ms", "1500ms", "8MB")
    assert sessions_pinned(session_bouncer.dsn(pg_database.name))
    assert sessions_pinned(pg_database.dsn)  # and directly, of course


def test_a_pooler_in_transaction_or_statement_mode_is_refused_at_start_naming_the_fix(
    pooling_bouncer: PgBouncer, pg_database: Database, sink: OTLPSink, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = pooling_bouncer.dsn(pg_database.name)
    assert not sessions_pinned(dsn)
    config = parse_config({
        "storage": {"backend": "postgresql", "dsn": dsn},
        "health": {"endpoint": ""},
        "exporters": {"otlphttp": {"endpoint": sink.http_endpoint, "timeout": "2s"}},
        "providers": {"demo/a": {"backfill": "2h", "seed": 1}},
        "pricing": {"genai_prices": False},
    })
    with pytest.raises(LedgerError) as refused:
        Receiver(config, exporters=[])
    message = str(refused.value)
    assert "pool_mode = session" in message and "transaction" in message
    assert pg_database.password not in message and "\n" not in message
    # `run` says it in one line and exits non-zero, before anything runs.
    path = tmp_path / "config.yaml"
    path.write_text(f"""
storage: {{backend: postgresql, dsn: "${{env:LEDGER_DSN}}"}}
health: {{endpoint: ""}}
exporters: {{otlphttp: {{endpoint: {sink.http_endpoint}, timeout: 2s}}}}
providers:
  demo/a: {{backfill: 2h, seed: 1}}
pricing: {{genai_prices: false}}
""")
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEDGER_DSN", dsn)
        assert cli.main(["run", "--config", str(path)]) != 0
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if "pool_mode = session" in line]
    assert len(lines) == 1 and "cannot start:" in lines[0], out.err
    assert pg_database.password not in out.out + out.err
    # Nothing was created through the pooler: the ledger's tables do not exist.
    with connect(pg_database.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('leases')").fetchone() == (None,)


@pytest.fixture
def fakes() -> Iterator[list[FakeOpenAI]]:
    with openai_fakes(len(INSTANCES)) as made:
        yield made


@pytest.fixture
def world(tmp_path: Path, fakes: list[FakeOpenAI], sink: OTLPSink, pg_database: Database,
          session_bouncer: PgBouncer) -> Iterator[World]:
    server = ForkServer(ROOT)
    dsn = session_bouncer.dsn(pg_database.name)
    w = World(tmp_path, dsn, write_config(tmp_path / "config.yaml", fakes, sink), server, LEASE)
    try:
        yield w
    finally:
        try:
            w.kill_all()
        finally:
            server.close()


def test_two_replicas_through_pgbouncer_in_session_mode_count_exactly_through_a_kill_9(
    world: World, fakes: list[FakeOpenAI], pg_database: Database, session_bouncer: PgBouncer,
) -> None:
    now = int(time.time())
    usage_start = 0
    for f in fakes:
        usage_start = seed_fake(f, now, seed=SEED)
    expected = {i: truth(f, usage_start) for i, f in zip(INSTANCES, fakes, strict=True)}
    for name in ("r0", "r1"):
        world.start(name)

    def split_evenly() -> bool:
        held = world.holder_names()
        return set(held) == set(INSTANCES) and sorted(list(held.values()).count(r) for r in ("r0", "r1")) == [3, 3]

    wait_for(lambda: split_evenly() and exact(world, expected), 90, "3-3 through PgBouncer and exact totals")
    # The replicas' connections are PgBouncer's clients: the server sees PgBouncer's, with the replicas' names.
    names = {str(r[0]) for r in world.query(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")}
    assert any(n.startswith("otel-llm-receiver r0") for n in names), names
    orphans = {i for i, h in world.holder_names().items() if h == "r0"}
    killed_ns = time.time_ns()
    world.kill("r0")
    for n, f in enumerate(fakes):  # the survivor must read the growth of the killed replica's instances too
        f.add_usage("completions", now - now % 3600, {"project_id": "proj_001", "model": "gpt-test-1",
                                                      "batch": False, "service_tier": "default"},
                    text_in=500 + n, text_out=3, requests=1)
    expected = {i: truth(f, usage_start) for i, f in zip(INSTANCES, fakes, strict=True)}
    wait_for(lambda: set(world.holder_names().values()) == {"r1"}
             and all(world.cursor_times().get(i, 0) > killed_ns for i in orphans), 60,
             "r1 to take over and poll r0's instances through PgBouncer")
    wait_for(lambda: exact(world, expected), 60, "exact totals after the kill")
    world.stop_all()
    assert exact(world, expected)
    logs = world.logs()
    assert logs and not any(pg_database.password in str(r) for r in logs)
    assert not [r for r in logs if "unsupported startup parameter" in str(r.get("message", ""))]
    assert pg_database.password not in session_bouncer.log()


def test_check_connect_fails_a_pooler_in_transaction_mode_and_passes_session_mode(
    postgres_cluster: PostgresCluster, pg_database: Database, session_bouncer: PgBouncer,
) -> None:
    for bouncer, ok in ((session_bouncer, True), (PgBouncer(postgres_cluster, pool_mode="transaction").start(), False)):
        try:
            config = parse_config({"storage": {"backend": "postgresql", "dsn": bouncer.dsn(pg_database.name)},
                                   "providers": {"demo": {"enabled": False}}})
            lines: list[str] = []
            assert check_connect(config, lines.append) is ok
            assert len(lines) == 1 and pg_database.password not in lines[0]
            if ok:
                assert lines[0].startswith("ok  storage postgresql: ") and "reachable" in lines[0]
            else:
                assert lines[0].startswith("FAIL storage postgresql: config: ") and "pool_mode = session" in lines[0]
        finally:
            if bouncer is not session_bouncer:
                bouncer.stop()
