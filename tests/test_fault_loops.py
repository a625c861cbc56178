"""Failures injected under a running receiver (issue 17.1, 17.10): logged, counted, shown, and the loops go on.

* A ledger page overwritten under a running receiver: the export loop's reads fail with a raw
  ``sqlite3.DatabaseError``. It used to end the export loop without a log line while ``/health`` said 200 ok.
  Now each failed iteration is counted (``loops.export`` in ``/health``, ``llm.receiver.loop.errors``), logged
  in one line, ``/health`` and ``/ready`` answer 503 while ``/live`` stays 200, and once the page is whole again
  the next export goes out carrying the error count.
* A Collector that goes away: ``/ready`` fails after ``health.export_failure_window`` with the exporter's last
  successful export and consecutive failures in the document; ``/live`` stays 200; ``/ready`` recovers.

Real pieces only: the demo provider, a real ledger file, a real OTLP sink, the real health server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.config import Config, parse_config
from otel_llm_receiver.health import HealthServer
from otel_llm_receiver.scheduler import Receiver
from tests.support.otlp_sink import OTLPSink

PAGE = 4096


def _config(ledger: Path, sink: OTLPSink, **health: Any) -> Config:
    return parse_config({
        "collection_interval": "1h",  # one poll at start: the ledger file changes only when the test says
        "export_interval": "0.2s",
        "storage": {"path": str(ledger)},
        "health": {"endpoint": "127.0.0.1:0", **health},
        "exporters": {"otlphttp": {"endpoint": sink.http_endpoint, "timeout": "1s"}},
        "providers": {"demo": {"backfill": "48h", "seed": 3}},
        "pricing": {"genai_prices": False},
        "budgets": [{"name": "all", "amount": 1000, "period": "month", "source": "estimated"}],
    })


def _get(server: HealthServer, path: str) -> tuple[int, dict[str, Any]]:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition the receiver's own threads make true (checked every 50 ms, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def _root_page(ledger: Path, table: str) -> int:
    conn = sqlite3.connect(ledger)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file, as after a while
        return int(conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
    finally:
        conn.close()


def _write_page(ledger: Path, page: int, data: bytes) -> bytes:
    with ledger.open("r+b") as f:
        f.seek((page - 1) * PAGE)
        old = f.read(PAGE)
        f.seek((page - 1) * PAGE)
        f.write(data)
    return old


def _seeded_ledger(ledger: Path, sink: OTLPSink) -> None:
    receiver = Receiver(_config(ledger, sink))
    try:
        assert asyncio.run(receiver.run_once()) == 0
    finally:
        asyncio.run(receiver.aclose())


def test_a_page_corrupted_under_a_running_receiver_is_logged_counted_and_shown(
    tmp_path: Path, sink: OTLPSink, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = tmp_path / "ledger.db"
    _seeded_ledger(ledger, sink)
    receiver = Receiver(_config(ledger, sink))
    server = HealthServer("127.0.0.1:0", receiver.health_report).start()

    async def scenario() -> None:
        page = _root_page(ledger, "rollups")  # read by every export (the budget's spend), not by the totals
        good = _write_page(ledger, page, bytes([0xA5]) * PAGE)
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run_forever(stop))
        try:
            loops = receiver.health.loops
            await _until(lambda: "export" in loops() and loops()["export"].consecutive_errors >= 3)
            assert not run.done()  # the export loop keeps going; nothing ended
            status, doc = await asyncio.to_thread(_get, server, "/health")
            assert status == 503 and doc["status"] == "unhealthy"
            assert doc["loops"]["export"]["consecutive_errors"] >= 3
            assert "DatabaseError" in doc["loops"]["export"]["last_error"]
            assert (await asyncio.to_thread(_get, server, "/ready"))[0] == 503
            assert await asyncio.to_thread(_get, server, "/live") == (200, {"status": "alive"})

            _write_page(ledger, page, good)  # the page restored: the next export reads through a new connection
            await _until(lambda: loops()["export"].consecutive_errors == 0)
            errors = loops()["export"].errors
            await asyncio.to_thread(sink.wait_for, lambda s: any(
                p.value >= errors for p in s.number_points("llm.receiver.loop.errors").values()), 20.0)
            points = sink.number_points("llm.receiver.loop.errors")
            assert {dict(k)["llm.loop"] for k in points} == {"export"}
            assert max(p.value for p in points.values()) >= errors >= 3
        finally:
            stop.set()
            await run

    try:
        with caplog.at_level(logging.INFO, logger="otel_llm_receiver"):
            asyncio.run(scenario())
    finally:
        asyncio.run(receiver.aclose())
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("export loop:")]
    assert lines[0].startswith("export loop: iteration failed (1 in a row), the loop goes on: DatabaseError")
    assert "the ledger may be damaged" in lines[0]
    assert any("succeed again after" in line for line in lines)


def test_a_collector_outage_fails_readiness_after_the_window_never_liveness(tmp_path: Path, sink: OTLPSink) -> None:
    receiver = Receiver(_config(tmp_path / "ledger.db", sink, export_failure_window="2s"))
    server = HealthServer("127.0.0.1:0", receiver.health_report).start()
    state = receiver.emitter.states[0]

    async def scenario() -> None:
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run_forever(stop))
        try:
            await _until(lambda: state.last_success_unix is not None and receiver.health.statuses()[0].polls > 0)
            # One reading taken when ready (on a loaded machine an export can outlast the 2 s window, so the
            # document is read until it shows the exports succeeding, not once right after /ready).
            healthy: list[tuple[int, dict[str, Any]]] = []
            await _until(lambda: healthy.append(_get(server, "/health")) or healthy[-1][0] == 200)
            status, doc = healthy[-1]
            assert doc["export_failure_window_s"] == 2.0
            assert doc["exporters"][0]["healthy"] and doc["exporters"][0]["consecutive_failures"] == 0

            sink.stop()  # the Collector goes away
            await _until(lambda: state.consecutive_failures >= 1 and _get(server, "/ready")[0] == 503)
            status, doc = await asyncio.to_thread(_get, server, "/health")
            exporter = doc["exporters"][0]
            assert status == 503 and not exporter["healthy"]
            assert exporter["last_success_unix"] is not None and exporter["consecutive_failures"] >= 1
            assert all(i["healthy"] for i in doc["instances"].values())  # only the exports fail
            assert await asyncio.to_thread(_get, server, "/live") == (200, {"status": "alive"})

            sink.start()  # back on the same ports
            await _until(lambda: _get(server, "/ready")[0] == 200)
        finally:
            stop.set()
            await run

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(receiver.aclose())
        server.stop()
