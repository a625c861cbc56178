"""The ledger connection ``/health`` reads through, opened once and kept (storage.backend postgresql).

Why keep one: a probe every few seconds per replica (Kubernetes liveness and readiness) that opens a new
PostgreSQL connection each time costs a backend process, authentication (and TLS) per request, and one more
connection counted against the server's ``max_connections`` while it lasts. The health server answers each
request on a thread of its own, so a lock serialises the readings on the one connection. A reading that fails
closes it: the next request opens a new one (a restarted database, a terminated backend).
"""

from __future__ import annotations

import contextlib
import threading

from .config import StorageConfig
from .ledger import Ledger, open_ledger

__all__ = ["HealthLedger"]

APPLICATION_NAME = "otel-llm-receiver health"


class HealthLedger:
    """Reads the ledger's sizes and schema version for ``/health`` on one kept read-only connection."""

    def __init__(self, storage: StorageConfig, *, application_name: str = APPLICATION_NAME) -> None:
        self._storage = storage
        self._application_name = application_name
        self._lock = threading.Lock()
        self._ledger: Ledger | None = None
        self.opened = 0  # connections opened so far (one while the database stays up)

    def read(self) -> dict[str, object]:
        """``counts()`` and ``schema_version``; raises what the ledger raises (``LedgerError``), after which the
        connection is dropped and the next read reconnects."""
        with self._lock:
            if self._ledger is None:
                self._ledger = open_ledger(self._storage, readonly=True, application_name=self._application_name)
                self.opened += 1
            try:
                return {**self._ledger.counts(), "schema_version": self._ledger.schema_version}
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            # closing a broken connection must not hide the error that broke it
            with contextlib.suppress(Exception):
                ledger.close()
