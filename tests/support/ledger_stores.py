"""A ledger store (``StorageConfig`` of the ``ledger_store`` fixture) as the ``storage`` section of a config file,
for tests that open the ledger the way users do: through the CLI or the scheduler (``open_ledger``).

Why an environment variable for PostgreSQL: the DSN holds the test cluster's password, and a config file says
``${env:NAME}`` rather than a password (as users are told to); the variable is set for the test's duration only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.scheduler import PollOutcome, Receiver


def storage_section(store: StorageConfig, env: pytest.MonkeyPatch, variable: str = "LEDGER_DSN") -> dict[str, Any]:
    """``{"path": ...}`` for SQLite; ``{"backend": "postgresql", "dsn": "${env:VARIABLE}"}`` with ``variable`` set
    in ``env`` for PostgreSQL."""
    if store.backend == "sqlite":
        return {"path": store.path}
    assert store.dsn is not None
    env.setenv(variable, store.dsn)
    return {"backend": "postgresql", "dsn": "${env:" + variable + "}"}


@contextlib.contextmanager
def shared_store(backend: str, request: pytest.FixtureRequest, directory: Path) -> Iterator[StorageConfig]:
    """A fresh store on ``backend`` for a module-scoped fixture (``ledger_store`` is per test): a file in
    ``directory``, or a database cloned from the session's migrated template, dropped afterwards."""
    if backend == "sqlite":
        yield StorageConfig(path=str(directory / "ledger.db"))
        return
    cluster = request.getfixturevalue("postgres_cluster")
    template: str = request.getfixturevalue("pg_ledger_template")
    cluster.start()
    database = cluster.create_database(template=template)
    try:
        yield StorageConfig(backend="postgresql", dsn=database.dsn)
    finally:
        cluster.start()
        cluster.drop_database(database.name)


async def poll_held(receiver: Receiver, name: str) -> PollOutcome:
    """One poll of ``name`` by ``receiver``; on a shared (PostgreSQL) ledger a replica polls only what it holds,
    so it takes its lease round first and leaves after, as ``run --once`` does."""
    replicas = receiver.replicas
    if replicas is not None:
        await asyncio.to_thread(replicas.start)
    try:
        return await receiver.poll(name)
    finally:
        if replicas is not None:
            await asyncio.to_thread(replicas.stop)
