"""Leases: which replica polls which provider instance, fenced by epochs, on the database's clock.

Why leases with epochs (DESIGN.md, "Storage and scale-out"): replicas share one ledger, and each provider
instance must be polled by exactly one of them at a time, with a dead replica's instances taken over after
``storage.lease_duration``. A lease is a row (name, holder, epoch, expires_at). Every new tenure (another
holder, or the same holder after its lease lapsed) adds one to the epoch, and every apply calls ``fence()``
inside its own transaction: the row is locked ``FOR SHARE`` (so no takeover can commit until the apply has) and
a moved epoch or a lapsed lease raises ``StaleLeaseError``, so a replica that slept past its lease (GC pause,
SIGSTOP, partition) can never write.

All times are the database's ``clock_timestamp()``: replicas' clocks may disagree by minutes and nothing here
reads them.

Fair share: live replicas (a heartbeat within ``lease_duration``) each hold at most
``ceil(instances / live replicas)`` instances. ``balance()`` renews what a replica holds, releases its surplus
and takes free instances up to its share, so when a replica joins the others shed instances to it within one
round each, and when one leaves (or dies) its instances are taken after its leases lapse. Each replica prefers
instances by rendezvous hashing of (replica, instance), so replicas racing for free instances mostly ask for
different ones. ``balance()`` must run more often than ``lease_duration`` (e.g. every third of it).

The ``@leader`` lease (a name no provider instance can have: instance names are ``[A-Za-z0-9_./-]``) elects the
replica that exports the ledger-wide gauges.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

from ...errors import LedgerError
from .connect import PgConnection, TransactionStatus

__all__ = [
    "LEADER",
    "Assignment",
    "Lease",
    "StaleLeaseError",
    "acquire",
    "balance",
    "current",
    "expire_now",
    "fair_share",
    "fence",
    "heartbeat",
    "lead",
    "leave",
    "live_replicas",
    "release",
    "renew",
]

LEADER: Final = "@leader"
#: Replica rows whose heartbeat is this many lease durations old are deleted (they count for nothing already).
_FORGET_AFTER_LEASES: Final = 10

SQL_ENSURE = (
    "INSERT INTO leases (name, holder, epoch, expires_at) VALUES (%s, NULL, 0, '-infinity')"
    " ON CONFLICT (name) DO NOTHING"
)
# SKIP LOCKED: a row locked by its holder's apply (fence) or by another acquirer is busy, not free.
SQL_LOCK_FOR_ACQUIRE = (
    "SELECT holder, epoch, expires_at > clock_timestamp() FROM leases WHERE name = %s FOR UPDATE SKIP LOCKED"
)
SQL_TAKE = """
UPDATE leases
   SET holder = %(holder)s,
       epoch = epoch + %(bump)s,
       expires_at = clock_timestamp() + %(duration)s,
       acquired_at = CASE WHEN %(bump)s > 0 THEN clock_timestamp() ELSE acquired_at END,
       renewed_at = clock_timestamp()
 WHERE name = %(name)s
RETURNING epoch, expires_at"""
SQL_RENEW = """
UPDATE leases
   SET expires_at = clock_timestamp() + %(duration)s, renewed_at = clock_timestamp()
 WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s AND expires_at > clock_timestamp()
RETURNING epoch, expires_at"""
SQL_RELEASE = (
    "UPDATE leases SET holder = NULL, expires_at = clock_timestamp()"
    " WHERE name = %s AND holder = %s AND epoch = %s RETURNING name"
)
SQL_FENCE = "SELECT holder, epoch, expires_at > clock_timestamp() FROM leases WHERE name = %s FOR SHARE"
SQL_CURRENT = "SELECT holder, epoch, expires_at, expires_at > clock_timestamp() FROM leases WHERE name = %s"
SQL_STATES = (
    "SELECT name, holder, epoch, expires_at, expires_at > clock_timestamp() FROM leases WHERE name = ANY(%s)"
)
SQL_HEARTBEAT = """
INSERT INTO replicas (id, heartbeat, started_at) VALUES (%s, clock_timestamp(), clock_timestamp())
ON CONFLICT (id) DO UPDATE SET heartbeat = clock_timestamp()"""
SQL_LIVE = "SELECT id FROM replicas WHERE heartbeat > clock_timestamp() - %s ORDER BY id"
SQL_FORGET = "DELETE FROM replicas WHERE heartbeat < clock_timestamp() - %s"
SQL_RELEASE_ALL = "UPDATE leases SET holder = NULL, expires_at = clock_timestamp() WHERE holder = %s"
SQL_LEAVE = "DELETE FROM replicas WHERE id = %s"
SQL_EXPIRE = "UPDATE leases SET expires_at = clock_timestamp() WHERE name = %s"


@dataclass(frozen=True)
class Lease:
    """A tenure: ``holder`` owns ``name`` at ``epoch`` until ``expires_at`` (database time) unless renewed."""

    name: str
    holder: str
    epoch: int
    expires_at: datetime


@dataclass(frozen=True)
class LeaseState:
    """A lease row as read (``live``: not expired by the database's clock)."""

    name: str
    holder: str | None
    epoch: int
    expires_at: datetime
    live: bool


class StaleLeaseError(LedgerError):
    """An apply's lease is no longer current: its epoch moved or it lapsed. The write must be dropped, never
    retried under the old epoch; the scheduler counts it (a self-health metric) and logs this one line."""

    def __init__(self, name: str, epoch: int, *, holder: str | None, current_holder: str | None,
                 current_epoch: int | None, expired: bool) -> None:
        self.name = name
        self.epoch = epoch
        self.holder = holder
        self.current_holder = current_holder
        self.current_epoch = current_epoch
        self.expired = expired
        if current_epoch is None:
            why = "no such lease"
        elif current_epoch != epoch or (holder is not None and current_holder != holder):
            why = f"now epoch {current_epoch} held by {current_holder or '(nobody)'}"
        else:
            why = "the lease expired"
        super().__init__(f"stale lease {name} epoch {epoch}: {why}; write rejected")


def _interval(seconds: float) -> timedelta:
    if not seconds > 0:
        raise ValueError(f"lease duration must be positive, got {seconds}")
    return timedelta(seconds=seconds)


def acquire(conn: PgConnection, name: str, holder: str, duration: float) -> Lease | None:
    """Take ``name`` for ``holder`` if it is free, lapsed or already ``holder``'s; None when another replica
    holds it (or its row is locked by an apply in flight). A new tenure adds one to the epoch; re-acquiring a
    live lease of one's own is a renewal (same epoch)."""
    with conn.transaction():
        conn.execute(SQL_ENSURE, (name,))
        row = conn.execute(SQL_LOCK_FOR_ACQUIRE, (name,)).fetchone()
        if row is None:
            return None
        current_holder, _, live = row
        if live and current_holder is not None and current_holder != holder:
            return None
        bump = 0 if (live and current_holder == holder) else 1
        taken = conn.execute(
            SQL_TAKE, {"holder": holder, "bump": bump, "duration": _interval(duration), "name": name}
        ).fetchone()
    assert taken is not None
    return Lease(name=name, holder=holder, epoch=int(taken[0]), expires_at=taken[1])


def renew(conn: PgConnection, lease: Lease, duration: float) -> Lease | None:
    """Extend a live lease by ``duration`` from now (database time); None when it was lost (lapsed or taken),
    and then the holder must stop: re-``acquire`` starts a new tenure with a new epoch."""
    with conn.transaction():
        row = conn.execute(SQL_RENEW, {"duration": _interval(duration), "name": lease.name,
                                       "holder": lease.holder, "epoch": lease.epoch}).fetchone()
    if row is None:
        return None
    return Lease(name=lease.name, holder=lease.holder, epoch=int(row[0]), expires_at=row[1])


def release(conn: PgConnection, lease: Lease) -> bool:
    """Give ``lease`` up now (a clean stop, or surplus in the fair share); False when it was not ours anymore."""
    with conn.transaction():
        row = conn.execute(SQL_RELEASE, (lease.name, lease.holder, lease.epoch)).fetchone()
    return row is not None


def current(conn: PgConnection, name: str) -> LeaseState | None:
    """The lease row of ``name`` as it is now (None: never taken)."""
    with conn.transaction():
        row = conn.execute(SQL_CURRENT, (name,)).fetchone()
    if row is None:
        return None
    return LeaseState(name=name, holder=row[0], epoch=int(row[1]), expires_at=row[2], live=bool(row[3]))


def expire_now(conn: PgConnection, name: str) -> None:
    """Make ``name`` lapse now (holder and epoch kept): an operator's "move this instance", and tests'."""
    with conn.transaction():
        conn.execute(SQL_EXPIRE, (name,))


def fence(tx: PgConnection, name: str, epoch: int, holder: str | None = None) -> None:
    """Inside an apply transaction: lock the lease row ``FOR SHARE`` and raise ``StaleLeaseError`` unless
    ``epoch`` (and ``holder``, when given) is still current and the lease has not lapsed.

    The share lock is held to the apply's commit, so a takeover (which updates the row) waits for it: the new
    holder reads the cursors this apply wrote, never an older state.
    """
    status = tx.info.transaction_status
    if tx.autocommit and status == TransactionStatus.IDLE:
        raise LedgerError("fence() must run inside the apply's transaction (the lock would end at once)")
    row = tx.execute(SQL_FENCE, (name,)).fetchone()
    if row is None:
        raise StaleLeaseError(name, epoch, holder=holder, current_holder=None, current_epoch=None, expired=True)
    current_holder, current_epoch, live = row[0], int(row[1]), bool(row[2])
    if current_epoch != epoch or not live or current_holder is None or (
        holder is not None and current_holder != holder
    ):
        raise StaleLeaseError(name, epoch, holder=holder, current_holder=current_holder,
                              current_epoch=current_epoch, expired=not live)


# -- replicas and the fair share -----------------------------------------------------------------------------


def heartbeat(conn: PgConnection, replica: str) -> None:
    """Record that ``replica`` is alive now (database time)."""
    with conn.transaction():
        conn.execute(SQL_HEARTBEAT, (replica,))


def live_replicas(conn: PgConnection, duration: float) -> tuple[str, ...]:
    """Replicas whose last heartbeat is within ``duration`` (the lease duration), sorted."""
    with conn.transaction():
        return tuple(str(r[0]) for r in conn.execute(SQL_LIVE, (_interval(duration),)))


def leave(conn: PgConnection, replica: str) -> None:
    """A clean stop: release every lease ``replica`` holds and drop it from the live set, so the others take
    its instances at their next round instead of after ``lease_duration``."""
    with conn.transaction():
        conn.execute(SQL_RELEASE_ALL, (replica,))
        conn.execute(SQL_LEAVE, (replica,))


def fair_share(instances: int, live: int) -> int:
    """The most instances one replica may hold: ``ceil(instances / live)`` (all of them when alone)."""
    return math.ceil(instances / max(live, 1))


def _preference(replica: str, name: str) -> bytes:
    """Rendezvous hashing: each replica ranks the instances differently, the same way every round."""
    return hashlib.sha256(f"{replica}\0{name}".encode()).digest()


@dataclass(frozen=True)
class Assignment:
    """One ``balance()`` round's outcome for one replica."""

    replica: str
    share: int
    live: tuple[str, ...]
    held: Mapping[str, Lease] = field(default_factory=lambda: MappingProxyType({}))
    acquired: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    #: surplus kept (renewed) this round because ``may_release`` said not yet (a poll of it is in flight): as
    #: many as the share is still over, least preferred first
    deferred: tuple[str, ...] = ()


def _states(conn: PgConnection, names: list[str]) -> dict[str, LeaseState]:
    with conn.transaction():
        rows = conn.execute(SQL_STATES, (names,)).fetchall()
    return {str(r[0]): LeaseState(name=str(r[0]), holder=r[1], epoch=int(r[2]), expires_at=r[3], live=bool(r[4]))
            for r in rows}


def balance(conn: PgConnection, replica: str, instances: Iterable[str], duration: float, *,
            may_release: Callable[[str], bool] | None = None) -> Assignment:
    """One round for ``replica``: heartbeat, renew its leases, release its surplus over the fair share, take
    free instances up to it. Run it every ``duration / 3`` or so; each replica converges within a round.

    ``may_release(name)`` is asked before each surplus lease is released, least preferred first: False keeps
    (renews) it for this round and the next candidate is asked instead, so a replica hands over instances it is
    not polling right now (the caller bounds how long it may say no: ``ReplicaCoordinator``)."""
    names = sorted(set(instances))
    heartbeat(conn, replica)
    with conn.transaction():
        conn.execute(SQL_FORGET, (_interval(duration * _FORGET_AFTER_LEASES),))
    live = live_replicas(conn, duration)
    share = fair_share(len(names), len(live))
    states = _states(conn, names)
    held: dict[str, Lease] = {}
    lost: list[str] = []
    for name in names:
        state = states.get(name)
        if state is None or state.holder != replica:
            continue
        renewed = renew(conn, Lease(name, replica, state.epoch, state.expires_at), duration) if state.live else None
        if renewed is None:
            lost.append(name)
        else:
            held[name] = renewed
    released: list[str] = []
    refused: list[str] = []
    for name in sorted(held, key=lambda n: _preference(replica, n)):  # the least preferred goes first
        if len(held) <= share:
            break
        if may_release is not None and not may_release(name):
            refused.append(name)
            continue
        release(conn, held.pop(name))
        released.append(name)
    deferred = refused[:max(0, len(held) - share)]  # the surplus left, least preferred first
    acquired: list[str] = []
    if len(held) < share:
        free = [n for n in names if n not in held and (
            (s := states.get(n)) is None or s.holder is None or not s.live)]
        for name in sorted(free, key=lambda n: _preference(replica, n), reverse=True):
            if len(held) >= share:
                break
            lease = acquire(conn, name, replica, duration)
            if lease is not None:
                held[name] = lease
                acquired.append(name)
    return Assignment(replica=replica, share=share, live=live, held=MappingProxyType(dict(sorted(held.items()))),
                      acquired=tuple(acquired), released=tuple(sorted(released)), lost=tuple(lost),
                      deferred=tuple(sorted(deferred)))


def lead(conn: PgConnection, replica: str, duration: float, lease: Lease | None = None) -> Lease | None:
    """Hold (renew) or try to take the ``@leader`` lease; the replica holding it exports ledger-wide gauges."""
    if lease is not None:
        renewed = renew(conn, lease, duration)
        if renewed is not None:
            return renewed
    return acquire(conn, LEADER, replica, duration)

