"""``/health`` on a shared PostgreSQL ledger reads through one kept connection (issue 21), not a new one per
request: many requests, from several threads at once, show one ``otel-llm-receiver health`` backend in
``pg_stat_activity``; a terminated backend is replaced at the next request, and the receiver's close ends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.health_ledger import APPLICATION_NAME
from otel_llm_receiver.scheduler import Receiver
from tests.support.postgres import Database
from tests.support.waiting import wait_for


def health_backends(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = "
                            "current_database()", (APPLICATION_NAME,)).fetchall()
    return [int(r[0]) for r in rows]


@pytest.fixture
def receiver(pg_database: Database) -> Iterator[Receiver]:
    config = parse_config({
        "storage": {"backend": "postgresql", "dsn": pg_database.dsn, "lease_duration": "5s"},
        "health": {"endpoint": ""},
        "providers": {"demo/a": {"backfill": "1h", "seed": 1}},
        "pricing": {"genai_prices": False},
    })
    r = Receiver(config, exporters=[])
    try:
        yield r
    finally:
        asyncio.run(r.aclose())


def _ledger_ok(r: Receiver) -> bool:
    ledger = r.health_report()[1]["ledger"]
    assert isinstance(ledger, dict)
    return bool(ledger["ok"])


def test_health_keeps_one_connection_across_requests_and_threads(receiver: Receiver, pg_database: Database) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _ledger_ok(receiver), range(40)))
    assert all(results)
    ledger = receiver.health_report()[1]["ledger"]
    assert isinstance(ledger, dict) and "series" in ledger and ledger["schema_version"]
    assert len(health_backends(pg_database.dsn)) == 1
    assert receiver._health_ledger is not None and receiver._health_ledger.opened == 1

    # The backend is terminated (a database restart, an admin): a later request is served on a new connection.
    (pid,) = health_backends(pg_database.dsn)
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: _ledger_ok(receiver) and health_backends(pg_database.dsn) not in ([], [pid]),
             what="/health on a new connection")
    assert len(health_backends(pg_database.dsn)) == 1

    asyncio.run(receiver.aclose())
    wait_for(lambda: health_backends(pg_database.dsn) == [], what="the health connection closed")
