"""FOCUS (FinOps Open Cost and Usage Specification) export of LLM spend, from the ledger.

``rows`` builds a UTC day's rows (version-independent), ``schema`` says which columns each FOCUS version's
file holds, ``formats`` writes CSV / JSON Lines / Parquet, ``export`` streams a range of days to one file,
``writer`` keeps one file per day up to date for ``run``, ``command`` is the ``focus`` subcommand and ``http``
the ``/focus.csv`` / ``/focus.json`` routes of the health endpoint (both imported on demand). docs/focus.md has
the column mapping.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .export import context_for, days_between, iter_rows, write_atomically
    from .formats import FocusError, open_writer
    from .rows import DAY, RowContext, day_rows
    from .schema import DEFAULT_VERSION, FORMATS, VERSIONS, column_names, columns
    from .writer import FocusWriter, WritePass

# Each name is imported from its module when first asked for (PEP 562): ``focus.command``'s options come with
# ``--help``, which must not load the ledger, pricing and money modules that ``export`` and ``rows`` need.
# ``focus.export`` is the module (its ``export`` function is ``focus.export.export``): a lazy package attribute
# cannot also be a function of that name, since importing the submodule binds the name.
_MODULE_OF = {
    "context_for": "export", "days_between": "export", "iter_rows": "export", "write_atomically": "export",
    "FocusError": "formats", "open_writer": "formats",
    "DAY": "rows", "RowContext": "rows", "day_rows": "rows",
    "DEFAULT_VERSION": "schema", "FORMATS": "schema", "VERSIONS": "schema", "column_names": "schema", "columns": "schema",
    "FocusWriter": "writer", "WritePass": "writer",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
    "iter_rows",
    "open_writer",
    "write_atomically",
]
