"""The JSON-over-HTTPS client every REST provider shares: retries, ``Retry-After``, and error classification.

Providers differ in paths, headers and paging; they do not differ in what a 429 or a 503 means. Keeping that
here gives every provider the same behaviour (and the same tests): retryable statuses (``retry.RETRYABLE_STATUSES``,
including Anthropic's 529) and transport errors are retried with jittered exponential backoff, never sooner than
the API's ``Retry-After``; a ``Retry-After`` longer than ``max_retry_wait`` ends the poll at once as
``rate_limited`` so that the scheduler, not a sleeping request, waits it out. Every other failure becomes one
``ProviderError`` whose message names the method, path and status, never a header (keys live there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, cast

import httpx

from .. import __version__
from ..config_parse import Option
from ..errors import ErrorType, ProviderError
from ..progress import report_request
from ..retry import POLL_DEADLINE, RETRYABLE_STATUSES, backoff_delay, parse_retry_after
from .options import MAX_RESPONSE_BYTES, HttpOptions

log = logging.getLogger(__name__)

#: Options every HTTP provider accepts besides the common keys (``HttpOptions``, merged into its ``OPTIONS``).
HTTP_OPTIONS: Mapping[str, Option] = HttpOptions.schema()
_DEFAULTS = HttpOptions()

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None

_MAX_BACKOFF = 30.0
_BODY_EXCERPT = 200


class ApiClient:
    """An ``httpx.AsyncClient`` for one provider instance that returns parsed JSON or raises ``ProviderError``."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float,
        max_retries: int = _DEFAULTS.max_retries,
        retry_initial_interval: float = _DEFAULTS.retry_initial_interval,
        max_retry_wait: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        requests: Counter[str] | None = None,
        auth: httpx.Auth | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        #: every attempt is counted here by operation (pass ``Provider.api_requests``)
        self.requests: Counter[str] = requests if requests is not None else Counter()
        self.max_retries = max(0, max_retries)
        self.retry_initial_interval = retry_initial_interval
        self.max_retry_wait = max_retry_wait
        self.max_response_bytes = max(1, max_response_bytes)
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"user-agent": f"otel-llm-receiver/{__version__}", "accept": "application/json", **headers},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            auth=auth,  # per-request credentials that expire (Azure AD bearer tokens); None: headers only
        )

    async def get_json(
        self, path: str, params: Params = None, *, operation: str | None = None, decimals: bool = False
    ) -> Any:
        """GET ``path`` and return its decoded JSON body, retrying what is worth retrying.

        ``decimals=True`` decodes JSON numbers with a fraction or exponent as exact ``Decimal`` (money must
        never pass through a binary float); integers stay ``int`` either way.
        """
        return await self.request_json("GET", path, params=params, operation=operation, decimals=decimals)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json_body: Any = None,
        operation: str | None = None,
        decimals: bool = False,
    ) -> Any:
        """One API call: ``method path`` with ``params`` (and a JSON body), decoded, or one ``ProviderError``.

        ``operation`` names the call in ``llm.receiver.provider_requests``; it defaults to ``path``, so pass a
        fixed name when the path holds an id.
        """
        attempt = 0
        while True:
            attempt += 1
            self.requests[operation or path] += 1
            try:
                response = await self._send(method, path, params, json_body)
            except httpx.TimeoutException as exc:
                error = self._error(f"{method} {path}: timed out ({type(exc).__name__})", "timeout")
            except (httpx.NetworkError, httpx.ProxyError) as exc:
                # DNS failures, refused or reset connections: nothing the provider said; its own error.type, so
                # "the provider is down" and "we cannot reach it" (a firewall, a proxy, DNS) are told apart.
                error = self._error(f"{method} {path}: cannot reach the API: {type(exc).__name__}: {exc}", "network")
            except httpx.TransportError as exc:
                error = self._error(f"{method} {path}: {type(exc).__name__}: {exc}", "server_error")
            else:
                if response.status_code < 300:
                    decoded = self._decode(method, path, response, decimals)
                    report_request()  # a backfill's progress counts answered calls (a no-op otherwise)
                    return decoded
                error = self._status_error(method, path, response)
                if response.status_code not in RETRYABLE_STATUSES:
                    raise error
            if attempt > self.max_retries:
                raise error
            if error.retry_after is not None and error.retry_after > self.max_retry_wait:
                raise error
            delay = backoff_delay(
                attempt, base=self.retry_initial_interval, cap=_MAX_BACKOFF, retry_after=error.retry_after
            )
            deadline = POLL_DEADLINE.get()
            if deadline is not None and time.monotonic() + delay >= deadline:
                # Waiting would outlast the poll: end it now with what the API said (a 429 stays rate_limited
                # and carries its Retry-After), so the scheduler waits it out instead of timing the poll out.
                raise error
            log.debug("%s: %s; retry %d/%d in %.2fs", self.provider, error, attempt, self.max_retries, delay)
            await asyncio.sleep(delay)

    async def _send(self, method: str, path: str, params: Params, json_body: Any) -> httpx.Response:
        """Send one request and read its body, at most ``max_response_bytes`` of it (streamed, never more).

        A body past the limit fails the poll (``bad_response``) after reading only the limit, so one huge page
        costs a bounded amount of memory instead of the whole body plus its decoded JSON.
        """
        limit = self.max_response_bytes
        # Params is wider than httpx's annotation (any Sequence of pairs); httpx accepts it at run time.
        request = self._client.build_request(method, path, params=cast(Any, params), json=json_body)
        response = await self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise self._too_large(method, path, f"Content-Length {declared}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise self._too_large(method, path, f"more than {limit} bytes")
                chunks.append(chunk)
        finally:
            await response.aclose()
        response._content = b"".join(chunks)  # what Response.read() would have set: .content and .json() work
        return response

    def _too_large(self, method: str, path: str, size: str) -> ProviderError:
        return self._error(
            f"{method} {path}: response body too large ({size}; max_response_bytes is {self.max_response_bytes})",
            "bad_response",
        )

    def _error(self, message: str, error_type: ErrorType, retry_after: float | None = None) -> ProviderError:
        return ProviderError(message, provider=self.provider, error_type=error_type, retry_after=retry_after)

    def _status_error(self, method: str, path: str, response: httpx.Response) -> ProviderError:
        status = response.status_code
        retry_after = _retry_after(response.headers)
        error_type: ErrorType
        if status in (401, 403):
            error_type = "auth"
        elif status == 429:
            error_type = "rate_limited"
        elif status in RETRYABLE_STATUSES:
            error_type = "timeout" if status in (408, 504) else "server_error"
        elif 400 <= status < 500:
            error_type = "config"
        else:
            error_type = "bad_response"
        detail = _error_detail(response)
        message = f"{method} {path}: HTTP {status}" + (f": {detail}" if detail else "")
        return self._error(message, error_type, retry_after)

    def _decode(self, method: str, path: str, response: httpx.Response, decimals: bool = False) -> Any:
        if response.status_code == 204:  # No Content: "no data" (Azure Cost Management), not a bad body
            return None
        try:
            # Strict UTF-8 first (RFC 8259): json.loads(bytes) would let CESU-8 surrogates through as text.
            text = response.content.decode("utf-8")
            return json.loads(text, parse_float=Decimal) if decimals else json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self._error(
                f"{method} {path}: HTTP {response.status_code} body is not JSON ({exc.__class__.__name__}): "
                f"{response.text[:_BODY_EXCERPT]!r}",
                "bad_response",
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _retry_after(headers: httpx.Headers) -> float | None:
    """The longest wait the API asked for: ``Retry-After`` and Azure's ``x-ms-ratelimit-*-retry-after``.

    Azure Cost Management answers 429 with ``x-ms-ratelimit-microsoft.costmanagement-{qpu,entity,tenant}-
    retry-after`` (seconds) and may omit ``Retry-After``; waiting less than any of them only earns another 429.
    """
    waits = [parse_retry_after(headers.get("retry-after"))]
    waits += [
        parse_retry_after(value)
        for key, value in headers.items()
        if key.startswith("x-ms-ratelimit-") and key.endswith("-retry-after")
    ]
    known = [w for w in waits if w is not None]
    return max(known) if known else None


def _error_detail(response: httpx.Response) -> str:
    """The API's own error message, when the body carries one (``{"error": {"message": ...}}`` and kin)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:_BODY_EXCERPT].strip()
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            for key in ("message", "detail", "code", "type"):
                if isinstance(err.get(key), str):
                    return str(err[key])[:_BODY_EXCERPT]
        elif isinstance(err, str):
            return err[:_BODY_EXCERPT]
    return ""


def client_from_config(
    *,
    provider: str,
    base_url: str,
    headers: Mapping[str, str],
    timeout: float | None = None,
    options: HttpOptions | Mapping[str, Any],
    requests: Counter[str] | None = None,
    auth: httpx.Auth | None = None,
) -> ApiClient:
    """An ``ApiClient`` with the retry settings of a provider section (typed ``HttpOptions``, or the parsed
    options of a provider not yet typed); ``timeout`` defaults to the options' own."""
    if not isinstance(options, HttpOptions):
        values = {key: options[key] for key in HTTP_OPTIONS if options.get(key) is not None}
        options = HttpOptions(**values, timeout=timeout if timeout is not None else _DEFAULTS.timeout)
    return ApiClient(
        provider=provider,
        base_url=base_url,
        headers=headers,
        timeout=options.timeout if timeout is None else timeout,
        requests=requests,
        auth=auth,
        max_retries=options.max_retries,
        retry_initial_interval=options.retry_initial_interval,
        max_response_bytes=options.max_response_bytes,
    )


__all__ = ["HTTP_OPTIONS", "MAX_RESPONSE_BYTES", "ApiClient", "HttpOptions", "client_from_config"]
