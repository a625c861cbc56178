"""The ``storage`` section (otel_llm_receiver.config_storage): backend, dsn, lease_duration (issue 21).

Configs are real YAML files loaded with ``load_config`` and an explicit environment, as in tests/test_config.py.
The DSN's password must never appear in a problem, a warning or ``check``'s description, whatever form the DSN
takes (URI user info, URI query, key=value, quoted key=value).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from otel_llm_receiver.config import Config, Option, Secret, load_config
from otel_llm_receiver.config_storage import (
    DEFAULT_LEASE_DURATION,
    StorageConfig,
    dsn_password,
    dsn_problem,
    parse_dsn,
    redact_dsn,
)
from otel_llm_receiver.errors import ConfigError

PASSWORD = "pw-test-Q7x9"  # a made-up password, only ever in these tests
SCHEMAS: dict[str, dict[str, Option]] = {"demo": {"seed": Option("int", 42)}}
ENV = {"LEDGER_DSN": f"postgresql://ledger:{PASSWORD}@db.internal:5432/llm_ledger?sslmode=require"}


def load(tmp_path: Path, storage: str, env: Mapping[str, str] | None = None) -> Config:
    path = tmp_path / "config.yaml"
    text = ("storage:\n" + textwrap.indent(textwrap.dedent(storage).strip(), "  ")
            + "\nproviders: {demo: }\nexporters: {otlp: {endpoint: localhost:4317}}\n")
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ=ENV if env is None else env, provider_options=SCHEMAS)


def problems(tmp_path: Path, storage: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, storage, env)
    return info.value.problems


def test_sqlite_is_the_default_and_keeps_its_path(tmp_path: Path) -> None:
    config = load(tmp_path, "path: ./data/ledger.db")
    assert config.storage == StorageConfig(path="./data/ledger.db")
    assert config.storage.backend == "sqlite" and config.storage.dsn is None
    assert config.storage.lease_duration == DEFAULT_LEASE_DURATION == 30.0
    assert "storage: path ./data/ledger.db, retention 90d" in config.describe()


def test_postgresql_with_a_dsn_from_the_environment(tmp_path: Path) -> None:
    config = load(tmp_path, """
        backend: postgresql
        dsn: ${env:LEDGER_DSN}
        lease_duration: 45s
        retention: 30d
    """)
    storage = config.storage
    assert (storage.backend, storage.lease_duration, storage.retention) == ("postgresql", 45.0, 30 * 86400)
    assert storage.dsn == ENV["LEDGER_DSN"] and isinstance(storage.dsn, Secret)
    assert PASSWORD in config.secrets  # so log lines have it redacted
    described = config.describe()
    assert ("storage: postgresql postgresql://ledger:<redacted>@db.internal:5432/llm_ledger?sslmode=require,"
            " lease_duration 45s, retention 30d") in described
    assert PASSWORD not in described and PASSWORD not in repr(config)
    assert config.warnings == ()  # a complete PostgreSQL section is used as it is


def test_a_key_value_dsn_without_password(tmp_path: Path) -> None:
    config = load(tmp_path, """
        backend: postgresql
        dsn: "host=db.internal port=5432 dbname=llm_ledger user=ledger sslmode=verify-full"
    """)
    assert config.storage.dsn == "host=db.internal port=5432 dbname=llm_ledger user=ledger sslmode=verify-full"
    assert not isinstance(config.storage.dsn, Secret)
    assert "storage: postgresql host=db.internal port=5432 dbname=llm_ledger user=ledger sslmode=verify-full" \
        in config.describe()


def test_a_literal_password_is_warned_about_and_still_redacted(tmp_path: Path) -> None:
    config = load(tmp_path, f"""
        backend: postgresql
        dsn: postgres://ledger:{PASSWORD}@db:5432/ledger
    """)
    assert config.warnings[0] == (
        "storage.dsn: password written literally in the config file; prefer ${env:NAME} or ${file:PATH}"
    )
    assert PASSWORD not in config.describe() and PASSWORD in config.secrets


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("backend: postgres", 'storage.backend: "postgres" is not one of sqlite, postgresql; did you mean postgresql?'),
        ("backend: postgresql", "storage.dsn: required with backend postgresql (postgresql://user@host:5432/dbname)"),
        ("backend: postgresql\ndsn:", "storage.dsn: must not be empty"),
        ("backend: postgresql\ndsn: 5432", "storage.dsn: must be a string (a postgresql:// URI or key=value pairs)"),
        ("backend: postgresql\ndsn: ${env:NOPE}", "storage.dsn: environment variable NOPE is not set"),
        ("backend: postgresql\ndsn: ${env:LEDGER_DSN}\nlease_duration: 1s",
         "storage.lease_duration: must be between 5s and 10m"),
        ("backend: postgresql\ndsn: ${env:LEDGER_DSN}\nlease_duration: 1h",
         "storage.lease_duration: must be between 5s and 10m"),
        ("backend: postgresql\ndsn: ${env:LEDGER_DSN}\nlease: 30s",
         "storage.lease: unknown key (valid keys: backend, dsn, lease_duration, path, retention)"),
    ],
)
def test_problems_name_their_key_path(tmp_path: Path, storage: str, expected: str) -> None:
    assert problems(tmp_path, storage) == [expected]


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        (f"mysql://root:{PASSWORD}@db/ledger", "URI scheme 'mysql' is not postgresql:// or postgres://"),
        (f"postgresql://u:{PASSWORD}@db:99999/ledger", "port '99999' is not a number from 1 to 65535"),
        (f"postgresql://u:{PASSWORD}@db/ledger?sslmode=required", "sslmode 'required' is not one of"),
        (f"postgresql://u:{PASSWORD}@db/ledger?colour=blue", "unknown connection parameter 'colour'"),
        (f"host=db password={PASSWORD} dbname", "missing '=' after 'dbname'"),
        (f"host=db password='{PASSWORD}", "unterminated quoted value for 'password'"),
        ("just-a-hostname", "missing '=' after 'just'"),
    ],
)
def test_a_malformed_dsn_is_refused_without_showing_the_password(tmp_path: Path, dsn: str, reason: str) -> None:
    found = problems(tmp_path, "backend: postgresql\ndsn: ${env:DSN}", env={"DSN": dsn})
    assert len(found) == 1 and found[0].startswith("storage.dsn: ") and reason in found[0], found
    assert PASSWORD not in found[0]
    assert "expected postgresql://user:password@host:5432/dbname or key=value" in found[0]


def test_sqlite_settings_beside_postgresql_ones_are_warned_ignored(tmp_path: Path) -> None:
    sqlite = load(tmp_path, "dsn: ${env:LEDGER_DSN}\nlease_duration: 30s")
    assert sqlite.storage.backend == "sqlite"
    assert sqlite.warnings == (
        "storage.dsn: ignored with backend sqlite (set storage.backend: postgresql)",
        "storage.lease_duration: ignored with backend sqlite (set storage.backend: postgresql)",
    )
    pg = load(tmp_path, "backend: postgresql\ndsn: ${env:LEDGER_DSN}\npath: ./ledger.db")
    assert pg.warnings == (
        "storage.path: ignored with backend postgresql (the ledger is the database storage.dsn names)",
    )


# -- the DSN grammar -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        (f"postgresql://ledger:{PASSWORD}@db:5432/llm?sslmode=require",
         "postgresql://ledger:<redacted>@db:5432/llm?sslmode=require"),
        (f"postgres://ledger@db/llm?password={PASSWORD}&application_name=a",
         "postgres://ledger@db/llm?password=<redacted>&application_name=a"),
        (f"postgresql://ledger:{PASSWORD}@h1:5432,h2:5433/llm?target_session_attrs=read-write",
         "postgresql://ledger:<redacted>@h1:5432,h2:5433/llm?target_session_attrs=read-write"),
        (f"host=db user=ledger password={PASSWORD} dbname=llm", "host=db user=ledger password=<redacted> dbname=llm"),
        (f"host=db password = 'a b {PASSWORD}' options='-c search_path=ledger'",
         "host=db password=<redacted> options='-c search_path=ledger'"),
        ("postgresql:///llm?host=/var/run/postgresql", "postgresql:///llm?host=/var/run/postgresql"),
        (None, "(not set)"),
        ("mysql://x", "<unparsable dsn>"),
    ],
)
def test_redact_dsn(dsn: str | None, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted


def test_parse_dsn_reads_both_forms_alike() -> None:
    uri = parse_dsn(f"postgresql://ledger:{PASSWORD}@db.internal:6432/llm%20ledger?sslmode=verify-full")
    kv = parse_dsn(f"host=db.internal port=6432 user=ledger password={PASSWORD} dbname='llm ledger' sslmode=verify-full")
    assert uri == kv == {"host": "db.internal", "port": "6432", "user": "ledger", "password": PASSWORD,
                         "dbname": "llm ledger", "sslmode": "verify-full"}
    assert dsn_password(f"postgresql://u:{PASSWORD}@h/d?sslpassword=keypass") == [PASSWORD, "keypass"]
    assert parse_dsn("postgresql://[::1]:5432/d") == {"host": "::1", "port": "5432", "dbname": "d"}
    assert dsn_problem("postgresql://") is None  # libpq's defaults: the local socket, the OS user


def test_the_libpq_the_driver_uses_agrees_on_good_dsns() -> None:
    """Every DSN our grammar accepts here, libpq's own parser (through psycopg) accepts with the same values."""
    from psycopg.conninfo import conninfo_to_dict

    for dsn in (f"postgresql://ledger:{PASSWORD}@db.internal:6432/llm%20ledger?sslmode=verify-full",
                f"host=db port=5432 password='a \\'quoted\\' {PASSWORD}' dbname=x",
                "postgresql://[::1]:5432/d?connect_timeout=5"):
        assert dsn_problem(dsn) is None
        theirs = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        assert parse_dsn(dsn) == theirs
