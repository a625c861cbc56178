"""``otel-llm-receiver report``: spend, tokens, budgets, anomalies and attribution, read from the ledger alone.

It opens the ledger read-only (beside a running receiver, thanks to WAL) and never touches the network. The data
is gathered once into a ``Report`` (exact ``Decimal`` money) and then rendered as ``rich`` tables, JSON or CSV,
so every format shows the same numbers.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from rich import box
from rich.console import Console
from rich.table import Table

from .attribution import UNATTRIBUTED, Attributor
from .ledger import Ledger
from .names import CURRENCY_ATTR, METRIC_COST, METRIC_COST_ESTIMATED, METRIC_TOKENS, METRIC_UNPRICED
from .signals import Anomaly, Signals, SignalsReading, day_label

__all__ = ["CURRENCY_ATTR", "DayComparison", "Report", "SpendRow", "build_report", "compare_days", "render",
           "whole_days"]

HOUR = 3600
DAY = 86400
PICO = Decimal(10) ** -12
NANO = Decimal(10) ** -9
CENT = Decimal("0.01")
TOP_ANOMALIES = 10
DAYS_PER_READ = 366  # days summed per ledger read by ``compare_days``
K = TypeVar("K")
GroupKey = tuple[str, str, str, str, str]  # provider, model, team, tenancy id, tenancy name ("" when unnamed)


def whole_days(start: int, end: int) -> list[int]:
    """The UTC days (their midnights) lying wholly inside ``[start, end)``."""
    first = -(-start // DAY) * DAY
    return list(range(first, end - DAY + 1, DAY))


@dataclass
class DayComparison:
    """Reported and estimated cost of one row, per whole UTC day, and from which hour the row has usage.

    Reported cost comes in daily buckets (counted at the day's first hour), estimated cost hourly: the two only
    compare like with like over whole UTC days. A day is *compared* when it has reported cost and the row's usage
    covers all of it (the first usage hour is at or before the day's midnight), so neither a day before the token
    backfill nor the partial first day of usage weighs on one side only.
    """

    reported: dict[int, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    estimated: dict[int, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    usage_from: int | None = None  # first hour with usage (tokens or estimated cost), None when none

    def add_usage_start(self, hour: int) -> None:
        self.usage_from = hour if self.usage_from is None else min(self.usage_from, hour)

    @property
    def days(self) -> list[int]:
        """The compared days, oldest first."""
        start = self.usage_from
        return sorted(d for d, v in self.reported.items() if v and start is not None and d >= start)

    @property
    def reported_same_days(self) -> Decimal:
        return sum((self.reported[d] for d in self.days), Decimal(0))

    @property
    def estimated_same_days(self) -> Decimal:
        return sum((self.estimated.get(d, Decimal(0)) for d in self.days), Decimal(0))


def compare_days(
    ledger: Ledger, start: int, end: int, key_of: Callable[[str, dict[str, str]], K | None]
) -> dict[K, DayComparison]:
    """Per key (``key_of(instance, attrs)``, None to skip a series): reported and estimated USD per whole UTC day
    of ``[start, end)``, and the first usage hour (from the rollups, so hours before ``storage.retention`` are
    not seen)."""
    days = whole_days(start, end)
    metrics = (METRIC_TOKENS, METRIC_COST, METRIC_COST_ESTIMATED)
    out: dict[K, DayComparison] = defaultdict(DayComparison)
    info = ledger.rollup_series(metrics)
    sums: dict[int, list[int]] = defaultdict(lambda: [0] * len(days))
    for i in range(0, len(days), DAYS_PER_READ):  # one column per day: stay far below SQLite's column limit
        chunk = days[i:i + DAYS_PER_READ]
        for sid, values in ledger.rollup_window_sums([(d, d + DAY) for d in chunk],
                                                     (METRIC_COST, METRIC_COST_ESTIMATED)).items():
            sums[sid][i:i + len(chunk)] = values
    for sid, (instance, metric, attrs, _, first, _) in info.items():
        if metric == METRIC_COST and CURRENCY_ATTR in attrs:
            continue
        key = key_of(instance, attrs)
        if key is None:
            continue
        comparison = out[key]
        if metric != METRIC_COST:
            comparison.add_usage_start(first)
        daily = sums.get(sid)
        if daily is None:
            continue
        for day, value in zip(days, daily, strict=True):
            if value and metric == METRIC_COST:
                comparison.reported[day] += Decimal(value) * NANO
            elif value:
                comparison.estimated[day] += Decimal(value) * PICO
    return out


@dataclass
class SpendRow:
    provider: str
    model: str
    team: str
    tenancy_id: str
    tenancy_name: str = ""
    tokens: int = 0
    reported: Decimal = Decimal(0)
    estimated: Decimal = Decimal(0)
    #: Tokens of this row's model that had no price (``llm.pricing.unpriced_tokens``) in the window.
    unpriced_tokens: int = 0
    compared: DayComparison = field(default_factory=DayComparison)

    @property
    def tenancy(self) -> str:
        """What a table shows: the name, or the id of an unnamed tenancy."""
        return self.tenancy_name or self.tenancy_id

    @property
    def unpriced(self) -> bool:
        """No estimate at all: the row's tokens met no price (showing 0.00 would read as free)."""
        return not self.estimated and self.tokens > 0 and self.unpriced_tokens > 0


@dataclass
class Report:
    start: int
    end: int
    rows: list[SpendRow] = field(default_factory=list)
    signals: SignalsReading | None = None
    anomalies: list[Anomaly] = field(default_factory=list)
    coverage: dict[str, Decimal] = field(default_factory=dict)  # provider -> attributed share of the window

    @property
    def totals(self) -> SpendRow:
        """Sums of the rows; the estimate sums only priced rows, the compared days are every row's days."""
        total = SpendRow("total", "", "", "", "", sum(r.tokens for r in self.rows),
                         sum((r.reported for r in self.rows), Decimal(0)),
                         sum((r.estimated for r in self.rows), Decimal(0)))
        for r in self.rows:
            total.unpriced_tokens += r.unpriced_tokens
            if r.compared.usage_from is not None:
                total.compared.add_usage_start(r.compared.usage_from)
            for d in r.compared.days:
                total.compared.reported[d] += r.compared.reported[d]
                total.compared.estimated[d] += r.compared.estimated.get(d, Decimal(0))
        return total


def build_report(
    ledger: Ledger, start: int, end: int, now: int, signals: Signals, labels: Mapping[str, Mapping[str, str]]
) -> Report:
    """Everything the report shows, for hours in ``[start, end)`` (hour-aligned by the ledger's rollups)."""
    attributor: Attributor = signals.attributor
    names = ledger.names()
    metrics = (METRIC_TOKENS, METRIC_COST, METRIC_COST_ESTIMATED)
    info = ledger.rollup_series((*metrics, METRIC_UNPRICED))
    sums = ledger.rollup_window_sums([(start, end)], (*metrics, METRIC_UNPRICED))

    def key_of(instance: str, attrs: dict[str, str]) -> GroupKey:
        tenancy = attrs.get("llm.tenancy.id", "")
        name = names.get((instance, "tenancy", tenancy))
        team = attributor.team(attrs, name, labels.get(instance)) if attributor else ""
        return (attrs.get("gen_ai.provider.name", ""), attrs.get("gen_ai.request.model", "(none)"), team,
                tenancy, name or "")

    groups: dict[GroupKey, SpendRow] = {}
    unpriced: dict[tuple[str, str], int] = defaultdict(int)  # (provider, model) -> tokens without a price
    for sid, (instance, metric, attrs, _, _, _) in info.items():
        value = sums.get(sid, [0])[0]
        if not value or (metric == METRIC_COST and CURRENCY_ATTR in attrs):
            continue
        if metric == METRIC_UNPRICED:  # counted per provider and model only (no tenancy)
            unpriced[(attrs.get("gen_ai.provider.name", ""), attrs.get("gen_ai.request.model", ""))] += value
            continue
        key = key_of(instance, attrs)
        row = groups.get(key)
        if row is None:
            row = groups[key] = SpendRow(*key)
        if metric == METRIC_TOKENS:
            row.tokens += value
        elif metric == METRIC_COST:
            row.reported += Decimal(value) * NANO
        else:
            row.estimated += Decimal(value) * PICO
    for key, comparison in compare_days(ledger, start, end, key_of).items():
        if key in groups:
            groups[key].compared = comparison
    for row in groups.values():
        row.unpriced_tokens = unpriced.get((row.provider, row.model), 0)
    rows = sorted(groups.values(), key=lambda r: (-max(r.reported, r.estimated), r.provider, r.model, r.tenancy))
    coverage: dict[str, Decimal] = {}
    if attributor:
        spend: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        for r in rows:
            amount = r.estimated or r.reported
            spend[r.provider][0] += amount
            if r.team != UNATTRIBUTED:
                spend[r.provider][1] += amount
        coverage = {p: attributed / total for p, (total, attributed) in spend.items() if total}
    reading = signals.read(ledger, now)
    stored = ledger.rollup_range()  # no anomaly before the first rollup: skip those hours (each is one read)
    since = max(start, stored[0] if stored else end)
    top = sorted(signals.anomalies_between(ledger, since, min(end, reading.hour + HOUR)),
                 key=lambda a: -a.score)[:TOP_ANOMALIES]
    return Report(start, end, rows, reading, top, coverage)


# ----------------------------------------------------------------------------------------------- rendering
def _usd(amount: Decimal) -> str:
    return f"{amount.quantize(CENT):,}"


def _estimate(row: SpendRow) -> str:
    return "unpriced" if row.unpriced else _usd(row.estimated)


def _days_label(days: list[int]) -> str:
    """``11-26..12-01``: first and last compared day (the year is in the title), and how many when some days in
    between are not compared (``11-20..12-01 (9)``)."""
    if not days:
        return "-"
    first, last = day_label(days[0])[5:], day_label(days[-1])[5:]
    gaps = (days[-1] - days[0]) // DAY + 1 != len(days)
    return (first if len(days) == 1 else f"{first}..{last}") + (f" ({len(days)})" if gaps else "")


def _same_days(row: SpendRow) -> str:
    if not row.compared.days:
        return "-"
    return "unpriced" if row.unpriced else _usd(row.compared.estimated_same_days)


def _when(ts: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def render(report: Report, fmt: str, *, width: int = 140) -> str:
    if fmt == "json":
        return json.dumps(to_json(report), indent=2) + "\n"
    if fmt == "csv":
        return to_csv(report)
    return to_tables(report, width)


def to_tables(report: Report, width: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    spend = Table(title=f"Spend and tokens, {_when(report.start)} to {_when(report.end)}", box=box.SIMPLE_HEAD)
    for column, justify in (("provider", "left"), ("model", "left"), ("team", "left"), ("tenancy", "left"),
                            ("tokens", "right"), ("reported USD", "right"), ("estimated USD", "right"),
                            ("UTC days", "left"), ("estimated USD\n(same days)", "right")):
        spend.add_column(column, justify=justify, no_wrap=column not in ("team", "tenancy"))  # type: ignore[arg-type]
    for r in report.rows:
        spend.add_row(r.provider, r.model, r.team or "-", r.tenancy, f"{r.tokens:,}", _usd(r.reported),
                      _estimate(r), _days_label(r.compared.days), _same_days(r))
    t = report.totals
    spend.add_section()
    spend.add_row("total", "", "", "", f"{t.tokens:,}", _usd(t.reported), _usd(t.estimated),
                  _days_label(t.compared.days), _usd(t.compared.estimated_same_days) if t.compared.days else "-")
    console.print(spend)
    if t.compared.reported_same_days != t.reported:
        console.print(f"  reported USD on the compared days: {_usd(t.compared.reported_same_days)} "
                      f"(the rest is on days without whole-day usage in the window)")
    if report.signals is not None and report.signals.budgets:
        table = Table(title="Budgets (current period)", box=box.SIMPLE_HEAD)
        for column in ("budget", "period", "limit USD", "spent USD", "used", "projected USD", "burn 1h", "burn 6h"):
            table.add_column(column, justify="left" if column in ("budget", "period") else "right")
        for b in report.signals.budgets:
            table.add_row(b.name, f"{day_label(b.period_start)} .. {day_label(b.period_end)}", _usd(b.limit),
                          _usd(b.spent), f"{b.utilization:.1%}", _usd(b.projected),
                          f"{b.burn_rates['1h']:.2f}", f"{b.burn_rates['6h']:.2f}")
        console.print(table)
    if report.anomalies:
        table = Table(title="Top anomaly scores (robust z, same hour in past weeks or days)", box=box.SIMPLE_HEAD)
        for column in ("hour", "provider", "model", "tenancy", "signal", "value", "usual", "score"):
            table.add_column(column, justify="right" if column in ("value", "usual", "score") else "left")
        for a in report.anomalies:
            table.add_row(_when(a.hour), a.provider, a.model, a.tenancy_name or a.tenancy_id, a.signal,
                          f"{a.value:,.2f}", f"{a.baseline:,.2f}", f"{a.score:+.1f}")
        console.print(table)
    if report.signals is not None and report.signals.reconciliation:
        table = Table(title="Reconciliation (newest final day)", box=box.SIMPLE_HEAD)
        for column in ("day", "provider", "tenancy", "estimated USD", "reported USD", "estimated / reported"):
            table.add_column(column, justify="right" if "USD" in column or "/" in column else "left")
        for rec in report.signals.reconciliation:
            table.add_row(day_label(rec.day), rec.provider, rec.tenancy_name or rec.tenancy_id,
                          _usd(rec.estimated), _usd(rec.reported), "-" if rec.ratio is None else f"{rec.ratio:.3f}")
        console.print(table)
    if report.coverage:
        table = Table(title="Attribution coverage (share of spend with a team)", box=box.SIMPLE_HEAD)
        table.add_column("provider")
        table.add_column("coverage", justify="right")
        for provider, share in sorted(report.coverage.items()):
            table.add_row(provider, f"{share:.1%}")
        console.print(table)
    return out.getvalue()


def _compared_json(c: DayComparison, unpriced: bool) -> dict[str, Any]:
    days = c.days
    return {
        "compared_days": {"from": day_label(days[0]) if days else None, "to": day_label(days[-1]) if days else None,
                          "days": len(days)},
        "reported_usd_same_days": str(c.reported_same_days) if days else None,
        "estimated_usd_same_days": str(c.estimated_same_days) if days and not unpriced else None,
    }


def to_json_row(r: SpendRow) -> dict[str, Any]:
    """One spend row as JSON: an unpriced row's estimate is null (not 0: its tokens met no price)."""
    return {"provider": r.provider, "model": r.model, "team": r.team, "tenancy_id": r.tenancy_id,
            "tenancy_name": r.tenancy_name or None, "tokens": r.tokens, "reported_usd": str(r.reported),
            "estimated_usd": None if r.unpriced else str(r.estimated), "unpriced": r.unpriced,
            "unpriced_tokens": r.unpriced_tokens, **_compared_json(r.compared, r.unpriced)}


def to_json(report: Report) -> dict[str, Any]:
    doc: dict[str, Any] = {"from": report.start, "to": report.end, "spend": [to_json_row(r) for r in report.rows],
                           "total": to_json_row(report.totals)}
    reading = report.signals
    doc["budgets"] = [] if reading is None else [
        {"name": b.name, "period_start": b.period_start, "period_end": b.period_end, "limit_usd": str(b.limit),
         "spent_usd": str(b.spent), "utilization": str(b.utilization), "projected_usd": str(b.projected),
         "burn_rates": {w: str(r) for w, r in b.burn_rates.items()}}
        for b in reading.budgets
    ]
    doc["anomalies"] = [
        {"hour": a.hour, "provider": a.provider, "model": a.model, "tenancy_id": a.tenancy_id,
         "tenancy_name": a.tenancy_name, "signal": a.signal, "value": a.value, "baseline": a.baseline,
         "score": a.score}
        for a in report.anomalies
    ]
    doc["coverage"] = {p: str(s) for p, s in sorted(report.coverage.items())}
    doc["reconciliation"] = [] if reading is None else [
        {"day": day_label(r.day), "provider": r.provider, "tenant": r.tenant, "tenancy_id": r.tenancy_id,
         "tenancy_name": r.tenancy_name, "estimated_usd": str(r.estimated), "reported_usd": str(r.reported),
         "ratio": None if r.ratio is None else str(r.ratio)}
        for r in reading.reconciliation
    ]
    return doc


CSV_COLUMNS = ("provider", "model", "team", "tenancy_id", "tenancy_name", "tokens", "reported_usd", "estimated_usd",
               "unpriced", "unpriced_tokens", "compared_from", "compared_to", "compared_days",
               "reported_usd_same_days", "estimated_usd_same_days")


def to_csv(report: Report) -> str:
    """The spend table, one row per provider, model, team and tenancy (the other sections are in JSON); the
    columns are the JSON's spend fields, empty where JSON has null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in report.rows:
        doc = to_json_row(r)
        compared = doc.pop("compared_days")
        doc.update(compared_from=compared["from"], compared_to=compared["to"], compared_days=compared["days"])
        writer.writerow(["" if doc[c] is None else str(doc[c]).lower() if isinstance(doc[c], bool) else doc[c]
                         for c in CSV_COLUMNS])
    return out.getvalue()
