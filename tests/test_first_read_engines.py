"""The first export after start on both engines: the money signals' one read of every series describes them to
the builder and hands over their totals and levels (``scheduler.FirstRead``); the export built from that must
send exactly what one built the plain way sends (``Ledger.export_rows``, a fresh builder), and the reading must be
the one a reading without the hand-over gives. PostgreSQL runs the translated SQL (``SQL_EVERY_SERIES_ROWS``'
totals, ``levels_of`` beside an open read) on a real server."""

from __future__ import annotations

import random
from collections.abc import Callable

from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.scheduler import FirstRead
from otel_llm_receiver.signals import Signals
from tests.test_builder_semantics import (
    INSTANCES,
    LABELS,
    NOW,
    STORAGE,
    _attributor,
    _builder,
    _expected,
    _points,
    _poll,
)
from tests.test_signals_fast import _same

HOUR = 3600


def test_the_first_read_hands_over_what_the_export_reads_on_both_engines(make_ledger: Callable[..., Ledger]) -> None:
    rng = random.Random(31)
    hour = NOW // 10**9 // HOUR * HOUR
    writer = make_ledger()
    for round_ in range(3):
        for instance, result in _poll(rng, hour + HOUR * round_, INSTANCES):
            writer.apply(instance, result, tenant="acme")
    reader = make_ledger(readonly=True)
    builder = _builder(True, {})
    first = FirstRead(builder)
    reading = Signals().read(reader, NOW // 10**9, describe=first)
    _same(reading, Signals().read(reader, NOW // 10**9))  # the hand-over changes nothing the signals compute
    rows = first.rows()
    assert rows is not None
    assert len(list(rows.totals)) == reader.counts()["series"]
    got = _points(builder.build(rows, None, NOW).requests())
    plain = _points(_builder(True, {}).build(reader.export_rows(0), None, NOW).requests())
    assert got == plain == _expected(reader, LABELS, _attributor(True), {}, None)
    assert any(k[0] == STORAGE for k in got) and any(k[0] == "llm.usage.adjustments" for k in got)
