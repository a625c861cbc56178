"""Scheduler behaviour with real parts: isolation of failing providers, exporter outages, health, shutdown.

The misbehaving providers below are small, complete implementations of the provider contract (a provider
that hangs, one that raises, one that returns garbage), registered like any provider type; nothing of the
receiver itself is replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest

from otel_llm_receiver.config import Config, Option, parse_config
from otel_llm_receiver.errors import ProviderError
from otel_llm_receiver.health import HealthServer
from otel_llm_receiver.ledger import Ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord, Window
from otel_llm_receiver.providers import PROVIDER_TYPES
from otel_llm_receiver.providers.base import Provider
from otel_llm_receiver.scheduler import Receiver
from tests.support.ledger_reads import rollup_totals_since
from tests.support.otlp_sink import OTLPSink


class HangingProvider(Provider):
    TYPE: ClassVar[str] = "hangs"

    async def fetch(self, window: Window) -> PollResult:
        await asyncio.Event().wait()  # never set: the provider hangs forever
        raise AssertionError("unreachable")


class FailingProvider(Provider):
    TYPE: ClassVar[str] = "fails"
    OPTIONS: ClassVar[dict[str, Option]] = {"api_key": Option("secret", required=True)}

    async def fetch(self, window: Window) -> PollResult:
        key = self.config.options["api_key"]
        raise ProviderError(f"401 Unauthorized for key {key}", provider=self.name, error_type="auth")


class GarbageProvider(Provider):
    TYPE: ClassVar[str] = "garbage"

    async def fetch(self, window: Window) -> PollResult:
        return {"data": "not a poll result"}  # type: ignore[return-value]


class DailyCostProvider(Provider):
    """Usage every poll; a daily "cost" source only when its own cursor says a day is due, like a cost API
    with its own interval. Counts its API calls like a real provider."""

    TYPE: ClassVar[str] = "dailycost"
    restored: ClassVar[list[dict[str, str]]] = []
    break_next_apply: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.cost_until: int | None = None

    def restore(self, cursors: Any) -> None:
        DailyCostProvider.restored.append(dict(cursors))
        self.cost_until = int(cursors["cost"]) if "cost" in cursors else None

    async def fetch(self, window: Window) -> PollResult:
        self.api_requests["usage"] += 1
        usage = [UsageRecord("test", "m", "chat", "t", 0, 3600, {"input": 5})]
        if self.cost_until is not None and self.cost_until >= window.end - 86400:
            return PollResult(usage=usage)  # cost is not due: the cursor says so, even after a restart
        self.api_requests["cost"] += 2  # two pages
        self.cost_until = window.end
        if DailyCostProvider.break_next_apply:  # a record the ledger refuses: the whole poll is rolled back
            DailyCostProvider.break_next_apply = False
            usage = [UsageRecord("test", "m", "chat", "t", 0, 3600, measures={"no.such.metric": 1})]
        return PollResult(usage=usage, costs=[CostRecord("test", "t", 0, 86400, Decimal("1.5"))],
                          cursors={"cost": str(window.end)})


@pytest.fixture(autouse=True)
def _register_test_providers() -> Iterator[None]:
    added = {"hangs": f"{__name__}:HangingProvider", "fails": f"{__name__}:FailingProvider",
             "garbage": f"{__name__}:GarbageProvider", "dailycost": f"{__name__}:DailyCostProvider"}
    PROVIDER_TYPES.update(added)
    yield
    for k in added:
        PROVIDER_TYPES.pop(k)


def make_config(tmp_path: Path, sink: OTLPSink, providers: dict[str, Any], **top: Any) -> Config:
    return parse_config({
        "storage": {"path": str(tmp_path / "ledger.db")},
        "exporters": {"otlp": {"endpoint": sink.grpc_endpoint, "tls": {"insecure": True}, "timeout": "500ms"}},
        "providers": providers,
        **top,
    }, environ={"FAKE_KEY": "sk-admin-test-supersecret"})


DEMO = {"backfill": "2h", "seed": 3}


def test_failing_hanging_and_garbage_providers_do_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with OTLPSink() as sink:
        config = make_config(tmp_path, sink, {
            "demo": DEMO,
            "hangs": {"timeout": "100ms", "collection_interval": "200ms"},
            "fails": {"api_key": "${env:FAKE_KEY}"},
            "garbage": {},
        })
        receiver = Receiver(config)

        async def go() -> int:
            try:
                return await receiver.run_once()
            finally:
                await receiver.aclose()

        code = asyncio.run(go())
        assert code == 1  # some providers failed
        polls = {tuple(sorted(dict(k).items())): p.value for k, p in sink.number_points("llm.receiver.polls").items()}
        usage = ("llm.data.source", "usage")
        assert polls[(usage, ("llm.outcome", "success"), ("llm.source", "demo"))] == 1
        assert polls[(("error.type", "timeout"), usage, ("llm.outcome", "failure"), ("llm.source", "hangs"))] == 1
        assert polls[(("error.type", "auth"), usage, ("llm.outcome", "failure"), ("llm.source", "fails"))] == 1
        assert polls[(("error.type", "bad_response"), usage, ("llm.outcome", "failure"),
                      ("llm.source", "garbage"))] == 1
        assert sum(p.value for p in sink.number_points("llm.usage.tokens").values()) > 0
    failures = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(failures) == 3  # one line each, no traceback storm
    assert all(r.exc_info is None for r in failures)


def test_secrets_in_provider_errors_are_redacted_in_logs(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from otel_llm_receiver.logs import redact, setup_logging

    with OTLPSink() as sink:
        config = make_config(tmp_path, sink, {"fails": {"api_key": "${env:FAKE_KEY}"}})
        setup_logging("info")
        redact.set(config.secrets)
        receiver = Receiver(config)

        async def go() -> None:
            await receiver.poll("fails")
            await receiver.aclose()

        asyncio.run(go())
        _, err = capfd.readouterr()
        assert "401 Unauthorized for key <redacted>" in err
        assert "sk-admin-test-supersecret" not in err
        _, doc = receiver.health_report()
        assert doc["instances"]["fails"]["last_error"] == "401 Unauthorized for key <redacted>"  # type: ignore[index]
        server = HealthServer("127.0.0.1:0", receiver.health_report).start()
        try:
            import urllib.error
            import urllib.request

            host, port = server.address
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5)
            body = info.value.read().decode()
            assert info.value.code == 503  # the only instance keeps failing
            assert "sk-admin-test-supersecret" not in body and "<redacted>" in body
        finally:
            server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_exporter_down_then_back_carries_everything(tmp_path: Path, protocol: str) -> None:
    sink = OTLPSink()
    sink.start()
    grpc_port, http_port = sink.grpc_port, sink.http_port
    endpoint = sink.grpc_endpoint if protocol == "grpc" else sink.http_endpoint
    sink.stop()  # the collector is down
    exporter = {"otlp" if protocol == "grpc" else "otlphttp": {
        "endpoint": endpoint, "tls": {"insecure": True}, "timeout": "500ms"}}
    config = parse_config({"storage": {"path": str(tmp_path / "ledger.db")}, "exporters": exporter,
                           "providers": {"demo": DEMO}})
    receiver = Receiver(config)
    try:
        assert asyncio.run(receiver.run_once()) == 1  # polled fine, export failed
        assert receiver.emitter.states[0].failures == 1
        # Usage keeps accumulating while the collector is down.
        asyncio.run(receiver.poll("demo"))
        assert receiver.export_now() is False
        with Ledger(config.storage.path, readonly=True) as reader:
            expected = sum(s.total for s in reader.snapshot().series if s.metric == "llm.usage.tokens")
        assert expected > 0
        back = OTLPSink(grpc_port=grpc_port, http_port=http_port)
        back.start()
        try:
            assert receiver.export_now() is True
            got = sum(p.value for p in back.number_points("llm.usage.tokens").values())
            assert got == expected
        finally:
            back.stop()
    finally:
        asyncio.run(receiver.aclose())


def test_one_dead_exporter_does_not_block_another(tmp_path: Path) -> None:
    with OTLPSink() as live:
        dead = OTLPSink()
        dead.start()
        dead_endpoint = dead.grpc_endpoint
        dead.stop()
        config = parse_config({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "exporters": {
                "otlp/dead": {"endpoint": dead_endpoint, "tls": {"insecure": True}, "timeout": "500ms"},
                "otlphttp/live": {"endpoint": live.http_endpoint, "timeout": "2s"},
            },
            "providers": {"demo": DEMO},
        })
        receiver = Receiver(config)
        try:
            assert asyncio.run(receiver.run_once()) == 1
            assert live.request_count >= 1
            assert sum(p.value for p in live.number_points("llm.usage.tokens").values()) > 0
            states = {s.name: s for s in receiver.emitter.states}
            assert states["otlp/dead"].failures == 1 and states["otlphttp/live"].failures == 0
        finally:
            asyncio.run(receiver.aclose())


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_an_export_failure_warning_says_what_the_collector_answered(
    tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18.4: the gRPC status or HTTP code (and the server's message) is in the warning, not only at debug."""
    import grpc

    with OTLPSink() as sink:
        endpoint = sink.grpc_endpoint if transport == "grpc" else sink.http_endpoint
        name = "otlp/refusing" if transport == "grpc" else "otlphttp/refusing"
        config = parse_config({
            "storage": {"path": str(tmp_path / "ledger.db")},
            "exporters": {name: {"endpoint": endpoint, "tls": {"insecure": True}, "timeout": "2s"}},
            "providers": {"demo": DEMO},
        })
        # Non-retryable answers: the exporter gives up at once and the warning must carry them.
        sink.fail_next(100, http_status=403, grpc_code=grpc.StatusCode.PERMISSION_DENIED)
        receiver = Receiver(config)
        try:
            with caplog.at_level("WARNING", logger="otel_llm_receiver.emitter"):
                asyncio.run(receiver.run_once())
        finally:
            asyncio.run(receiver.aclose())
    warnings = [r.getMessage() for r in caplog.records if r.name == "otel_llm_receiver.emitter"]
    assert warnings, caplog.text
    if transport == "grpc":
        assert "gRPC status PERMISSION_DENIED: failure injected by OTLPSink.fail_next" in warnings[0], warnings
    else:
        assert "HTTP 403" in warnings[0], warnings
    assert receiver.emitter.states[0].last_error == warnings[0].split(": ", 1)[1].split("; totals")[0]


def test_health_turns_unhealthy_after_three_missed_intervals(tmp_path: Path) -> None:
    now = [1_000_000.0]
    with OTLPSink() as sink:
        config = make_config(tmp_path, sink, {"demo": {**DEMO, "collection_interval": "10s"}})
        receiver = Receiver(config, clock=lambda: now[0])
        try:
            asyncio.run(receiver.poll("demo"))
            healthy, doc = receiver.health_report()
            assert healthy and doc["status"] == "ok"
            now[0] += 29
            assert receiver.health_report()[0]
            now[0] += 2  # 31s > 3 x 10s without a success
            healthy, doc = receiver.health_report()
            assert not healthy and doc["instances"]["demo"]["healthy"] is False  # type: ignore[index]
        finally:
            asyncio.run(receiver.aclose())


def test_rollups_older_than_retention_are_pruned(tmp_path: Path) -> None:
    now = [1_795_000_000.0]
    with OTLPSink() as sink:
        config = make_config(tmp_path, sink, {"demo": {"backfill": "3d", "seed": 1}},
                             storage={"path": str(tmp_path / "ledger.db"), "retention": "1d"})
        receiver = Receiver(config, clock=lambda: now[0])
        try:
            asyncio.run(receiver.poll("demo"))
            with Ledger(config.storage.path, readonly=True) as reader:
                kept = rollup_totals_since(reader, 0)
                old = rollup_totals_since(reader, int(now[0]) - 86400)
            # The 3-day backfill was applied, then everything older than 1 day was pruned from the rollups.
            assert kept and sorted(map(repr, kept)) == sorted(map(repr, old))
            with Ledger(config.storage.path, readonly=True) as reader:
                totals = sum(s.total for s in reader.snapshot().series if s.metric == "llm.usage.tokens")
                rolled = sum(v for _, m, _, v in rollup_totals_since(reader, 0) if m == "llm.usage.tokens")
            assert 0 < rolled < totals  # totals keep everything; only the hourly history was trimmed
        finally:
            asyncio.run(receiver.aclose())


def test_source_cursors_survive_a_restart_and_api_requests_are_counted(tmp_path: Path) -> None:
    DailyCostProvider.restored.clear()
    with OTLPSink() as sink:
        config = make_config(tmp_path, sink, {"dailycost/x": {}})
        for run in range(2):  # two processes, one ledger
            receiver = Receiver(config)
            try:
                assert asyncio.run(receiver.run_once()) == 0
                asyncio.run(receiver.poll("dailycost/x"))
                assert receiver.export_now() is True
            finally:
                asyncio.run(receiver.aclose())
            requests = {dict(k)["llm.api.operation"]: p.value
                        for k, p in sink.number_points("llm.receiver.provider_requests").items()}
            # first process: cost fetched once (2 pages) over two polls, the first of them a 24h backfill from
            # 00:00 UTC yesterday in two 1-day chunks (its cost cursor, from chunk 1, lands with chunk 2);
            # second process: not again, the cursor says so
            assert requests == ({"usage": 3, "cost": 2} if run == 0 else {"usage": 2})
            sink.clear()
    assert "cost" not in DailyCostProvider.restored[0]
    assert set(DailyCostProvider.restored[1]) == {"poll", "cost"}
    with Ledger(config.storage.path, readonly=True) as reader:
        costs = [s.total for s in reader.snapshot().series if s.metric == "llm.usage.cost"]
    assert costs == [1_500_000_000]


def test_a_failed_poll_hands_the_saved_cursors_back(tmp_path: Path) -> None:
    """The provider moved its cost cursor in memory, but the poll was rolled back: the cost must be re-read."""
    DailyCostProvider.restored.clear()
    DailyCostProvider.break_next_apply = True
    with OTLPSink() as sink:
        receiver = Receiver(make_config(tmp_path, sink, {"dailycost/x": {}}))
        try:
            assert not asyncio.run(receiver.poll("dailycost/x")).ok
            assert asyncio.run(receiver.poll("dailycost/x")).ok
        finally:
            asyncio.run(receiver.aclose())
    assert DailyCostProvider.restored == [{}, {}]  # restored again after the failure
    with Ledger(tmp_path / "ledger.db", readonly=True) as reader:
        costs = [s.total for s in reader.snapshot().series if s.metric == "llm.usage.cost"]
    assert costs == [1_500_000_000]  # fetched again and committed once
