"""The one seam where the ledger's SQL engine is chosen: SQLite, its connection, pragmas and transactions.

Everything above (schema, writer, reader) speaks SQL through ``Connection`` and catches ``EngineError``; the
choice of ``sqlite3``, its WAL and ``busy_timeout`` pragmas, ``BEGIN IMMEDIATE`` and the single-writer file lock
live here, so a second engine replaces this module, not the ledger.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self, TypeAlias

from ..errors import LedgerError
from .check import create_atomically
from .lock import WriterLock
from .schema import migrate, newest_version

if TYPE_CHECKING:
    from .postgres.leases import Lease

#: The connection type every ledger module is written against.
Connection: TypeAlias = sqlite3.Connection
#: The engine's error base class (a failed statement, a busy or damaged database).
EngineError: TypeAlias = sqlite3.Error


def _check_ledger_file(path: Path) -> None:
    """Readers (``report``, ``focus``) open an existing ledger or say why not: they never create one.

    ``sqlite3.connect`` creates a missing file, which turned a typo in ``--storage`` into a 0-byte "ledger" and
    a traceback; this says what is wrong in one line instead.
    """
    if not path.exists():
        raise LedgerError(
            f"no ledger at {path}: run `otel-llm-receiver run` (or `demo`) first, or point --storage / "
            "storage.path at an existing ledger"
        )
    if not path.is_file():
        raise LedgerError(f"{path} is not a file, not a ledger")
    if path.stat().st_size == 0:
        raise LedgerError(f"{path} is empty, not a ledger (move it aside; `run` makes a new ledger)")


class LedgerEngine:
    """One connection to the ledger file and its lifecycle; ``LedgerWriter`` and ``LedgerReader`` build on it.

    A writer takes the single-writer lock, creates a missing ledger atomically and migrates it; a reader
    (``readonly``) attaches to an existing one with ``query_only``. One per thread: connections are not shared.
    """

    # What the writer may rely on, per engine (the PostgreSQL engine sets all three):
    #: Apply a poll in one range of the series it knows and one of the series it creates, not in ranges of
    #: ``writer.RANGE_POINTS`` points: SQLite's temp tables live in memory (ranges bound that), PostgreSQL's
    #: spill to disk, and its staging table has no index to read a range by.
    one_range: ClassVar[bool] = False
    #: An upsert costs a speculative insertion per row (and an additive one a sort of its source per key):
    #: where the writer can show that no row conflicts and no key repeats, it writes plain INSERTs instead.
    plain_inserts: ClassVar[bool] = False
    #: Integer overflow fails the statement (PostgreSQL's BIGINT), so no check for products that became floats.
    overflow_raises: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        #: Where the ledger is, for messages: the file (SQLite) or ``user@host:port/dbname`` (PostgreSQL).
        self.path: Path | str = Path(path)
        self._file = Path(path)
        self.readonly = readonly
        self._writer_lock: WriterLock | None = None
        self._lock = threading.Lock()
        if readonly:
            _check_ledger_file(self._file)
        try:
            self._connect(readonly)
        except BaseException:
            if self._writer_lock is not None:  # a writer that failed to open holds nothing
                self._writer_lock.release()
                self._writer_lock = None
            raise

    # -- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: cannot begin a transaction: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"ledger {self.path}: {exc}") from exc
            raise

    def _connect(self, readonly: bool) -> None:
        """Open (a writer: lock, create if missing, migrate) or attach read-only; every failure a LedgerError."""
        try:
            if not readonly:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                self._writer_lock = WriterLock(self._file)  # before creating or opening: one writer at a time
                if not self._file.exists():  # built beside, linked into place: never an empty file at path
                    create_atomically(self._file, self._initialise)
            self._conn = sqlite3.connect(
                str(self._file), isolation_level=None, timeout=30.0, check_same_thread=False
            )
            self._conn.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA temp_store = MEMORY")  # the per-poll staging tables
                self._migrate()
            else:
                self._conn.execute("PRAGMA query_only = ON")
                self._check_is_ledger()
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise LedgerError(f"{self.path} is not a receiver ledger (not an SQLite database)") from exc
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc.strerror or exc}") from exc

    def _check_is_ledger(self) -> None:
        """A reader must not guess at a database some other program made, nor at a newer schema."""
        found = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if found is None:
            raise LedgerError(f"{self.path} is an SQLite database but not a receiver ledger")
        newest = newest_version()
        if self.schema_version > newest:
            raise LedgerError(
                f"ledger {self.path} has schema version {self.schema_version}, newer than this release "
                f"understands ({newest}); upgrade otel-llm-receiver"
            )

    def _initialise(self, conn: sqlite3.Connection) -> None:
        """Make a new ledger on ``conn`` (``create_atomically`` runs this on the file built beside the path)."""
        self._conn = conn
        conn.execute("PRAGMA journal_mode = WAL")
        self._migrate()

    def _migrate(self) -> None:
        migrate(self._conn, self._file, self._transaction, lambda: str(uuid.uuid4()))

    @contextmanager
    def _read_transaction(self, what: str) -> Iterator[Connection]:
        """One read transaction (a consistent view across tables), under the connection's lock."""
        conn = self._conn
        with self._lock:
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self.path}: cannot read {what}: {exc}") from exc

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    # -- hooks where the engines differ (the PostgreSQL engine overrides them) ------------------------------
    def _fence(self, tx: Connection, instance: str, lease: Lease | None) -> None:
        """First statement of an apply's transaction: check the writer still holds ``instance``'s lease.

        SQLite has one writer (the file lock), so there is nothing to fence: a lease is refused, not ignored.
        """
        if lease is not None:
            raise ValueError(
                f"ledger {self.path}: a lease fence is for the shared PostgreSQL ledger; SQLite has one writer"
            )

    def _next_series_id(self, tx: Connection, max_id: int) -> int:
        """The id the next series inserted in this transaction will get (the writer plans with it; a wrong
        guess costs a remap, never a wrong total). SQLite: ``INTEGER PRIMARY KEY`` rows get max + 1, ...."""
        return max_id + 1
