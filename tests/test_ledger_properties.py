"""Property: for any sequence of polls, the emitted counters equal what the buckets' histories imply.

Random polls re-read random subsets of buckets with values that grow, shrink, repeat, or come in parts.
After every poll: the emitted ``llm.usage.tokens`` value is the sum of all growth, the emitted
``llm.usage.adjustments`` is the sum of all shrinkage, and their difference is the sum of the latest bucket
values, i.e. exactly what the provider currently reports.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_llm_receiver.builder import MetricsBuilder, make_resource
from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.ledger import Ledger, open_ledger
from otel_llm_receiver.model import PollResult, UsageRecord
from tests.support.otlp_sink import Point, merge_requests

MODELS = ("m1", "m2")
STARTS = tuple(range(0, 6 * 3600, 3600))

# One poll: a list of (model, bucket start, value, parts) - parts > 1 splits the value into several rows.
poll_strategy = st.lists(
    st.tuples(st.sampled_from(MODELS), st.sampled_from(STARTS), st.integers(0, 10_000), st.integers(1, 3)),
    max_size=12,
)


def _records(poll: list[tuple[str, int, int, int]]) -> list[UsageRecord]:
    out = []
    for model, start, value, parts in poll:
        share = value // parts
        for i in range(parts):
            part = share if i < parts - 1 else value - share * (parts - 1)
            out.append(UsageRecord("demo", model, "chat", "t1", start, 3600, {"input": part}))
    return out


@pytest.fixture
def fresh_ledger(ledger_store: StorageConfig) -> object:
    """A context manager giving a fresh, empty ledger on the test's engine for each example: a new temp file,
    or the test's database emptied (TRUNCATE: milliseconds, where a database per example took ~0.1 s)."""

    @contextlib.contextmanager
    def fresh() -> Iterator[Ledger]:
        if ledger_store.backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "l.db") as ledger:
                yield ledger
            return
        import psycopg

        assert ledger_store.dsn is not None
        with psycopg.connect(ledger_store.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE series, buckets, refined, rollups, cursors, horizons, names, pricing"
                         " RESTART IDENTITY")
        with open_ledger(ledger_store) as ledger:
            yield ledger

    return fresh


# 60 examples on each engine: a few seconds on each.
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(poll_strategy, min_size=1, max_size=8))
def test_emitted_totals_equal_the_sum_of_latest_bucket_values(
    fresh_ledger: object, polls: list[list[tuple[str, int, int, int]]]
) -> None:
    latest: dict[tuple[str, int], int] = {}
    growth: dict[str, int] = dict.fromkeys(MODELS, 0)
    shrink: dict[str, int] = dict.fromkeys(MODELS, 0)
    with fresh_ledger() as ledger:  # type: ignore[operator]
        builder = MetricsBuilder(make_resource("test"))
        for poll in polls:
            # The model: duplicate keys in one poll are parts of one bucket; last poll's value wins.
            this_poll: dict[tuple[str, int], int] = {}
            for model, start, value, _ in poll:
                this_poll[(model, start)] = this_poll.get((model, start), 0) + value
            for key, value in this_poll.items():
                prior = latest.get(key)
                delta = value - (prior or 0)
                if delta > 0:
                    growth[key[0]] += delta
                else:
                    shrink[key[0]] -= delta
                latest[key] = value
            ledger.apply("demo", PollResult(usage=_records(poll)))

            export = builder.build(ledger.export_rows(builder.known_series), None, 1)
            metrics = merge_requests(export.requests())
            emitted = {
                dict(key)["gen_ai.request.model"]: p.value
                for key, p in metrics.get("llm.usage.tokens", {}).items()
            }
            adjusted = {
                dict(key)["gen_ai.request.model"]: p.value
                for key, p in metrics.get("llm.usage.adjustments", {}).items()
            }
            for model in MODELS:
                seen = any(k[0] == model for k in latest)
                assert emitted.get(model, 0) == (growth[model] if seen else 0)
                assert adjusted.get(model, 0) == shrink[model]
                assert emitted.get(model, 0) - adjusted.get(model, 0) == sum(
                    v for (m, _), v in latest.items() if m == model
                )
            # Counters are cumulative and monotonic on the wire, with the series' persisted start time.
            for key, p in metrics.get("llm.usage.tokens", {}).items():
                assert isinstance(p, Point) and p.is_monotonic and p.temporality == 2
                assert p.start_time_unix_nano > 0
                assert json.dumps(dict(key))  # plain, serialisable attributes
