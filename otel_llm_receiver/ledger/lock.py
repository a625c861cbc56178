"""The single-writer guard: one process writes a ledger file, for as long as it runs.

Two ``run`` processes on one SQLite ledger both poll the same providers and export the same series under one
``service.instance.id``: SQLite serialises their transactions, so nothing fails, and nobody notices the doubled
requests and racing exports. The writer takes an exclusive ``flock`` on ``<ledger>.lock`` before it
opens or creates the ledger and keeps it until it closes; a second writer is refused at once with the holder's pid.
Readers (``report``, ``focus``, the exporter's own connection) never take it.

The lock file is left in place when the writer stops (removing it would race with the next writer); the kernel
drops the lock itself when the process ends, however it ends (``kill -9`` included), so a stale file never blocks.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import LedgerError

__all__ = ["WriterLock", "lock_path"]


def lock_path(ledger: Path) -> Path:
    """Where the lock of ``ledger`` lives: beside it, so it moves with the volume."""
    return ledger.with_name(ledger.name + ".lock")


class WriterLock:
    """An exclusive, non-blocking lock on ``<ledger>.lock`` holding the writer's pid (for the refusal message)."""

    def __init__(self, ledger: Path) -> None:
        self.path = lock_path(ledger)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {ledger}: cannot create {self.path}: "
                              f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(self._fd)
            os.close(self._fd)
            self._fd = None
            who = f"pid {holder}" if holder else "another process"
            raise LedgerError(
                f"ledger {ledger} is in use by another writer ({who}, lock {self.path}): two receivers on one "
                "ledger would poll and count the same usage twice; stop the other one, or give this one its own "
                "storage.path"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
