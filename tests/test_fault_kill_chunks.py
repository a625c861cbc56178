"""kill -9 between the chunks of a backfill (issue 20): what was applied stays, nothing counts twice.

A real receiver (``run --once``, the real CLI, forked from a server that preloaded the package:
tests/support/fork_server.py) backfills 3 days and today from the fake OpenAI API on loopback in 1-day chunks
(4 chunks). The fake holds the answer to a chosen chunk's completions request until the test has looked at the
ledger and killed the receiver with SIGKILL: the request arriving is the signal that every earlier chunk was
applied (chunks are read one after the other), so there are no sleeps. The ledger (read read-only, never repaired
by the test) must then hold exactly the earlier chunks, with no cursor; the next receiver re-reads the whole
window and re-applies them, which must count nothing twice and keep every series' start time. A last clean
``run --once`` must leave totals equal to the fake's ground truth, exactly.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.api import Request, Response
from tests.fakes.openai import ADMIN_KEY, FakeOpenAI, populate
from tests.support.fork_server import ForkServer
from tests.support.otlp_sink import OTLPSink

HOUR, DAY = 3600, 86400
INSTANCE = "openai/prod"
COMPLETIONS = "/v1/organization/usage/completions"
ROOT = Path(__file__).resolve().parents[1]


class ChunkGate:
    """Holds the answer to the ``hold``-th completions request of a receiver (one request per chunk here) until
    ``release``; ``arrived`` is set when that request reached the fake, i.e. every earlier chunk was applied."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.seen = 0
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.start_time: int | None = None

    def __call__(self, request: Request, response: Response) -> None:
        if request.path != COMPLETIONS:
            return
        self.seen += 1
        if self.seen == self.hold:
            self.start_time = int(request.param("start_time") or 0)
            self.arrived.set()
            self.release.wait(timeout=60)  # the receiver is killed meanwhile: this answer goes nowhere


@pytest.fixture
def world() -> Iterator[tuple[FakeOpenAI, OTLPSink, ForkServer]]:
    with FakeOpenAI() as fake, OTLPSink() as sink:
        server = ForkServer(ROOT)
        try:
            yield fake, sink, server
        finally:
            server.close()


def _config(tmp_path: Path, fake: FakeOpenAI, sink: OTLPSink) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
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
    backfill: 3d
    cost_backfill: 3d
    backfill_chunk: 1d
pricing: {{genai_prices: false}}
""")
    return path


def _read_ledger(path: Path) -> tuple[dict[tuple[str, ...], int], dict[int, tuple[str, str, int]], dict[str, str]]:
    """(chat tokens by project, model, type; identity and start time by series id; cursors), read-only: the test
    never checkpoints or repairs what a killed receiver left."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tokens: dict[tuple[str, ...], int] = defaultdict(int)
        series: dict[int, tuple[str, str, int]] = {}
        for sid, metric, attrs, start, total, adjustments in conn.execute(
                "SELECT id, metric, attrs, start_time_ns, total, adjustments FROM series"):
            series[sid] = (metric, attrs, start)
            a = json.loads(attrs)
            if metric == "llm.usage.tokens" and a.get("gen_ai.operation.name") == "chat":
                tokens[(a["llm.tenancy.id"], a["gen_ai.request.model"], a["gen_ai.token.type"])] += total - adjustments
        cursors = dict(conn.execute("SELECT source, value FROM cursors WHERE instance = ?", (INSTANCE,)).fetchall())
    finally:
        conn.close()
    return {k: v for k, v in tokens.items() if v}, series, cursors


def test_kill_9_between_chunks_keeps_applied_chunks_counts_nothing_twice_and_keeps_start_times(
    tmp_path: Path, world: tuple[FakeOpenAI, OTLPSink, ForkServer]
) -> None:
    fake, sink, server = world
    now = int(time.time())
    day0 = now - now % DAY
    start = day0 - 3 * DAY  # the backfill's first chunk: 3 whole days, then today so far (4 chunks)
    populate(fake, start, now, projects=2, models=2, seed=20)
    config = _config(tmp_path, fake, sink)
    ledger = tmp_path / "ledger.db"
    env = {"OPENAI_ADMIN_KEY": ADMIN_KEY, "LOG_FORMAT": "json"}
    starts: dict[int, tuple[str, str, int]] = {}

    def truth(end: int) -> dict[tuple[str, ...], int]:
        return {k: v for k, v in fake.tokens(start, end).items() if v}

    # Killed while chunk 2 is read (chunk 1 applied), then while the last chunk is read (chunks 1-3 applied,
    # chunk 1 for the second time).
    for i, hold in enumerate((2, 4)):
        gate = ChunkGate(hold)
        fake.api.observers.append(gate)
        log = tmp_path / f"run-{i}.log"
        pid = server.run(["run", "--once", "--config", str(config)], log, env)
        try:
            assert gate.arrived.wait(timeout=60), f"chunk {hold} was never asked for:\n{log.read_text()}"
            os.kill(pid, signal.SIGKILL)
            assert server.wait(pid) == (signal.SIGKILL, None)
        finally:
            gate.release.set()
            fake.api.observers.remove(gate)
        assert gate.start_time == start + (hold - 1) * DAY
        tokens, series, cursors = _read_ledger(ledger)
        assert tokens == truth(start + (hold - 1) * DAY), f"kill {i}: not exactly chunks 1..{hold - 1}"
        assert cursors == {}, f"kill {i}: a cursor moved before the last chunk"
        for sid, identity in series.items():
            assert starts.setdefault(sid, identity) == identity, f"series {sid} changed after kill {i}"
        assert "poll ok" not in log.read_text()  # the killed receiver never finished its poll

    final_log = tmp_path / "final.log"
    pid = server.run(["run", "--once", "--config", str(config)], final_log, env)
    assert server.wait(pid) == (None, 0), final_log.read_text()
    tokens, series, cursors = _read_ledger(ledger)
    assert tokens == truth(2**40)
    for sid, identity in starts.items():
        assert series[sid] == identity  # the start time of every series stays, kill after kill
    assert set(cursors) == {"poll", "cost"}
    assert "in 4 chunks" in final_log.read_text()
