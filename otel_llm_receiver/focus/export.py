"""One-off FOCUS exports: the rows of a range of UTC days, streamed day by day into one file or stream.

Memory is one day's rows (plus one Parquet row group) however long the range: ``iter_rows`` reads the ledger a
day at a time. Files are written to a temporary name beside the target and renamed into place, so a reader
never sees a half-written export.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..config import Config
from ..ledger import Ledger
from ..money import money_stack
from ..pricing import PriceBook
from .formats import FocusError, open_writer
from .rows import DAY, Row, RowContext, day_rows
from .schema import columns


def days_between(start: int, end: int) -> range:
    """The UTC days that overlap ``[start, end)``: whole days, so a file never holds part of a day."""
    return range(start - start % DAY, end, DAY)


def context_for(config: Config | None, ledger: Ledger, prices: PriceBook | None = None) -> RowContext:
    """Names from the ledger; attribution, provider labels and list prices from the config (if any)."""
    if config is None:
        return RowContext(names=ledger.names(), prices=prices)
    money = money_stack(config)
    return RowContext(names=ledger.names(), attributor=money.attributor, labels=money.labels,
                      prices=prices if prices is not None else money.prices)


def iter_rows(ledger: Ledger, start: int, end: int, ctx: RowContext) -> Iterator[Row]:
    """Every row of every UTC day overlapping ``[start, end)``, a day at a time."""
    for day in days_between(start, end):
        yield from day_rows(ledger, day, ctx)


def write_rows(rows: Iterator[Row] | list[Row], out: IO[Any], version: str, fmt: str) -> int:
    writer = open_writer(fmt, out, columns(version))
    count = writer.write(rows)
    writer.close()
    return count


def write_atomically(path: Path, rows: Iterator[Row] | list[Row], version: str, fmt: str) -> int:
    """Write ``rows`` to ``path`` through a temporary file in the same directory, fsynced, then renamed.

    ``os.replace`` is atomic on POSIX and Windows: a crash at any point leaves the previous file (or none),
    never a partial one; the temporary file of a crashed write is left behind with a ``.tmp`` suffix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        f: IO[Any] = os.fdopen(fd, "wb") if fmt == "parquet" else os.fdopen(fd, "w", encoding="utf-8", newline="")
        with f:
            count = write_rows(rows, f, version, fmt)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return count


def export(
    ledger: Ledger, start: int, end: int, *, version: str, fmt: str, out: Path | IO[Any], ctx: RowContext
) -> int:
    """Export the days overlapping ``[start, end)`` to ``out`` (a path: written atomically); rows written."""
    if end <= start:
        raise FocusError("the export range is empty: --to must be after --from")
    columns(version)  # an unsupported version fails before anything is written
    rows = iter_rows(ledger, start, end, ctx)
    if isinstance(out, Path):
        return write_atomically(out, rows, version, fmt)
    return write_rows(rows, out, version, fmt)
