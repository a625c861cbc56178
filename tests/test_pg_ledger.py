"""The PostgreSQL ledger's foundations against a real server (issue 21): the test cluster itself, connecting
(timeouts, one-line errors, the password never shown) and the schema (the SQLite schema's twin, exact integers,
migrations that replicas racing on a fresh database run once, a newer schema refused).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from otel_llm_receiver.errors import LedgerError
from otel_llm_receiver.ledger import schema as sqlite_schema
from otel_llm_receiver.ledger.postgres import connect as pg_connect
from otel_llm_receiver.ledger.postgres import schema as pg_schema
from otel_llm_receiver.ledger.postgres.connect import PostgresConnectError, Timeouts
from tests.support.postgres import (
    Database,
    PostgresCluster,
    PostgresUnavailable,
    _remove_orphans,
    find_bin_dir,
    free_port,
)
from tests.support.waiting import wait_for as _wait_for

REPO = Path(__file__).resolve().parent.parent




# -- the test cluster ----------------------------------------------------------------------------------------


def test_missing_server_binaries_fail_naming_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable) as caught:
        find_bin_dir([tmp_path])
    message = str(caught.value)
    assert "`postgresql` package" in message and "apt-get install postgresql" in message
    assert "\n" not in message


def test_cluster_runs_unprivileged_on_loopback(postgres_cluster: PostgresCluster, pg_database: Database) -> None:
    with psycopg.connect(pg_database.dsn) as conn:
        user, addr, fsync, superuser = conn.execute(
            "SELECT current_user, inet_server_addr()::text, current_setting('fsync'), "
            "current_setting('is_superuser')").fetchone()  # type: ignore[misc]
    assert (user, addr, fsync, superuser) == ("postgres", "127.0.0.1/32", "off", "on")
    # The postmaster does not run as root (PostgreSQL refuses to), whoever runs the tests.
    status = Path(f"/proc/{postgres_cluster.postmaster_pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert postgres_cluster.startup_seconds < 30


def test_each_test_gets_a_fresh_database(postgres_cluster: PostgresCluster) -> None:
    first, second = postgres_cluster.create_database(), postgres_cluster.create_database()
    try:
        assert first.name != second.name
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
        with psycopg.connect(second.dsn) as conn:
            assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
    finally:
        postgres_cluster.drop_database(first.name)
        postgres_cluster.drop_database(second.name)


def test_restart_mid_test_breaks_open_connections_and_keeps_data(
    postgres_cluster: PostgresCluster, pg_database: Database
) -> None:
    conn = psycopg.connect(pg_database.dsn, autocommit=True)
    conn.execute("CREATE TABLE kept (x bigint)")
    conn.execute("INSERT INTO kept VALUES (42)")
    old_pid = postgres_cluster.postmaster_pid
    postgres_cluster.restart()
    assert postgres_cluster.postmaster_pid != old_pid
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with psycopg.connect(pg_database.dsn) as again:
        assert again.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_a_killed_test_process_leaves_no_postmaster(tmp_path: Path) -> None:
    """pytest killed with -9: the postmaster gets its parent-death signal and shuts down immediately."""
    script = textwrap.dedent("""
        import os, signal, sys
        from tests.support.postgres import PostgresCluster
        cluster = PostgresCluster()
        cluster.start()
        print(cluster.postmaster_pid, cluster.root, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=90,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    pid_text, root = child.stdout.split()
    pid = int(pid_text)

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.split(")")[-1].split()[0] == "Z"  # a zombie no one reaps yet is not running

    _wait_for(gone, 30, "the orphaned postmaster to exit")
    assert Path(root).is_dir()
    _remove_orphans()  # what the next run's cluster does first: the killed run's temp dir goes
    assert not Path(root).exists()


# -- connect -------------------------------------------------------------------------------------------------


def test_connect_sets_application_name_and_timeouts(pg_database: Database) -> None:
    with pg_connect.connect(pg_database.dsn, application_name="replica-a",
                            timeouts=Timeouts(statement=2.5, lock=1.5)) as conn:
        row = conn.execute("SELECT current_setting('application_name'), current_setting('statement_timeout'),"
                           " current_setting('lock_timeout')").fetchone()
        assert row == ("replica-a", "2500ms", "1500ms")


def test_the_dsn_application_name_and_options_win(pg_database: Database) -> None:
    dsn = pg_database.dsn + "?application_name=mine&options=-c%20work_mem%3D8MB"
    with pg_connect.connect(dsn) as conn:
        row = conn.execute("SELECT current_setting('application_name'), current_setting('work_mem'),"
                           " current_setting('statement_timeout')").fetchone()
        assert row == ("mine", "8MB", "30s")


def test_statement_timeout_stops_a_stuck_statement(pg_database: Database) -> None:
    with pg_connect.connect(pg_database.dsn, timeouts=Timeouts(statement=0.2)) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 4


def test_wrong_password_is_one_auth_line_without_the_password(
    postgres_cluster: PostgresCluster, pg_database: Database
) -> None:
    wrong = "Wr0ng-" + pg_database.password[::-1]
    dsn = postgres_cluster.dsn(pg_database.name, password=wrong)
    with pytest.raises(PostgresConnectError) as caught:
        pg_connect.connect(dsn)
    error = caught.value
    text = str(error)
    assert error.kind == "auth" and not error.retryable
    assert f"postgres@127.0.0.1:{postgres_cluster.port}/{pg_database.name}" in text
    assert "password authentication failed" in text
    assert wrong not in text and pg_database.password not in text and "\n" not in text


def test_unreachable_server_is_retryable_and_names_the_target(pg_database: Database) -> None:
    port = free_port()
    dsn = f"postgresql://postgres:{pg_database.password}@127.0.0.1:{port}/ledger"
    with pytest.raises(PostgresConnectError) as caught:
        pg_connect.connect(dsn, timeouts=Timeouts(connect=2))
    assert caught.value.kind == "unreachable" and caught.value.retryable
    assert f"127.0.0.1:{port}/ledger" in str(caught.value) and pg_database.password not in str(caught.value)


def test_ssl_required_by_the_dsn_but_not_offered(pg_database: Database) -> None:
    with pytest.raises(PostgresConnectError) as caught:
        pg_connect.connect(pg_database.dsn + "?sslmode=require")
    assert caught.value.kind == "ssl", str(caught.value)
    assert "SSL" in str(caught.value) and pg_database.password not in str(caught.value)


def test_missing_database_says_so(postgres_cluster: PostgresCluster, pg_database: Database) -> None:
    with pytest.raises(PostgresConnectError) as caught:
        pg_connect.connect(postgres_cluster.dsn("no_such_ledger"))
    assert caught.value.kind == "database" and "no_such_ledger" in str(caught.value)


def test_server_stopped_then_back(postgres_cluster: PostgresCluster, pg_database: Database) -> None:
    """PostgreSQL restarted: connecting fails retryably while it is down, and works again once it is up."""
    postgres_cluster.stop()
    with pytest.raises(PostgresConnectError) as caught:
        pg_connect.connect(pg_database.dsn, timeouts=Timeouts(connect=2))
    assert caught.value.retryable
    postgres_cluster.start()
    with pg_connect.connect(pg_database.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- schema --------------------------------------------------------------------------------------------------


def _columns_pg(conn: pg_connect.PgConnection) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for table, column, data_type in conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ):
        out.setdefault(table, {})[column] = data_type
    return out


def _columns_sqlite(tmp_path: Path) -> dict[str, dict[str, str]]:
    db = sqlite3.connect(tmp_path / "ledger.db")
    for _, _, step in sqlite_schema.MIGRATIONS:
        if isinstance(step, str):
            db.executescript(step)
    out: dict[str, dict[str, str]] = {}
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        out[table] = {row[1]: row[2] for row in db.execute(f"PRAGMA table_info({table})")}
    db.close()
    return out


def test_schema_mirrors_sqlite_with_exact_integer_types(pg_database: Database, tmp_path: Path) -> None:
    with pg_connect.connect(pg_database.dsn) as conn:
        result = pg_schema.migrate(conn)
        pg_tables = _columns_pg(conn)
    sqlite_tables = _columns_sqlite(tmp_path)
    assert result.applied == (1,) and result.version == pg_schema.newest_version()
    assert set(pg_tables) == set(sqlite_tables) | {"schema_migrations", "leases", "replicas"}
    for table, columns in sqlite_tables.items():
        assert list(pg_tables[table]) == list(columns), table
        for column, sqlite_type in columns.items():
            expected = "bigint" if sqlite_type == "INTEGER" else "text"
            assert pg_tables[table][column] == expected, (table, column)
    every_type = {t for columns in pg_tables.values() for t in columns.values()}
    assert not every_type & {"real", "double precision", "numeric"}


def test_money_round_trips_to_the_nano_unit(pg_database: Database) -> None:
    biggest = 2**63 - 1
    with pg_connect.connect(pg_database.dsn) as conn:
        pg_schema.migrate(conn)
        with conn.transaction():
            conn.execute("INSERT INTO series (instance, metric, attrs, total, sub_total, start_time_ns, updated_ns)"
                         " VALUES ('openai/prod', 'llm.usage.cost', '{}', %s, 999, 1, 2)", (biggest,))
        assert conn.execute("SELECT total, sub_total FROM series").fetchone() == (biggest, 999)
        with pytest.raises(psycopg.errors.NumericValueOutOfRange), conn.transaction():
            conn.execute("UPDATE series SET total = total + 1")


def test_migrate_again_is_a_no_op_and_the_ledger_id_is_stable(pg_database: Database) -> None:
    with pg_connect.connect(pg_database.dsn) as conn:
        first = pg_schema.migrate(conn)
    with pg_connect.connect(pg_database.dsn) as conn:
        again = pg_schema.migrate(conn)
        assert pg_schema.ledger_id(conn) == first.ledger_id
        assert pg_schema.schema_version(conn) == pg_schema.newest_version()
    assert again.applied == () and again.ledger_id == first.ledger_id
    assert len(first.ledger_id) == 36


def test_a_fresh_database_has_no_schema_version_and_no_ledger_id(pg_database: Database) -> None:
    with pg_connect.connect(pg_database.dsn) as conn:
        assert pg_schema.schema_version(conn) is None
        with conn.transaction():
            conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
        with pytest.raises(LedgerError, match="run migrate"):
            pg_schema.ledger_id(conn)


def test_a_newer_schema_is_refused_in_one_line(pg_database: Database) -> None:
    with pg_connect.connect(pg_database.dsn) as conn:
        pg_schema.migrate(conn)
        with conn.transaction():
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
        with pytest.raises(LedgerError) as caught:
            pg_schema.migrate(conn)
    message = str(caught.value)
    assert "schema version 99" in message and "newer than this release" in message and "\n" not in message
    assert pg_database.password not in message


_MIGRATE_CHILD = textwrap.dedent("""
    import json, sys
    from otel_llm_receiver.ledger.postgres import connect, schema
    with connect.connect(sys.argv[1], application_name="migrator") as conn:
        result = schema.migrate(conn)
    print(json.dumps({"applied": list(result.applied), "version": result.version, "id": result.ledger_id}))
""")


def test_replicas_racing_on_a_fresh_database_run_one_migration(pg_database: Database) -> None:
    """Three processes migrate at once: the test holds the migration lock until all three wait on it, so they
    really race when it is released. Each migration is applied once, by one of them; none fails."""
    with psycopg.connect(pg_database.dsn, autocommit=True) as admin:  # advisory locks are per database
        admin.execute("SELECT pg_advisory_lock(%s)", (pg_schema.MIGRATION_LOCK_KEY,))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        children = [subprocess.Popen([sys.executable, "-c", _MIGRATE_CHILD, pg_database.dsn], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(3)]
        try:
            _wait_for(lambda: admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migrator'"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'").fetchone() == (3,),
                60, "three migrators waiting on the advisory lock")
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", (pg_schema.MIGRATION_LOCK_KEY,))
        outputs = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            outputs.append(json.loads(out))
    applied = sorted(v for o in outputs for v in o["applied"])
    assert applied == [v for v, _, _ in pg_schema.MIGRATIONS]
    assert {o["version"] for o in outputs} == {pg_schema.newest_version()}
    assert len({o["id"] for o in outputs}) == 1
    with psycopg.connect(pg_database.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(pg_schema.MIGRATIONS),)
        assert conn.execute("SELECT count(*) FROM meta").fetchone() == (1,)
