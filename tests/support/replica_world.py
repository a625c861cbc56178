"""Replica scenarios' world (issue 21): `otel-llm-receiver run` processes sharing one PostgreSQL ledger, polling
six instances of the fake OpenAI API, exporting to a real OTLP sink; and the ground truth to check them against.

Why one helper: the scenarios (tests/test_replicas_e2e.py) differ in what they do to the replicas (kill -9,
SIGSTOP, restart the database), not in how replicas are started or how totals are checked. Replicas are forked
from a fork server (tests/support/fork_server.py: no interpreter start-up per replica), each with its own id
(``OTEL_LLM_RECEIVER_REPLICA_ID``) and log, and a lease duration below the config's 5s minimum through the test
hook ``OTEL_LLM_RECEIVER_TEST_LEASE_DURATION``. The ledger is read through plain psycopg (never the receiver's
code): the series table, the cursors and the lease rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from tests.fakes.openai import ADMIN_KEY, FakeOpenAI, populate
from tests.support.fork_server import ForkServer
from tests.support.otlp_sink import OTLPSink

HOUR = 3600
DAY = 86400
INSTANCES = tuple(f"openai/p{i}" for i in range(6))
LEADER = "@leader"


@contextlib.contextmanager
def openai_fakes(count: int) -> Iterator[list[FakeOpenAI]]:
    """``count`` fake OpenAI organisations (8 buckets a page, so polls page), closed after."""
    made = [FakeOpenAI(page_buckets=8) for _ in range(count)]
    try:
        yield made
    finally:
        for f in made:
            f.api.close()


def seed_fake(fake: FakeOpenAI, now: int, *, seed: int) -> int:
    """Twelve hours of usage for 2 projects and 2 models, and today's reported costs (9 decimals); the start."""
    usage_start = now - now % HOUR - 12 * HOUR
    populate(fake, usage_start, now, projects=2, models=2, seed=seed)
    today = now - now % DAY
    for day in (today,):
        for p in range(2):
            fake.set_cost(day, {"project_id": f"proj_{p:03d}", "line_item": "gpt-test-0, input"},
                          Decimal(f"{p + 1}.{(day // DAY) % 97:02d}3456789"))
    return usage_start


def write_config(path: Path, fakes: Sequence[FakeOpenAI], sink: OTLPSink, *, interval: str = "1s",
                 lease: str | None = None) -> Path:
    """One config for every replica: instance ``openai/pN`` polls ``fakes[N]`` (a fake of its own, so a test can
    stall one instance's requests), tenant ``tN``."""
    instances = "\n".join(f"""  {name}:
    admin_key: ${{env:OPENAI_ADMIN_KEY}}
    tenant: t{i}
    endpoint: {fakes[i].base_url}
    retry_initial_interval: 10ms
    collection_interval: {interval}""" for i, name in enumerate(INSTANCES))
    path.write_text(f"""
export_interval: 1s
storage:
  backend: postgresql
  dsn: ${{env:LEDGER_DSN}}{f"{chr(10)}  lease_duration: {lease}" if lease else ""}
health: {{endpoint: ""}}
exporters:
  otlphttp: {{endpoint: {sink.http_endpoint}, timeout: 2s}}
providers:
{instances}
pricing: {{genai_prices: false}}
""")
    return path


@dataclass
class Replica:
    name: str
    pid: int
    log: Path
    stopped: bool = False  # SIGSTOPped


@dataclass
class World:
    """The replicas of one scenario and what to read back."""

    root: Path
    dsn: str
    config: Path
    server: ForkServer
    #: seconds through the test hook (below the config's 5s minimum); None: the config's storage.lease_duration
    lease_duration: float | None
    replicas: dict[str, Replica] = field(default_factory=dict)
    _count: int = 0

    def env(self, name: str) -> dict[str, str]:
        env = {"OPENAI_ADMIN_KEY": ADMIN_KEY, "LEDGER_DSN": self.dsn, "LOG_FORMAT": "json",
               "OTEL_LLM_RECEIVER_REPLICA_ID": name}
        if self.lease_duration is not None:
            env["OTEL_LLM_RECEIVER_TEST_LEASE_DURATION"] = str(self.lease_duration)
        return env

    def start(self, name: str) -> Replica:
        self._count += 1
        log = self.root / f"{name}-{self._count:03d}.log"
        pid = self.server.run(["run", "--config", str(self.config)], log, self.env(name))
        replica = self.replicas[name] = Replica(name, pid, log)
        return replica

    def kill(self, name: str) -> Replica:
        replica = self.replicas.pop(name)
        os.kill(replica.pid, signal.SIGKILL)
        if replica.stopped:
            os.kill(replica.pid, signal.SIGCONT)
        sig, code = self.server.wait(replica.pid)
        assert sig == signal.SIGKILL, f"{name} ended by itself (exit {code}):\n{replica.log.read_text()[-3000:]}"
        return replica

    def stop(self, name: str) -> tuple[int | None, int | None]:
        """SIGTERM (a clean stop: final export, leases released); (signal, exit code)."""
        replica = self.replicas.pop(name)
        os.kill(replica.pid, signal.SIGTERM)
        return self.server.wait(replica.pid)

    def stop_all(self) -> None:
        for name in list(self.replicas):
            replica = self.replicas[name]
            if replica.stopped:
                os.kill(replica.pid, signal.SIGCONT)
            sig, code = self.stop(name)
            assert (sig, code) == (None, 0), f"{name}: {sig} {code}\n{replica.log.read_text()[-3000:]}"

    def kill_all(self) -> None:
        for name in list(self.replicas):
            self.kill(name)

    # -- reading the ledger ------------------------------------------------------------------------------------
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql``; none while the replicas have not created the tables yet (they migrate at start)."""
        return query(self.dsn, sql, params)

    def holders(self) -> dict[str, str]:
        """Live leases: instance -> the replica id holding it (ids are NAME-pid-suffix)."""
        rows = self.query("SELECT name, holder FROM leases WHERE holder IS NOT NULL AND name <> %s"
                          " AND expires_at > clock_timestamp()", (LEADER,))
        return {str(n): str(h) for n, h in rows}

    def holder_names(self) -> dict[str, str]:
        """Live leases: instance -> the replica *name* (``r0``) holding it."""
        return {n: h.split("-")[0] for n, h in self.holders().items()}

    def cursor_times(self) -> dict[str, int]:
        """instance -> when its poll cursor was last written (ns): the last successful apply of a poll."""
        return {str(i): int(t) for i, t in self.query("SELECT instance, updated_ns FROM cursors WHERE source = 'poll'")}

    def series(self) -> list[tuple[int, str, str, dict[str, str], int, int, int]]:
        """(id, instance, metric, attrs, start_time_ns, total, adjustments) of every series."""
        return series(self.dsn)

    def ledger_id(self) -> str:
        rows = self.query("SELECT value FROM meta WHERE key = 'service.instance.id'")
        return str(rows[0][0])

    def logs(self, name_prefix: str = "") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in sorted(self.root.glob(f"{name_prefix}*.log")):
            for line in path.read_text("utf-8", "replace").splitlines():
                if line.startswith("{"):
                    try:
                        record = json.loads(line)
                        out.append({**record, "message": record.get("msg", ""), "_file": path.name})
                    except ValueError:
                        continue
        return out


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the ledger at ``dsn`` through plain psycopg; none before the tables exist."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
    except psycopg.errors.UndefinedTable:
        return []


def series(dsn: str) -> list[tuple[int, str, str, dict[str, str], int, int, int]]:
    """(id, instance, metric, attrs, start_time_ns, total, adjustments) of every series of the ledger."""
    return [(int(r[0]), str(r[1]), str(r[2]), json.loads(r[3]), int(r[4]), int(r[5]), int(r[6]))
            for r in query(dsn, "SELECT id, instance, metric, attrs, start_time_ns, total, adjustments"
                                " FROM series ORDER BY id")]


def truth(fake: FakeOpenAI, usage_start: int) -> dict[str, dict[tuple[str, ...], int]]:
    """What every instance must have counted: chat tokens, chat requests, reported USD cost in nano-dollars."""
    tokens = {k: v for k, v in fake.tokens(usage_start, 2**40).items() if v}
    requests = {k: v for k, v in fake.requests("completions", usage_start, 2**40).items() if v}
    cost: dict[tuple[str, ...], int] = defaultdict(int)
    for (project, _, currency), amount in fake.costs(0, 2**40).items():
        assert currency == "USD"
        cost[(project,)] += int(amount * 10**9)
    return {"tokens": tokens, "requests": requests, "cost": dict(cost)}


def counted(world: World | str, instances: Sequence[str] = INSTANCES,
            ) -> dict[str, dict[str, dict[tuple[str, ...], int]]]:
    """Per instance, what the ledger (of ``world``, or at a DSN) counted (``total - adjustments``), in the shapes
    ``truth`` gives."""
    out: dict[str, dict[str, dict[tuple[str, ...], int]]] = {
        i: {"tokens": defaultdict(int), "requests": defaultdict(int), "cost": defaultdict(int)} for i in instances}
    rows = series(world) if isinstance(world, str) else world.series()
    for _, instance, metric, a, _, total, adjustments in rows:
        value = total - adjustments
        if instance not in out:
            continue
        if metric == "llm.usage.tokens" and a.get("gen_ai.operation.name") == "chat":
            out[instance]["tokens"][(a["llm.tenancy.id"], a["gen_ai.request.model"], a["gen_ai.token.type"])] += value
        elif metric == "llm.usage.requests" and a.get("gen_ai.operation.name") == "chat":
            out[instance]["requests"][(a["llm.tenancy.id"], a["gen_ai.request.model"])] += value
        elif metric == "llm.usage.cost" and a.get("llm.cost.source") == "reported":
            out[instance]["cost"][(a["llm.tenancy.id"],)] += value
    return {i: {k: {kk: vv for kk, vv in v.items() if vv} for k, v in d.items()} for i, d in out.items()}


def exact(world: World | str, expected: Mapping[str, dict[str, dict[tuple[str, ...], int]]]) -> bool:
    """Every instance of ``expected``: its ledger totals equal ``expected[instance]`` (its fake's ``truth``)."""
    got = counted(world, tuple(expected))
    return all(got[i] == expected[i] for i in expected)
