"""The replica coordinator: which provider instances this replica polls, and whether it leads (issue 21).

Why a module of its own, on its own thread and connection: with ``storage.backend: postgresql`` any number of
replicas share one ledger, and each instance must be polled by exactly one of them (docs/deployment.md, high availability). Every
``lease_duration / 3`` a round heartbeats, runs ``leases.balance()`` over the config's instances (renew what it
holds, shed surplus over the fair share, take free or lapsed ones) and ``leases.lead()`` for ``@leader``. The
round has its own PostgreSQL connection so a renewal never queues behind an apply, and its own thread so a busy
event loop never delays it.

Never poll an instance whose lease may have lapsed: each lease's expiry is also estimated on the local
monotonic clock, from the moment the round's request was *sent* (so the estimate is never later than the
database's own expiry); ``held()`` leaves out any lease past that estimate. A lost database connection is
one log line; the round retries at its next turn, and the leases simply age out locally meanwhile. The
database's clock stays the judge of who holds what (``leases.fence()`` in every apply).

On a clean stop ``stop()`` calls ``leases.leave()``: the others take this replica's instances at their next
round instead of after ``lease_duration``.

A poll in flight is never handed over by the fair share: the scheduler brackets each poll with ``begin_poll`` /
``end_poll``, and ``balance()`` releases surplus instances that are not being polled first. An instance whose
poll is in flight is *pending release*: no new poll of it starts, the poll in flight finishes its chunk (a
steady-state poll is one chunk) and commits, and a round runs as soon as it ends, which releases the instance.
The wait is bounded by ``lease_duration``: a poll still in flight by then is handed over anyway, and the fence
rejects its write (the safety net).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from .errors import LedgerError

if TYPE_CHECKING:
    from .ledger.postgres.leases import Lease

log = logging.getLogger(__name__)

__all__ = [
    "LEASE_DURATION_ENV",
    "REPLICA_ID_ENV",
    "HeldLease",
    "ReplicaCoordinator",
    "lease_duration",
    "replica_id",
    "replica_label",
    "writer_dsn",
]

#: The replica's id, when the platform gives one (the Kubernetes manifests set it from the pod name).
REPLICA_ID_ENV: Final = "OTEL_LLM_RECEIVER_REPLICA_ID"
#: Test hook: a lease duration below the config's 5s minimum, so failover scenarios stay short. Never documented
#: for users; a replica that runs with it logs so at start.
LEASE_DURATION_ENV: Final = "OTEL_LLM_RECEIVER_TEST_LEASE_DURATION"
#: Rounds per lease duration: a lease survives two missed rounds.
ROUNDS_PER_LEASE: Final = 3


def replica_id(environ: dict[str, str] | None = None) -> str:
    """This process's id among the replicas: ``$OTEL_LLM_RECEIVER_REPLICA_ID`` (or the pod name in
    ``$POD_NAME`` / ``$HOSTNAME`` under Kubernetes) with the pid and a random suffix, so a restarted process
    is never mistaken for its predecessor (whose leases must lapse or be released first)."""
    env = os.environ if environ is None else environ
    base = (env.get(REPLICA_ID_ENV) or env.get("POD_NAME") or socket.gethostname() or "replica").strip()
    return f"{base[:60]}-{os.getpid()}-{secrets.token_hex(3)}"


def replica_label(replica: str, environ: Mapping[str, str] | None = None) -> str:
    """The ``llm.receiver.replica`` value of this process's self-health series on a shared ledger.

    The name the platform gave (``$OTEL_LLM_RECEIVER_REPLICA_ID``, else ``$POD_NAME``) when there is one: unique
    among the live replicas and the same across restarts of one pod, so a restart continues that replica's
    series (a counter reset Prometheus handles) instead of adding new ones. Without it, the full replica id
    ``replica`` (host-pid-random): always unique, but new series at every start (docs/deployment.md, high availability).
    """
    env = os.environ if environ is None else environ
    base = (env.get(REPLICA_ID_ENV) or env.get("POD_NAME") or "").strip()
    return base[:60] if base else replica


def lease_duration(configured: float, environ: dict[str, str] | None = None) -> float:
    """The lease duration to run with: the config's, unless the test hook ``$OTEL_LLM_RECEIVER_TEST_LEASE_DURATION``
    sets a (shorter) one."""
    env = os.environ if environ is None else environ
    raw = env.get(LEASE_DURATION_ENV, "").strip()
    if not raw:
        return configured
    try:
        seconds = float(raw)
    except ValueError:
        raise LedgerError(f"{LEASE_DURATION_ENV}={raw!r}: not a number of seconds") from None
    if not 0.3 <= seconds <= 600:
        raise LedgerError(f"{LEASE_DURATION_ENV}={raw!r}: must be 0.3 to 600 seconds")
    log.warning("lease_duration %.3gs from %s (a test hook; storage.lease_duration %.3gs ignored)",
                seconds, LEASE_DURATION_ENV, configured)
    return seconds


def writer_dsn(dsn: str, duration: float) -> str:
    """``dsn`` for the replica's ledger connections, with ``idle_in_transaction_session_timeout`` set to the lease
    duration.

    Why: an apply holds its lease row locked (``leases.fence``) until it commits, and a takeover waits for that
    lock. A replica paused mid-transaction (SIGSTOP, a GC pause, a partition) would hold the lock, and so its
    instances, for as long as it is paused; with this timeout the server ends such a transaction (and its lock)
    once it has been idle for a lease duration, so the others take over as they would from a dead replica. A
    live apply is never idle that long between its statements. The DSN's own ``options`` are kept.
    """
    from .config_storage import parse_dsn

    try:
        from psycopg.conninfo import make_conninfo
    except ImportError:  # pragma: no cover - the postgresql extra brings psycopg
        return dsn
    keywords = parse_dsn(dsn)
    setting = f"-c idle_in_transaction_session_timeout={max(1, round(duration * 1000))}"
    options = f"{keywords['options']} {setting}" if keywords.get("options") else setting
    return make_conninfo(dsn.strip(), options=options)


@dataclass(frozen=True)
class HeldLease:
    """A lease this replica holds: ``lease`` for fencing applies, ``local_expiry`` on ``time.monotonic()``."""

    lease: Lease
    local_expiry: float

    @property
    def epoch(self) -> int:
        return self.lease.epoch

    @property
    def expires_at(self) -> datetime:
        return self.lease.expires_at


class ReplicaCoordinator:
    """Runs the lease rounds of one replica on a thread of its own; read its state from any thread."""

    def __init__(
        self,
        dsn: str,
        instances: Iterable[str],
        duration: float,
        *,
        replica: str | None = None,
        round_interval: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn
        self.instances = tuple(sorted(set(instances)))
        self.duration = duration
        self.replica = replica or replica_id()
        self.round_interval = round_interval if round_interval is not None else duration / ROUNDS_PER_LEASE
        self._monotonic = monotonic
        self._lock = threading.RLock()  # listeners run under it and may read the state
        self._changed = threading.Condition(self._lock)
        self._held: dict[str, HeldLease] = {}
        self._leader: HeldLease | None = None
        self._leader_holder: str | None = None
        self._live: tuple[str, ...] = ()
        self._share = 0
        self._rounds = 0
        self._generation = 0
        self._conn: Any = None
        self._failing: str | None = None  # the one-line reason of the current database outage, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[], None]] = []
        self._tenure_listeners: list[Callable[[str, int], None]] = []
        #: (instance, epoch) of leases this replica released itself (fair share): a write fenced off under one
        #: of them was handed over on purpose, not a pause
        self._released: set[tuple[str, int]] = set()
        self._polling: dict[str, int] = {}  # instance -> polls of it in flight (begin_poll .. end_poll)
        #: instance -> monotonic time the fair share first asked to release it while a poll of it was in flight
        self._pending: dict[str, float] = {}
        self._releasing: set[str] = set()  # said yes to ``balance()``'s release this round: no poll may start
        self._wake = threading.Event()  # runs a round now (a poll of a pending instance ended)

    # -- reading the state (any thread) ------------------------------------------------------------------
    def held(self) -> dict[str, HeldLease]:
        """The instances this replica may poll now: held at the last round and not past their local expiry."""
        now = self._monotonic()
        with self._lock:
            return {n: h for n, h in self._held.items() if h.local_expiry > now}

    def lease(self, name: str) -> Lease | None:
        """The ``leases.Lease`` to fence an apply of ``name`` with, or None when this replica must not poll it
        (not held, or being handed over to the fair share)."""
        with self._lock:
            if name in self._pending or name in self._releasing:
                return None
            held = self.held().get(name)
            return None if held is None else held.lease

    def holds(self, name: str, epoch: int) -> bool:
        """True while this replica holds ``name`` at ``epoch`` (not lapsed, not released): a poll in flight under
        that epoch may go on."""
        with self._lock:
            if name in self._releasing:
                return False
            held = self.held().get(name)
            return held is not None and held.epoch == epoch

    def handing_over(self, name: str) -> bool:
        """True when the fair share waits for the poll of ``name`` in flight to end (pending release)."""
        with self._lock:
            return name in self._pending

    def begin_poll(self, name: str) -> Lease | None:
        """``lease(name)``, and the poll that asks is in flight until ``end_poll(name)``: the fair share does not
        release the instance under it (for up to ``lease_duration``). None: do not poll."""
        with self._lock:
            lease = self.lease(name)
            if lease is not None:
                self._polling[name] = self._polling.get(name, 0) + 1
            return lease

    def end_poll(self, name: str) -> None:
        """The poll ``begin_poll(name)`` admitted ended (applied, failed or fenced off). When the fair share is
        waiting for it, a round runs now and hands the instance over."""
        with self._lock:
            left = self._polling.get(name, 0) - 1
            if left > 0:
                self._polling[name] = left
            else:
                self._polling.pop(name, None)
            if name in self._pending:
                self._wake.set()

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._leader is not None and self._leader.local_expiry > self._monotonic()

    @property
    def rounds(self) -> int:
        with self._lock:
            return self._rounds

    def forget(self, name: str) -> None:
        """Drop ``name`` now (an apply found its lease stale): no poll starts under it; the next round may
        take it again with a new epoch if it is free."""
        with self._lock:
            if self._held.pop(name, None) is not None:
                self._notify()

    def released(self, name: str, epoch: int) -> bool:
        """True when this replica gave ``name``'s tenure ``epoch`` up itself (to the fair share, or leaving), or
        is about to (pending release)."""
        with self._lock:
            return (name, epoch) in self._released or name in self._pending or name in self._releasing

    def _may_release(self, name: str) -> bool:
        """``balance()``'s question before it releases ``name`` to the fair share (on the round's thread): not
        while a poll of it is in flight, for up to ``lease_duration``; yes marks it so no poll starts under it."""
        now = self._monotonic()
        with self._lock:
            if self._polling.get(name):
                since = self._pending.get(name)  # pending from an earlier round's deferral (set after balance)
                if since is None or now - since < self.duration:
                    return False
                log.warning("replica %s: releasing %s to the fair share although its poll has been in flight for "
                            "%.3gs (lease_duration); that poll's write will be fenced off", self.replica, name,
                            now - since)
            self._pending.pop(name, None)
            self._releasing.add(name)
            held = self._held.get(name)
            if held is not None:
                self._released.add((name, held.epoch))
            return True

    def add_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called (on the coordinator's thread) after every round and every ``forget``."""
        self._listeners.append(listener)

    def add_tenure_listener(self, listener: Callable[[str, int], None]) -> None:
        """``listener(name, epoch)`` is called (on the coordinator's thread) for every tenure this replica begins:
        an instance taken (failover, fair share) or retaken after its lease lapsed. It runs before the round's
        leases become visible to ``held()``, so whoever sees the instance held sees the listener's effect too."""
        self._tenure_listeners.append(listener)

    def wait_for_round(self, after: int, timeout: float) -> int:
        """Block until more than ``after`` rounds ran (or ``timeout``); the number of rounds so far."""
        deadline = self._monotonic() + timeout
        with self._changed:
            while self._rounds <= after:
                left = deadline - self._monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            return self._rounds

    def state(self) -> dict[str, object]:
        """``/health``'s view: this replica, the leases it holds (epoch, expiry on the database's clock) and the
        leader."""
        held = self.held()
        with self._lock:
            return {
                "replica": self.replica,
                "leases": {name: {"epoch": h.epoch, "expires_at": h.expires_at.isoformat()}
                           for name, h in sorted(held.items())},
                "leader": {"replica": self._leader_holder,
                           "self": self._leader is not None and self._leader.local_expiry > self._monotonic()},
                "live_replicas": list(self._live),
                "fair_share": self._share,
                "lease_duration_s": self.duration,
                "database_error": self._failing,
            }

    # -- running -----------------------------------------------------------------------------------------
    def start(self) -> ReplicaCoordinator:
        """Run the first round now (so polling can start at once), then rounds on a thread until ``stop``."""
        self.run_round()
        self._thread = threading.Thread(target=self._run, name="replica-leases", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self._wake.wait(self.round_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.run_round()

    def stop(self, *, leave: bool = True) -> None:
        """Stop the rounds; with ``leave`` release every lease and the heartbeat so others take over now."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(30.0, self.duration))
            self._thread = None
        if leave:
            self._leave()
        with self._lock:
            self._held.clear()
            self._leader = None
            self._notify()
        self._close()

    def _leave(self) -> None:
        from .ledger.postgres import leases

        try:
            conn = self._connection()
            leases.leave(conn, self.replica)
            log.info("replica %s left: its leases are released for the others", self.replica)
        except Exception as exc:
            log.warning("replica %s could not release its leases (they lapse after %gs): %s",
                        self.replica, self.duration, _one_line(exc))

    def run_round(self) -> None:
        """One round: heartbeat, balance, lead. Never raises: a database failure is one log line per outage."""
        from .ledger.postgres import leases

        sent = self._monotonic()
        try:
            conn = self._connection()
            with self._lock:
                leader = self._leader.lease if self._leader is not None else None
            assignment = leases.balance(conn, self.replica, self.instances, self.duration,
                                        may_release=self._may_release)
            sent_lead = self._monotonic()
            leader = leases.lead(conn, self.replica, self.duration, leader)
            current = leases.current(conn, leases.LEADER)
        except Exception as exc:
            self._failed(exc)
            with self._lock:
                # Instances this round said it would release may be released already: none is polled again
                # before a round confirms it is still held.
                for name in self._releasing:
                    self._held.pop(name, None)
                self._releasing.clear()
                self._rounds += 1
                self._notify()
            return
        if self._failing is not None:
            log.info("replica %s: the ledger database answers again; leases renewed", self.replica)
            self._failing = None
        for name in assignment.acquired:
            log.info("replica %s: took %s (epoch %d)", self.replica, name, assignment.held[name].epoch)
        with self._lock:
            before = {n: h.epoch for n, h in self._held.items()}
            self._released.update((n, before[n]) for n in assignment.released if n in before)
            for name, lease in assignment.held.items():
                if before.get(name) != lease.epoch:  # a new tenure: before held() shows it
                    for tenure_listener in self._tenure_listeners:
                        try:
                            tenure_listener(name, lease.epoch)
                        except Exception as exc:  # a listener's bug must not stop the rounds
                            log.debug("replica tenure listener failed: %s", exc)
        for name in assignment.released:
            log.info("replica %s: released %s to the fair share (%d each over %d replicas)",
                     self.replica, name, assignment.share, len(assignment.live))
        for name in assignment.deferred:
            log.debug("replica %s: %s goes to the fair share once its poll in flight ends", self.replica, name)
        for name in assignment.lost:
            log.warning("replica %s: lost the lease of %s (it lapsed or was taken); polling it stops",
                        self.replica, name)
        with self._lock:
            self._held = {name: HeldLease(lease, sent + self.duration) for name, lease in assignment.held.items()}
            self._releasing.clear()
            for name in [n for n in self._pending if n not in assignment.deferred]:  # no longer surplus
                del self._pending[name]
            for name in assignment.deferred:  # from now on no poll of it starts; the one in flight ends it
                self._pending.setdefault(name, sent)
            was_leader = self._leader is not None
            self._leader = None if leader is None else HeldLease(leader, sent_lead + self.duration)
            self._leader_holder = current.holder if current is not None and current.live else None
            self._live = assignment.live
            self._share = assignment.share
            self._rounds += 1
            self._notify()
        if (leader is not None) != was_leader:
            log.info("replica %s %s the leader (ledger-wide gauges)", self.replica,
                     "is now" if leader is not None else "is no longer")

    def _notify(self) -> None:
        """Under the lock: wake ``wait_for_round`` and call the listeners."""
        self._generation += 1
        self._changed.notify_all()
        for listener in self._listeners:
            try:
                listener()
            except Exception as exc:  # a listener's bug must not stop the rounds
                log.debug("replica listener failed: %s", exc)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            from .ledger.postgres.connect import Timeouts, connect

            # Every statement of a round must answer well within a round: a stuck one fails the round.
            timeout = max(1.0, self.round_interval)
            self._conn = connect(self.dsn, application_name=f"otel-llm-receiver {self.replica}"[:63],
                                 timeouts=Timeouts(connect=max(2.0, self.round_interval), statement=timeout,
                                                   lock=timeout),
                                 autocommit=True)
        return self._conn

    def _failed(self, exc: BaseException) -> None:
        reason = _one_line(exc)
        if self._failing is None:
            log.warning("replica %s: lease round failed, retrying every %.3gs; leases held lapse %gs after "
                        "their last renewal: %s", self.replica, self.round_interval, self.duration, reason)
        self._failing = reason
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # a broken connection may fail to close: it is gone either way
                log.debug("closing the lease connection: %s", exc)


def _one_line(exc: BaseException) -> str:
    """An exception as one line, the DSN's password never in it (PostgresConnectError already redacts)."""
    from .logs import redact

    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}" if not isinstance(exc, LedgerError) else text)
