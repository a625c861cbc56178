"""A real HTTP server on loopback for provider fakes: routing, auth, request log and fault injection.

Each provider's fake (``tests/fakes/openai.py``, ``anthropic.py``, ...) registers handlers that build responses
shaped exactly like that provider's documented API; this module owns what they share: a threaded
``http.server`` on 127.0.0.1, a log of every request (method, path, query, headers) for assertions, an API-key
check, and ``fail_next`` to make the next requests to a path fail with 429 + ``Retry-After``, 5xx, a
malformed body or a stalled response, so retry and error paths are exercised over a real socket.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeApi", "Fault", "Page", "Request", "Response", "paginate"]


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (query values in order, repeated keys kept)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    body: bytes = b""

    def params(self, key: str) -> list[str]:
        """Every value of query parameter ``key`` (``group_by=a&group_by=b`` → ``["a", "b"]``)."""
        return [v for k, v in self.query if k == key]

    def param(self, key: str, default: str | None = None) -> str | None:
        values = self.params(key)
        return values[0] if values else default


@dataclass
class Response:
    """What a handler answers: a status, a JSON-able body (or raw bytes) and extra headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


@dataclass
class Fault:
    """A failure to serve instead of the handler's answer, ``count`` times, for paths starting with ``prefix``."""

    prefix: str
    status: int
    count: int = 1
    retry_after: str | None = None
    body: bytes = b'{"error": {"message": "injected failure", "type": "server_error"}}'
    hang: threading.Event | None = None  # block until set (a stalled server: the client must time out)


Handler = Callable[[Request], Response]

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list endpoint: its items, whether more follow, and the opaque token of the next page."""

    items: list[T]
    has_more: bool
    next_page: str | None


def paginate(items: Sequence[T], token: str | None, size: int, *, prefix: str = "page_") -> Page[T]:
    """The page of ``items`` that ``token`` points at (None: the first), ``size`` items long.

    Tokens are opaque to clients (``prefix`` + base64 of an offset), as the providers' ``next_page`` cursors are;
    a token this fake did not issue raises ``ValueError`` (answer it with the API's 400).
    """
    offset = 0
    if token:
        try:
            offset = int(base64.b64decode(token.removeprefix(prefix), validate=True).decode())
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ValueError(f"invalid page token {token!r}") from None
    end = offset + size
    more = end < len(items)
    next_page = prefix + base64.b64encode(str(end).encode()).decode() if more else None
    return Page(list(items[offset:end]), more, next_page)


class FakeApi:
    """A loopback HTTP server; ``route(method, path, handler)`` and use ``base_url`` as the provider endpoint."""

    def __init__(self, *, auth_header: str | None = None, auth_value: str | None = None) -> None:
        self.auth_header = auth_header.lower() if auth_header else None
        self.auth_value = auth_value
        self.requests: list[Request] = []
        self._routes: dict[tuple[str, str], Handler] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        #: called with every handler's answer before it is sent (tests count pages, move a clock); in the
        #: server's thread, so the client sees the effect no sooner than the answer
        self.observers: list[Callable[[Request, Response], None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-api", daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method.upper(), path)] = handler

    def fail_next(
        self,
        prefix: str,
        status: int,
        *,
        count: int = 1,
        retry_after: str | None = None,
        body: bytes | None = None,
        hang: threading.Event | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose path starts with ``prefix`` with ``status`` instead."""
        fault = Fault(prefix, status, count, retry_after, hang=hang)
        if body is not None:
            fault.body = body
        with self._lock:
            self._faults.append(fault)

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()

    def close(self) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.hang is not None:
                    fault.hang.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeApi:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- serving ----------------------------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.prefix) and fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _dispatch(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
        if self.auth_header is not None and request.headers.get(self.auth_header) != self.auth_value:
            return Response(401, {"error": {"message": "invalid credentials", "type": "invalid_request_error"}})
        fault = self._take_fault(request.path)
        if fault is not None:
            if fault.hang is not None:
                fault.hang.wait(timeout=30)
            headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
            return Response(fault.status, headers=headers, raw=fault.body)
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return Response(404, {"error": {"message": f"no route {request.method} {request.path}"}})
        try:
            response = handler(request)
        except Exception as exc:  # a bug in a fake must show up in the test, as a 500 with the reason
            return Response(500, {"error": {"message": f"fake handler failed: {exc!r}"}})
        for observe in list(self.observers):
            observe(request, response)
        return response

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, each keep-alive answer waits ~40 ms for the
            # client's delayed ACK.
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    method=self.command,
                    path=url.path,
                    query=tuple(parse_qsl(url.query, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                response = api._dispatch(request)
                payload = response.raw if response.raw is not None else json.dumps(response.body).encode()
                try:
                    self.send_response(response.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for key, value in response.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        return _Handler
