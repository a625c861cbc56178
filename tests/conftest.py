"""Fixtures shared by the whole suite: real loopback servers, started per test and always stopped.

Why one place: the OTLP sink and the provider fakes were defined again in each module that needed them; a fixture
here is the one way a test gets a sink or a fake, so a change to how they start (ports, timeouts) is made once.
A module that needs a different scope or pre-populated data keeps its own fixture of the same name (pytest lets a
module's fixture override this one).

Markers: ``slow`` marks the tests that take more than ~20 s on their own (fault storms, fuzzers, real Prometheus);
``pytest -m "not slow"`` is the quick loop while editing, the README's command runs everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.fakes.azure import FakeAzure
from tests.support.otlp_sink import OTLPSink

if TYPE_CHECKING:
    from otel_llm_receiver.config_storage import StorageConfig
    from otel_llm_receiver.ledger import Ledger
    from tests.support.postgres import Database, PostgresCluster


@pytest.fixture
def sink() -> Iterator[OTLPSink]:
    """A real OTLP gRPC + HTTP receiver on loopback, decoding with opentelemetry-proto."""
    with OTLPSink() as s:
        yield s


@pytest.fixture
def azure_fake() -> Iterator[FakeAzure]:
    """The Azure Resource Manager, Monitor and Cost Management fake on loopback."""
    azure = FakeAzure()
    try:
        yield azure
    finally:
        azure.close()


# -- PostgreSQL (issue 21): one throw-away cluster per session, a fresh database per test ----------------------
# Imported inside the fixtures so the rest of the suite never needs psycopg; without the server binaries the
# fixture fails with one line naming Debian's `postgresql` package (tests/support/postgres.py), never skips.


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """initdb'd once per session into a temp dir, listening on 127.0.0.1 and a socket; stopped at the end."""
    from tests.support.postgres import PostgresCluster

    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_database(postgres_cluster: PostgresCluster) -> Iterator[Database]:
    """A fresh empty database for one test (CREATE DATABASE: milliseconds); dropped afterwards. Restarts the
    server first if an earlier test left it stopped."""
    postgres_cluster.start()
    database = postgres_cluster.create_database()
    try:
        yield database
    finally:
        postgres_cluster.start()
        postgres_cluster.drop_database(database.name)


@pytest.fixture
def ledger_dsn(pg_database: Database) -> str:
    """The DSN of a fresh database migrated to the ledger's schema (leases, replicas and the ledger's tables)."""
    from otel_llm_receiver.ledger.postgres.connect import connect
    from otel_llm_receiver.ledger.postgres.schema import migrate

    with connect(pg_database.dsn) as conn:
        migrate(conn)
    return pg_database.dsn


# -- the ledger on every engine (issue 21): the same tests, the same expected values ------------------------------


@pytest.fixture(scope="session")
def pg_ledger_template(postgres_cluster: PostgresCluster) -> str:
    """A database migrated once per session: each PostgreSQL ledger test clones it (CREATE DATABASE ...
    TEMPLATE copies files: milliseconds, where migrating a fresh database takes ~100 ms of DDL)."""
    from otel_llm_receiver.ledger.postgres import connect as pg_connect
    from otel_llm_receiver.ledger.postgres import schema as pg_schema

    postgres_cluster.start()
    database = postgres_cluster.create_database("ledger_template")
    with pg_connect.connect(database.socket_dsn, autocommit=True) as conn:
        pg_schema.migrate(conn)
    return database.name


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """The engine a ledger test runs on: every such test runs on both."""
    return str(request.param)


@pytest.fixture
def ledger_store(
    ledger_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StorageConfig]:
    """A fresh, empty ledger store on ``ledger_backend``: a file path or a database cloned from the migrated
    template. ``open_ledger(ledger_store)`` opens it (as often as a test likes)."""
    from otel_llm_receiver.config_storage import StorageConfig

    if ledger_backend == "sqlite":
        yield StorageConfig(path=str(tmp_path / "ledger.db"))
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    template: str = request.getfixturevalue("pg_ledger_template")
    cluster.start()
    database = cluster.create_database(template=template)
    try:
        yield StorageConfig(backend="postgresql", dsn=database.dsn)
    finally:
        cluster.start()
        cluster.drop_database(database.name)


@pytest.fixture
def make_ledger(ledger_store: StorageConfig) -> Iterator[Callable[..., Ledger]]:
    """``make_ledger(readonly=False)``: a ledger on the test's store (both engines); closed after the test."""
    from otel_llm_receiver.ledger import open_ledger

    opened: list[Ledger] = []

    def make(*, readonly: bool = False) -> Ledger:
        ledger = open_ledger(ledger_store, readonly=readonly)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()
