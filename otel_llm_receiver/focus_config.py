"""The ``focus:`` config section: the periodic FOCUS writer of ``run`` and the read-only HTTP endpoints.

Kept out of ``config.py`` (which only dispatches to ``parse_focus``) so the FOCUS export owns its schema, like
``signals_config.py`` for the money signals. Every problem is reported at once with its key path; unknown keys
are errors.

```yaml
focus:
  path: ./focus          # one file per UTC day here (absent: no files, e.g. only the HTTP endpoints)
  interval: 1h           # how often changed days are rewritten
  version: "1.2"         # 1.0, 1.2 or 1.3
  format: parquet        # csv, parquet (needs the [focus] extra) or jsonl
  final_after: 15d       # days older than this are final (default: the providers' longest revision horizon)
  http: true             # GET /focus.csv and /focus.json on the health endpoint
```
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config_parse import Parser

VERSIONS = ("1.0", "1.2", "1.3")
FORMATS = ("csv", "parquet", "jsonl")
_FOCUS_KEYS = ("path", "interval", "version", "format", "final_after", "http")


@dataclass(frozen=True)
class FocusConfig:
    path: str | None = None
    interval: float = 3600.0
    version: str = "1.2"
    format: str = "csv"
    final_after: float | None = None  # None: the longest REVISION_HORIZON of the configured providers
    http: bool = False


def _have_pyarrow() -> bool:
    """Whether Parquet can be written (the ``[focus]`` extra), without importing pyarrow (it is slow)."""
    try:
        return importlib.util.find_spec("pyarrow") is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked installation
        return False


def parse_focus(p: Parser, raw: Any) -> FocusConfig | None:
    section = p.mapping(raw, "focus")
    if section is None:
        return None
    values: dict[str, Any] = {}
    for key, value in section.items():
        path = f"focus.{key}"
        if key == "path":
            text = p.text(value, path, nonempty=True)
            if isinstance(text, str):
                values["path"] = text
        elif key in ("interval", "final_after"):
            seconds = p.duration(value, path, positive=True)
            if isinstance(seconds, float | int):
                values[key] = float(seconds)
        elif key == "version":
            text = p.text(value, path, choices=VERSIONS, coerce=True)
            if isinstance(text, str):
                values["version"] = text
        elif key == "format":
            text = p.text(value, path, choices=FORMATS)
            if isinstance(text, str):
                if text == "parquet" and not _have_pyarrow():
                    p.problem(path, "parquet needs pyarrow: pip install 'otel-llm-receiver[focus]' (or use csv)")
                else:
                    values["format"] = text
        elif key == "http":
            flag = p.boolean(value, path)
            if isinstance(flag, bool):
                values["http"] = flag
        else:
            p.problem(path, f"unknown key (valid: {', '.join(_FOCUS_KEYS)})")
    return FocusConfig(**values)
