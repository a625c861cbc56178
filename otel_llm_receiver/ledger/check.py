"""Refuse a damaged ledger at start, in one line that says what to do; build a new ledger atomically.

Why at start: SQLite reads a page only when a query needs it, so a ledger with one overwritten page opens fine,
polls keep succeeding (they touch other pages) and the first export fails deep inside the export loop. A
``PRAGMA quick_check`` at start (``run``, ``run --once``, ``report``, ``focus``) finds such damage before
anything runs: it walks every b-tree page (docs/troubleshooting.md) without the
index-content checks of ``integrity_check``, which take minutes on a large ledger.

A 0-byte ledger file is refused, never re-initialised: a new ledger is built beside its path and linked into
place only once it is complete (``create_atomically``), so the receiver itself never leaves an empty file at
``storage.path``, even when it is killed while creating one. An empty file there was made by something else
(a failed copy or restore, a truncation), and re-initialising it would silently start every total from zero
under a new ``service.instance.id``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..errors import LedgerError

#: The remedy every refusal names (docs/troubleshooting.md, "The ledger is damaged").
REMEDY = (
    "restore it from a backup, or move it aside (with its -wal and -shm files) to start a new ledger "
    "(the providers' backfill then re-fetches what they still serve)"
)


def _refuse(path: Path, what: str) -> LedgerError:
    one_line = " ".join(what.split())
    return LedgerError(f"ledger {path} is damaged ({one_line}): {REMEDY}")


def check_ledger(path: str | os.PathLike[str]) -> None:
    """Raise ``LedgerError`` (one line, with the remedy) when the ledger at ``path`` is damaged.

    A missing file is fine (``run`` creates a new ledger). The check opens the file without writing to it,
    so a damaged ledger is left exactly as it was found, for whoever restores or inspects it.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerError(f"cannot open ledger {p}: {exc.strerror or exc}") from exc
    if p.is_dir():
        raise LedgerError(f"ledger {p} is a directory; storage.path must name a file")
    if size == 0:
        raise _refuse(p, "the file is empty (0 bytes); the receiver never leaves an empty ledger, "
                         "so something else truncated or created it")
    try:
        conn = sqlite3.connect(str(p), isolation_level=None, timeout=30.0)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger {p}: {exc}") from exc
    try:
        conn.execute("PRAGMA query_only = ON")
        rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        raise _refuse(p, str(exc)) from exc
    finally:
        conn.close()
    if [tuple(r) for r in rows] != [("ok",)]:
        raise _refuse(p, f"quick_check: {rows[0][0] if rows else 'no answer'}")


def create_atomically(path: Path, initialise: Callable[[sqlite3.Connection], None]) -> None:
    """Build a new ledger at ``<path>.new``, run ``initialise`` on it, and link it into place.

    ``os.link`` fails when ``path`` already exists (another process created it meanwhile): that file wins and
    ours is dropped. A kill at any moment leaves either no ledger (the next start builds it again) or a complete
    one; never an empty or half-migrated file at ``path``.
    """
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        initialise(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()  # the last connection: the WAL is checkpointed and removed
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (a crash right after must not lose the link)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
