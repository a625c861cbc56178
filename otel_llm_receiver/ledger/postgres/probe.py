"""``check --connect`` on a PostgreSQL ledger: is the database reachable, and is its schema one `run` can use?

Why read-only: ``check`` must leave nothing behind on a fresh host (connect.py), so this reads the schema version
(``to_regclass`` and one SELECT, no migration lock, no table created) and says what ``run`` would do with it:
current, older (migrated at start), none yet (created at start) or newer (refused); and whether it is reached
through a pooler in transaction mode (refused by ``run``: ``pooler.py``). Every message names the target as
``user@host:port/dbname``, never the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ...errors import ErrorType, LedgerError
from .connect import PostgresConnectError, Timeouts, connect, scrub, target
from .pooler import SESSION_POOLING_REQUIRED, sessions_pinned
from .schema import newest_version, schema_version

__all__ = ["SchemaProbe", "probe_schema"]

#: A check answers in seconds: an unreachable host fails after this, not after libpq's default.
PROBE_TIMEOUTS: Final = Timeouts(connect=5.0, statement=10.0, lock=5.0)


@dataclass(frozen=True)
class SchemaProbe:
    """One line's worth: ``ok`` and what was found, or ``kind`` (``network``, ``auth``, ``config``) of a failure."""

    ok: bool
    message: str
    kind: ErrorType = "config"


def probe_schema(dsn: str) -> SchemaProbe:
    """Connect to ``dsn`` and compare its schema version with this release's; never raises for a database state."""
    where = target(dsn)
    try:
        conn = connect(dsn, application_name="otel-llm-receiver check", timeouts=PROBE_TIMEOUTS)
    except PostgresConnectError as e:
        kind: ErrorType = "network" if e.retryable else "auth" if e.kind == "auth" else "config"
        return SchemaProbe(False, str(e), kind)
    try:
        version = schema_version(conn)
    except LedgerError as e:
        return SchemaProbe(False, f"PostgreSQL ledger at {where}: {e}", "config")
    except Exception as e:  # psycopg's errors (permission denied, ...): one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return SchemaProbe(False, f"PostgreSQL ledger at {where}: cannot read the schema version: {reason}", "config")
    finally:
        conn.close()
    try:
        pinned = sessions_pinned(dsn, timeouts=PROBE_TIMEOUTS)
    except Exception as e:  # connected once already: a failure here is the pooler's or the server's, one line
        reason = " ".join(str(e).split()) or type(e).__name__
        return SchemaProbe(False, f"PostgreSQL ledger at {where}: {scrub(reason, dsn)}", "config")
    if not pinned:  # `run` refuses it: say so now
        return SchemaProbe(False, f"PostgreSQL ledger at {where}: {SESSION_POOLING_REQUIRED}", "config")
    newest = newest_version()
    if version is None:
        return SchemaProbe(True, f"{where} reachable, no ledger schema yet (created at start)")
    if version == newest:
        return SchemaProbe(True, f"{where} reachable, schema version {version} current")
    if version < newest:
        return SchemaProbe(True, f"{where} reachable, schema version {version} older than {newest}"
                                 " (will be migrated at start)")
    return SchemaProbe(False, f"{where} has schema version {version}, newer than this release understands ({newest}):"
                              " `run` refuses it; upgrade otel-llm-receiver", "config")
