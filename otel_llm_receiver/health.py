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
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from .logs import redact

log = logging.getLogger(__name__)


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
