"""OpenAI and Anthropic report bodies served verbatim (or mutated, or dripped) on loopback, polled by the receiver.

The fault tests and the response fuzzer need full control of the bytes a provider answers: a bucket twice, a row
without ``model``, a body that never ends. ``BodyServer`` is a real HTTP server that answers each path with the
bytes a test hands it (optionally slowly, in small chunks); ``World`` builds small, valid base bodies for the
OpenAI usage (completions) and costs endpoints and the Anthropic usage and cost reports, and polls them through
the production ``Receiver.poll`` (scheduler window, provider, ledger) with a fixed clock.

``reference_totals`` is the fuzzer's oracle, independent of the receiver's mapping: each accepted body's rows,
keyed by bucket and group, overwrite the keys they carry (a re-read is a revision; a row left out keeps its last
value, as in the ledger), and the expected totals are the sums over every key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from otel_llm_receiver.config import parse_config
from otel_llm_receiver.scheduler import PollOutcome, Receiver

HOUR, DAY = 3600, 86400
NOW = 1_767_225_600 + 10 * HOUR  # 2026-01-01T10:00:00Z
OPENAI, ANTHROPIC = "openai/fz", "anthropic/fz"
OA_USAGE = "/v1/organization/usage/completions"
OA_COSTS = "/v1/organization/costs"
AN_USAGE = "/v1/organizations/usage_report/messages"
AN_COSTS = "/v1/organizations/cost_report"
#: Reported cost and what comes with it: the metrics the cost source writes (everything else is usage's).
COST_METRICS: frozenset[str] = frozenset({"llm.usage.cost", "llm.usage.cost.non_usd", "llm.usage.billed_quantity"})
#: Endpoint -> (instance, whether it is the cost source).
SOURCE_OF: Mapping[str, tuple[str, bool]] = {
    OA_USAGE: (OPENAI, False), OA_COSTS: (OPENAI, True), AN_USAGE: (ANTHROPIC, False), AN_COSTS: (ANTHROPIC, True),
}
#: The endpoints a fuzzer mutates, per instance.
ENDPOINTS: Mapping[str, tuple[str, ...]] = {OPENAI: (OA_USAGE, OA_COSTS), ANTHROPIC: (AN_USAGE, AN_COSTS)}


@dataclass
class Served:
    """What one path answers: status, body bytes, extra headers, and ``drip`` seconds spread over the body."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    drip: float = 0.0
    content_type: str = "application/json"
    length: bool = True  # False: no Content-Length, the body ends when the connection closes


class BodyServer:
    """A loopback HTTP server answering each path with the ``Served`` a test set (``answers[path]``)."""

    def __init__(self) -> None:
        self.answers: dict[str, Served] = {}
        self.requests: list[tuple[float, str]] = []  # (monotonic time, path)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with server._lock:
                    server.requests.append((time.monotonic(), path))
                    answer = server.answers.get(path, Served(b'{"error": "no such path"}', 404))
                try:
                    self.send_response(answer.status)
                    self.send_header("content-type", answer.content_type)
                    if answer.length:
                        self.send_header("content-length", str(len(answer.body)))
                    else:
                        self.send_header("connection", "close")
                        self.close_connection = True
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    if answer.drip <= 0:
                        self.wfile.write(answer.body)
                        return
                    pieces = 8
                    step = max(1, -(-len(answer.body) // pieces))
                    for i in range(0, len(answer.body), step):
                        self.wfile.write(answer.body[i:i + step])
                        self.wfile.flush()
                        time.sleep(answer.drip / pieces)  # the server side of a slow body, not a test wait
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def requests_to(self, path: str) -> list[float]:
        with self._lock:
            return [t for t, p in self.requests if p == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def rfc3339(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- base bodies ----------------------------------------------------------------------------------------------------
def openai_usage() -> dict[str, Any]:
    """Two hourly completions buckets, three groups (project, model, batch) each."""
    groups = [("proj_a", "gpt-4o", False), ("proj_a", "gpt-4o-mini", False), ("proj_b", "gpt-4o", True)]
    data = []
    for b, start in enumerate((NOW - 2 * HOUR, NOW - HOUR)):
        results = [
            {"object": "organization.usage.completions.result", "input_tokens": 1000 * (g + 1) + b,
             "output_tokens": 100 * (g + 1) + b, "input_cached_tokens": 10 * g, "num_model_requests": 3 + g,
             "input_audio_tokens": 0, "output_audio_tokens": 0,
             "project_id": project, "user_id": None, "api_key_id": None, "model": model, "batch": batch,
             "service_tier": None}
            for g, (project, model, batch) in enumerate(groups)
        ]
        data.append({"object": "bucket", "start_time": start, "end_time": start + HOUR, "results": results})
    return {"object": "page", "data": data, "has_more": False, "next_page": None}


def openai_costs() -> dict[str, Any]:
    """Two daily cost buckets, grouped by project and line item."""
    data = []
    for b, start in enumerate((NOW - NOW % DAY - DAY, NOW - NOW % DAY)):
        results = [
            {"object": "organization.costs.result", "amount": {"value": f"{1 + g}.{25 + b}", "currency": "usd"},
             "line_item": item, "project_id": project, "api_key_id": None, "quantity": None, "quantity_unit": None}
            for g, (project, item) in enumerate([("proj_a", "gpt-4o, input"), ("proj_b", "gpt-4o, output")])
        ]
        data.append({"object": "bucket", "start_time": start, "end_time": start + DAY, "results": results})
    return {"object": "page", "data": data, "has_more": False, "next_page": None}


AN_SPLIT = ("service_tier", "context_window", "inference_geo")


def anthropic_usage() -> dict[str, Any]:
    """Two hourly usage buckets; the default workspace (null workspace_id) is one of the groups."""
    groups = [("wrkspc_a", "claude-sonnet-4"), (None, "claude-sonnet-4"), ("wrkspc_a", "claude-haiku-4")]
    data = []
    for b, start in enumerate((NOW - 2 * HOUR, NOW - HOUR)):
        results = [
            {"uncached_input_tokens": 500 * (g + 1) + b, "cache_read_input_tokens": 50 * g,
             "cache_creation": {"ephemeral_5m_input_tokens": 5 * g, "ephemeral_1h_input_tokens": g},
             "output_tokens": 70 * (g + 1) + b, "server_tool_use": {"web_search_requests": g},
             "api_key_id": None, "workspace_id": workspace, "model": model, "service_tier": "standard",
             "context_window": "0-200k", "inference_geo": "global"}
            for g, (workspace, model) in enumerate(groups)
        ]
        data.append({"starting_at": rfc3339(start), "ending_at": rfc3339(start + HOUR), "results": results})
    return {"data": data, "has_more": False, "next_page": None}


def anthropic_costs() -> dict[str, Any]:
    data = []
    for b, start in enumerate((NOW - NOW % DAY - DAY, NOW - NOW % DAY)):
        results = [
            {"currency": "USD", "amount": f"{120 + 10 * g + b}.5", "workspace_id": workspace,
             "description": f"claude-sonnet-4 Usage - {label}", "cost_type": "tokens", "model": "claude-sonnet-4",
             "token_type": token_type, "service_tier": "standard", "context_window": "0-200k",
             "inference_geo": "global"}
            for g, (workspace, label, token_type) in enumerate([
                ("wrkspc_a", "Input Tokens", "uncached_input_tokens"), (None, "Output Tokens", "output_tokens")])
        ]
        data.append({"starting_at": rfc3339(start), "ending_at": rfc3339(start + DAY), "results": results})
    return {"data": data, "has_more": False, "next_page": None}


BASES: Mapping[str, Callable[[], dict[str, Any]]] = {
    OA_USAGE: openai_usage, OA_COSTS: openai_costs, AN_USAGE: anthropic_usage, AN_COSTS: anthropic_costs,
}
NAMES: Mapping[str, Any] = {
    "/v1/organization/projects": {"object": "list", "data": [{"id": "proj_a", "object": "organization.project",
                                                              "name": "A", "created_at": 1}],
                                  "first_id": "proj_a", "last_id": "proj_a", "has_more": False},
    "/v1/organizations/workspaces": {"data": [{"id": "wrkspc_a", "name": "A"}], "has_more": False,
                                     "first_id": "wrkspc_a", "last_id": "wrkspc_a"},
}


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- the oracle -----------------------------------------------------------------------------------------------------
def _parse_time(value: Any) -> Any:
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else value


def reference_rows(path: str, body: Any) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    """(bucket, group) -> (tokens, requests, cost nanos) of a valid body, read independently of the receiver."""
    rows: dict[tuple[Any, ...], tuple[int, int, int]] = {}
    for bucket in body["data"]:
        start = bucket.get("start_time", _parse_time(bucket.get("starting_at")))
        for row in bucket.get("results", bucket.get("result", [])):
            if path == OA_USAGE:
                key = (start, row["project_id"], row["model"], row["batch"])
                value = (row["input_tokens"] + row["output_tokens"], row["num_model_requests"], 0)
            elif path == OA_COSTS:
                key = (start, row["project_id"], row["line_item"])  # grouped by these two (not api_key_id)
                amount = row.get("amount")
                if amount is None:
                    continue  # the spec makes amount optional: a row without one carries no money (skipped)
                value = (0, 0, int(Decimal(str(amount["value"])) * 10**9))
            elif path == AN_USAGE:
                key = (start, row["workspace_id"], row["model"], *[row[f] for f in AN_SPLIT])
                cache = row["cache_creation"]
                tokens = (row["uncached_input_tokens"] + row["cache_read_input_tokens"] + row["output_tokens"]
                          + cache["ephemeral_5m_input_tokens"] + cache["ephemeral_1h_input_tokens"])
                value = (tokens, 0, 0)
            else:  # the cost line a row is (docs/providers/anthropic.md): its token type, else cost type, else text
                line = next((row[f] for f in ("token_type", "cost_type", "description") if row.get(f) is not None),
                            None)
                key = (start, row["workspace_id"], row.get("model"), line, *[row.get(f) for f in AN_SPLIT])
                value = (0, 0, int(Decimal(str(row["amount"])) * 10**7))  # cents -> nano-units
            rows[key] = value
    return rows


@dataclass
class Oracle:
    """The latest value of every (endpoint, bucket, group) key an accepted body carried."""

    state: dict[tuple[Any, ...], tuple[int, int, int]] = field(default_factory=dict)

    def accept(self, path: str, body: Any) -> None:
        for key, value in reference_rows(path, body).items():
            self.state[(path, *key)] = value

    def totals(self, instance: str) -> tuple[int, int, int]:
        paths = ENDPOINTS[instance]
        values = [v for k, v in self.state.items() if k[0] in paths]
        return (sum(v[0] for v in values), sum(v[1] for v in values), sum(v[2] for v in values))


# -- the world ------------------------------------------------------------------------------------------------------
class World:
    """A ``BodyServer`` serving the base bodies and a ``Receiver`` with both instances over one ledger."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.server = BodyServer()
        self.path = tmp_path / "ledger.db"
        self._readers: list[sqlite3.Connection] = []
        self.reset()
        common = {"endpoint": self.server.base_url, "timeout": "1s", "collection_interval": "2s",
                  "retry_initial_interval": "10ms", "max_retries": 1, **options}
        self.config = parse_config({"storage": {"path": str(self.path)}, "providers": {
            OPENAI: {"admin_key": "sk-admin-test-fuzz-0000", "usage_endpoints": ["completions"], **common},
            ANTHROPIC: {"admin_key": "sk-ant-admin-test-fuzz-0000", **common},
        }})
        self.receiver = Receiver(self.config, exporters=[], clock=lambda: NOW)

    def reset(self) -> None:
        """Serve every base body unchanged."""
        for path, make in BASES.items():
            self.server.answers[path] = Served(encode(make()))
        for path, body in NAMES.items():
            self.server.answers[path] = Served(encode(body))

    async def poll(self, instance: str) -> PollOutcome:
        return await self.receiver.poll(instance)

    def writes(self) -> Callable[[], int]:
        """A cheap write detector: ``PRAGMA data_version`` of a reader connection changes when any other
        connection commits to the ledger. Returns a function reading it (the connection stays open)."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        self._readers.append(db)
        return lambda: int(db.execute("PRAGMA data_version").fetchone()[0])

    def fingerprint(self, path: str | None = None) -> str:
        """A digest of the ledger: equal before and after a poll that wrote nothing.

        Without ``path``, every row of every table. With an endpoint ``path``, only what that endpoint's source
        writes (its instance's series of that source's metrics, their buckets, rollups and prices, and the
        source's cursor): usage and cost are separate sources, so a rejected cost response must write nothing
        of cost while the same poll's usage still lands (and the reverse).
        """
        digest = hashlib.sha256()
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
            if path is None:
                tables = [r[0] for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
                for table in tables:
                    for row in db.execute(f'SELECT * FROM "{table}" ORDER BY 1'):
                        digest.update(repr(row).encode())
            else:
                instance, cost = SOURCE_OF[path]
                marks = ",".join("?" * len(COST_METRICS))
                where = f"instance = ? AND metric {'IN' if cost else 'NOT IN'} ({marks})"
                ids = "SELECT id FROM series WHERE " + where
                args = (instance, *sorted(COST_METRICS))
                for row in db.execute(f"SELECT * FROM series WHERE {where} ORDER BY id", args):
                    digest.update(repr(row).encode())
                for table in ("buckets", "refined", "rollups", "pricing"):
                    for row in db.execute(f"SELECT * FROM {table} WHERE series_id IN ({ids}) ORDER BY 1, 2", args):
                        digest.update(repr(row).encode())
                # The value, not when it was last written: a poll whose usage failed re-writes the same cursor.
                for row in db.execute("SELECT value FROM cursors WHERE instance = ? AND source = ?",
                                      (instance, "cost" if cost else "poll")):
                    digest.update(repr(row).encode())
        db.close()
        return digest.hexdigest()

    def totals(self, instance: str) -> tuple[int, int, int]:
        """(tokens, requests, reported cost nanos) of one instance in the ledger, as latest values."""
        tokens = requests = cost = 0
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT metric, attrs, total - adjustments FROM series WHERE instance = ?",
                              (instance,)).fetchall()
        db.close()
        for metric, _attrs, value in rows:
            if metric == "llm.usage.tokens":
                tokens += value
            elif metric == "llm.usage.requests":
                requests += value
            elif metric == "llm.usage.cost":  # reported cost (estimated cost is llm.usage.cost.estimated)
                cost += value
        return tokens, requests, cost

    def integer_totals(self) -> bool:
        """True when no ledger column holds a REAL where an integer total belongs (no overflow into floats)."""
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for column in [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]:
                    if column in ("value", "total", "adjustments"):
                        query = f'SELECT count(*) FROM "{table}" WHERE typeof("{column}") = \'real\''
                        if db.execute(query).fetchone()[0]:
                            return False
        return True

    async def close(self) -> None:
        for db in self._readers:
            db.close()
        await self.receiver.aclose()
        self.server.close()


def mutated(path: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The base body of ``path`` after ``change`` edited it in place, encoded."""
    body = copy.deepcopy(BASES[path]())
    change(body)
    return encode(body)


def iter_rows(body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for bucket in body["data"]:
        yield from bucket["results"]
