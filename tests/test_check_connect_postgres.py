"""``check --connect`` with ``storage.backend: postgresql``: one ok/FAIL line for the ledger database (issue 21).

Against a real PostgreSQL: a schema that is current, older (migrated at start), absent (created at start) or newer
(refused by `run`, so FAIL), and an unreachable server; the DSN's password never appears.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from otel_llm_receiver.cli import main
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.connect import check_connect
from otel_llm_receiver.ledger.postgres import schema as pg_schema
from tests.support.postgres import Database, free_port


def check_lines(dsn: str) -> tuple[bool, list[str]]:
    config = parse_config({"storage": {"backend": "postgresql", "dsn": dsn},
                           "providers": {"demo": {"enabled": False}}})
    lines: list[str] = []
    ok = check_connect(config, lines.append)
    return ok, lines


def set_versions(dsn: str, versions: list[int]) -> None:
    """The schema_migrations table a release with these migrations would have left."""
    with psycopg.connect(dsn) as pg:
        pg.execute(pg_schema.SQL_CREATE_MIGRATIONS)
        for version in versions:
            pg.execute(pg_schema.SQL_RECORD_MIGRATION, (version, f"v{version}", time.time_ns()))


def test_a_database_without_a_schema_is_ok_and_left_untouched(pg_database: Database) -> None:
    ok, lines = check_lines(pg_database.dsn)
    assert ok
    port = urlsplit(pg_database.dsn).port
    assert lines == [f"ok  storage postgresql: postgres@127.0.0.1:{port}/{pg_database.name} reachable,"
                     " no ledger schema yet (created at start)"]
    with psycopg.connect(pg_database.dsn) as pg:  # nothing created by a check
        assert pg.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone() == (True,)


def test_a_current_schema_is_ok(pg_database: Database) -> None:
    with psycopg.connect(pg_database.dsn, autocommit=True) as pg:
        pg_schema.migrate(pg)  # type: ignore[arg-type]
    ok, lines = check_lines(pg_database.dsn)
    assert ok and len(lines) == 1
    assert lines[0].startswith("ok  storage postgresql: ")
    assert lines[0].endswith(f"reachable, schema version {pg_schema.newest_version()} current")
    assert pg_database.password not in lines[0]


def test_an_older_schema_is_ok_and_will_be_migrated(pg_database: Database) -> None:
    set_versions(pg_database.dsn, [0])  # below the newest: an older release's ledger
    ok, lines = check_lines(pg_database.dsn)
    assert ok and len(lines) == 1
    assert lines[0].endswith(f"schema version 0 older than {pg_schema.newest_version()} (will be migrated at start)")


def test_a_newer_schema_fails_the_check(pg_database: Database, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    newer = pg_schema.newest_version() + 1
    set_versions(pg_database.dsn, list(range(1, newer + 1)))
    ok, lines = check_lines(pg_database.dsn)
    assert not ok and len(lines) == 1
    assert lines[0].startswith("FAIL storage postgresql: config: ")
    assert f"has schema version {newer}, newer than this release understands" in lines[0]
    assert pg_database.password not in lines[0]
    config = tmp_path / "ha.yaml"
    config.write_text(f"storage:\n  backend: postgresql\n  dsn: {pg_database.dsn}\nproviders:\n  demo: {{enabled: false}}\n")
    assert main(["check", "--config", str(config), "--connect"]) == 1
    out, err = capsys.readouterr()
    assert "FAIL storage postgresql: config: " in out
    assert pg_database.password not in out + err


def test_an_unreachable_server_fails_naming_the_host_not_the_password() -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://ledger:s3cret-pass@127.0.0.1:{port}/llm_ledger"
    ok, lines = check_lines(dsn)
    assert not ok and len(lines) == 1
    assert lines[0].startswith(f"FAIL storage postgresql: network: PostgreSQL ledger at ledger@127.0.0.1:{port}/llm_ledger: ")
    assert "check host and port in storage.dsn" in lines[0]
    assert "s3cret-pass" not in lines[0]


def test_a_wrong_password_is_an_auth_failure(pg_database: Database) -> None:
    dsn = pg_database.dsn.replace(pg_database.password, "wrong-password")
    ok, lines = check_lines(dsn)
    assert not ok
    assert lines[0].startswith("FAIL storage postgresql: auth: ") and "wrong-password" not in lines[0]
