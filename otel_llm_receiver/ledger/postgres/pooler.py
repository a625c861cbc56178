"""Refusing a connection pooler in transaction (or statement) mode at start, in one line that names the fix.

Why refuse rather than run: the receiver keeps state in each PostgreSQL *session*: the apply's temporary staging
tables (created once per connection), its settings (``statement_timeout``, ``lock_timeout``,
``idle_in_transaction_session_timeout``, ``work_mem``, set once per connection), and one connection per role
(applies, leases, exports, ``/health``). A pooler in transaction mode (PgBouncer ``pool_mode = transaction``)
hands each transaction whichever server connection is free, so that state would be missing, or another
client's, at the next transaction. Through PgBouncer in ``pool_mode = session`` (a client keeps its server
connection until it disconnects) the receiver works as on a direct connection.

How it is told apart: a pooler in transaction mode gives a client's consecutive transactions different server
connections, or one server connection to two clients (PgBouncer reuses the server connection released last, so
two clients taking turns get the same one). Two connections each ask ``pg_backend_pid()`` three times, taking
turns; in session mode or directly each keeps one backend of its own. A false alarm cannot happen (a pinned
session never changes backend); a pooler configured to rotate servers under heavy load from other clients could
escape the check, which is why docs/deployment.md says which mode to use.
"""

from __future__ import annotations

from typing import Final

from ...errors import LedgerError
from .connect import Timeouts, connect, scrub, target

__all__ = ["SESSION_POOLING_REQUIRED", "require_session_connections", "sessions_pinned"]

ROUNDS: Final = 3
APPLICATION_NAME: Final = "otel-llm-receiver pool check"
SESSION_POOLING_REQUIRED: Final = (
    "its connections go through a pooler in transaction or statement mode (one client connection was served by "
    "several server connections): the receiver keeps session state (temporary staging tables, per-connection "
    "settings, its lease connection); set pool_mode = session for this database in PgBouncer, or connect to "
    "PostgreSQL directly (docs/deployment.md, high availability)")


def sessions_pinned(dsn: str, *, timeouts: Timeouts | None = None) -> bool:
    """True when two connections to ``dsn`` each keep one server backend of their own (directly, or through a
    pooler in session mode); False through a pooler in transaction or statement mode."""
    timeouts = timeouts or Timeouts(connect=10.0, statement=10.0, lock=5.0)
    first = connect(dsn, application_name=APPLICATION_NAME, timeouts=timeouts, autocommit=True)
    try:
        second = connect(dsn, application_name=APPLICATION_NAME, timeouts=timeouts, autocommit=True)
        try:
            seen: tuple[set[int], set[int]] = (set(), set())
            for _ in range(ROUNDS):
                for conn, pids in ((first, seen[0]), (second, seen[1])):
                    row = conn.execute("SELECT pg_backend_pid()").fetchone()
                    assert row is not None
                    pids.add(int(row[0]))
        finally:
            second.close()
    finally:
        first.close()
    return len(seen[0]) == 1 and len(seen[1]) == 1 and not seen[0] & seen[1]


def require_session_connections(dsn: str) -> None:
    """Raise ``LedgerError`` (one line, the password never in it) unless ``sessions_pinned(dsn)``."""
    try:
        pinned = sessions_pinned(dsn)
    except LedgerError:
        raise
    except Exception as exc:  # psycopg's errors on a statement (a pooler refusing it, ...): one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise LedgerError(f"PostgreSQL ledger at {target(dsn)}: {scrub(reason, dsn)}") from None
    if not pinned:
        raise LedgerError(f"PostgreSQL ledger at {target(dsn)}: {SESSION_POOLING_REQUIRED}")
