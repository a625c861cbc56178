"""kill -9 storm (issue 17, fault tests): real receivers killed at seeded random moments, nothing lost or doubled.

Receivers (``run``, the real CLI, forked from a server that preloaded the package: tests/support/fork_server.py)
poll the fake OpenAI API on loopback and export to a real OTLP sink; each is killed with SIGKILL at a seeded
random moment: during start-up and the ledger check, the 24-hour backfill, steady polls of the lookback, a
ledger commit, an export. Between kills the fake's current hour grows now and then, so revised buckets are in
play. After every kill the ledger (read-only, never repaired by the test) must keep every series' start time,
and the next receiver must start (a refused ledger ends the storm). At the end one clean ``run --once`` must
leave totals equal to the fake's ground truth, exactly.

The sleeps below are the kill schedule itself (seeded), not a stand-in for synchronisation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openai import ADMIN_KEY, FakeOpenAI, populate
from tests.support.fork_server import ForkServer
from tests.support.otlp_sink import OTLPSink

HOUR = 3600
KILLS = 200
SEED = 1717
INSTANCE = "openai/prod"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def world() -> Iterator[tuple[FakeOpenAI, OTLPSink, ForkServer]]:
    with FakeOpenAI(page_buckets=8) as fake, OTLPSink() as sink:
        server = ForkServer(ROOT)
        try:
            yield fake, sink, server
        finally:
            server.close()


def _config(tmp_path: Path, fake: FakeOpenAI, sink: OTLPSink) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
collection_interval: 1s
export_interval: 1s
storage: {{path: {tmp_path / "ledger.db"}}}
health: {{endpoint: ""}}
exporters:
  otlphttp: {{endpoint: {sink.http_endpoint}, timeout: 2s}}
providers:
  {INSTANCE}:
    admin_key: ${{env:OPENAI_ADMIN_KEY}}
    tenant: acme
    endpoint: {fake.base_url}
    retry_initial_interval: 10ms
pricing: {{genai_prices: false}}
""")
    return path


def _read_ledger(path: Path) -> tuple[dict[int, tuple[str, str, str, int]], dict[int, tuple[int, int]], bool] | None:
    """(identity and start time by series id, (total, adjustments) by id, has a poll cursor), read-only.

    ``mode=ro``: the test must never checkpoint or repair what a killed receiver left; the next one must.
    None when there is no ledger yet or no shared-memory index to read it through (killed before that).
    """
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return None
    try:
        rows = conn.execute(
            "SELECT id, instance, metric, attrs, start_time_ns, total, adjustments FROM series").fetchall()
        series = {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
        totals = {r[0]: (r[5], r[6]) for r in rows}
        cursor = conn.execute("SELECT count(*) FROM cursors WHERE instance = ?", (INSTANCE,)).fetchone()[0] > 0
    except sqlite3.OperationalError:  # no table yet, or no -shm to read a WAL through
        return None
    finally:
        conn.close()
    return series, totals, cursor


@pytest.mark.slow
def test_kill_9_storm_loses_and_doubles_nothing_and_keeps_start_times(
    tmp_path: Path, world: tuple[FakeOpenAI, OTLPSink, ForkServer]
) -> None:
    fake, sink, server = world
    rng = random.Random(SEED)
    now = int(time.time())
    usage_start = now - now % HOUR - 12 * HOUR  # inside the 24-hour backfill
    populate(fake, usage_start, now, projects=2, models=2, seed=SEED)
    config = _config(tmp_path, fake, sink)
    ledger = tmp_path / "ledger.db"
    argv = ["run", "--config", str(config)]
    env = {"OPENAI_ADMIN_KEY": ADMIN_KEY, "LOG_FORMAT": "json"}
    starts: dict[int, tuple[str, str, str, int]] = {}
    kills = checked = steady = 0
    t0 = time.monotonic()
    for i in range(KILLS):
        log = tmp_path / f"run-{i:03d}.log"
        pid = server.run(argv, log, env)
        # The first ten within start-up and the backfill's first requests; then mostly early (start-up, the
        # ledger check, the first requests), sometimes long enough for polls, commits and exports to land.
        if i < 10:
            time.sleep(rng.uniform(0.0, 0.15))
        else:
            time.sleep(rng.uniform(0.0, 0.35) if rng.random() < 0.85 else rng.uniform(0.35, 1.6))
        os.kill(pid, signal.SIGKILL)
        sig, code = server.wait(pid)
        assert sig == signal.SIGKILL, f"receiver {i} ended by itself (exit {code}):\n{log.read_text()}"
        kills += 1
        state = _read_ledger(ledger)
        if state is not None:
            series, _, cursor = state
            checked += 1
            steady += cursor
            for sid, identity in series.items():
                assert starts.setdefault(sid, identity) == identity, f"series {sid} changed after kill {i}"
        if i % 25 == 24:  # the current hour grows: a revised bucket for the next receivers
            fake.add_usage("completions", now - now % HOUR, {"project_id": "proj_000", "model": "gpt-test-0",
                                                             "batch": False, "service_tier": "default"},
                           text_in=1000 + i, text_out=7, requests=1)
    storm_s = time.monotonic() - t0

    final_log = tmp_path / "final.log"
    pid = server.run(["run", "--once", "--config", str(config)], final_log, env)
    assert server.wait(pid) == (None, 0), final_log.read_text()
    state = _read_ledger(ledger)
    assert state is not None
    series, totals, _ = state
    for sid, identity in starts.items():
        assert series[sid] == identity  # the start time every exporter has shown stays, kill after kill
    tokens: dict[tuple[str, ...], int] = defaultdict(int)
    for sid, (_, metric, attrs, _) in series.items():
        a = json.loads(attrs)
        if metric == "llm.usage.tokens" and a.get("gen_ai.operation.name") == "chat":
            total, adjustments = totals[sid]
            tokens[(a["llm.tenancy.id"], a["gen_ai.request.model"], a["gen_ai.token.type"])] += total - adjustments
    expected = {k: v for k, v in fake.tokens(usage_start, 2**40).items() if v}
    assert {k: v for k, v in tokens.items() if v} == expected
    requests: dict[tuple[str, str], int] = defaultdict(int)
    for sid, (_, metric, attrs, _) in series.items():
        a = json.loads(attrs)
        if metric == "llm.usage.requests" and a.get("gen_ai.operation.name") == "chat":
            requests[(a["llm.tenancy.id"], a["gen_ai.request.model"])] += totals[sid][0] - totals[sid][1]
    assert dict(requests) == fake.requests("completions", usage_start, 2**40)
    # The storm covered both phases: kills before the backfill was committed and many during steady polling.
    assert kills == KILLS and KILLS - steady > 0 and steady >= KILLS // 4, (kills, checked, steady)
    print(f"kill -9 storm: {kills} kills in {storm_s:.1f}s; ledger checked after {checked}, "
          f"{steady} of them after the backfill was committed; totals exact, start times constant")
