"""The Grafana dashboards: their structure, and every query run against a real Prometheus.

The real-Prometheus test builds the 7-day demo data set in the Prometheus names the Collector produces
(tests/support/demo_openmetrics.py), loads it with ``promtool tsdb create-blocks-from openmetrics``, starts
Prometheus on loopback over the blocks with our rule files, and runs every panel query, every template-variable
query and every recording rule (both its expression and its recorded series): each must parse and return data.
Alert expressions must parse (most are rightly empty on healthy demo data). A query that names a metric the
catalog does not have fails by that name.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from otel_llm_receiver import budgets
from otel_llm_receiver.catalog import CATALOG
from otel_llm_receiver.cli import DEMO_CONFIG
from otel_llm_receiver.config import parse_config
from otel_llm_receiver.model import first_window_start
from tests.support.dashboards import (
    Query,
    dashboard_files,
    load,
    panel_queries,
    panels,
    runnable,
    variable_names,
    variable_queries,
)
from tests.support.demo_openmetrics import (
    DAY,
    HOUR,
    WORKLOADS,
    DataSet,
    _Family,
    _Spend,
    anomaly_families,
    attribution_families,
    budget_families,
    demo_config,
    demo_openmetrics,
    period_families,
    sample_times,
    usage_series,
)
from tests.support.demo_truth import demo_truth
from tests.support.otlp_sink import OTLPSink, Point
from tests.support.prometheus_files import ROOT, RULE_FILES, load_rules
from tests.support.prometheus_names import (
    catalog_series_names,
    metric_names_in,
    prometheus_label_name,
    prometheus_metric_name,
)
from tests.support.prometheus_server import PrometheusServer
from tests.test_e2e import ENV, cli, poll_lines

COMPOSE_RECEIVER_CONFIG = ROOT / "examples" / "compose" / "receiver" / "config.yaml"
FILES = dashboard_files()
QUERIES = [q for f in FILES for q in panel_queries(f)]
VARIABLE_QUERIES = [q for f in FILES for q in variable_queries(f)]
RULES = load_rules()
#: Dashboards that show usage (not only self-health) must offer these filters.
USAGE_VARIABLES = {"datasource", "provider", "tenant", "team"}
SEED = 42


def unknown_metric_problems(queries: list[Query]) -> list[str]:
    """One line per query that names a metric neither the catalog nor our recording rules define."""
    known = set(catalog_series_names()) | {r.name for r in RULES if not r.is_alert}
    return [f"{q}: metric {name} is not in the catalog" for q in queries
            for name in sorted(metric_names_in(q.expr) - known)]


def test_panels_on_recorded_series_fall_back_to_raw_metrics() -> None:
    # Dashboards must work where our rules are not loaded (Grafana Cloud, another Prometheus): a query on a
    # recorded series carries an `or` branch on the raw metrics.
    recorded = {r.name for r in RULES if not r.is_alert}
    for q in QUERIES:
        names = metric_names_in(q.expr)
        if names & recorded:
            assert " or " in q.expr and names - recorded, f"{q}: no fallback on raw metrics"


# ------------------------------------------------------------------------------------------------ structure
def test_the_six_dashboards_exist_with_unique_uids() -> None:
    uids = {load(f)["uid"]: f.name for f in FILES}
    assert len(uids) == len(FILES)
    assert {"llm-overview", "llm-tokens-caching", "llm-budgets", "llm-anomalies", "llm-attribution",
            "llm-receiver-health"} <= set(uids)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_is_provisionable_and_parameterised(path: Path) -> None:
    doc = load(path)
    assert doc["schemaVersion"] >= 36 and doc["title"] and "otel-llm-receiver" in doc["tags"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    uses_usage = any(n.startswith("llm_usage_") for q in panel_queries(path) for n in metric_names_in(q.expr))
    if uses_usage:
        assert set(variables) >= USAGE_VARIABLES, f"{path.name}: usage dashboards need {USAGE_VARIABLES}"
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for p in panels(doc):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (path.name, p["title"])
        assert p.get("description"), f"{path.name}: panel {p['title']!r} has no description"
        assert p["targets"], f"{path.name}: panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (path.name, p["title"])
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}" and v["includeAll"] and v["allValue"] == ".*"
    for q in panel_queries(path):  # every variable a query uses is defined on the dashboard
        runnable(q.expr, variable_names(path))


def test_panels_use_only_catalog_metrics() -> None:
    assert unknown_metric_problems(QUERIES + VARIABLE_QUERIES) == []


def test_a_panel_with_an_unknown_metric_fails_by_name() -> None:
    bad = Query("x.json", "Spend", "sum(rate(llm_usage_cost_total[5m]))")
    assert unknown_metric_problems([bad]) == ["x.json: Spend: metric llm_usage_cost_total is not in the catalog"]


def test_panels_use_only_catalog_attribute_labels() -> None:
    labels = {prometheus_label_name(a) for a in CATALOG.attributes} | {"le", "job", "instance"}
    for q in QUERIES + VARIABLE_QUERIES:
        matchers = re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", q.expr)
        grouped = [label.strip() for g in re.findall(r"\b(?:by|without|on)\s*\(([^)]*)\)", q.expr)
                   for label in g.split(",") if label.strip()]
        assert set(matchers + grouped) <= labels, f"{q}: labels {set(matchers + grouped) - labels}"


# ------------------------------------------------------------------------------------------------ the data set
def test_demo_data_set_ends_at_the_demo_ground_truth() -> None:
    # Two days rather than the week: the same code path, a quarter of the work.
    end, days = 1_795_000_000 // 60 * 60, 2
    times = sample_times(end, days)
    tokens, requests, cost = usage_series(SEED, end - days * DAY, times)
    want_tokens, want_requests, want_cost = demo_truth(SEED, end - days * DAY, end)
    assert {(w.tenancy, w.model, t): v[-1] for (w, t), v in tokens.items()} == want_tokens
    assert {(w.tenancy, w.model): v[-1] for w, v in requests.items()} == want_requests
    assert {(w.tenancy, w.model): v[-1] for w, v in cost.items()} == {k: Decimal(v) for k, v in want_cost.items()}
    # and the totals grow over the week (cumulative, never down)
    for values in tokens.values():
        assert values == sorted(values) and values[-1] > values[0]


# ------------------------------------------------------------------------------------------------ real Prometheus
@pytest.fixture(scope="module")
def data_end() -> int:
    """The end of the data set the real Prometheus holds (its newest sample)."""
    return int(time.time()) // 60 * 60


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, data_end: int) -> Iterator[PrometheusServer]:
    end = data_end
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), demo_openmetrics(end, SEED), list(RULE_FILES)) as prom:
        prom.wait_for_rule_evaluations()
        yield prom


def test_every_panel_and_variable_query_returns_data(prometheus: PrometheusServer) -> None:
    empty = []
    for q in QUERIES + VARIABLE_QUERIES:
        path = next(f for f in FILES if f.name == q.dashboard)
        result = prometheus.query(runnable(q.expr, variable_names(path)))  # a parse error raises, naming it
        if not result:
            empty.append(str(q))
    assert empty == [], "queries that returned no data on the 7-day demo data set"
    assert len(QUERIES) >= 25


def test_every_recording_rule_returns_data(prometheus: PrometheusServer) -> None:
    empty = []
    for r in (r for r in RULES if not r.is_alert):
        if not prometheus.query(r.expr):
            empty.append(f"{r.name} (expression)")
        if not prometheus.query(r.name):
            empty.append(f"{r.name} (recorded series)")
    assert empty == []


def test_every_alert_expression_parses(prometheus: PrometheusServer) -> None:
    for r in (r for r in RULES if r.is_alert):
        prometheus.query(r.expr)  # raises QueryError on anything Prometheus rejects


def test_the_data_shows_the_demo_organisation(prometheus: PrometheusServer) -> None:
    # Spot checks that the queries ran on the right data, not on anything that happens to be non-empty.
    models = {r["metric"]["gen_ai_request_model"]
              for r in prometheus.query("count by (gen_ai_request_model) (llm_usage_tokens_total)")}
    assert models == {"gpt-4o-mini", "text-embedding-3-small", "gpt-4o", "claude-sonnet-4", "claude-opus-4"}
    (ratio,) = prometheus.query('sum(llm:cache_hit_ratio:rate1h{gen_ai_request_model="claude-sonnet-4"})')
    assert 0.4 < float(ratio["value"][1]) < 0.6  # the demo's claude-sonnet-4 reads half its input from cache
    # Cost at query time (token rates x the price gauge) equals the ledger's estimate (the same prices): the
    # join matched every token series to its price, none twice.
    (query_time,) = prometheus.query("sum(llm:query_time_cost_usd:rate1h)")
    (estimated,) = prometheus.query("sum(llm:estimated_cost_usd:rate1h)")
    assert float(query_time["value"][1]) == pytest.approx(float(estimated["value"][1]), rel=1e-9)
    teams = {r["metric"].get("llm_team") for r in prometheus.query("count by (llm_team) (llm:estimated_cost_usd:rate1h)")}
    assert teams == {"search", "research", "unattributed"}  # DEMO_CONFIG's rules; Support Bot has none
    (coverage,) = prometheus.query("llm_attribution_coverage_ratio")
    assert 0.4 < float(coverage["value"][1]) < 0.6  # docs/attribution.md's worked example: about 49%
    limits = {r["metric"]["llm_budget_name"]: float(r["value"][1]) for r in prometheus.query("llm_budget_limit_USD")}
    assert limits == {"demo-monthly": 20000.0, "research-daily": 150.0}
    assert len(prometheus.query("llm_anomaly_score_ratio")) == 12  # six workloads x cost and tokens


def test_compose_demo_has_the_budgets_and_rules_the_data_set_is_computed_for() -> None:
    # The compose stack's dashboards show what these tests checked: same budgets, same attribution rules.
    compose = parse_config(yaml.safe_load(COMPOSE_RECEIVER_CONFIG.read_text(encoding="utf-8")), environ={})
    assert compose.budgets == demo_config().budgets and compose.budgets
    assert compose.attribution.rules == demo_config().attribution.rules and compose.attribution.rules


def _data_set_label_sets(text: str) -> dict[str, set[frozenset[str]]]:
    """Prometheus sample name -> the label-key sets its series have (job, instance and le left out)."""
    out: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        keys = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', rest.partition("}")[0])) - {"job", "instance", "le"}
        out.setdefault(name, set()).add(keys)
    return out


#: The budgets and attribution rules of the ``demo`` command, which the data set is computed for.
SIGNALS_CONFIG = DEMO_CONFIG[DEMO_CONFIG.index("budgets:"):]


@dataclass(frozen=True)
class DemoRun:
    """What one real ``run --once`` of the demo exported, in Prometheus terms."""

    wire: dict[str, set[frozenset[str]]]  # Prometheus sample name -> label-key sets
    values: dict[tuple[str, frozenset[tuple[str, str]]], float]  # (Prometheus name, labels) -> gauge value
    now: int  # the export's timestamp (Unix seconds): the moment the receiver computed its signals
    polled: int  # when it polled the demo (the poll's window end): what its ledger holds
    config: Path  # the run's config (its ledger, budgets and rules), for ``report`` on the same ledger


def _run_demo(tmp_path: Path, days: int, signals: bool) -> DemoRun:
    """The receiver's real export of the demo, translated with the Collector's rules from what is on the wire
    (name, unit, type). ``signals``: with the demo command's budgets and attribution rules."""
    with OTLPSink() as sink:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"storage: {{path: {tmp_path / 'ledger.db'}}}\nhealth: {{endpoint: \"\"}}\n"
            f"exporters:\n  otlp:\n    endpoint: {sink.grpc_endpoint}\n    tls: {{insecure: true}}\n"
            f"providers:\n  demo:\n    seed: {SEED}\n    backfill: {days}d\n" + (SIGNALS_CONFIG if signals else "")
        )
        proc = subprocess.run(cli("run", "--config", str(config), "--once"), env=ENV, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        wire: dict[str, set[frozenset[str]]] = {}
        values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        now = 0
        for name in sink.metric_names():
            info = sink.metric_info(name)
            points = sink.points(name)
            first = next(iter(points.values()))
            kind = ("histogram" if info.kind == "histogram"
                    else "counter" if info.kind == "sum" and getattr(first, "is_monotonic", False) else "gauge")
            base = prometheus_metric_name(name, info.unit, kind)
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            label_sets = {frozenset(prometheus_label_name(k) for k, _ in key) for key in points}
            for suffix in suffixes:
                wire[base + suffix] = label_sets
            if kind == "gauge":
                for key, point in points.items():
                    assert isinstance(point, Point)
                    values[(base, frozenset((prometheus_label_name(k), str(v)) for k, v in key))] = float(point.value)
                    now = point.time_unix_nano // 1_000_000_000
    (poll,) = poll_lines(proc.stderr)
    return DemoRun(wire, values, now, int(str(poll["window_end"])), config)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return _run_demo(tmp_path_factory.mktemp("plain"), days=2, signals=False)


@pytest.fixture(scope="module")
def signals_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    # A week: anomaly scores need five days of baseline.
    return _run_demo(tmp_path_factory.mktemp("signals"), days=7, signals=True)


@pytest.mark.parametrize(("attributed", "days"), [(False, 2), (True, 7)], ids=["plain", "budgets-and-attribution"])
def test_data_set_has_the_names_and_labels_the_receiver_really_sends(request: pytest.FixtureRequest,
                                                                     attributed: bool, days: int) -> None:
    # The receiver's real export must name the same Prometheus series with the same label sets as the data set:
    # once with no budgets or rules, once with the demo command's budgets and attribution rules (team labels,
    # llm_budget_*, coverage) over a week.
    run: DemoRun = request.getfixturevalue("signals_run" if attributed else "plain_run")
    wire = {name: set(sets) for name, sets in run.wire.items()}
    data = _data_set_label_sets(demo_openmetrics(1_795_000_000 // 60 * 60, days=days, attributed=attributed))
    assert set(data) == set(wire), "the data set and the receiver's export name different series"
    # Failed polls add error.type (emitter: only on failures); the demo run here has none to show it.
    wire["llm_receiver_polls_total"] |= {s | {"error_type"} for s in wire["llm_receiver_polls_total"]}
    for name, label_sets in data.items():
        assert label_sets <= wire[name], f"{name}: label sets the receiver does not send: {label_sets - wire[name]}"
    if attributed:  # the comparison covers the money signals, not only the usage series
        assert {"llm_budget_burn_rate_ratio", "llm_anomaly_score_ratio", "llm_attribution_coverage_ratio"} <= set(data)
        assert any("llm_team" in s for s in data["llm_usage_cost_estimated_USD_total"])


def _last_values(families: list[_Family]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for line in (line for f in families for line in f.render() if not line.startswith("#")):
        name, _, rest = line.partition("{")
        body, _, tail = rest.partition("} ")
        labels = frozenset((k, v) for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', body)
                           if k not in ("job", "instance"))
        out[(name, labels)] = float(tail.split()[0])  # lines are in time order: the last one wins
    return out


def test_data_set_money_values_are_what_the_receiver_computes(signals_run: DemoRun) -> None:
    # The budget, coverage and anomaly values the data set derives equal the receiver's own, computed from its
    # ledger at the same moment (the export) over the same poll, buckets still filling in included: exactly, up
    # to the doubles the gauges travel as.
    now, polled = signals_run.now, signals_run.polled
    # The backfill's window starts where the scheduler starts it: 7 days back, at 00:00 UTC.
    ds = DataSet(SEED, sample_times(now, 7), first_window_start(polled, 7 * DAY), attributed=True,
                 poll_lag=now - polled)
    mine = _last_values(budget_families(ds) + attribution_families(ds) + anomaly_families(ds) + period_families(ds))
    theirs = {k: v for k, v in signals_run.values.items() if k[0] in {n for n, _ in mine}}
    assert set(mine) == set(theirs)
    for key, value in mine.items():
        assert value == pytest.approx(theirs[key], rel=1e-9), key


def _panel_expr(title: str) -> str:
    path = next(f for f in FILES if f.name == "overview.json")
    (query,) = [q for q in panel_queries(path) if q.where == title]
    return runnable(query.expr, variable_names(path))


@pytest.mark.parametrize(("title", "source"), [("Reported spend, month to date", "reported"),
                                               ("Estimated spend, month to date", "estimated")])
def test_month_to_date_panel_is_the_spend_of_this_month(prometheus: PrometheusServer, data_end: int,
                                                        title: str, source: str) -> None:
    # On the demo's data in a real Prometheus, the panel shows the month's spend as the receiver's ledger holds
    # it (every hour since the 1st, UTC), however much of the backfill lies before the 1st: not the counter's
    # whole history, which is what a series first seen mid-month used to count as this month.
    ds = DataSet(SEED, sample_times(data_end, 7), data_end - 7 * DAY)
    month_start = budgets.period_bounds(data_end, "month")[0]
    want = _Spend(ds).spend(WORKLOADS, (month_start, data_end + HOUR), source, data_end)
    (shown,) = prometheus.query(_panel_expr(title))
    assert float(shown["value"][1]) == pytest.approx(float(want), rel=1e-9)
    counter = "llm_usage_cost_USD_total" if source == "reported" else "llm_usage_cost_estimated_USD_total"
    (history,) = prometheus.query(f"sum({counter})")
    if month_start > ds.first_start:  # the data set reaches back before the 1st: the two must differ
        assert float(history["value"][1]) > float(shown["value"][1])


def test_month_to_date_equals_report_for_the_month(signals_run: DemoRun) -> None:
    # The receiver's period-to-date gauges, which the panels sum, equal `report` over the same ledger for the
    # same period (the 1st of the month, UTC, to the export's moment): reported and estimated, exactly.
    month_start = budgets.period_bounds(signals_run.now, "month")[0]
    day_start = budgets.period_bounds(signals_run.now, "day")[0]
    for start, period in ((month_start, "month"), (day_start, "day")):
        proc = subprocess.run(cli("report", "--config", str(signals_run.config), "--from", str(start),
                                  "--now", str(signals_run.now), "--format", "json"),
                              env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        total = json.loads(proc.stdout)["total"]
        for source in ("reported", "estimated"):
            gauges = [v for (name, labels), v in signals_run.values.items()
                      if name == "llm_cost_period_to_date_USD"
                      and ("llm_period", period) in labels and ("llm_cost_source", source) in labels]
            assert gauges, (period, source)
            assert sum(gauges) == pytest.approx(float(total[f"{source}_usd"]), rel=1e-9, abs=1e-9), (period, source)


# ---------------------------------------------------------------- the compose stack's preloaded history (18.12)
@dataclass(frozen=True)
class Preload:
    """The ``history`` command run on the compose receiver's config, then a real ``run --once`` on its ledger."""

    history: Path  # the command's OpenMetrics file
    samples: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]]  # that file, parsed
    config: Path
    exported: dict[tuple[str, frozenset[tuple[str, str]]], float]  # (Prometheus name, labels) -> value sent
    counters: set[str]  # Prometheus names of the monotonic sums among them
    at: int  # the export's timestamp (Unix seconds)


def _om_samples(lines: Iterable[str]) -> dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]] = {}
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        name, _, rest = line.partition("{")
        body, _, tail = rest.partition("} ")
        value, stamp = tail.split()
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', body))
        out.setdefault((name, labels), []).append((int(stamp), float(value)))
    return out


@pytest.fixture(scope="module")
def preload(tmp_path_factory: pytest.TempPathFactory) -> Preload:
    tmp = tmp_path_factory.mktemp("preload")
    with OTLPSink() as sink:
        raw = yaml.safe_load(COMPOSE_RECEIVER_CONFIG.read_text(encoding="utf-8"))
        raw["storage"]["path"] = str(tmp / "ledger.db")
        raw["health"]["endpoint"] = ""
        raw["exporters"]["otlp"]["endpoint"] = sink.grpc_endpoint
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        history = tmp / "history.om"
        proc = subprocess.run(cli("history", "--config", str(config), "--out", str(history)), env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "samples up to" in proc.stdout
        written = history.stat().st_mtime_ns
        again = subprocess.run(cli("history", "--config", str(config), "--out", str(history)), env=ENV,
                               capture_output=True, text=True, timeout=60)  # a second `docker compose up`
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
        assert history.stat().st_mtime_ns == written
        proc = subprocess.run(cli("run", "--config", str(config), "--once"), env=ENV, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        resource = sink.resource_attributes()
        target = {("job", str(resource["service.name"])), ("instance", str(resource["service.instance.id"]))}
        exported: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        counters: set[str] = set()
        at = 0
        for name in sink.metric_names():
            info = sink.metric_info(name)
            points = sink.number_points(name) if info.kind != "histogram" else {}
            monotonic = any(p.is_monotonic for p in points.values())
            base = prometheus_metric_name(name, info.unit, "counter" if monotonic else "gauge")
            if monotonic:
                counters.add(base)
            for key, point in points.items():
                labels = frozenset({(prometheus_label_name(k), str(v)) for k, v in key} | target)
                exported[(base, labels)] = float(point.value)
                at = point.time_unix_nano // 1_000_000_000
    with history.open(encoding="utf-8") as f:
        samples = _om_samples(iter(f))
    return Preload(history, samples, config, exported, counters, at)


def test_history_fills_the_dashboards_over_fourteen_days(preload: Preload, tmp_path: Path) -> None:
    # The command's own file, loaded by the real promtool into a real Prometheus: every usage, cost and money
    # panel answers at the end of the history, between two hours, and back over the 14 days of backfill.
    text = preload.history.read_text(encoding="utf-8")
    stamps = sorted({t for points in preload.samples.values() for t, _ in points})
    end = stamps[-1]
    assert end - stamps[0] >= 13 * DAY, "the history covers the 14-day backfill"
    assert end <= preload.at, "the history ends before the receiver's first export (no out-of-order samples)"
    hours = [h for h in stamps if h % HOUR == 0]  # where the history is exact (between: the 5-minute fill)
    with PrometheusServer(tmp_path, text, list(RULE_FILES), block_duration="24h") as prom:
        empty = []
        for path in (f for f in FILES if f.name != "receiver-health.json"):  # self-health: the live scrape's
            for when in (end, hours[-1] - 25 * 60, hours[-1] - 6 * DAY, hours[-1] - 13 * DAY):
                for q in panel_queries(path):
                    if when < hours[0] + 5 * DAY and "llm_anomaly_score" in q.expr:
                        continue  # no score before five days of baseline (docs/anomalies.md), live or not
                    if not prom.query(runnable(q.expr, variable_names(path)), at=when):
                        empty.append(f"{q} at {when}")
    assert empty == [], "panels without data on the preloaded history"


def test_history_continues_into_the_series_run_exports(preload: Preload) -> None:
    # Same series: every name and label set of the history (job, instance and otel_scope_* included) is one the
    # receiver's real export produces once translated as the Collector does, and none is missing (self-health
    # aside: the live scrape brings it).
    from otel_llm_receiver.config import load_config
    from otel_llm_receiver.history import ledger_history
    from otel_llm_receiver.ledger import Ledger

    def strip(key: tuple[str, frozenset[tuple[str, str]]]) -> tuple[str, frozenset[tuple[str, str]]]:
        return key[0], frozenset(kv for kv in key[1] if not kv[0].startswith("otel_scope_"))

    history = preload.samples
    assert all(dict(labels)["otel_scope_name"] == "otel_llm_receiver" for _, labels in history)
    wanted = {k for k in preload.exported if not k[0].startswith("llm_receiver_")}
    assert {strip(k) for k in history} == wanted
    # Same values up to the moment the receiver takes over: the history of the ledger as it is after that
    # export, ending at the export's time, ends with exactly what the export sent (gauges: the same reading,
    # give or take the second the receiver's clock may have turned between stamping and reading).
    config = load_config(str(preload.config))
    with Ledger(config.storage.path, readonly=True) as ledger:
        lines = ledger_history(config, ledger, preload.at).render()
        last = {strip(k): points[-1] for k, points in _om_samples(lines).items()}
    assert set(last) == wanted
    for key, (t, value) in last.items():
        assert t == preload.at
        sent = preload.exported[key]
        if key[0] in preload.counters:
            assert value == sent, key
        else:
            assert value == pytest.approx(sent, rel=1e-4, abs=1e-9), key
    # And the counters rise monotonically hour by hour to there.
    for (name, _), points in history.items():
        if name.endswith("_total"):
            values = [v for _, v in points]
            assert values == sorted(values), name
