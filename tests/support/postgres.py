"""A throw-away PostgreSQL cluster for the tests: initdb into a temp dir, one postmaster per test session.

Why a real server: the PostgreSQL ledger's guarantees (advisory-locked migrations, lease epochs read under row
locks, the database clock) are properties of PostgreSQL itself; a fake would test our assumptions, not them.

- The server binaries come from Debian's ``postgresql`` package (``.ci/run`` installs it). Without them the
  fixture fails with one line naming the package: the tests never skip.
- PostgreSQL refuses to run as root, so when the tests run as root (CI) the cluster belongs to an unprivileged
  user (``postgres``, else ``nobody``) and its processes are started with that uid/gid; the temp dir is theirs.
- The postmaster listens on 127.0.0.1 on a free port and on a unix socket in the temp dir; fsync, full page
  writes and synchronous commit are off (a crash of a test cluster loses nothing anyone needs).
- The postmaster is our child with a parent-death signal (SIGQUIT: immediate shutdown), so a pytest killed with
  -9 leaves no stray server; ``stop()`` is also registered with ``atexit``. (The signal follows the *thread* that
  started the postmaster: start clusters from the main thread, as the session fixture does.) The temp dir of a
  killed run is deleted by the next run: each dir records the pid that made it.
- Authentication: ``trust`` over the unix socket, SCRAM passwords over TCP, so a DSN carries a password the way a
  production one does (and a wrong one fails the way it would). The password is random per session.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

DEBIAN_PACKAGE = "postgresql"
SUPERUSER = "postgres"
_PR_SET_PDEATHSIG = 1
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_PREFIX = "otel-llm-pg-"
_CREATOR = "creator.pid"


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the cluster would not start: one line saying what to install or why."""


def find_bin_dir(candidates: list[Path] | None = None) -> Path:
    """The directory holding ``initdb`` and ``postgres``: $PG_BIN, else Debian's newest, else on $PATH
    (``candidates`` replaces that search: the test of the missing-binaries message)."""
    if candidates is not None:
        return _first_with_server(candidates)
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))

    def major(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else -1

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    return _first_with_server(candidates)


def _first_with_server(candidates: list[Path]) -> Path:
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found: install Debian's "
        f"`{DEBIAN_PACKAGE}` package (apt-get install {DEBIAN_PACKAGE}; .ci/run does) or set PG_BIN"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _owner() -> pwd.struct_passwd | None:
    """The unprivileged account the cluster runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root and no `postgres` or `nobody` account to run PostgreSQL as")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans() -> None:
    """Delete the temp dirs of earlier runs whose creator died without cleaning up (killed with -9)."""
    for path in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            creator = int((path / _CREATOR).read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if creator == os.getpid() or _pid_alive(creator):
            continue
        try:
            postmaster = int((path / "data" / "postmaster.pid").read_text("utf-8").split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster is None or not _pid_alive(postmaster):
            shutil.rmtree(path, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child, after the uid change (which would clear it): SIGQUIT the postmaster if pytest dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)


@dataclass(frozen=True)
class Database:
    """One database of the cluster: its name and the DSNs to reach it (TCP with password, or the socket)."""

    name: str
    dsn: str  # postgresql://postgres:PASSWORD@127.0.0.1:PORT/NAME
    socket_dsn: str  # key=value conninfo over the unix socket (trust)
    password: str


class PostgresCluster:
    """One initdb'd cluster in a temp dir; ``start``/``stop``/``restart`` the postmaster, ``create_database``."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.owner = _owner()
        _remove_orphans()
        self.root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.root / _CREATOR).write_text(str(os.getpid()), "utf-8")
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "postmaster.log"
        self.startup_seconds = 0.0
        self._counter = 0
        self._initdb()
        atexit.register(self.close)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _run_as_owner(self) -> dict[str, object]:
        if self.owner is None:
            return {}
        return {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        self.socket_dir.mkdir()
        if self.owner is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n", "utf-8")
        if self.owner is not None:
            os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        pwfile.chmod(0o600)
        started = time.monotonic()
        result = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
             "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync",
             "--no-instructions"],
            capture_output=True, cwd=self.root, check=False, **self._run_as_owner(),  # type: ignore[call-overload]
        )
        pwfile.unlink()
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).decode("utf-8", "replace").strip().splitlines()[-3:]
            raise PostgresUnavailable(f"initdb failed ({result.returncode}): {' | '.join(tail)}")
        self.initdb_seconds = time.monotonic() - started

    def start(self) -> None:
        """Start the postmaster and wait (bounded) until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        started = time.monotonic()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning",
                 "-c", "logging_collector=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                preexec_fn=_die_with_parent, **self._run_as_owner(),  # type: ignore[call-overload]
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited with {self.process.returncode} at start: {self._log_tail()}"
                )
            try:
                with psycopg.connect(self._socket_conninfo("postgres"), connect_timeout=2):
                    break
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(f"postgres did not accept connections in {_START_TIMEOUT:.0f}s: {e}") from e
            time.sleep(0.02)  # polling for readiness, bounded by the deadline above
        self.startup_seconds = time.monotonic() - started

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the postmaster: ``fast`` (SIGINT: abort transactions, disconnect clients) or ``immediate``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, *, mode: str = "fast") -> None:
        """Stop and start again on the same port (issue 21: "PostgreSQL restarted mid-poll")."""
        self.stop(mode=mode)
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def postmaster_pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def close(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text("utf-8", "replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])

    # -- databases ---------------------------------------------------------------------------------------------

    def _socket_conninfo(self, dbname: str) -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def dsn(self, dbname: str, *, password: str | None = None, user: str = SUPERUSER) -> str:
        """A URI DSN over TCP, the form users write (``password`` defaults to the superuser's)."""
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit superuser connection to the ``postgres`` database (over the socket)."""
        return psycopg.connect(self._socket_conninfo("postgres"), autocommit=True)

    def create_database(self, prefix: str = "t", *, template: str | None = None) -> Database:
        """A fresh database (a copy of template1, empty, or of ``template``, e.g. a migrated ledger):
        milliseconds, not an initdb. The template must have no open connection."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return Database(name=name, dsn=self.dsn(name), socket_dsn=self._socket_conninfo(name),
                        password=self.password)

    def drop_database(self, name: str) -> None:
        if not self.running:
            return
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A started cluster, stopped and deleted on exit."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
