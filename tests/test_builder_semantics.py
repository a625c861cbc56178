"""The builder's wire output equals the export's meaning, computed the plain way, on random ledgers.

The builder takes shortcuts for speed (issue 20): attribute sets encoded from the text cut around the tenancy id,
per-series state in arrays, a reused plan of which row feeds which wire series, a reused build while the
generation is unchanged. This test states what an export means without any of them, from ``Ledger.snapshot()``
and ``json.loads``: every enabled series of the held instances, its instance's labels under its own attributes,
its tenancy's current name, the attribution rules' team on usage series; equal attribute sets of one metric added
up with the earliest start time; shrinks as ``llm.usage.adjustments``; levels as gauges of the newest bucket;
money in whole units. Each decoded point (name, attributes, value, start time, temporality, monotonicity) must
match, with no point sent twice, on ledgers with several instances, through rounds of polls (new series, grown and
shrunk buckets, renamed and newly named tenancies), for the builder that follows the rounds (the ``changed`` path)
and for a fresh one (a full rebuild). Seeds are fixed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otel_llm_receiver.attribution import Attributor
from otel_llm_receiver.builder import MetricsBuilder, make_resource
from otel_llm_receiver.catalog import CATALOG
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.errors import LedgerError
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import NANOS_PER_UNIT, CostRecord, PollResult, UsageRecord
from otel_llm_receiver.names import LEVEL_METRICS, MEASURE_OF_METRIC, NANO_METRICS
from otel_llm_receiver.scheduler import FirstRead
from otel_llm_receiver.signals import Signals

NOW = 1_790_000_000_000_000_000
HOUR = 3600
INSTANCES = ("openai/a", "openai/b", "anthropic/c", "openai/d")  # a and d: equal sets, added up
LABELS = {
    "openai/b": {"deployment.environment": "prod", "gen_ai.request.model": "a label loses", "zz.last": "1"},
    "anthropic/c": {"llm.tenancy.name": "from a label", "aa.first": "x"},
}
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-opus-4", "модель-ü", 'we"ird\\model', "a,b:c")
TENANCIES = ("proj_a", "proj_b", "proj_c", "lab-7", 'q"uote', "")
STORAGE = "llm.usage.storage"
RULES = [
    {"tenancy": "proj_a", "model": "gpt-*", "team": "search", "cost_center": "CC-1"},
    {"tenancy": "Project B", "team": "support"},
    {"labels": {"deployment.environment": "prod"}, "team": "platform"},
]

Key = tuple[str, frozenset[tuple[str, Any]]]


def _points(requests: Iterable[ExportMetricsServiceRequest]) -> dict[Key, tuple[Any, ...]]:
    """Every point on the wire: (metric, attributes) -> (kind, value, start, time, temporality, monotonic)."""
    out: dict[Key, tuple[Any, ...]] = {}
    for request in requests:
        (rm,) = request.resource_metrics
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                d = CATALOG.metrics[metric.name]
                assert (metric.unit, metric.description) == (d.unit, d.description)
                kind = metric.WhichOneof("data")
                assert kind in ("sum", "gauge")
                body = getattr(metric, kind)
                for dp in body.data_points:
                    key = (metric.name, frozenset((kv.key, kv.value.string_value) for kv in dp.attributes))
                    assert key not in out, f"sent twice: {key}"
                    value = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                    temporality = body.aggregation_temporality if kind == "sum" else None
                    monotonic = body.is_monotonic if kind == "sum" else None
                    out[key] = (kind, value, dp.start_time_unix_nano, dp.time_unix_nano, temporality, monotonic)
    return out


def _expected(ledger: Ledger, labels: Mapping[str, Mapping[str, str]], attributor: Attributor,
              enabled: Mapping[str, bool], held: frozenset[str] | None) -> dict[Key, tuple[Any, ...]]:
    """What the export means, from a snapshot: see the module docstring."""
    snapshot = ledger.snapshot()
    sums: dict[Key, list[int]] = {}
    kinds: dict[Key, str] = {}

    def on(metric: str) -> bool:
        return enabled.get(metric, CATALOG.metrics[metric].enabled)

    def add(key: Key, value: int, start: int, kind: str) -> None:
        slot = sums.get(key)
        if slot is None:
            sums[key], kinds[key] = [value, start], kind
        else:
            slot[0] += value
            slot[1] = min(slot[1], start)

    for s in snapshot.series:
        if (held is not None and s.instance not in held) or not on(s.metric):
            continue
        raw = json.loads(s.attrs)
        own = labels.get(s.instance, {})
        attrs = {**own, **raw}
        name = snapshot.names.get((s.instance, "tenancy", raw["llm.tenancy.id"])) if "llm.tenancy.id" in raw else None
        if name:
            attrs["llm.tenancy.name"] = name
        if attributor and s.metric.startswith("llm.usage."):
            attrs.update(attributor.attributes(attrs, name, own or None))
        if s.metric in LEVEL_METRICS:
            if s.level is not None:
                add((s.metric, frozenset(attrs.items())), s.level, 0, "gauge")
            continue
        kind: str = "money" if s.metric in NANO_METRICS else CATALOG.metrics[s.metric].value_type
        add((s.metric, frozenset(attrs.items())), s.total, s.start_time_ns, kind)
        if s.adjustments and on("llm.usage.adjustments"):
            measure = MEASURE_OF_METRIC.get(s.metric, s.metric)
            adjusted = frozenset({"llm.measure": measure, **attrs}.items())
            add(("llm.usage.adjustments", adjusted), s.adjustments, s.start_time_ns,
                "money" if kind == "money" else "double")
    out: dict[Key, tuple[Any, ...]] = {}
    for key, (value, start) in sums.items():
        kind = str(kinds[key])
        wire: int | float = value / NANOS_PER_UNIT if kind == "money" else float(value) if kind == "double" else value
        if kind == "gauge":
            out[key] = ("gauge", value, 0, NOW, None, None)
        else:
            out[key] = ("sum", wire, start, NOW, 2, True)
    return out


def _poll(rng: random.Random, hour: int, instances: tuple[str, ...]) -> Iterator[tuple[str, PollResult]]:
    """One round: each instance reports some of its buckets (new, grown or shrunk) and maybe some names."""
    for instance in instances:
        provider = instance.split("/")[0]
        usage = [
            UsageRecord(provider, rng.choice(MODELS), rng.choice(("chat", "embeddings")), rng.choice(TENANCIES),
                        hour - HOUR * rng.randrange(3), HOUR,
                        {t: rng.randrange(0, 5_000) for t in rng.sample(("input", "output", "cache_read"), 2)},
                        requests=rng.choice((None, rng.randrange(1, 50))))
            for _ in range(rng.randrange(3, 12))
        ]
        if rng.random() < 0.5:
            usage.append(UsageRecord(provider, "vs", "vector_store", rng.choice(TENANCIES[:3]),
                                     hour - HOUR * rng.randrange(3), HOUR, measures={STORAGE: rng.randrange(1, 9000)}))
        costs = [
            CostRecord(provider, rng.choice(TENANCIES), hour - HOUR * rng.randrange(3), HOUR,
                       Decimal(rng.randrange(0, 10**7)) / 10**6, line_item=rng.choice(("gpt-4o, input", "storage")),
                       quantity=rng.choice((None, Decimal(rng.randrange(1, 999)) / 4)), quantity_unit="tokens")
            for _ in range(rng.randrange(0, 4))
        ]
        names = {("tenancy", t): rng.choice(("Project A", "Project B", "Lab ü", 'N"ame'))
                 for t in rng.sample(TENANCIES, 2)} if rng.random() < 0.6 else {}
        yield instance, PollResult(usage=usage, costs=costs, names=names)


def _builder(rules: bool, enabled: Mapping[str, bool]) -> MetricsBuilder:
    return MetricsBuilder(make_resource("inst"), labels=LABELS, enabled=enabled, attributor=_attributor(rules),
                          max_points_per_request=7)


def _attributor(rules: bool) -> Attributor:
    if not rules:
        return Attributor(())
    return Attributor(parse_config({"providers": {"demo": {}}, "attribution": {"rules": RULES}}).attribution.rules)


@pytest.mark.parametrize(("seed", "rules", "enabled", "instances"), [
    (1, False, {}, INSTANCES),
    (2, True, {}, INSTANCES),
    (3, False, {"llm.usage.requests": False, "llm.usage.adjustments": False}, INSTANCES),
    (4, False, {STORAGE: False, "llm.usage.cost": False}, INSTANCES),
    (5, False, {}, INSTANCES[:3]),  # no two instances share a set: every wire series has one feeder
])
def test_exports_mean_what_the_ledger_holds_through_rounds_of_polls(
    tmp_path: Path, seed: int, rules: bool, enabled: dict[str, bool], instances: tuple[str, ...]
) -> None:
    rng = random.Random(seed)
    hour = NOW // 10**9 // HOUR * HOUR
    followed = _builder(rules, enabled)  # follows the rounds: only new series described, the plan reused
    replica = _builder(rules, enabled)  # a replica holding two of the instances
    held = frozenset(INSTANCES[:2])
    attributor = _attributor(rules)
    with Ledger(tmp_path / "ledger.db") as ledger:
        for round_ in range(6):
            for instance, result in _poll(rng, hour + HOUR * (round_ // 2), instances):
                ledger.apply(instance, result, tenant="acme")
            for builder in (followed, _builder(rules, enabled)):  # the changed path, a full rebuild
                export = builder.build(ledger.export_rows(builder.known_series), None, NOW)
                got = _points(export.requests())
                assert got == _expected(ledger, LABELS, attributor, enabled, None), f"round {round_}"
                assert export.points == len(got)
                assert all(0 < b.points <= 7 for b in export.batches)
            # unchanged: the last build's points again (rows None), with this export's time
            again = _points(followed.build(None, None, NOW).requests())
            assert again == got
            subset = replica.build(ledger.export_rows(replica.known_series), None, NOW, instances=held)
            assert _points(subset.requests()) == _expected(ledger, LABELS, attributor, enabled, held)
        assert len(got) > 40  # the rounds made a ledger worth checking
        series = ledger.snapshot().series
        assert len({s.instance for s in series}) == len(instances)
        assert any(s.adjustments for s in series)  # shrinks happened
        twins = [(s.metric, s.attrs) for s in series if s.instance in ("openai/a", "openai/d")]
        assert (len(twins) > len(set(twins))) == ("openai/d" in instances)  # and sums, where two instances share


def test_two_instances_with_one_attribute_set_stay_one_point_as_series_come_and_names_change(tmp_path: Path) -> None:
    """A wire series fed by several ledger series is summed; a second feeder arriving later, or a rename that
    makes two sets equal, must not send the set twice."""
    builder = MetricsBuilder(make_resource("x"))
    with Ledger(tmp_path / "ledger.db") as ledger:
        def usage(tenancy: str, n: int) -> PollResult:
            return PollResult(usage=[UsageRecord("openai", "gpt-4o", "chat", tenancy, 0, HOUR, {"input": n})])

        ledger.apply("openai/a", usage("p", 10))
        assert _points(builder.build(ledger.export_rows(builder.known_series), None, NOW).requests()) == \
            _expected(ledger, {}, Attributor(()), {}, None)
        ledger.apply("openai/b", usage("p", 32))  # the same set from a second instance: one point, 42
        got = _points(builder.build(ledger.export_rows(builder.known_series), None, NOW).requests())
        assert [v[1] for v in got.values()] == [42]
        ledger.apply("openai/b", usage("q", 5))
        got = _points(builder.build(ledger.export_rows(builder.known_series), None, NOW).requests())
        assert sorted(v[1] for v in got.values()) == [5, 42]
        assert got == _expected(ledger, {}, Attributor(()), {}, None)


class _Landing:
    """A ``Describer`` for ``Signals.read`` that hands the series to ``builder`` and, after the first page,
    applies ``polls`` (between the signals' read and the totals' read); ``landed``: the builder's
    ``known_series`` then. Its totals are left out: the export reads them (``Ledger.export_rows``)."""

    def __init__(self, builder: MetricsBuilder, writer: Ledger, polls: Iterator[tuple[str, PollResult]]) -> None:
        self.builder, self.writer, self.polls = builder, writer, polls
        self.landed: list[int] = []

    def page(self, series: Iterable[tuple[int, str, str, str]], names: Mapping[Any, str], totals: Any,
             levels: Any) -> None:
        self.builder.describe(series, names)
        if not self.landed:
            for instance, result in self.polls:
                self.writer.apply(instance, result, tenant="acme")
            self.landed.append(self.builder.known_series)

    def complete(self) -> None:
        pass


def _landing(builder: MetricsBuilder, writer: Ledger, polls: Iterator[tuple[str, PollResult]]) -> tuple[
        _Landing, list[int]]:
    landing = _Landing(builder, writer, polls)
    return landing, landing.landed


@pytest.mark.parametrize(("seed", "rules"), [(6, False), (7, True)])
def test_series_described_from_the_signals_read_mean_the_same(tmp_path: Path, seed: int, rules: bool) -> None:
    """The first export after start describes every series to the builder from the money signals' read
    (``Signals.read(describe=builder.describe)``), then reads the totals and only the series after the ones
    described. A poll landing between the two reads (new series, grown buckets, renamed tenancies) must be in
    that export as in one made the plain way; and the builder must go on following the rounds as one that read
    its own rows."""
    from otel_llm_receiver.signals import Signals

    rng = random.Random(seed)
    hour = NOW // 10**9 // HOUR * HOUR
    attributor = _attributor(rules)
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer, Ledger(path, readonly=True) as reader:
        for round_ in range(4):
            for instance, result in _poll(rng, hour + HOUR * round_, INSTANCES):
                writer.apply(instance, result, tenant="acme")
            builder, signals = _builder(rules, {}), Signals()  # a fresh start: both read every series
            landing = _poll(rng, hour + HOUR * (round_ + 1), INSTANCES)
            if round_ % 2 == 0:  # names only in odd rounds: the kept sets are not rebuilt by a rename
                landing = iter([(i, PollResult(usage=r.usage, costs=r.costs)) for i, r in landing])
            describe, landed = _landing(builder, writer, landing)
            signals.read(reader, NOW // 10**9, describe=describe)
            assert landed and landed[0] > 0  # the series came from the signals' read
            export = builder.build(reader.export_rows(builder.known_series), None, NOW)
            assert reader.counts()["series"] > landed[0]  # the poll made series the signals did not read
            got = _points(export.requests())
            assert got == _expected(reader, LABELS, attributor, {}, None), f"round {round_}"
            assert export.points == len(got)
            for instance, result in _poll(rng, hour + HOUR * (round_ + 2), INSTANCES):  # and it follows on
                writer.apply(instance, result, tenant="acme")
            export = builder.build(reader.export_rows(builder.known_series), None, NOW)
            assert _points(export.requests()) == _expected(reader, LABELS, attributor, {}, None)


class _Between:
    """A ``Describer`` around the export's own (``scheduler.FirstRead``): hands every page to it and, after the
    first, remembers what the export means at the signals' read (``at_read``: nothing has landed since it began)
    and then applies ``polls``, between the series' read and the build; or, with ``fail_on``, raises on that page
    after handing it over (a read that fails partway)."""

    def __init__(self, first: FirstRead, path: Path, writer: Ledger, polls: Iterator[tuple[str, PollResult]],
                 rules: bool, fail_on: int | None = None) -> None:
        self.first, self.path, self.writer, self.polls, self.rules = first, path, writer, polls, rules
        self.fail_on = fail_on
        self.pages = 0
        self.at_read: dict[Key, tuple[Any, ...]] | None = None

    def page(self, series: Iterable[tuple[int, str, str, str]], names: Mapping[Any, str], totals: Any,
             levels: Any) -> None:
        self.first.page(series, names, totals, levels)
        self.pages += 1
        if self.pages == self.fail_on:
            raise LedgerError("the connection went away")  # as a read failing partway
        if self.at_read is None:
            with Ledger(self.path, readonly=True) as other:  # another connection: the data as it is now
                self.at_read = _expected(other, LABELS, _attributor(self.rules), {}, None)
            for instance, result in self.polls:
                self.writer.apply(instance, result, tenant="acme")

    def complete(self) -> None:
        self.first.complete()


@pytest.mark.parametrize(("seed", "rules"), [(8, False), (9, True)])
def test_the_first_export_takes_the_totals_of_the_signals_read(tmp_path: Path, seed: int, rules: bool) -> None:
    """The first export after start takes every series' total, adjustments, start time and level from the money
    signals' one read of the series (``FirstRead``), not from a read of its own: it must mean what the ledger
    held when that read began, even when a poll (new series, grown and shrunk buckets, names) lands before the
    build; the next export, reading the totals itself, must then mean what the ledger holds."""
    rng = random.Random(seed)
    hour = NOW // 10**9 // HOUR * HOUR
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer, Ledger(path, readonly=True) as reader:
        for round_ in range(4):
            for instance, result in _poll(rng, hour + HOUR * round_, INSTANCES):
                writer.apply(instance, result, tenant="acme")
            builder, signals = _builder(rules, {}), Signals()  # a fresh start
            first = FirstRead(builder)
            between = _Between(first, path, writer, _poll(rng, hour + HOUR * (round_ + 1), INSTANCES), rules)
            signals.read(reader, NOW // 10**9, describe=between)
            rows = first.rows()
            assert rows is not None and between.at_read is not None
            got = _points(builder.build(rows, None, NOW).requests())
            assert got == between.at_read, f"round {round_}"
            assert any(k[0] == STORAGE for k in got) or round_ == 0  # levels came from the read too
            now = _expected(reader, LABELS, _attributor(rules), {}, None)
            assert now != between.at_read  # the poll landed: the next export reads it
            export = builder.build(reader.export_rows(builder.known_series), None, NOW)
            assert _points(export.requests()) == now


@pytest.mark.parametrize("fail_on", [1, 2])
def test_a_signals_read_failing_partway_leaves_the_totals_to_the_export(tmp_path: Path, fail_on: int) -> None:
    """A first reading that fails partway (here on the first or the second of two pages of series) hands over
    no totals (``FirstRead.rows`` None): the export reads them itself, and sends every series with its total,
    the ones described before the failure included; a reading that completes over two pages hands over all."""
    path = tmp_path / "ledger.db"
    hour = NOW // 10**9 // HOUR * HOUR
    keys = 3_700  # three series a record: over 10,000 series, two pages of the signals' read
    usage = [UsageRecord("openai", MODELS[k % 4], "chat", f"proj_{k // 4:05d}", hour - HOUR, HOUR,
                         {"input": 1 + k, "output": 2 * k}, requests=1 + k % 7) for k in range(keys)]
    with Ledger(path) as writer, Ledger(path, readonly=True) as reader:
        writer.apply("openai/a", PollResult(usage=usage), tenant="acme")
        writer.apply("openai/a", PollResult(usage=usage[:5]), tenant="acme")  # the same again: no change
        assert reader.counts()["series"] > 10_000
        expected = _expected(reader, LABELS, _attributor(False), {}, None)
        builder = _builder(False, {})
        first = FirstRead(builder)
        with pytest.raises(LedgerError):
            Signals().read(reader, NOW // 10**9, describe=_Between(first, path, writer, iter(()), False, fail_on))
        assert first.rows() is None
        described = reader.counts()["series"] if fail_on == 2 else 10_000  # the failing page handed over too
        assert builder.known_series == described
        got = _points(builder.build(reader.export_rows(builder.known_series), None, NOW).requests())
        assert got == expected
        whole, fresh = FirstRead(_builder(False, {})), _builder(False, {})
        whole.builder = fresh
        Signals().read(reader, NOW // 10**9, describe=whole)
        rows = whole.rows()
        assert rows is not None and len(list(rows.totals)) == reader.counts()["series"]
        assert _points(fresh.build(rows, None, NOW).requests()) == expected
