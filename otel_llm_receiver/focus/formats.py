"""Writing FOCUS rows as CSV, JSON Lines or Parquet, streaming: rows go out as they come, in batches.

Values stay exact: decimals are written as plain decimal text in CSV and JSON (never a binary float) and as
``decimal128(38, 12)`` in Parquet (money is exact to the pico-dollar, quantities to the nano-unit); date/times are
``YYYY-MM-DDTHH:mm:ssZ`` text (FOCUS DateTimeFormat), UTC ``timestamp[ms]`` in Parquet (which has no seconds
unit); nulls are real nulls (an empty CSV field, JSON ``null``, a Parquet null), never ``""``, ``0`` or a
placeholder.

Parquet needs ``pyarrow`` (the ``[focus]`` extra), imported only when a Parquet file is written.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import json
import operator
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import IO, Any, Final, Protocol

from ..errors import ReceiverError
from .schema import FORMATS, Column

BATCH_ROWS: Final = 10_000  # Parquet row groups and CSV flushes: memory stays flat however long the range
DECIMAL_PRECISION: Final = 38
DECIMAL_SCALE: Final = 12


class FocusError(ReceiverError):
    """A FOCUS export could not be written (bad arguments, a missing optional dependency, an I/O error)."""


class RowWriter(Protocol):
    def write(self, rows: Iterable[dict[str, Any]]) -> int: ...
    def close(self) -> None: ...


@functools.lru_cache(maxsize=4096)  # a file's date/times are a few days and months, over and over
def timestamp(seconds: int) -> str:
    """FOCUS DateTimeFormat: ISO 8601 extended, UTC, ``Z`` suffix, whole seconds."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decimal_text(value: Decimal) -> str:
    """Plain decimal text (no exponent, no '+', no thousands separators): FOCUS NumericFormat."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _text(column: Column, value: Any) -> str | None:
    if value is None:
        return None
    if column.kind == "decimal":
        return decimal_text(value)
    if column.kind == "datetime":
        return timestamp(value)
    return str(value)


def _csv_field(kind: str) -> Callable[[Any], str]:
    """The CSV text of a value of one column kind; null is the empty field."""
    if kind == "decimal":
        return lambda v: "" if v is None else decimal_text(v)
    if kind == "datetime":
        return lambda v: "" if v is None else timestamp(v)
    return lambda v: "" if v is None else str(v)


def _values_in_order(columns: tuple[Column, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row's values in column order, as one tuple (``itemgetter`` of one key would return the bare value)."""
    if len(columns) == 1:
        name = columns[0].name
        return lambda row: (row[name],)
    return operator.itemgetter(*(c.name for c in columns))


class CsvWriter:
    """RFC 4180 CSV with a header row; an empty unquoted field is null (no empty strings are ever written).

    A row's values are taken in column order at once; only decimals and date/times are converted here: the
    ``csv`` module writes a string as it is, anything else as its ``str()``, and None as the empty field.
    """

    def __init__(self, out: IO[str], columns: tuple[Column, ...]) -> None:
        self.out = out
        self.columns = columns
        self._values = _values_in_order(columns)
        self._convert = [(i, _csv_field(c.kind)) for i, c in enumerate(columns) if c.kind in ("decimal", "datetime")]
        self._csv = csv.writer(out, lineterminator="\n")
        self._csv.writerow([c.name for c in columns])

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        n = 0
        values_of, convert = self._values, self._convert
        writerow = self._csv.writerow
        for row in rows:
            values = list(values_of(row))
            for i, text in convert:
                values[i] = text(values[i])
            writerow(values)
            n += 1
        return n

    def close(self) -> None:
        self.out.flush()


class JsonLinesWriter:
    """One JSON object per line; decimals are JSON numbers written from their exact text."""

    def __init__(self, out: IO[str], columns: tuple[Column, ...]) -> None:
        self.out = out
        self.columns = columns

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        n = 0
        for row in rows:
            self.out.write(json_object(row, self.columns))
            self.out.write("\n")
            n += 1
        return n

    def close(self) -> None:
        self.out.flush()


def json_object(row: dict[str, Any], columns: tuple[Column, ...]) -> str:
    """One row as a JSON object text, decimals as exact JSON numbers (json.dumps would need floats)."""
    parts = []
    for c in columns:
        value = row[c.name]
        if value is None:
            text = "null"
        elif c.kind == "decimal":
            text = decimal_text(value)
        elif c.kind == "datetime":
            text = json.dumps(timestamp(value))
        else:
            text = json.dumps(value, ensure_ascii=False)
        parts.append(f"{json.dumps(c.name)}:{text}")
    return "{" + ",".join(parts) + "}"


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise FocusError(
            "Parquet output needs pyarrow: pip install 'otel-llm-receiver[focus]' (or use --format csv / jsonl)"
        ) from exc
    return pa, pq


def parquet_schema(columns: tuple[Column, ...]) -> Any:
    pa, _ = _pyarrow()
    types = {"string": pa.string(), "json": pa.string(), "datetime": pa.timestamp("ms", tz="UTC"),
             "decimal": pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)}
    return pa.schema([pa.field(c.name, types[c.kind], nullable=True) for c in columns])


class ParquetWriter:
    """Parquet with one row group per ``BATCH_ROWS`` rows (zstd): only one batch is ever held in memory.

    Each row is kept as the tuple of its values in column order (taken as it arrives, while its dict is fresh),
    and a batch is turned into columns with one ``zip``: a row dict's 40-odd values are read once, not once per
    column at flush time.
    """

    def __init__(self, out: IO[bytes], columns: tuple[Column, ...]) -> None:
        pa, pq = _pyarrow()
        self._pa = pa
        self.columns = columns
        self.schema = parquet_schema(columns)
        self._writer = pq.ParquetWriter(out, self.schema, compression="zstd")
        self._values = _values_in_order(columns)
        self._batch: list[tuple[Any, ...]] = []

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        n = 0
        values, batch = self._values, self._batch
        for row in rows:
            batch.append(values(row))
            n += 1
            if len(batch) >= BATCH_ROWS:
                self._flush()
                batch = self._batch
        return n

    def _flush(self) -> None:
        if not self._batch:
            return
        pa = self._pa
        arrays = []
        for c, f, column in zip(self.columns, self.schema, zip(*self._batch, strict=True), strict=True):
            values: Any = column
            if c.kind == "datetime":  # Unix seconds -> the column's milliseconds (pyarrow takes the integers)
                values = [None if v is None else int(v * 1000) for v in column]
            try:
                arrays.append(pa.array(values, type=f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # e.g. a decimal finer than 12 places
                raise FocusError(f"Parquet column {c.name}: {exc}") from exc
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self._batch = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def open_writer(fmt: str, out: IO[Any], columns: tuple[Column, ...]) -> RowWriter:
    """A writer of ``fmt`` onto ``out`` (a text stream for csv/jsonl, a binary one for parquet)."""
    if fmt == "csv":
        return CsvWriter(out, columns)
    if fmt == "jsonl":
        return JsonLinesWriter(out, columns)
    if fmt == "parquet":
        return ParquetWriter(out, columns)
    raise FocusError(f"unknown FOCUS format {fmt!r} (one of {', '.join(FORMATS)})")
