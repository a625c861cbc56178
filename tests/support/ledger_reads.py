"""Readers only the tests need, kept out of the package: they read the ledger file with their own connection.

Reading independently of ``ledger/reader.py`` is the point: a test that checks the ledger through the same
queries the receiver uses would agree with a wrong query.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, NamedTuple

from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.names import ROLLUP_PICO_METRICS
from otel_llm_receiver.series import PICOS_PER_NANO


class SeriesSum(NamedTuple):
    instance: str
    metric: str
    attrs: dict[str, str]
    value: int


class ExactTotal(NamedTuple):
    instance: str
    attrs: dict[str, str]
    total: int  # sub-units (pico-USD for estimated cost), remainders included
    adjustments: int


def _rows(ledger: Ledger, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    dsn = getattr(ledger, "_dsn", None)
    if dsn is not None:  # PostgreSQL: a connection of its own, the statement's placeholders in psycopg's form
        import psycopg

        with psycopg.connect(dsn) as conn:
            return conn.execute(sql.replace("?", "%s"), args).fetchall()
    with sqlite3.connect(f"file:{ledger.path}?mode=ro", uri=True) as db:
        rows = db.execute(sql, args).fetchall()
    db.close()
    return rows


def rollup_totals_since(ledger: Ledger, since: int) -> list[SeriesSum]:
    """Per series: the sum of its hourly rollups from ``since`` on."""
    sql = """SELECT s.instance, s.metric, s.attrs, sum(r.value) FROM rollups AS r JOIN series AS s
             ON s.id = r.series_id WHERE r.hour_start >= ? GROUP BY s.id"""
    return [SeriesSum(i, m, json.loads(a), int(v)) for i, m, a, v in _rows(ledger, sql, (since,))]


def exact_totals(ledger: Ledger, metric: str) -> list[ExactTotal]:
    """Per series of ``metric``: totals in sub-units (``total * 1000 + sub_total`` for pico metrics)."""
    scale = PICOS_PER_NANO if metric in ROLLUP_PICO_METRICS else 1
    sql = """SELECT instance, attrs, total, sub_total, adjustments, sub_adjustments FROM series
             WHERE metric = ? ORDER BY id"""
    return [ExactTotal(i, json.loads(a), int(t) * scale + int(st), int(adj) * scale + int(sa))
            for i, a, t, st, adj, sa in _rows(ledger, sql, (metric,))]
