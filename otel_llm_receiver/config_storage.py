"""The ``storage`` section: which engine holds the ledger (SQLite file or shared PostgreSQL) and for how long.

Why its own module: the PostgreSQL DSN needs a form check and a redaction that the ledger's PostgreSQL connector
uses too (an error about an unreachable database must name the host, never the password), and the config layer
must not import the ledger (tests/test_layers.py). So the DSN's grammar lives here, below both.

Shape (docs/configuration.md)::

    storage:
      backend: postgresql          # sqlite (default) | postgresql
      dsn: ${env:LEDGER_DSN}       # postgresql://user:pass@host:5432/llm_ledger?sslmode=require, or key=value
      lease_duration: 30s          # 5s .. 10m: how long a replica owns a provider instance without renewing it
      retention: 90d
    storage: {path: ./otel-llm-data/ledger.db, retention: 90d}   # sqlite

A DSN's password (in the URI's user info, a ``password`` query parameter or a ``password=`` keyword) is recorded
as a secret: redacted from every log line, and shown as ``<redacted>`` by ``check``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from otel_llm_receiver.config_parse import (
    MAX_TEXT,
    REDACTED,
    Invalid,
    Parser,
    Secret,
    join_path,
    unknown_key_message,
)
from otel_llm_receiver.durations import format_duration

__all__ = [
    "BACKENDS",
    "DEFAULT_LEASE_DURATION",
    "MAX_LEASE_DURATION",
    "MIN_LEASE_DURATION",
    "StorageConfig",
    "dsn_password",
    "dsn_problem",
    "parse_dsn",
    "parse_storage",
    "redact_dsn",
]

BACKENDS: Final = ("sqlite", "postgresql")
STORAGE_KEYS: Final = ("backend", "path", "dsn", "lease_duration", "retention")
DEFAULT_PATH: Final = "./otel-llm-data/ledger.db"
DEFAULT_RETENTION: Final = 90 * 86_400.0
MAX_RETENTION: Final = 3650 * 86_400.0
DEFAULT_LEASE_DURATION: Final = 30.0
#: Below 5s a lease would have to be renewed faster than a slow database answers; above 10m a dead replica's
#: instances stay unpolled (and unexported) for too long.
MIN_LEASE_DURATION: Final = 5.0
MAX_LEASE_DURATION: Final = 600.0

#: libpq's connection keywords (PostgreSQL 16; docs "Parameter Key Words"): anything else is refused by libpq
#: at connect time, so `check` refuses it first, with the key path.
LIBPQ_KEYWORDS: Final = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name", "fallback_application_name",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication",
    "gssencmode", "sslmode", "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service", "target_session_attrs",
    "load_balance_hosts",
})
SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
URI_SCHEMES: Final = ("postgresql", "postgres")
_SECRET_KEYWORDS: Final = frozenset({"password", "sslpassword"})
_KEYWORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_PORT: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(?::([0-9]*))?")


@dataclass(frozen=True)
class StorageConfig:
    """Where the ledger lives and how long it keeps buckets.

    ``path`` (sqlite) is relative to the working directory; ``dsn`` (postgresql) is a ``Secret`` when it holds a
    password, and ``redact_dsn`` is the way to show it. ``lease_duration`` only matters with several replicas.
    """

    path: str = DEFAULT_PATH
    retention: float = DEFAULT_RETENTION
    backend: str = "sqlite"
    dsn: str | None = None
    lease_duration: float = DEFAULT_LEASE_DURATION

    def describe(self, show: Callable[[str], str] = str) -> str:
        """One line for ``check``: the engine, where it is (password redacted) and the durations."""
        if self.backend == "postgresql":
            where = show(redact_dsn(self.dsn)) if self.dsn else "(no dsn)"
            return (f"storage: postgresql {where}, lease_duration {format_duration(self.lease_duration)},"
                    f" retention {format_duration(self.retention)}")
        return f"storage: path {show(self.path)}, retention {format_duration(self.retention)}"


# -- DSN grammar ---------------------------------------------------------------------------------------------


class DSNError(ValueError):
    """A DSN that libpq would refuse; the message never quotes a password."""


def _parse_conninfo(text: str) -> list[tuple[str, str]]:
    """libpq's ``key=value`` form: values bare or single-quoted (``\\'`` and ``\\\\`` escaped inside quotes)."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return pairs
        match = _KEYWORD.match(text, i)
        if match is None:
            raise DSNError(f"expected a keyword at character {i + 1} (key=value pairs separated by spaces)")
        key = match.group(0)
        i = match.end()
        while i < n and text[i].isspace():
            i += 1
        if i == n or text[i] != "=":
            raise DSNError(f"missing '=' after {key!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i == n:
                    raise DSNError(f"unterminated quoted value for {key!r}")
                char = text[i]
                if char == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                elif char == "'":
                    i += 1
                    break
                else:
                    value.append(char)
                    i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                else:
                    value.append(text[i])
                    i += 1
        pairs.append((key, "".join(value)))


def _is_uri(dsn: str) -> bool:
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", dsn.strip()))


def parse_dsn(dsn: str) -> dict[str, str]:
    """The DSN's connection keywords (URI or ``key=value``), checked the way libpq would; raises ``DSNError``."""
    text = dsn.strip()
    if not text:
        raise DSNError("is empty")
    if _is_uri(text):
        scheme = text.split("://", 1)[0]
        if scheme.lower() not in URI_SCHEMES:
            raise DSNError(f"URI scheme {scheme!r} is not postgresql:// or postgres://")
        parts = urlsplit(text)
        if parts.fragment:
            raise DSNError("a URI fragment (#...) is not allowed")
        out: dict[str, str] = {}
        netloc = parts.netloc
        userinfo, _, hosts = netloc.rpartition("@")
        if userinfo:
            user, has_password, password = userinfo.partition(":")
            if user:
                out["user"] = unquote(user)
            if has_password:
                out["password"] = unquote(password)
        host_names, ports = [], []
        for item in hosts.split(",") if hosts else []:
            match = _HOST_PORT.fullmatch(item)
            if match is None:
                raise DSNError(f"host {item!r} is not host or host:port")
            host, port = match.group(1), match.group(2)
            if port is not None and port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise DSNError(f"port {port!r} is not a number from 1 to 65535")
            host_names.append(unquote(host.strip("[]")))
            ports.append(port or "")
        if any(host_names):
            out["host"] = ",".join(host_names)
        if any(ports):
            out["port"] = ",".join(ports)
        dbname = unquote(parts.path.lstrip("/"))
        if dbname:
            out["dbname"] = dbname
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "ssl" and value == "true":  # libpq's JDBC-compatible spelling
                key, value = "sslmode", "require"
            out[key] = value
    else:
        out = dict(_parse_conninfo(text))
        if not out:
            raise DSNError("is empty")
    for key, value in out.items():
        if key not in LIBPQ_KEYWORDS:
            raise DSNError(f"unknown connection parameter {key!r}")
        if key == "sslmode" and value not in SSLMODES:
            raise DSNError(f"sslmode {value!r} is not one of {', '.join(SSLMODES)}")
        if key == "port" and not all(p.isdigit() and 1 <= int(p) <= 65535 for p in value.split(",") if p):
            raise DSNError("port is not a number from 1 to 65535")
        if key == "connect_timeout" and not value.strip().lstrip("-").isdigit():
            raise DSNError("connect_timeout is not a whole number of seconds")
    return out


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a PostgreSQL DSN (one line, no password), or None when its form is right."""
    try:
        parse_dsn(dsn)
    except DSNError as e:
        return f"{e} (expected postgresql://user:password@host:5432/dbname or key=value pairs such as host=db dbname=ledger)"
    return None


def dsn_password(dsn: str) -> list[str]:
    """The secret values inside ``dsn`` (password, sslpassword), for log redaction; [] when it does not parse."""
    try:
        keywords = parse_dsn(dsn)
    except DSNError:
        return []
    return [value for key, value in keywords.items() if key in _SECRET_KEYWORDS and value]


def redact_dsn(dsn: str | None) -> str:
    """``dsn`` with every password replaced by ``<redacted>``; a DSN that does not parse shows only its form."""
    if not dsn:
        return "(not set)"
    text = dsn.strip()
    try:
        keywords = parse_dsn(text)
    except DSNError:
        return "<unparsable dsn>"
    if _is_uri(text):
        parts = urlsplit(text)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            userinfo = userinfo.partition(":")[0] + ":" + REDACTED
        netloc = f"{userinfo}@{hosts}" if at else hosts
        query = "&".join(
            f"{quote(k, safe='')}={REDACTED if k in _SECRET_KEYWORDS else quote(v, safe='/:,')}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")

    def render(key: str, value: str) -> str:
        if key in _SECRET_KEYWORDS:
            return f"{key}={REDACTED}"
        if value == "" or any(c.isspace() or c in "'\\" for c in value):
            return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"{key}={value}"

    return " ".join(render(k, v) for k, v in keywords.items())


# -- the section ---------------------------------------------------------------------------------------------


def parse_storage(parser: Parser, raw: Any) -> StorageConfig:
    """Read ``storage``; every problem is recorded under its key path (``storage.dsn: ...``)."""
    section = parser.mapping(raw, "storage")
    values: dict[str, Any] = {}
    for key, value in (section or {}).items():
        key_path = join_path("storage", key)
        if key == "backend":
            text = parser.text(value, key_path, choices=BACKENDS)
            if not isinstance(text, Invalid):
                values["backend"] = text
        elif key == "path":
            if value is None:
                parser.problem(key_path, "must not be empty")
                continue
            text = parser.text(value, key_path, nonempty=True)
            if not isinstance(text, Invalid):
                values["path"] = text
        elif key == "dsn":
            dsn = _dsn(parser, value, key_path)
            if dsn is not None:
                values["dsn"] = dsn
        elif key == "lease_duration":
            if value is not None:
                seconds = parser.duration(value, key_path, minimum=MIN_LEASE_DURATION, maximum=MAX_LEASE_DURATION)
                if not isinstance(seconds, Invalid):
                    values["lease_duration"] = seconds
        elif key == "retention":
            if value is not None:
                seconds = parser.duration(value, key_path, positive=True, maximum=MAX_RETENTION)
                if not isinstance(seconds, Invalid):
                    values["retention"] = seconds
        else:
            parser.problem(key_path, unknown_key_message(key, STORAGE_KEYS))
    config = StorageConfig(**values)
    given = set(section or {})
    if config.backend == "postgresql":
        if "dsn" not in given:
            parser.problem("storage.dsn", "required with backend postgresql (postgresql://user@host:5432/dbname)")
        if "path" in given:
            parser.warn("storage.path", "ignored with backend postgresql (the ledger is the database storage.dsn names)")
    else:
        for key in ("dsn", "lease_duration"):
            if key in given:
                parser.warn(join_path("storage", key), "ignored with backend sqlite (set storage.backend: postgresql)")
    return config


def _dsn(parser: Parser, raw: Any, path: str) -> str | None:
    if raw is None:
        parser.problem(path, "must not be empty")
        return None
    value = parser.substitute(raw, path)
    if isinstance(value, Invalid):
        return None
    if not isinstance(value, str):
        parser.problem(path, "must be a string (a postgresql:// URI or key=value pairs)")
        return None
    if len(value) > MAX_TEXT:
        parser.problem(path, f"is longer than {MAX_TEXT} characters")
        return None
    problem = dsn_problem(value)
    secrets = dsn_password(value)
    for secret in secrets:
        parser.secret(secret)
    if problem is not None:
        parser.problem(path, problem)
        return None
    if secrets and value.strip() == str(raw).strip():
        parser.warn(path, "password written literally in the config file; prefer ${env:NAME} or ${file:PATH}")
    return Secret(value) if secrets else str(value)
