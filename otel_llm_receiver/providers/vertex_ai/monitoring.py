"""The Cloud Monitoring edge: the client, paging, retries, and google.api_core errors -> ``ProviderError``.

Everything that knows gRPC or ``google.api_core`` lives here, so the rest of the provider sees plain
``Series`` values or one classified ``ProviderError``. Each page is one counted request (``ListTimeSeries``),
retries included, and each call carries the configured ``timeout`` as its gRPC deadline. The library's own
retry is switched off (``retry=None``) so that every attempt is ours: counted, and backed off with the shared
``backoff_delay`` (a quota error is retried only while its wait fits; otherwise the poll ends ``rate_limited``).

A client is made per poll and closed after it: a grpc.aio channel belongs to the event loop it was made in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ...errors import ErrorType, ProviderError
from ...progress import report_request
from ...retry import backoff_delay
from ..options import HttpOptions
from .series import Point, Query, Series

log = logging.getLogger(__name__)

SCOPES = ("https://www.googleapis.com/auth/monitoring.read",)
DEFAULT_ENDPOINT = "monitoring.googleapis.com:443"
PERMISSION = "monitoring.timeSeries.list"
_MAX_BACKOFF = 30.0
_LOOPBACK_NAMES = frozenset({"localhost"})

T = TypeVar("T")


def plaintext_target(endpoint: str | None) -> str | None:
    """``host:port`` when ``endpoint`` asks for plaintext gRPC (``http://host:port``), else None.

    Plaintext is only allowed to a loopback address: nothing, not even an empty token, leaves the machine
    unencrypted. Used by tests (a fake MetricService) and by local emulators.
    """
    if not endpoint or not endpoint.startswith("http://"):
        return None
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    try:
        loopback = host in _LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or parts.port is None or parts.path not in ("", "/"):
        raise ValueError(f"a plaintext endpoint must be http://<loopback address>:<port>, not {endpoint!r}")
    return f"{host}:{parts.port}" if ":" not in host else f"[{host}]:{parts.port}"


def load_credentials(credentials_file: str | None, scopes: tuple[str, ...] = SCOPES) -> Any:
    """Credentials from ``credentials_file`` (a path, or the JSON itself via ``${file:...}``), else ADC.

    Only the credential types this receiver is meant to run with are accepted (service account, authorized
    user, workload identity federation), each through its own loader: a file of any other type is refused
    rather than handed to google-auth's generic loader.
    """
    import google.auth
    from google.auth import exceptions as auth_exceptions

    if not credentials_file:
        try:
            credentials, _ = google.auth.default(scopes=list(scopes))
        except auth_exceptions.DefaultCredentialsError as exc:
            raise ProviderError(f"no Application Default Credentials: {exc}", error_type="auth") from exc
        return credentials
    text = credentials_file
    if not credentials_file.lstrip().startswith("{"):
        try:
            with open(credentials_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ProviderError(f"credentials_file cannot be read: {exc.strerror}", error_type="auth") from exc
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProviderError(f"credentials_file is not valid JSON (line {exc.lineno})", error_type="config") from exc
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        return _credentials_of_type(kind, info, list(scopes))
    except (ValueError, KeyError, auth_exceptions.GoogleAuthError) as exc:
        raise ProviderError(f"credentials_file of type {kind!r} is unusable: {exc}", error_type="auth") from exc


def _credentials_of_type(kind: object, info: Any, scopes: list[str]) -> Any:
    if kind == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes)
    if kind == "authorized_user":
        from google.oauth2 import credentials as user_credentials

        return user_credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes)
    if kind == "external_account":
        from google.auth import aws, identity_pool

        source = info.get("credential_source") or {}
        module: Any = aws if str(source.get("environment_id", "")).startswith("aws") else identity_pool
        return module.Credentials.from_info(info, scopes=scopes)
    raise ValueError("supported types are service_account, authorized_user, external_account")


def make_client(endpoint: str | None, credentials: Callable[[], Any]) -> Any:
    """A ``MetricServiceAsyncClient`` for this poll: TLS with real credentials, or plaintext to loopback."""
    import grpc
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.monitoring_v3 import MetricServiceAsyncClient
    from google.cloud.monitoring_v3.services.metric_service.transports import (
        MetricServiceGrpcAsyncIOTransport,
    )

    target = plaintext_target(endpoint)
    if target is not None:
        # Anonymous credentials stop the transport from looking up ADC; a plaintext channel carries no token.
        transport = MetricServiceGrpcAsyncIOTransport(
            host=target, credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            channel=lambda *args, **kwargs: grpc.aio.insecure_channel(target),
        )
        return MetricServiceAsyncClient(transport=transport)
    return MetricServiceAsyncClient(
        credentials=credentials(),
        client_options=ClientOptions(api_endpoint=endpoint or DEFAULT_ENDPOINT),
    )


def classify(
    exc: BaseException, *, operation: str, project: str, permission: str = f"{PERMISSION} (roles/monitoring.viewer)"
) -> ProviderError:
    """One ``ProviderError`` for a google.api_core / google.auth failure (the single place they are mapped).

    gRPC errors arrive as the api_core classes of their status, which subclass the HTTP ones (PermissionDenied is
    a Forbidden, ResourceExhausted a TooManyRequests, ...), so the HTTP classes map REST clients (BigQuery) too.
    BigQuery answers quota errors with 403 and reason ``quotaExceeded`` / ``rateLimitExceeded``.
    """
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exceptions

    error_type: ErrorType
    where = f"{operation} projects/{project}"
    retry_after: float | None = None
    reasons = {str(e.get("reason", "")) for e in getattr(exc, "errors", None) or () if isinstance(e, dict)}
    if isinstance(exc, gexc.Forbidden) and reasons & {"quotaExceeded", "rateLimitExceeded"}:
        error_type = "rate_limited"
    elif isinstance(exc, gexc.Forbidden):
        return ProviderError(
            f"{where}: permission denied: the credentials need {permission} on project {project}",
            error_type="auth",
        )
    elif isinstance(exc, gexc.Unauthorized | auth_exceptions.RefreshError):
        return ProviderError(f"{where}: the Google credentials were rejected or expired", error_type="auth")
    elif isinstance(exc, gexc.TooManyRequests):
        error_type, retry_after = "rate_limited", _retry_delay(exc)
    elif isinstance(exc, gexc.GatewayTimeout | gexc.Cancelled):
        error_type = "timeout"
    elif isinstance(exc, auth_exceptions.TransportError):
        error_type = "network"  # the token endpoint could not be reached
    elif isinstance(exc, gexc.ServerError | gexc.Aborted):
        error_type = "server_error"
    elif isinstance(exc, gexc.BadRequest | gexc.NotFound | gexc.MethodNotAllowed):
        error_type = "config"  # a project id that does not exist, a filter or table the API refuses
    else:
        error_type = "bad_response"
    message = getattr(exc, "message", None) or str(exc)
    return ProviderError(f"{where}: {type(exc).__name__}: {message}", error_type=error_type,
                         retry_after=retry_after)


def _retry_delay(exc: Any) -> float | None:
    """The ``google.rpc.RetryInfo`` delay a quota error carried, if any."""
    for detail in getattr(exc, "details", None) or ():
        delay = getattr(detail, "retry_delay", None)
        if delay is not None and hasattr(delay, "seconds"):
            return float(delay.seconds) + float(delay.nanos) / 1e9
    return None


@dataclass
class MonitoringReader:
    """Reads aligned series for one poll; every attempt is counted in ``requests``."""

    client: Any
    timeout: float
    requests: Counter[str]
    max_retries: int = HttpOptions.max_retries  # the section's own, passed by the provider; defaults written once
    retry_initial_interval: float = HttpOptions.retry_initial_interval
    max_retry_wait: float = 60.0

    async def _call(self, operation: str, project: str, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            self.requests[operation] += 1
            try:
                answer = await call()
                report_request()  # a backfill's progress counts answered calls (a no-op otherwise)
                return answer
            except ProviderError:
                raise
            except Exception as exc:
                error = classify(exc, operation=operation, project=project)
            retryable = error.error_type in ("rate_limited", "timeout", "network", "server_error")
            if not retryable or attempt > self.max_retries:
                raise error
            delay = backoff_delay(attempt, base=self.retry_initial_interval, cap=_MAX_BACKOFF,
                                  retry_after=error.retry_after)
            if delay > self.max_retry_wait:
                raise error
            log.debug("%s: %s, retry %d in %.2fs", operation, error.error_type, attempt, delay)
            await asyncio.sleep(delay)

    async def series(self, project: str, query: Query, start: int, end: int, width: int) -> list[Series]:
        """Every aligned series of ``query`` over ``[start, end)``, following ``next_page_token`` to the end."""
        from google.cloud.monitoring_v3 import Aggregation, ListTimeSeriesRequest, TimeInterval
        from google.cloud.monitoring_v3.types import ListTimeSeriesResponse

        request = ListTimeSeriesRequest(
            name=f"projects/{project}",
            filter=query.filter,
            interval=TimeInterval(
                start_time=datetime.fromtimestamp(start, UTC), end_time=datetime.fromtimestamp(end, UTC)
            ),
            aggregation=Aggregation(
                alignment_period=timedelta(seconds=width),
                per_series_aligner=Aggregation.Aligner.ALIGN_SUM,
                cross_series_reducer=Aggregation.Reducer.REDUCE_SUM,
                group_by_fields=query.group_by_fields,
            ),
            view=ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        out: list[Series] = []
        while True:
            async def one_page() -> Any:
                pager = await self.client.list_time_series(request=request, retry=None, timeout=self.timeout)
                return ListTimeSeriesResponse.pb(await _first_page(pager))

            raw = await self._call("ListTimeSeries", project, one_page)
            out.extend(_series(ts, query) for ts in raw.time_series)
            if not raw.next_page_token:
                return out
            request.page_token = raw.next_page_token

    async def metric_types(self, project: str, prefix: str) -> list[str]:
        """The metric types under ``prefix`` that the project has descriptors for (every page)."""
        from google.cloud.monitoring_v3 import ListMetricDescriptorsRequest
        from google.cloud.monitoring_v3.types import ListMetricDescriptorsResponse

        request = ListMetricDescriptorsRequest(
            name=f"projects/{project}", filter=f'metric.type = starts_with("{prefix}")'
        )
        types: list[str] = []
        while True:
            async def one_page() -> Any:
                pager = await self.client.list_metric_descriptors(request=request, retry=None, timeout=self.timeout)
                return ListMetricDescriptorsResponse.pb(await _first_page(pager))

            raw = await self._call("ListMetricDescriptors", project, one_page)
            types.extend(d.type for d in raw.metric_descriptors)
            if not raw.next_page_token:
                return types
            request.page_token = raw.next_page_token


async def _first_page(pager: Any) -> Any:
    """The response a pager already holds, without letting it fetch more: we page ourselves, one counted
    request at a time (the pager would send the next requests with the first call's settings, uncounted)."""
    pages = pager.pages
    try:
        return await pages.__anext__()
    finally:
        await pages.aclose()


def _series(ts: Any, query: Query) -> Series:
    """Plain values from one raw ``TimeSeries``; a point that is not an integer count fails the poll."""
    labels = {f"resource.label.{k}": v for k, v in ts.resource.labels.items()}
    labels.update({f"metric.label.{k}": v for k, v in ts.metric.labels.items()})
    points = []
    for p in ts.points:
        kind = p.value.WhichOneof("value")
        if kind == "int64_value":
            value = int(p.value.int64_value)
        elif kind == "double_value" and float(p.value.double_value).is_integer():
            value = int(p.value.double_value)
        else:
            raise ProviderError(f"{query.metric_type}: a point holds {kind or 'no value'}, not an integer count")
        points.append(Point(start=int(p.interval.start_time.seconds), end=int(p.interval.end_time.seconds),
                            value=value))
    return Series(labels=labels, points=tuple(points))
