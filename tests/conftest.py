"""Fixtures shared by the whole suite: real loopback servers, started per test and always stopped.

Why one place: the OTLP sink and the provider fakes were defined again in each module that needed them; a fixture
here is the one way a test gets a sink or a fake, so a change to how they start (ports, timeouts) is made once.
A module that needs a different scope or pre-populated data keeps its own fixture of the same name (pytest lets a
module's fixture override this one).

Markers: ``slow`` marks the tests that take more than ~20 s on their own (fault storms, fuzzers, real Prometheus);
``pytest -m "not slow"`` is the quick loop while editing, the README's command runs everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.fakes.azure import FakeAzure
from tests.support.otlp_sink import OTLPSink

if TYPE_CHECKING:
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
