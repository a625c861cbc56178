"""The ledger on PostgreSQL: the writer's and reader's own SQL through a thin sqlite3-like connection adapter.

Why an adapter and not a second writer: the accounting (writer.py, reader.py) must be the same code on both
engines. ``PgAdapter`` gives them what they use of ``sqlite3.Connection`` (``execute``/``executemany`` returning
cursors with ``fetchone``/``fetchall``/``fetchmany``/iteration/``rowcount``, ``in_transaction``), translating
each statement once (``dialect.translate``). What truly differs lives in ``PostgresEngine``'s hooks:

* transactions: autocommit between them, ``BEGIN`` (READ COMMITTED) for a write; a reader's consistent view is
  ``REPEATABLE READ READ ONLY``. Writers of different instances run concurrently on different replicas: the
  lease fence (``leases.fence``, first in every fenced apply) locks the instance's lease row, so two applies
  of one instance never overlap, and series ids come from the identity sequence, never from ``max(id) + 1``
  (``_next_series_id`` only *predicts* them from the sequence; the writer remaps when another replica took
  ids in between, so ids never collide);
* staging: one binary ``COPY`` per slice into an unindexed temp table, summed per bucket into ``staged`` (itself
  unindexed, in key order) by one statement, instead of many multi-row INSERTs (round trips); only sorted where
  the planner knows no two points share a key (``PointPlanner.distinct``, the usual poll);
* what the writer may rely on (``one_range``, ``plain_inserts``, ``overflow_raises``): a poll is applied in one
  range (temp tables spill to disk: no working set to bound), points of new series are inserted without upserts
  where no key can repeat (an upsert costs a speculative insertion per row), and BIGINT overflow fails the
  statement; prior values are looked up one key probe per point (``_keep_changed``), never by reading all of
  ``buckets``;
* errors: every psycopg error becomes one ``LedgerError`` line naming ``user@host:port/dbname`` (never the
  password). A lost connection (server restarted, backend terminated) is ``PostgresConnectionLost``
  (retryable); the next call reconnects, so the scheduler's next poll succeeds;
* temp tables exist per connection: created once (the adapter remembers them, and forgets those created in a
  rolled-back transaction or on a lost connection).

psycopg's server-side prepared statements are off (``prepare_threshold = None``): a pooler in transaction mode
(PgBouncer) may hand each transaction another backend, where a prepared statement does not exist.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors

from ...errors import LedgerError
from .. import Ledger
from ..engine import Connection, LedgerEngine
from .connect import PgConnection, Timeouts, TransactionStatus, connect, target
from .dialect import translate
from .leases import Lease, fence
from .schema import migrate, newest_version, schema_version

__all__ = ["PgAdapter", "PostgresConnectionLost", "PostgresLedger"]

_TEMP_TABLE = re.compile(r"CREATE\s+TEMP(?:ORARY)?\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)
SQL_SEQUENCE = "SELECT pg_get_serial_sequence('series', 'id')"
SQL_STAGE_IN = """
CREATE TEMP TABLE IF NOT EXISTS staged_in (
    series_id BIGINT NOT NULL, bucket_start BIGINT NOT NULL, bucket_width BIGINT NOT NULL, value BIGINT NOT NULL)"""
SQL_COPY_STAGE_IN = "COPY staged_in (series_id, bucket_start, bucket_width, value) FROM STDIN (FORMAT BINARY)"
# COPY's binary format (PostgreSQL docs, "COPY", "Binary Format"): a signature, flags and header extension
# length, then per row a 16-bit field count and per field a 32-bit length and the big-endian BIGINT; a 16-bit
# -1 ends it. Packed a block of rows per ``struct`` call: 300k points in 0.08 s of Python, not the 0.14 s their
# text took, and the backend reads BIGINTs without parsing digits.
_COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER: Final = b"\xff\xff"
_COPY_ROW: Final = "hiqiqiqiq"
_COPY_BLOCK: Final = 1000
_COPY_BLOCK_STRUCT: Final = struct.Struct(">" + _COPY_ROW * _COPY_BLOCK)
# ``staged`` here has no primary key: the writer applies a poll in one range (``one_range``), so every statement
# reads it whole, and building a 300k-point index cost more backend CPU (1.0 s) than the rest of the staging
# (0.66 s). Each key is in it once all the same: the points are summed per bucket on the way in (parts of one
# bucket add up, as SQLite's staging upsert does), in key order (ORDER BY), so the writer's inserts into
# buckets and rollups come in key order too (a hash aggregate's order cost ~35% more backend CPU there).
SQL_CREATE_STAGED = """
CREATE TEMP TABLE IF NOT EXISTS staged (
    series_id BIGINT NOT NULL, bucket_start BIGINT NOT NULL, bucket_width BIGINT NOT NULL, value BIGINT NOT NULL)"""
SQL_CLEAR_STAGED = "TRUNCATE staged"
# Points move to the ids their new series really got, all in one statement (an old id may be another's new id).
SQL_REMAP_STAGED = (
    "UPDATE staged SET series_id = remap.new FROM remap WHERE staged.series_id = remap.old",
    "DELETE FROM remap",
)
SQL_SUM_STAGE_IN = """
INSERT INTO staged (series_id, bucket_start, bucket_width, value)
SELECT series_id, bucket_start, bucket_width, CAST(sum(value) AS BIGINT) FROM staged_in
GROUP BY series_id, bucket_start, bucket_width ORDER BY series_id, bucket_start, bucket_width"""
# Where the planner knows no two points share a key (``PointPlanner.distinct``: each identity's records in
# increasing bucket starts, as providers report them), only the order is needed: a sort without the aggregate
# (100k records: 0.2-0.3 s of backend CPU less, the aggregate's per-group sums cost more than the sort).
SQL_SORT_STAGE_IN = """
INSERT INTO staged (series_id, bucket_start, bucket_width, value)
SELECT series_id, bucket_start, bucket_width, value FROM staged_in
ORDER BY series_id, bucket_start, bucket_width"""
# Points staged again after ``staged`` was filled (no apply does: its slices are all COPYed before its next
# statement) go back into ``staged_in`` with them, and are summed anew.
SQL_STAGED_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM staged)"
SQL_RESTAGE = "INSERT INTO staged_in SELECT series_id, bucket_start, bucket_width, value FROM staged"
SQL_CLEAR_STAGE_IN = "TRUNCATE staged_in"
SQL_ANALYZE_STAGED = "ANALYZE staged"
_LOST: Final = (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow)


class PostgresConnectionLost(LedgerError):
    """The connection to the ledger database broke (server restarted or unreachable); the next call
    reconnects. Retryable: nothing of the transaction in flight was committed."""

    retryable = True


_INSERT_VALUES = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>\w+)\s*(?P<cols>\([^()]*\))?\s*VALUES\s*\((?P<values>[^()]*)\)\s*(?P<tail>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_CONFLICT_KEYS = re.compile(r"ON\s+CONFLICT\s*\((?P<keys>[^()]*)\)\s*DO\s+UPDATE", re.IGNORECASE)


def _column_type(values: Sequence[Any]) -> str | None:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int}:
        return "BIGINT"
    if kinds == {str}:
        return "TEXT"
    return None


@functools.lru_cache(maxsize=64)
def _unnest_sql(sql: str, types: tuple[str, ...]) -> str | None:
    match = _INSERT_VALUES.match(sql)
    if match is None:
        return None
    items = [item.strip() for item in match.group("values").split(",")]
    if sum(item == "?" for item in items) != len(types):
        return None
    names = iter(f"c{i}" for i in range(len(types)))
    select = ", ".join(next(names) if item == "?" else item for item in items)
    arrays = ", ".join(f"CAST(? AS {t}[])" for t in types)
    columns = ", ".join(f"c{i}" for i in range(len(types)))
    return (f"INSERT INTO {match.group('table')} {match.group('cols') or ''} SELECT {select} "
            f"FROM unnest({arrays}) AS u ({columns}) {match.group('tail')}")


def _as_unnest(sql: str, rows: list[Any]) -> tuple[str, list[str]] | None:
    """``INSERT ... VALUES (?, ...)`` over ``rows`` as one ``INSERT ... SELECT FROM unnest(...)``, or None when
    it cannot be one statement: not that shape, columns of mixed types, or an upsert whose conflict key repeats
    (PostgreSQL updates a row once per statement; executemany applies repeats one after the other)."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    types = tuple(_column_type(c) for c in columns)
    if not columns or None in types:
        return None
    batched = _unnest_sql(sql, types)
    if batched is None:
        return None
    conflict = _CONFLICT_KEYS.search(sql)
    if conflict is not None:
        match = _INSERT_VALUES.match(sql)
        assert match is not None
        names = [c.strip() for c in (match.group("cols") or "")[1:-1].split(",")]
        keys = [c.strip() for c in conflict.group("keys").split(",")]
        if not set(keys) <= set(names):
            return None
        at = [names.index(k) for k in keys]
        if len({tuple(row[i] for i in at) for row in rows}) != len(rows):
            return None
    return batched, [_array_literal(c, t) for c, t in zip(columns, types, strict=True)]


def _array_literal(values: list[Any], kind: str | None) -> str:
    """A PostgreSQL array literal of ``values`` (psycopg adapts a list element by element in Python: 2,500
    series' five columns took ~0.1 s; one joined string per column takes a millisecond)."""
    if kind == "BIGINT":
        return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"
    return "{" + ",".join(
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _binary_copy(rows: Sequence[tuple[int, int, int, int]]) -> bytes:
    """``rows`` as a whole binary COPY stream."""
    out = [_COPY_SIGNATURE]
    for i in range(0, len(rows), _COPY_BLOCK):
        args: list[int] = []
        extend = args.extend
        for a, b, c, d in rows[i:i + _COPY_BLOCK]:
            extend((4, 8, a, 8, b, 8, c, 8, d))
        packer = (_COPY_BLOCK_STRUCT if len(args) == 9 * _COPY_BLOCK
                  else struct.Struct(">" + _COPY_ROW * (len(args) // 9)))
        out.append(packer.pack(*args))
    out.append(_COPY_TRAILER)
    return b"".join(out)


class PgAdapter:
    """One PostgreSQL connection with the part of ``sqlite3.Connection``'s surface the ledger uses.

    Reconnects on the first call after the connection was lost (never inside a transaction: that one is gone).
    """

    def __init__(self, dsn: str, *, application_name: str, timeouts: Timeouts | None = None) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._timeouts = Timeouts() if timeouts is None else timeouts
        self.where = target(dsn)
        self._raw: PgConnection | None = None
        self._temp: set[str] = set()  # temp tables this session has (committed)
        self._temp_pending: set[str] = set()  # created by the transaction in flight
        #: Points were COPYed into ``staged_in`` and are summed into ``staged`` before the next statement.
        self.staging = False
        #: No two points in ``staged_in`` share a key (the writer says so once every slice is COPYed): sorted
        #: into ``staged`` without summing. Reset by every flush and rollback, so it never outlives one poll.
        self.distinct = False
        self.connect()

    # -- connection lifecycle --------------------------------------------------------------------------------
    def connect(self) -> PgConnection:
        if self._raw is not None and not self._raw.closed:
            return self._raw
        raw = connect(self._dsn, application_name=self._application_name, timeouts=self._timeouts,
                      autocommit=True)
        raw.prepare_threshold = None  # no server-side prepared statements: poolers in transaction mode
        # The per-poll staging tables live in temp buffers (8 MB by default: a 100k-row poll spilled to files).
        # Settable only before the session's first temp table, so here; memory is used only as tables fill.
        try:
            raw.execute("SET temp_buffers = '64MB'")
            # Sums and sorts of a poll's points in memory (4 MB by default: a 100k-row poll spilled to disk).
            raw.execute("SET work_mem = '64MB'")
        except psycopg.Error as exc:
            raw.close()
            raise self.error(exc) from exc
        self._raw = raw
        self._temp.clear()
        self._temp_pending.clear()
        return raw

    @property
    def raw(self) -> PgConnection:
        """The psycopg connection (connected if it was lost and no transaction is open)."""
        if self._raw is None or self._raw.closed:
            return self.connect()
        return self._raw

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    @property
    def in_transaction(self) -> bool:
        return self._raw is not None and not self._raw.closed and (
            self._raw.info.transaction_status != TransactionStatus.IDLE)

    def begin(self, statement: str = "BEGIN") -> None:
        self.execute(statement)

    def commit(self) -> None:
        self.execute("COMMIT")
        self._temp |= self._temp_pending
        self._temp_pending.clear()

    def rollback(self) -> None:
        self._temp_pending.clear()
        self.staging = False
        self.distinct = False
        raw = self._raw
        if raw is None or raw.closed:
            return
        try:
            raw.execute("ROLLBACK")
        except psycopg.Error:  # the connection is gone: so is the transaction
            self._lost()

    def _lost(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(psycopg.Error):  # closing a broken socket
                self._raw.close()
        self._raw = None
        self._temp.clear()
        self._temp_pending.clear()

    # -- statements ------------------------------------------------------------------------------------------
    def error(self, exc: BaseException) -> LedgerError:
        """One line for a failed statement; a lost connection is marked so the next call reconnects."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (
            isinstance(exc, _LOST) or self._raw is None or self._raw.closed or self._raw.broken
        ):
            self._lost()
            return PostgresConnectionLost(
                f"PostgreSQL ledger at {self.where}: connection lost ({reason}); will reconnect and retry")
        if isinstance(exc, pg_errors.NumericValueOutOfRange):
            return LedgerError(
                f"PostgreSQL ledger at {self.where}: a value exceeds 64-bit integers ({reason}); "
                "nothing of this transaction was applied")
        return LedgerError(f"PostgreSQL ledger at {self.where}: {reason}")

    def _flush_staging(self) -> None:
        self.staging = False
        distinct, self.distinct = self.distinct, False
        row = self.execute(SQL_STAGED_EMPTY).fetchone()
        if row is None or not row[0]:
            self.execute(SQL_RESTAGE)
            self.execute(SQL_CLEAR_STAGED)
            distinct = False  # the points already there may share keys with the new ones
        if distinct:
            self.execute(SQL_SORT_STAGE_IN)
            self.execute(SQL_CLEAR_STAGE_IN)
            return
        # Sort then aggregate: staged_in has no statistics, so the planner guesses 10% distinct keys and picks a
        # hash aggregate and a sort of its output; a poll's keys are mostly distinct, and one sort of the input
        # costs less (100k records: 0.85 s of backend CPU, not 1.1 s). Scoped to this statement.
        self.execute("SET LOCAL enable_hashagg = off")
        self.execute(SQL_SUM_STAGE_IN)
        self.execute("SET LOCAL enable_hashagg = on")
        self.execute(SQL_CLEAR_STAGE_IN)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> psycopg.Cursor[Any]:
        if self.staging and sql is not SQL_STAGE_IN:
            self._flush_staging()
        temp = _TEMP_TABLE.match(sql.lstrip())
        raw = self.raw
        if temp is not None:
            name = temp.group(1).lower()
            if name in self._temp or name in self._temp_pending:
                return raw.cursor()  # exists on this connection: no round trip, no NOTICE
            (self._temp_pending if self.in_transaction else self._temp).add(name)
        try:
            return raw.execute(translate(sql), params)
        except psycopg.Error as exc:
            raise self.error(exc) from exc

    def executemany(self, sql: str, rows: Any) -> None:
        """``sql`` for each row. An ``INSERT ... VALUES`` of many rows is one statement over ``unnest`` of one
        array per column (one round trip and one plan instead of one per row: 2,500 new series took 0.2 s)."""
        if self.staging:
            self._flush_staging()
        rows = rows if isinstance(rows, list) else list(rows)
        batched = _as_unnest(sql, rows) if len(rows) > 1 else None
        try:
            if batched is not None:
                self.raw.execute(translate(batched[0]), batched[1])
                return
            with self.raw.cursor() as cur:
                cur.executemany(translate(sql), rows)
        except psycopg.Error as exc:
            raise self.error(exc) from exc

    def copy_rows(self, sql: str, rows: Sequence[tuple[int, int, int, int]]) -> None:
        """``COPY ... FROM STDIN (FORMAT BINARY)`` of rows of four BIGINTs (one write per call)."""
        try:
            data = _binary_copy(rows)
        except struct.error as exc:  # as PostgreSQL would refuse it in text
            raise LedgerError(
                f"PostgreSQL ledger at {self.where}: a value exceeds 64-bit integers ({exc}); "
                "nothing of this transaction was applied") from exc
        try:
            with self.raw.cursor() as cur, cur.copy(sql) as copy:
                copy.write(data)
        except psycopg.Error as exc:
            raise self.error(exc) from exc


class PostgresEngine(LedgerEngine):
    """``LedgerEngine`` on PostgreSQL: its lifecycle, transactions and hooks (below ``LedgerWriter`` and
    ``LedgerReader`` in ``PostgresLedger``'s MRO, so every engine method resolves here)."""

    one_range = True
    plain_inserts = True
    overflow_raises = True

    _conn: Any
    _application_name: str = "otel-llm-receiver"

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        dsn = self._dsn = str(path)  # a secret (its password): never in a message, only to connect again
        application_name = self._application_name
        self.path = target(dsn)
        self.readonly = readonly
        self._writer_lock = None
        self._lock = threading.Lock()
        self._sequence: str | None = None
        #: The lease epoch of each instance's last fenced apply: another epoch means another replica may have
        #: created series meanwhile, so the writer's cache of the instance's series ids is dropped.
        self._epochs: dict[str, int] = {}
        self._conn = PgAdapter(dsn, application_name=application_name)
        try:
            if readonly:
                self._check_is_ledger()
            else:
                try:
                    migrate(self._conn.raw)
                except psycopg.Error as exc:
                    raise self._conn.error(exc) from exc
        except BaseException:
            self._conn.close()
            raise

    def _check_is_ledger(self) -> None:
        try:
            version = schema_version(self._conn.raw)
        except psycopg.Error as exc:
            raise self._conn.error(exc) from exc
        if version is None:
            raise LedgerError(f"PostgreSQL ledger at {self.path} has no ledger tables: run `otel-llm-receiver run` "
                              "(it migrates at start) or `ledger copy` first")
        if version > newest_version():
            raise LedgerError(f"PostgreSQL ledger at {self.path} has schema version {version}, newer than this "
                              f"release understands ({newest_version()}); upgrade otel-llm-receiver")

    def close(self) -> None:
        self._conn.close()

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        conn: PgAdapter = self._conn
        if conn.in_transaction:  # pragma: no cover - a bug, not a state the ledger reaches
            raise LedgerError(f"PostgreSQL ledger at {self.path}: a transaction is already open")
        conn.begin()
        try:
            yield conn  # type: ignore[misc]
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    @contextmanager
    def _read_transaction(self, what: str) -> Iterator[Connection]:
        conn: PgAdapter = self._conn
        with self._lock:
            conn.begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn  # type: ignore[misc]
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    # -- writer hooks ----------------------------------------------------------------------------------------
    def _fence(self, tx: Connection, instance: str, lease: Lease | None) -> None:
        if lease is None:
            return
        if lease.name != instance:
            raise ValueError(f"the fence's lease is {lease.name!r}, not the applied instance {instance!r}")
        adapter: PgAdapter = tx  # type: ignore[assignment]
        try:
            fence(adapter.raw, lease.name, lease.epoch, lease.holder)
        except psycopg.Error as exc:
            raise adapter.error(exc) from exc
        if self._epochs.get(instance) != lease.epoch:
            self._epochs[instance] = lease.epoch
            self._series_ids.pop(instance, None)  # type: ignore[attr-defined]

    def _next_series_id(self, tx: Connection, max_id: int) -> int:
        """The identity sequence's next value (peeked, not taken): what the series this apply inserts get
        unless another replica inserts series meanwhile (then the writer remaps; ids never collide)."""
        if self._sequence is None:
            self._sequence = str(tx.execute(SQL_SEQUENCE).fetchone()[0])
        row = tx.execute(f"SELECT last_value, is_called FROM {self._sequence}").fetchone()
        following = int(row[0]) + 1 if row[1] else int(row[0])
        return max(following, max_id + 1)



class PostgresLedger(Ledger, PostgresEngine):
    """``Ledger`` on a PostgreSQL database: the same public API, the same SQL, the engine hooks above.

    MRO: ``Ledger``, ``LedgerWriter``, ``LedgerReader``, ``PostgresEngine``, ``LedgerEngine``: the writer's and
    reader's methods are the shared ones, and every engine method resolves to PostgreSQL's.
    """

    def __init__(self, dsn: str, *, readonly: bool = False,
                 application_name: str = "otel-llm-receiver") -> None:
        self._application_name = application_name
        super().__init__(dsn, readonly=readonly)

    # Here, not in PostgresEngine: ``LedgerWriter``'s staging comes before the engine in the MRO.
    _create_staged = SQL_CREATE_STAGED
    _clear_staged = SQL_CLEAR_STAGED
    _remap_staged = SQL_REMAP_STAGED
    _stages_distinct = True
    # Temp tables get no autovacuum statistics: the look-up of prior values (a join with buckets) is planned
    # with them. A poll of new series only never looks up, and skips it.
    _analyze_staged = SQL_ANALYZE_STAGED

    def _keep_changed(self, tx: Connection, span: Mapping[str, int]) -> int:
        """The look-up of prior values by the buckets' primary key, one probe per staged point, never a hash or
        merge join: those read all of ``buckets`` (a steady poll of 60k points against 900k buckets: 0.9 s of
        backend CPU, growing with the ledger; probed: flat). Scoped to this statement."""
        tx.execute("SET LOCAL enable_hashjoin = off")
        tx.execute("SET LOCAL enable_mergejoin = off")
        try:
            return super()._keep_changed(tx, span)
        finally:
            tx.execute("SET LOCAL enable_hashjoin = on")
            tx.execute("SET LOCAL enable_mergejoin = on")

    def _staged_all(self, tx: Connection, *, distinct: bool) -> None:
        """The poll's points are all COPYed; ``distinct`` ones are sorted into ``staged`` without summing."""
        adapter: PgAdapter = tx  # type: ignore[assignment]
        adapter.distinct = distinct and adapter.staging

    def _stage(self, tx: Connection, rows: Sequence[tuple[int, int, int, int]]) -> None:
        """COPY the slice into an unindexed table; the adapter sums it per bucket into ``staged`` (parts of one
        bucket add up, as SQLite's staging upsert does) in one statement just before the next statement of the
        apply, so a poll of many slices is summed once, without conflict handling, instead of once per slice."""
        adapter: PgAdapter = tx  # type: ignore[assignment]
        adapter.execute(SQL_STAGE_IN)
        adapter.copy_rows(SQL_COPY_STAGE_IN, rows)
        adapter.staging = True
