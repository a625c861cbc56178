"""FOCUS (FinOps Open Cost and Usage Specification) export of LLM spend, from the ledger.

``rows`` builds a UTC day's rows (version-independent), ``schema`` says which columns each FOCUS version's
file holds, ``formats`` writes CSV / JSON Lines / Parquet, ``export`` streams a range of days to one file,
``writer`` keeps one file per day up to date for ``run``, ``command`` is the ``focus`` subcommand and ``http``
the ``/focus.csv`` / ``/focus.json`` routes of the health endpoint (both imported on demand). docs/focus.md has
the column mapping.
"""

from .export import context_for, days_between, export, iter_rows, write_atomically
from .formats import FORMATS, FocusError, open_writer
from .rows import DAY, RowContext, day_rows
from .schema import DEFAULT_VERSION, VERSIONS, column_names, columns
from .writer import FocusWriter, WritePass

__all__ = [
    "DAY",
    "DEFAULT_VERSION",
    "FORMATS",
    "VERSIONS",
    "FocusError",
    "FocusWriter",
    "RowContext",
    "WritePass",
    "column_names",
    "columns",
    "context_for",
    "day_rows",
    "days_between",
    "export",
    "iter_rows",
    "open_writer",
    "write_atomically",
]
