"""A throw-away PgBouncer in front of the test PostgreSQL cluster: a temp config, a loopback port, our child.

Why a real PgBouncer: whether the receiver works through a pooler depends on what the pooler does with startup
parameters, session state and server connections, which only the pooler itself can tell (PgBouncer 1.18 refuses
an ``options`` startup parameter outright; in transaction mode it hands one client's transactions to whichever
server connection is free).

- The binary comes from Debian's ``pgbouncer`` package (``.ci/run`` installs it). Without it the fixture fails
  with one line naming the package: the tests never skip. No Debian service is used or started.
- PgBouncer refuses to run as root, so it runs as the cluster's unprivileged owner (tests/support/postgres.py),
  in a directory of the cluster's temp dir; its config and auth file are written there, readable by that user.
- Clients authenticate with SCRAM against an auth file holding the cluster's password (plain text: PgBouncer
  needs it to log in to the server as the client's user); the wildcard database forwards every database name
  to the cluster over TCP.
- The process is our child with a parent-death signal (SIGTERM: PgBouncer's immediate shutdown), so a pytest
  killed with -9 leaves no stray pooler.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.postgres import SUPERUSER, PostgresCluster, free_port

DEBIAN_PACKAGE = "pgbouncer"
_PR_SET_PDEATHSIG = 1
_START_TIMEOUT = 30.0


class PgBouncerUnavailable(RuntimeError):
    """The pgbouncer binary is missing or would not start: one line saying what to install or why."""


def find_pgbouncer() -> str:
    for candidate in (os.environ.get("PGBOUNCER_BIN", ""), shutil.which("pgbouncer") or "", "/usr/sbin/pgbouncer"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise PgBouncerUnavailable(
        f"pgbouncer not found: install Debian's `{DEBIAN_PACKAGE}` package (apt-get install --no-install-recommends "
        f"{DEBIAN_PACKAGE}; .ci/run does) or set PGBOUNCER_BIN")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class PgBouncer:
    """One PgBouncer process in ``pool_mode`` (session, transaction or statement) in front of ``cluster``."""

    def __init__(self, cluster: PostgresCluster, *, pool_mode: str = "session", pool_size: int = 40) -> None:
        self.binary = find_pgbouncer()
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.port = free_port()
        self.root = cluster.root / f"pgbouncer-{pool_mode}-{self.port}"
        self.root.mkdir()
        self.log_path = self.root / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None
        auth = self.root / "userlist.txt"
        auth.write_text(f'"{SUPERUSER}" "{cluster.password}"\n', "utf-8")
        auth.chmod(0o600)
        self.config = self.root / "pgbouncer.ini"
        self.config.write_text(f"""[databases]
* = host=127.0.0.1 port={cluster.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth}
pool_mode = {pool_mode}
max_client_conn = 400
default_pool_size = {pool_size}
server_reset_query = DISCARD ALL
logfile = {self.log_path}
pidfile = {self.root / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
""", "utf-8")
        if cluster.owner is not None:
            for path in (self.root, auth, self.config):
                os.chown(path, cluster.owner.pw_uid, cluster.owner.pw_gid)

    def start(self) -> PgBouncer:
        """Start PgBouncer and wait (bounded) until it accepts TCP connections."""
        owner = self.cluster.owner
        as_owner: dict[str, object] = ({} if owner is None
                                       else {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []})
        self.process = subprocess.Popen(
            [self.binary, str(self.config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=self.root, preexec_fn=_die_with_parent, **as_owner,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise PgBouncerUnavailable(f"pgbouncer exited with {self.process.returncode} at start: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PgBouncerUnavailable(
                        f"pgbouncer did not listen in {_START_TIMEOUT:.0f}s: {self._log_tail()}") from exc
            time.sleep(0.02)  # polling for readiness, bounded by the deadline above

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def dsn(self, dbname: str) -> str:
        """A URI DSN through the pooler, with the cluster's password (as users write it)."""
        return f"postgresql://{SUPERUSER}:{self.cluster.password}@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        return " | ".join(self.log().strip().splitlines()[-3:]) or "(no log)"
