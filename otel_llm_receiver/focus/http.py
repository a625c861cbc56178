"""``GET /focus.csv`` and ``GET /focus.json`` on the health endpoint (``focus.http: true``): read-only exports.

Query parameters: ``from`` and ``to`` (UTC dates or date-times, or Unix seconds; ``to`` exclusive, default now;
``from`` default seven days before ``to``), and ``version`` (default ``focus.version``). The range is widened to
whole UTC days and may span at most 366 days. Each request reads the ledger through its own read-only connection
and streams the rows a day at a time, so memory stays flat whatever the range. ``/focus.json`` is one JSON array
of row objects (decimals as exact JSON numbers). A bad parameter is a 400 with one line saying which.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from ..config import Config
from ..durations import parse_moment
from ..ledger import open_ledger
from ..pricing import PriceBook
from .export import context_for, iter_rows
from .formats import CsvWriter, json_object
from .rows import DAY
from .schema import VERSIONS, columns

#: (status, content type, body chunks) for the query parameters of a request.
Route = Callable[[Mapping[str, str]], tuple[int, str, Iterator[bytes]]]
MAX_DAYS: Final = 366
DEFAULT_DAYS: Final = 7
CHUNK: Final = 64 * 1024


def _error(message: str) -> tuple[int, str, Iterator[bytes]]:
    return 400, "text/plain; charset=utf-8", iter([f"{message}\n".encode()])


def focus_routes(config: Config, prices: PriceBook | None = None,
                 clock: Callable[[], float] = time.time) -> dict[str, Route]:
    """The two routes, for ``HealthServer(..., routes=...)``."""
    default_version = config.focus.version if config.focus is not None else "1.2"

    def route(fmt: str) -> Route:
        def handle(query: Mapping[str, str]) -> tuple[int, str, Iterator[bytes]]:
            unknown = sorted(set(query) - {"from", "to", "version"})
            if unknown:
                return _error(f"unknown query parameter {unknown[0]} (valid: from, to, version)")
            version = query.get("version", default_version)
            if version not in VERSIONS:
                return _error(f"version {version!r} is not one of {', '.join(VERSIONS)}")
            try:
                end = parse_moment(query["to"]) if "to" in query else int(clock())
                start = parse_moment(query["from"]) if "from" in query else end - DEFAULT_DAYS * DAY
            except ValueError as exc:
                return _error(f"from/to: {exc}")
            if end <= start:
                return _error("to must be after from")
            if end - start > MAX_DAYS * DAY:
                return _error(f"at most {MAX_DAYS} days per request")
            content = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
            return 200, content, _stream(config, prices, fmt, version, start, end)
        return handle

    return {"/focus.csv": route("csv"), "/focus.json": route("json")}


def _stream(config: Config, prices: PriceBook | None, fmt: str, version: str, start: int, end: int
            ) -> Iterator[bytes]:
    cols = columns(version)
    buf = io.StringIO()
    with open_ledger(config.storage, readonly=True) as ledger:
        rows = iter_rows(ledger, start, end, context_for(config, ledger, prices))
        if fmt == "csv":
            writer = CsvWriter(buf, cols)
            for row in rows:
                writer.write((row,))
                if buf.tell() >= CHUNK:
                    yield buf.getvalue().encode()
                    buf.seek(0)
                    buf.truncate()
        else:
            buf.write("[")
            for i, row in enumerate(rows):
                buf.write(("," if i else "") + "\n" + json_object(row, cols))
                if buf.tell() >= CHUNK:
                    yield buf.getvalue().encode()
                    buf.seek(0)
                    buf.truncate()
            buf.write("\n]\n")
    yield buf.getvalue().encode()
