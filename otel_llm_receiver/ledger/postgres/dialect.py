"""The ledger's SQLite statements, translated to PostgreSQL once each: one source of SQL for both engines.

Why translate rather than keep PostgreSQL copies: the writer's and reader's ~80 statements change often (they
are tuned for SQLite), and two copies would drift; the accounting must be the same on both engines (issue 21).
The statements use a small, known part of SQLite's dialect, so a hand-written translator is enough (no SQL
parser library: sqlglot, the one that fits, is a large dependency and rewrites whole statements, and its
SQLite-to-PostgreSQL output still needs the ledger-specific rules below). ``tests/test_pg_dialect.py``
translates every SQL constant of the ledger's modules and has PostgreSQL prepare it, so a new SQLite-only
construct fails a test naming its statement.

What changes (outside string literals and quoted names):

* parameters: ``?`` -> ``%s`` and ``:name`` -> ``%(name)s``, and a literal ``%`` (modulo) -> ``%%`` (psycopg);
* scalar ``max(a, b)`` / ``min(a, b)`` -> ``GREATEST`` / ``LEAST`` (the one-argument aggregates stay). SQLite's
  scalar max is NULL if any argument is; GREATEST ignores NULLs: no statement of the ledger passes a NULL;
* ``sum(x)`` -> ``CAST(sum(x) AS BIGINT)``: PostgreSQL sums BIGINTs as NUMERIC, which would turn the writer's
  integer division (``/``) into a fractional one; BIGINT keeps SQLite's exact integer arithmetic and, like
  SQLite, fails on overflow. ``sum(<condition>)`` counts the rows where it holds (SQLite's booleans are 0/1);
* ``a IS NOT b`` / ``a IS b`` (b not NULL) -> ``IS DISTINCT FROM`` / ``IS NOT DISTINCT FROM``;
* ``typeof(x)`` -> ``'integer'``: every PostgreSQL column is typed; an overflowing BIGINT product fails the
  statement (the engine reports it as a 64-bit overflow) instead of silently becoming a float as in SQLite;
* ``INTEGER`` -> ``BIGINT`` (SQLite's INTEGER is 64-bit, PostgreSQL's 32), ``WITHOUT ROWID`` dropped;
* an additive upsert (``ON CONFLICT (k) DO UPDATE SET value = value + excluded.value``) sums its source per key
  first: SQLite applies repeated keys of one statement one after the other, PostgreSQL refuses to update a row
  twice in one statement; its rows come in key order (``ORDER BY`` the key): the rows of a hash aggregate arrive
  in hash order, and inserting them into a large primary key in that order cost ~35% more backend CPU.
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["UnsupportedSQL", "translate"]

#: Columns of the tables an additive upsert may target without naming its columns.
_TABLE_COLUMNS: Final = {
    "staged": ("series_id", "bucket_start", "bucket_width", "value"),
    "rollups": ("series_id", "hour_start", "value"),
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BOOLEAN_OPERATORS = re.compile(r"(<|>|=|\bIS\b|\bAND\b|\bOR\b|\bNOT\b|\bIN\b|\bLIKE\b|\bEXISTS\b)", re.IGNORECASE)
_ADDITIVE = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>\w+)\s*(?P<cols>\([^()]*\))?\s*(?P<source>.*?)\s*"
    r"ON\s+CONFLICT\s*\((?P<keys>[^()]*)\)\s*DO\s+UPDATE\s+SET\s+(?P<col>\w+)\s*=\s*(?P=col)\s*\+\s*excluded\.(?P=col)"
    r"\s*$",
    re.IGNORECASE | re.DOTALL,
)


class UnsupportedSQL(ValueError):
    """A statement uses SQLite that this translator does not know how to say in PostgreSQL."""


def _mask(sql: str) -> tuple[str, list[str]]:
    """``sql`` with every string literal and quoted name replaced by a placeholder ``\\x00N\\x00``."""
    kept: list[str] = []
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            j = i + 1
            while True:
                j = sql.find(ch, j)
                if j < 0:
                    raise UnsupportedSQL(f"unterminated quote in: {sql.strip()[:80]}")
                if j + 1 < n and sql[j + 1] == ch:  # a doubled quote inside
                    j += 2
                    continue
                break
            kept.append(sql[i:j + 1])
            out.append(f"\x00{len(kept) - 1}\x00")
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(ch)
            i += 1
    return "".join(out), kept


def _unmask(sql: str, kept: list[str]) -> str:
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], sql)


def _close(sql: str, open_at: int) -> int:
    """Index of the parenthesis closing the one at ``open_at``."""
    depth = 0
    for i in range(open_at, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise UnsupportedSQL(f"unbalanced parentheses in: {sql.strip()[:80]}")


def _split_args(args: str) -> list[str]:
    """Top-level comma-separated arguments."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(args):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(args[start:i])
            start = i + 1
    parts.append(args[start:])
    return parts


def _top_level(text: str) -> str:
    """``text`` with everything inside parentheses removed (what an operator search may look at)."""
    out, depth = [], 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


_FUNCTIONS = re.compile(r"(?<![A-Za-z0-9_.])(max|min|sum|typeof)\s*\(", re.IGNORECASE)


def _functions(sql: str) -> str:
    """Rewrite the function calls that differ, innermost arguments first."""
    out: list[str] = []
    pos = 0
    while True:
        match = _FUNCTIONS.search(sql, pos)
        if match is None:
            out.append(sql[pos:])
            return "".join(out)
        name = match.group(1).lower()
        open_at = match.end() - 1
        close_at = _close(sql, open_at)
        inner = _functions(sql[open_at + 1:close_at])
        out.append(sql[pos:match.start()])
        args = _split_args(inner)
        if name == "typeof":
            out.append("'integer'")
        elif name in ("max", "min") and len(args) > 1:
            out.append(f"{'GREATEST' if name == 'max' else 'LEAST'}({inner})")
        elif name == "sum":
            if _BOOLEAN_OPERATORS.search(_top_level(inner)):
                inner = f"CASE WHEN {inner.strip()} THEN 1 ELSE 0 END"
            out.append(f"CAST(sum({inner}) AS BIGINT)")
        else:
            out.append(f"{match.group(1)}({inner})")
        pos = close_at + 1


def _additive_upsert(sql: str) -> str:
    """``INSERT INTO t (cols) SOURCE ON CONFLICT (keys) DO UPDATE SET v = v + excluded.v`` with SOURCE summed
    per key, so no key appears twice in one statement."""
    match = _ADDITIVE.match(sql)
    if match is None:
        return sql
    table, source = match.group("table"), match.group("source").strip()
    if match.group("cols"):
        columns = tuple(c.strip() for c in match.group("cols")[1:-1].split(","))
    elif table.lower() in _TABLE_COLUMNS:
        columns = _TABLE_COLUMNS[table.lower()]
    else:
        raise UnsupportedSQL(f"an additive upsert into {table} must name its columns")
    keys = [k.strip() for k in match.group("keys").split(",")]
    value = match.group("col")
    if set(columns) != {*keys, value}:
        raise UnsupportedSQL(f"an additive upsert into {table} must insert exactly its key and {value}")
    # Every column of an additive upsert is an integer: typed here, so parameters of a VALUES source are too.
    select = ", ".join(f"CAST(sum(CAST({c} AS BIGINT)) AS BIGINT)" if c == value else f"CAST({c} AS BIGINT)"
                       for c in columns)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} FROM ({source}) AS src ({', '.join(columns)})"
        f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {value} = {table}.{value}"
        f" + excluded.{value}"
    )


_UPSERT_SET = re.compile(
    r"^(?P<head>\s*INSERT\s+INTO\s+(?P<table>\w+).*?ON\s+CONFLICT\s*\([^()]*\)\s*DO\s+UPDATE\s+SET\s+)(?P<set>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_KEYWORDS: Final = frozenset({"case", "when", "then", "else", "end", "and", "or", "not", "null", "is", "in",
                              "excluded", "true", "false", "distinct", "from", "where", "as", "cast", "bigint",
                              "integer", "text", "int", "like", "between", "select", "exists", "greatest", "least",
                              "numeric", "real", "double", "precision"})


def _qualify_upsert_set(sql: str) -> str:
    """In ``ON CONFLICT ... DO UPDATE SET c = expr``, a bare column in ``expr`` means the existing row in
    SQLite; PostgreSQL finds it ambiguous with ``excluded``'s: name the target table."""
    match = _UPSERT_SET.match(sql)
    if match is None:
        return sql
    table = match.group("table")
    parts = []
    for assignment in _split_args(match.group("set")):
        column, _, expr = assignment.partition("=")
        expr = re.sub(
            r"(?<![.\w\x00])([A-Za-z_]\w*)\b(?!\s*[.(])",
            lambda m: m.group(1) if m.group(1).lower() in _KEYWORDS else f"{table}.{m.group(1)}",
            expr,
        )
        parts.append(f"{column}={expr}")
    return match.group("head") + ",".join(parts)


_IS = re.compile(r"\bIS\s+(NOT\s+)?(?!NULL\b|DISTINCT\b|TRUE\b|FALSE\b|NOT\b)", re.IGNORECASE)
_NAMED = re.compile(r"(?<![:A-Za-z0-9_]):([A-Za-z_][A-Za-z0-9_]*)")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """``sql`` (SQLite, as the ledger writes it) in PostgreSQL with psycopg's placeholders; cached."""
    masked, kept = _mask(sql)
    if "::" in masked:
        raise UnsupportedSQL(f"'::' is not SQLite: {sql.strip()[:80]}")
    masked = re.sub(r"\bWITHOUT\s+ROWID\b", "", masked, flags=re.IGNORECASE)
    if re.search(r"\bINSERT\s+OR\b|\bREPLACE\s+INTO\b|\bPRAGMA|\bsqlite_\w+|\bAUTOINCREMENT\b|\bGLOB\b",
                 masked, re.IGNORECASE):
        raise UnsupportedSQL(f"SQLite-only construct in: {sql.strip()[:80]}")
    masked = re.sub(r"\bINTEGER\b", "BIGINT", masked, flags=re.IGNORECASE)
    masked = _IS.sub(lambda m: "IS DISTINCT FROM " if m.group(1) else "IS NOT DISTINCT FROM ", masked)
    masked = _functions(masked)
    additive = _additive_upsert(masked)
    masked = additive if additive != masked else _qualify_upsert_set(masked)
    masked = masked.replace("%", "%%")
    masked = masked.replace("?", "%s")
    masked = _NAMED.sub(lambda m: f"%({m.group(1)})s", masked)
    return _unmask(masked, [k.replace("%", "%%") for k in kept])
