"""The periodic FOCUS writer: one file per UTC day, rewritten atomically only when that day's rows changed.

Each pass rebuilds the rows of every day the ledger's rollups cover, compares a digest of them with the digest
of the file on disk (kept in ``.focus-state.json`` beside the files), and rewrites only the days that differ,
through a temporary file and a rename (``export.write_atomically``): restated provider costs and late usage flow
into the day they belong to, and a reader never sees a half-written file. A day whose end is older than
``final_after`` (the longest revision horizon of the configured providers: nothing in it can change any more)
is final: written once if missing, never rewritten, even after its rollups are pruned by ``storage.retention``.

A changed ``version`` or ``format`` rewrites every day that is not final (a final day keeps the file it has).
The state file is only a cache: if it is lost, every non-final day is rewritten once with identical content.
Temporary files left by a crash are removed at the start of the next pass.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger import Ledger
from .export import days_between, write_atomically
from .rows import DAY, Row, RowContext, day_rows
from .schema import SUFFIX

log = logging.getLogger(__name__)

STATE_FILE = ".focus-state.json"


def day_name(day: int) -> str:
    return dt.datetime.fromtimestamp(day, dt.UTC).strftime("%Y-%m-%d")


def rows_digest(rows: list[Row]) -> str:
    """A digest of a day's rows (exact values): equal digests, identical files."""
    text = json.dumps(rows, default=str, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class WritePass:
    """What one pass did, for logs and tests."""

    written: list[str] = field(default_factory=list)  # day names rewritten (or first written)
    unchanged: int = 0
    final: int = 0
    rows: int = 0


class FocusWriter:
    """Writes ``<directory>/<YYYY-MM-DD>.<format>`` for every day in the ledger; see the module docstring."""

    def __init__(
        self, ledger: Ledger, directory: Path, *, version: str, fmt: str, final_after: float,
        context: Callable[[Ledger], RowContext],
    ) -> None:
        self.ledger = ledger
        self.directory = directory
        self.version = version
        self.fmt = fmt
        self.final_after = final_after
        self.context = context

    def path_of(self, day: int) -> Path:
        return self.directory / f"{day_name(day)}{SUFFIX[self.fmt]}"

    def _load_state(self) -> dict[str, str]:
        try:
            raw = json.loads((self.directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict) or raw.get("version") != self.version or raw.get("format") != self.fmt:
            return {}
        days = raw.get("days")
        return {str(k): str(v) for k, v in days.items()} if isinstance(days, dict) else {}

    def _save_state(self, days: dict[str, str]) -> None:
        doc: dict[str, Any] = {"version": self.version, "format": self.fmt, "days": dict(sorted(days.items()))}
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, self.directory / STATE_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _remove_leftovers(self) -> None:
        """Delete the temporary files of a writer that crashed mid-rewrite (one writer owns a directory, and a
        pass is not running while another starts, so any such file is a leftover)."""
        for pattern in (".????-??-??.*.tmp", f".{STATE_FILE}.*.tmp"):
            for leftover in self.directory.glob(pattern):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    log.info("focus: removed %s, left by an interrupted write", leftover.name)

    def write_pass(self, now: int) -> WritePass:
        """One pass over every day from the oldest rollup to today; rewrites what changed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        result = WritePass()
        span = self.ledger.rollup_range()
        if span is None:
            return result
        state = self._load_state()
        ctx = self.context(self.ledger)
        final_before = now - int(self.final_after)
        for day in days_between(span[0], min(span[1] + 3600, now + DAY)):
            name = day_name(day)
            path = self.path_of(day)
            if day + DAY <= final_before and path.exists():
                result.final += 1
                continue
            rows = day_rows(self.ledger, day, ctx)
            digest = rows_digest(rows)
            if state.get(name) == digest and (path.exists() or not rows):
                result.unchanged += 1
                continue
            if rows or path.exists():
                result.rows += write_atomically(path, rows, self.version, self.fmt)
                result.written.append(name)
            state[name] = digest
            self._save_state(state)
        if result.written:
            log.info("focus: wrote %d day file(s) (%d rows) in %s: %s", len(result.written), result.rows,
                     self.directory, ", ".join(result.written))
        return result
