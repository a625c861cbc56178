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
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .attribution import UNATTRIBUTED, Attributor
from .ledger import METRIC_COST, METRIC_COST_ESTIMATED, METRIC_TOKENS, Ledger
from .signals import Anomaly, Signals, SignalsReading, day_label

__all__ = ["Report", "SpendRow", "build_report", "render"]

HOUR = 3600
PICO = Decimal(10) ** -12
NANO = Decimal(10) ** -9
CENT = Decimal("0.01")
TOP_ANOMALIES = 10
GroupKey = tuple[str, str, str, str]  # provider, model, team, tenancy


@dataclass
class SpendRow:
    provider: str
    model: str
    team: str
    tenancy: str
    tokens: int = 0
    reported: Decimal = Decimal(0)
    estimated: Decimal = Decimal(0)


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
        return SpendRow("total", "", "", "", sum(r.tokens for r in self.rows),
                        sum((r.reported for r in self.rows), Decimal(0)),
                        sum((r.estimated for r in self.rows), Decimal(0)))


def build_report(
    ledger: Ledger, start: int, end: int, now: int, signals: Signals, labels: Mapping[str, Mapping[str, str]]
) -> Report:
    """Everything the report shows, for hours in ``[start, end)`` (hour-aligned by the ledger's rollups)."""
    attributor: Attributor = signals.attributor
    names = ledger.names()
    metrics = (METRIC_TOKENS, METRIC_COST, METRIC_COST_ESTIMATED)
    info = ledger.rollup_series(metrics)
    sums = ledger.rollup_window_sums([(start, end)], metrics)
    groups: dict[GroupKey, SpendRow] = {}
    for sid, (instance, metric, attrs, _, _, _) in info.items():
        value = sums.get(sid, [0])[0]
        if not value or (metric == METRIC_COST and "llm.currency" in attrs):
            continue
        tenancy = attrs.get("llm.tenancy.id", "")
        name = names.get((instance, "tenancy", tenancy))
        team = attributor.team(attrs, name, labels.get(instance)) if attributor else ""
        key = (attrs.get("gen_ai.provider.name", ""), attrs.get("gen_ai.request.model", "(none)"), team,
               name or tenancy)
        row = groups.get(key)
        if row is None:
            row = groups[key] = SpendRow(*key)
        if metric == METRIC_TOKENS:
            row.tokens += value
        elif metric == METRIC_COST:
            row.reported += Decimal(value) * NANO
        else:
            row.estimated += Decimal(value) * PICO
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
    top = sorted(signals.anomalies_between(ledger, start, min(end, reading.hour + HOUR)),
                 key=lambda a: -a.score)[:TOP_ANOMALIES]
    return Report(start, end, rows, reading, top, coverage)


# ----------------------------------------------------------------------------------------------- rendering
def _usd(amount: Decimal) -> str:
    return f"{amount.quantize(CENT):,}"


def _when(ts: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def render(report: Report, fmt: str, *, width: int = 120) -> str:
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
                            ("tokens", "right"), ("reported USD", "right"), ("estimated USD", "right")):
        spend.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in report.rows:
        spend.add_row(r.provider, r.model, r.team or "-", r.tenancy, f"{r.tokens:,}", _usd(r.reported),
                      _usd(r.estimated))
    t = report.totals
    spend.add_section()
    spend.add_row("total", "", "", "", f"{t.tokens:,}", _usd(t.reported), _usd(t.estimated))
    console.print(spend)
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


def to_json(report: Report) -> dict[str, Any]:
    def row(r: SpendRow) -> dict[str, Any]:
        return {"provider": r.provider, "model": r.model, "team": r.team, "tenancy": r.tenancy,
                "tokens": r.tokens, "reported_usd": str(r.reported), "estimated_usd": str(r.estimated)}

    doc: dict[str, Any] = {"from": report.start, "to": report.end, "spend": [row(r) for r in report.rows],
                           "total": row(report.totals)}
    reading = report.signals
    doc["budgets"] = [] if reading is None else [
        {"name": b.name, "period_start": b.period_start, "period_end": b.period_end, "limit_usd": str(b.limit),
         "spent_usd": str(b.spent), "utilization": str(b.utilization), "projected_usd": str(b.projected),
         "burn_rates": {w: str(r) for w, r in b.burn_rates.items()}}
        for b in reading.budgets
    ]
    doc["anomalies"] = [
        {"hour": a.hour, "provider": a.provider, "model": a.model, "tenancy_id": a.tenancy_id, "signal": a.signal,
         "value": a.value, "baseline": a.baseline, "score": a.score}
        for a in report.anomalies
    ]
    doc["coverage"] = {p: str(s) for p, s in sorted(report.coverage.items())}
    doc["reconciliation"] = [] if reading is None else [
        {"day": day_label(r.day), "provider": r.provider, "tenant": r.tenant, "tenancy_id": r.tenancy_id,
         "estimated_usd": str(r.estimated), "reported_usd": str(r.reported),
         "ratio": None if r.ratio is None else str(r.ratio)}
        for r in reading.reconciliation
    ]
    return doc


def to_csv(report: Report) -> str:
    """The spend table, one row per provider, model, team and tenancy (the other sections are in JSON)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["provider", "model", "team", "tenancy", "tokens", "reported_usd", "estimated_usd"])
    for r in report.rows:
        writer.writerow([r.provider, r.model, r.team, r.tenancy, r.tokens, r.reported, r.estimated])
    return out.getvalue()
