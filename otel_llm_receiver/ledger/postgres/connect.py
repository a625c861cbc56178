"""Opening a connection to the shared PostgreSQL ledger (psycopg 3), and the one-line errors when that fails.

Why here and not at each caller: every replica connection needs the same things, and getting them wrong shows
only under failure: an ``application_name`` (so a DBA sees which replica holds a lock in ``pg_stat_activity``),
a ``connect_timeout`` (an unreachable host must not hang a poll), a ``statement_timeout`` and ``lock_timeout``
(a stuck lock must fail an apply, which retries, rather than stall it past its lease), and errors that say in
one line what is wrong (unreachable, authentication, TLS, no such database, server starting or stopping) with
the DSN's password redacted (DESIGN.md invariant 7).

Settings (the timeouts, and any ``-c name=value`` of the DSN's own ``options``) are applied with one
``set_config`` statement right after connecting, not as the ``options`` startup parameter: the effect is the same,
and a connection pooler passes it, where PgBouncer refuses any connection that sends ``options``
(``unsupported startup parameter``). An ``options`` value that is not only such settings is sent as it is.

psycopg is an extra (``pip install 'otel-llm-receiver[postgresql]'``): importing this module without it raises
one ``LedgerError`` saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from ...config_storage import dsn_password, parse_dsn, redact_dsn
from ...errors import LedgerError

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.pq import TransactionStatus
except ImportError as e:  # pragma: no cover - the test extra installs psycopg
    raise LedgerError(
        "storage.backend postgresql needs psycopg 3: pip install 'otel-llm-receiver[postgresql]'"
    ) from e

__all__ = [
    "DEFAULT_APPLICATION_NAME",
    "PgConnection",
    "PostgresConnectError",
    "Timeouts",
    "TransactionStatus",
    "classify",
    "connect",
    "scrub",
    "settings_of",
    "target",
]

#: Rows are tuples: the ledger's SQL names its columns and reads them by position, as it does on SQLite.
PgConnection: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"
DEFAULT_APPLICATION_NAME: Final = "otel-llm-receiver"
FailureKind = Literal["unreachable", "auth", "ssl", "database", "unavailable", "other"]

# libpq's messages, by what the user has to fix (their wording has been stable since PostgreSQL 9).
_MESSAGES: Final[tuple[tuple[FailureKind, tuple[str, ...], str], ...]] = (
    ("auth", ("password authentication failed", "no password supplied", "pg_hba.conf rejects",
              "role \"", "authentication failed", "fe_sendauth"),
     "check storage.dsn's user and password, and the server's pg_hba.conf"),
    ("ssl", ("ssl", "certificate", "tls"),
     "check sslmode and the certificates in storage.dsn against the server's TLS setup"),
    ("database", ("database \"",),
     "create the database or fix dbname in storage.dsn"),
    ("unavailable", ("starting up", "shutting down", "too many clients", "remaining connection slots",
                     "in recovery", "not yet accepting"),
     "the server is up but not accepting this connection now; retrying"),
    ("unreachable", ("connection refused", "could not translate host name", "timeout expired",
                     "no route to host", "network is unreachable", "could not connect", "connection timed out",
                     "name or service not known", "server closed the connection", "no such file or directory"),
     "check host and port in storage.dsn and that PostgreSQL is running and reachable"),
)


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, for one statement, and to wait for a lock before failing (0: no limit)."""

    connect: float = 10.0
    statement: float = 30.0
    lock: float = 10.0


class PostgresConnectError(LedgerError):
    """The ledger database could not be reached. ``kind`` says what to fix; ``retryable`` whether waiting may help.

    The message is one line naming the target (``user@host:port/dbname``), never the password.
    """

    def __init__(self, message: str, *, kind: FailureKind) -> None:
        self.kind: FailureKind = kind
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        return self.kind in ("unreachable", "unavailable")


def target(dsn: str) -> str:
    """``user@host:port/dbname`` of ``dsn`` for messages (no password); libpq's defaults left unsaid."""
    try:
        keywords = parse_dsn(dsn)
    except ValueError:
        return redact_dsn(dsn)
    where = keywords.get("host") or keywords.get("hostaddr") or "(local socket)"
    if keywords.get("port"):
        where += f":{keywords['port']}"
    if keywords.get("dbname"):
        where += f"/{keywords['dbname']}"
    return f"{keywords['user']}@{where}" if keywords.get("user") else where


def classify(error: BaseException) -> tuple[FailureKind, str]:
    """The kind of a connection failure and libpq's own reason, cut to one line."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    # Multi-host libpq messages read 'connection to server at "h" (1.2.3.4), port 5432 failed: REASON'.
    if "failed: " in reason:
        reason = reason.rsplit("failed: ", 1)[1]
    lowered = text.lower()
    for kind, needles, _ in _MESSAGES:
        if any(needle in lowered for needle in needles):
            return kind, reason
    return "other", reason


def _hint(kind: FailureKind) -> str:
    for candidate, _, hint in _MESSAGES:
        if candidate == kind:
            return hint
    return "check storage.dsn"


def scrub(text: str, dsn: str) -> str:
    for secret in dsn_password(dsn):
        text = text.replace(secret, "<redacted>")
    return text


def conninfo(dsn: str, *, application_name: str = DEFAULT_APPLICATION_NAME,
             timeouts: Timeouts = Timeouts()) -> str:
    """``dsn`` with our defaults added: the DSN's own ``application_name`` and ``connect_timeout`` win; the
    statement and lock timeouts are appended to its ``options`` (so a DSN's own ``-c`` settings stay)."""
    keywords = parse_dsn(dsn)
    extra: dict[str, Any] = {}
    if "application_name" not in keywords:
        extra["application_name"] = application_name
    if "connect_timeout" not in keywords and timeouts.connect > 0:
        extra["connect_timeout"] = max(1, round(timeouts.connect))
    settings = [f"-c statement_timeout={round(timeouts.statement * 1000)}",
                f"-c lock_timeout={round(timeouts.lock * 1000)}"]
    extra["options"] = " ".join([keywords["options"], *settings] if keywords.get("options") else settings)
    return make_conninfo(dsn.strip(), **extra)


_SETTING: Final = re.compile(r"^(?:-c|--)?([A-Za-z_][A-Za-z0-9_.]*)=(\S+)$")


def settings_of(options: str) -> list[tuple[str, str]] | None:
    """``options`` (``-c a=1 -c b=2``, ``-ca=1``, ``--a=1``) as (name, value) pairs; None when it holds anything
    else (backslash-escaped spaces, other switches): then it is left to the server as a startup parameter."""
    tokens = options.split()
    settings: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "-c" and i + 1 < len(tokens):
            token = tokens[i + 1]
            i += 1
        elif not token.startswith(("-c", "--")) or "\\" in token:
            return None
        match = _SETTING.match(token[2:] if token.startswith("-c") and len(token) > 2 else token)
        if match is None or "\\" in token:
            return None
        settings.append((match.group(1), match.group(2)))
        i += 1
    return settings


def connect(
    dsn: str,
    *,
    application_name: str = DEFAULT_APPLICATION_NAME,
    timeouts: Timeouts = Timeouts(),
    autocommit: bool = False,
) -> PgConnection:
    """One connection to the ledger database, or ``PostgresConnectError`` in one line (password redacted)."""
    try:
        info = conninfo(dsn, application_name=application_name, timeouts=timeouts)
    except ValueError as e:
        raise PostgresConnectError(f"PostgreSQL DSN {redact_dsn(dsn)}: {e}", kind="other") from None
    keywords = conninfo_to_dict(info)
    settings = settings_of(str(keywords.get("options") or ""))
    if settings is not None:  # SET after connecting: what a pooler passes (see the module's docstring)
        keywords.pop("options", None)
        info = make_conninfo("", **keywords)
    try:
        conn = psycopg.connect(info, autocommit=autocommit)
    except psycopg.OperationalError as e:
        kind, reason = classify(e)
        message = f"PostgreSQL ledger at {target(dsn)}: {scrub(reason, dsn)} ({_hint(kind)})"
        raise PostgresConnectError(message, kind=kind) from None
    if settings:
        try:
            conn.execute("SELECT " + ", ".join(["set_config(%s, %s, false)"] * len(settings)),
                         [part for setting in settings for part in setting])
            if not autocommit:
                conn.commit()
        except psycopg.Error as e:
            conn.close()
            reason = " ".join(str(e).split()) or type(e).__name__
            raise PostgresConnectError(
                f"PostgreSQL ledger at {target(dsn)}: a setting of the connection failed: {scrub(reason, dsn)} "
                "(check the options in storage.dsn)", kind="other") from None
    return conn
