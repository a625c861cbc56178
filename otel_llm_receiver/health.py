"""``GET /live``, ``GET /ready`` and ``GET /health``: liveness kept apart from readiness.

``/live`` answers 200 while the process serves HTTP at all: a liveness probe restarts only a hung process, never
one that is waiting for a Collector or a provider to come back (a restart would fix neither). ``/ready`` and
``/health`` answer the same document: 200 while every instance has succeeded within 3 of its intervals, the
ledger is readable, no loop keeps failing and every exporter exported within ``health.export_failure_window``;
503 otherwise, so a readiness probe or the Collector's health aggregation can act on it. Served on a loopback
address by default; errors shown here were already redacted when logged and are redacted again on the way out.

Other read-only routes can be added (``routes``: path -> handler of the query parameters returning status,
content type and body chunks): the FOCUS export's ``/focus.csv`` and ``/focus.json`` (``focus.http``). Their
bodies are streamed and end when the connection closes (HTTP/1.0), so a long export is never held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from .config_storage import StorageConfig, redact_dsn
from .emitter import ExporterState
from .errors import LedgerError
from .ledger import open_ledger
from .logs import redact
from .selfhealth import SelfHealth

log = logging.getLogger(__name__)


def health_document(
    health: SelfHealth,
    exporters: Sequence[ExporterState],
    storage: StorageConfig | str | os.PathLike[str],
    *,
    export_failure_window: float,
    now: float,
    replica: Mapping[str, Any] | None = None,
    ledger_reading: Callable[[], Mapping[str, object]] | None = None,
) -> tuple[bool, dict[str, object]]:
    """(healthy, document) for ``GET /health`` and ``GET /ready``: every instance polling, the ledger
    readable, no loop failing, and every exporter with a successful export within ``export_failure_window``
    (counted from the start before the first one).

    ``replica`` (replicas on a shared PostgreSQL ledger: ``ReplicaCoordinator.state()``): the document adds
    ``replica`` (this replica's id), ``leases`` (the instances it holds, with epoch and expiry) and ``leader``
    (who leads, and whether it is this replica); only the instances it holds count for its health (the others
    are polled by other replicas and show ``"held": false``).

    ``ledger_reading`` (``HealthLedger.read``): the ledger's sizes through a kept connection; without it the
    ledger is opened for this one document (SQLite: a file open, cheap)."""
    if not isinstance(storage, StorageConfig):
        storage = StorageConfig(path=str(storage))
    leases: Mapping[str, Any] | None = None if replica is None else replica.get("leases", {})
    instances: dict[str, object] = {}
    healthy = True
    statuses = health.statuses()
    for st in statuses:
        held = leases is None or st.name in leases
        ok = health.healthy(st.name) if held else True
        healthy = healthy and ok
        instances[st.name] = {
            "healthy": ok,
            **({} if leases is None else {"held": held, "held_since_unix": st.tenure_unix if held else None}),
            "interval_s": st.interval,
            "polls": st.polls,
            "last_success_unix": st.last_success_unix,
            "last_error": st.last_error,
            "last_error_type": st.last_error_type,
            "last_error_unix": st.last_error_unix,
            "consecutive_failures": st.consecutive_failures,
            "data_lag_s": None if st.newest_bucket_end is None else max(0.0, now - st.newest_bucket_end),
            "failing_sources": {
                src: {"error_type": f.error_type, "error": f.error, "since_unix": f.since_unix,
                      "consecutive_failures": f.consecutive_failures}
                for src, f in sorted(st.failing_sources.items())},
            **({"source_lag_s": {src: max(0.0, now - end) for src, end in sorted(st.source_ends.items())}}
               if st.source_ends else {}),
        }
    ledger: dict[str, object] = (
        {"path": storage.path} if storage.backend == "sqlite"
        else {"backend": "postgresql", "dsn": redact_dsn(storage.dsn)})
    try:
        if ledger_reading is not None:
            ledger.update(ledger_reading(), ok=True)
        else:
            with open_ledger(storage, readonly=True, application_name="otel-llm-receiver health") as reader:
                ledger.update(reader.counts(), schema_version=reader.schema_version, ok=True)
    except (LedgerError, OSError) as exc:
        ledger.update(ok=False, error=str(exc))
        healthy = False
    exported_docs = []
    for s in exporters:
        since = s.last_success_unix if s.last_success_unix is not None else health.started_unix
        exported = now - since <= export_failure_window
        healthy = healthy and exported
        exported_docs.append(
            {"name": s.name, "endpoint": s.endpoint, "healthy": exported, "exports": s.exports,
             "failures": s.failures, "consecutive_failures": s.consecutive_failures,
             "last_success_unix": s.last_success_unix, "last_error": s.last_error})
    loops: dict[str, object] = {}
    for name, loop in sorted(health.loops().items()):
        healthy = healthy and not loop.consecutive_errors
        loops[name] = {"errors": loop.errors, "consecutive_errors": loop.consecutive_errors,
                       "last_error": loop.last_error, "last_error_unix": loop.last_error_unix}
    doc: dict[str, object] = {}
    if replica is not None:
        doc = {"replica": replica.get("replica"), "leases": dict(leases or {}), "leader": replica.get("leader"),
               "replicas": {k: v for k, v in replica.items() if k not in ("replica", "leases", "leader")}}
    return healthy, {
        **doc,
        "status": "ok" if healthy else "unhealthy",
        # Sources failing while their instance's others land (a cost API refused, usage kept): not unhealthy
        # on their own (only a failing usage source is), but listed so they are seen.
        "failing_sources": sorted(f"{st.name}:{src}" for st in statuses for src in st.failing_sources),
        "instances": instances,
        "ledger": ledger,
        "exporters": exported_docs,
        "export_failure_window_s": export_failure_window,
        "loops": loops,
    }


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class HealthServer:
    """A tiny HTTP server on its own thread; ``report()`` returns (healthy, document)."""

    def __init__(
        self,
        endpoint: str,
        report: Callable[[], tuple[bool, dict[str, Any]]],
        routes: Mapping[str, Callable[[Mapping[str, str]], tuple[int, str, Iterator[bytes]]]] | None = None,
    ) -> None:
        host, port = parse_endpoint(endpoint)
        outer = self
        extra = dict(routes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path in extra:
                    self._route(extra[path], dict(parse_qsl(query)))
                    return
                if path == "/live":
                    self._json(200, b'{"status": "alive"}')
                    return
                if path not in ("/health", "/ready", "/"):
                    served = ", ".join(["/live", "/ready", "/health", *sorted(extra)])
                    self.send_error(404, f"not here; served: {served}")
                    return
                try:
                    healthy, doc = outer.report()
                    body = redact(json.dumps(doc, indent=2, sort_keys=True)).encode()
                    status = 200 if healthy else 503
                except Exception as exc:  # a health check must answer, even about itself
                    body = json.dumps({"status": "error", "error": type(exc).__name__}).encode()
                    status = 503
                self._json(status, body)

            def _json(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(
                self, handler: Callable[[Mapping[str, str]], tuple[int, str, Iterator[bytes]]],
                query: Mapping[str, str],
            ) -> None:
                try:
                    status, content_type, body = handler(query)
                    first = next(body, b"")  # the first chunk: errors opening the ledger surface here, as a 503
                except Exception as exc:
                    log.warning("%s failed: %s", self.path.partition("?")[0], redact(str(exc)))
                    self.send_error(503, type(exc).__name__)
                    return
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.end_headers()
                try:
                    self.wfile.write(first)
                    for chunk in body:
                        self.wfile.write(chunk)
                except Exception as exc:  # the client went away, or the ledger failed mid-way: cut the body
                    log.warning("%s stopped: %s", self.path.partition("?")[0], redact(str(exc)))
                finally:
                    close = getattr(body, "close", None)
                    if close is not None:
                        close()  # a generator's own cleanup (its ledger connection) runs now

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health: " + format, *args)

        self.report = report
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
