"""The money signals' two ways of deriving a series' facts from its attribute text (``Signals._derive_texts``):
cut around the tenancy id (what the rest implies worked out once per distinct rest), or parsed whole when the cut
cannot take the text. Both must give exactly the facts of the parsed attributes, on both engines.

The ledger here mixes, within one instance and metric, texts the cut takes (plain ids, non-ASCII ids, an empty
id, dimensions sorting before and after the id, a tenancy name of the series' own) with texts it must leave to the
parser: ids with quotes, backslashes or control characters (escaped in canonical JSON) and a dimension whose
value spells ``"llm.tenancy.id":"`` inside escaped quotes. Budgets and rules look at the tenancy (globs on ids
and names, a regex), so a fact derived from the wrong id or name changes a number. Between reads, a tenancy
is renamed (the kept facts of its series are derived again, by the cut path too) and new series of both kinds
land.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

from otel_llm_receiver.attribution import Attributor
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook
from otel_llm_receiver.signals import Signals
from tests.support.ledger_reads import _rows
from tests.support.signals_reference import ReferenceSignals
from tests.test_signals_fast import CONFIG, END, D, H, _same

#: (tenancy id, dimensions): what the cut path takes and what it must leave to the parser.
KEYS: tuple[tuple[str, dict[str, str]], ...] = (
    ("proj-01", {}),
    ("proj-02", {"llm.cache.ttl": "5m"}),  # a dimension sorting after the id
    ("Proj-äöü-✓", {"cloud.region": "eu"}),  # non-ASCII (canonical JSON keeps it as it is), one before the id
    ("", {}),  # an empty id
    ("proj-05", {"llm.tenancy.name": "Own Name"}),  # the series carries a tenancy name of its own
    ('proj "quoted"', {}),  # escaped in JSON: parsed
    ("back\\slash", {}),  # escaped in JSON: parsed
    ("tab\there", {}),  # a control character, escaped in JSON: parsed
    ("proj-09", {"zz.note": 'not "llm.tenancy.id":"x" here'}),  # the cut's marker inside an escaped value
)
MODELS = ("gpt-4o", "gpt-4o-mini", "")  # "": usage of no model (no model attribute)
CONFIG_TEXTS = {
    **CONFIG,
    "budgets": [
        *CONFIG["budgets"],  # type: ignore[list-item]
        {"name": "odd-ids", "amount": 90, "period": "month", "source": "estimated",
         "match": {"tenancy": "*quoted*"}},
        {"name": "unicode", "amount": 30, "period": "day", "source": "best", "match": {"tenancy": "Proj-ä*"}},
        {"name": "quarter", "amount": 900, "period": "quarter", "source": "estimated"},
        {"name": "own-names", "amount": 60, "period": "month", "source": "estimated",
         "match": {"labels": {"llm.tenancy.name": "Own Name"}}},  # the series' own attribute
    ],
    "attribution": {"rules": [
        *CONFIG["attribution"]["rules"],  # type: ignore[index]
        {"tenancy_regex": ".*slash", "team": "t5"},
        {"tenancy": "Renamed*", "team": "t6"},
    ]},
}


def _signals(cls: type[Signals] | type[ReferenceSignals]) -> Signals | ReferenceSignals:
    config = parse_config(CONFIG_TEXTS)
    labels = {p.name: dict(p.labels) for p in config.providers}
    return cls(config.budgets, Attributor(config.attribution.rules), PriceBook(), labels)


def _poll(writer: Ledger, rng: random.Random, start: int, end: int, keys: tuple[tuple[str, dict[str, str]], ...],
          models: tuple[str, ...] = MODELS) -> None:
    """Hourly usage of every key and model in ``[start, end)`` and daily reported cost per tenancy (USD), with
    a name for some tenancies (the plain ones and one escaped)."""
    usage = [
        UsageRecord(provider="openai", model=model, operation="chat", tenancy_id=tenancy, bucket_start=hour,
                    bucket_width=H, tokens={"input": rng.randint(1, 50_000), "output": rng.randint(1, 5_000)},
                    dimensions=dims)
        for tenancy, dims in keys for model in models for hour in range(start, end, H) if rng.random() < 0.8
    ]
    costs = [CostRecord(provider="openai", tenancy_id=tenancy, bucket_start=day, bucket_width=D,
                        amount=Decimal(rng.randint(1, 900_000)) / 10_000)
             for tenancy, _ in keys for day in range(start // D * D, end - D + 1, D)]
    names = {("tenancy", "proj-01"): "Proj One", ("tenancy", 'proj "quoted"'): "Proj Quoted"}
    writer.apply("openai", PollResult(usage=usage, costs=costs, names=names), tenant="acme")


def test_facts_cut_from_the_text_equal_the_parsed_ones(make_ledger: Callable[..., Ledger]) -> None:
    rng = random.Random(33)
    writer = make_ledger()
    writer.set_pricer(PriceBook())
    _poll(writer, rng, END - 9 * D, END, KEYS)
    reader = make_ledger(readonly=True)
    texts = [t for (t,) in _rows(reader, "SELECT attrs FROM series", ())]
    assert any("\\" in t for t in texts) and any("\\" not in t for t in texts)  # both ways are taken
    fast = _signals(Signals)
    now = END + 20 * 60
    first = fast.read(reader, now, peak_days=3)
    _same(first, _signals(ReferenceSignals).read(reader, now, peak_days=3))
    spent = {b.name: b.spent for b in first.budgets}
    assert spent["odd-ids"] > 0 and spent["unicode"] > 0 and spent["own-names"] > 0  # the odd ids are matched
    assert first.anomalies and first.token_prices and first.reconciliation
    steps: list[Callable[[], None]] = [
        # renames: a plain tenancy and an escaped one (the kept facts of their series are derived again)
        lambda: writer.apply("openai", PollResult(names={
            ("tenancy", "proj-02"): "Renamed Two", ("tenancy", "back\\slash"): "Renamed Slash"}), tenant="acme"),
        # new series of both kinds: a new model for every key, and new keys
        lambda: _poll(writer, rng, END, END + 2 * H, (*KEYS, ("proj-10", {}), ('new "one"', {})),
                      ("gpt-4.1",)),
        # usage of an hour before any series' first rollup, inside the quarter's budget: the sums skip the
        # segments before the first rollup they read (``since``), so the series must be read again in full
        lambda: writer.apply("openai", PollResult(usage=[UsageRecord(
            provider="openai", model="gpt-4o", operation="chat", tenancy_id="proj-01", bucket_start=END - 30 * D,
            bucket_width=H, tokens={"input": 9_000_000, "output": 1})]), tenant="acme"),
    ]
    readings = [first]
    for step, change in enumerate(steps):
        change()
        at = now + min(step + 1, 2) * H  # the last two in one hour: kept sums, the changed series read again
        reading = fast.read(reader, at, peak_days=3)
        _same(reading, _signals(ReferenceSignals).read(reader, at, peak_days=3))
        assert reading != readings[-1]
        readings.append(reading)
    assert any(attrs.get("gen_ai.request.model") == "gpt-4.1" for attrs, _ in readings[2].token_prices)  # new
    quarter = [{b.name: b.spent for b in r.budgets}["quarter"] for r in readings]
    assert quarter[3] > quarter[2]  # the old hour is in the quarter's spend
