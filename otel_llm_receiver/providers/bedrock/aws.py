"""AWS plumbing of the Bedrock provider: credentials, clients, threads, request counting, error translation.

boto3 is synchronous, so every call runs in a worker thread (``asyncio.to_thread``) and the event loop never
blocks; each call is bounded by botocore's ``connect_timeout`` / ``read_timeout`` (the instance's ``timeout``)
and its own retry policy (``standard`` mode: throttling and 5xx are retried with backoff). Every HTTP attempt,
retries included, is counted by operation through botocore's ``before-send`` event, because some of these
APIs bill per request (Cost Explorer: $0.01 a page).

botocore errors are translated into ``ProviderError`` here and nowhere else (``translate``): throttling is
``rate_limited``; missing, rejected or expired credentials and access denied are ``auth`` with one line that
names the IAM action to grant. boto3 is imported lazily, so that configs without Bedrock never need it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import ErrorType, ProviderError
from ...progress import report_request

log = logging.getLogger(__name__)

__all__ = ["SERVICES", "AwsApi", "translate"]

#: The services this provider calls, as ``endpoint_url`` keys: botocore service name -> IAM action prefix.
SERVICES: Mapping[str, str] = {"cloudwatch": "cloudwatch", "ce": "ce", "bedrock": "bedrock", "sts": "sts"}
#: Cost Explorer is a global service served from us-east-1 (docs.aws.amazon.com/cost-management, ce-api).
CE_REGION = "us-east-1"

_THROTTLING = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException", "LimitExceededException",
    "SlowDown", "ProvisionedThroughputExceededException",
})
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"})
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError",
                     "UnauthorizedException", "OptInRequired"})
_BAD_CREDENTIALS = frozenset({
    "UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "InvalidSignatureException", "IncompleteSignature", "MissingAuthenticationToken", "InvalidAccessKeyId",
})
_SERVICE_OF_OPERATION = {"AssumeRole": "sts", "GetCallerIdentity": "sts"}
_LOADER_LOCK = threading.Lock()
_LOADER: Any = None  # botocore's service-model loader, shared: each session would re-read the same JSON


def _botocore_session() -> Any:
    """A new botocore session (own credentials and config) that shares the read-only service models."""
    global _LOADER
    import botocore.loaders
    import botocore.session

    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        core = botocore.session.get_session()
        core.register_component("data_loader", _LOADER)
    return core


def iam_action(service: str, operation: str) -> str:
    """The IAM action an operation needs (``cloudwatch:GetMetricData``)."""
    service = _SERVICE_OF_OPERATION.get(operation, service)
    return f"{SERVICES.get(service, service)}:{operation}"


def translate(exc: BaseException, *, provider: str, service: str, operation: str, timeout: float) -> ProviderError:
    """One ``ProviderError`` (one clear line, the right ``error_type``) for anything a boto3 call raised."""
    from botocore import exceptions as bx
    from botocore.parsers import ResponseParserError

    def error(message: str, error_type: ErrorType) -> ProviderError:
        # No instance name in the message: the scheduler's log line starts with it already.
        return ProviderError(message, provider=provider, error_type=error_type)

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
        return error(
            f"no usable AWS credentials for {operation} ({type(exc).__name__}): checked the environment, the "
            "shared config/credentials files, web identity (IRSA), container and instance roles", "auth",
        )
    if isinstance(exc, bx.ProfileNotFound):
        return error(f"AWS profile not found: {exc}", "config")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(err.get("Code") or "")
        meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc.response, dict) else {}
        status = int(meta.get("HTTPStatusCode") or 0)
        op = getattr(exc, "operation_name", None) or operation
        action = iam_action(service, op)
        if code in _THROTTLING or status == 429:
            return error(f"{op} throttled by AWS ({code or status}) after botocore's retries", "rate_limited")
        if code in _EXPIRED:
            return error(f"AWS credentials expired ({code}) calling {op}: refresh the session or role", "auth")
        if code in _BAD_CREDENTIALS:
            return error(f"AWS rejected the credentials ({code}) calling {op}", "auth")
        if code in _DENIED or status == 403:
            return error(f"access denied ({code or status}): the IAM policy must allow {action}", "auth")
        if status >= 500:
            return error(f"{op} failed with a server error ({code or status})", "server_error")
        message = " ".join(str(err.get("Message") or "").split())[:200]
        return error(f"{op} rejected ({code or status}): {message}", "bad_response")
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return error(f"{operation} timed out after {timeout:g}s", "timeout")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError):
        return error(f"{operation}: could not reach the AWS endpoint ({type(exc).__name__})", "network")
    if isinstance(exc, ResponseParserError):
        return error(f"{operation}: the response could not be parsed ({type(exc).__name__})", "bad_response")
    if isinstance(exc, bx.ParamValidationError):
        return error(f"{operation}: invalid request parameters: {exc}", "bad_response")
    if isinstance(exc, bx.NoRegionError):
        return error("no AWS region: set regions in the provider config", "config")
    if isinstance(exc, bx.BotoCoreError):
        return error(f"{operation} failed: {type(exc).__name__}: {exc}", "server_error")
    if isinstance(exc, TimeoutError):
        return error(f"{operation} timed out after {timeout:g}s", "timeout")
    return error(f"{operation} failed: unexpected {type(exc).__name__}: {exc}", "bad_response")


class AwsApi:
    """Clients per (service, region) on one boto3 session, called from worker threads and counted.

    ``endpoints`` overrides the URL per service (``endpoint_url: {cloudwatch: ..., ce: ...}``); ``endpoint``
    (the common provider key) is the fallback for every service. ``role_arn`` makes every client use that
    role's temporary credentials, assumed with the default chain's and refreshed before they expire.
    """

    def __init__(
        self,
        *,
        provider: str,
        timeout: float,
        max_attempts: int,
        count: Callable[[str], None],
        endpoints: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        role_arn: str | None = None,
    ) -> None:
        self.provider = provider
        self.timeout = timeout
        self.max_attempts = max_attempts
        self._count = count
        self._endpoints = dict(endpoints or {})
        self._endpoint = endpoint
        self._role_arn = role_arn
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[tuple[str, str], Any] = {}

    def endpoint_for(self, service: str) -> str | None:
        return self._endpoints.get(service) or self._endpoint

    async def call(self, service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        """One API call (``operation`` as AWS names it, e.g. ``GetMetricData``) in a worker thread."""
        try:
            answer = await asyncio.to_thread(self._call, service, region, operation, params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate(
                exc, provider=self.provider, service=service, operation=operation, timeout=self.timeout
            ) from exc
        report_request()  # a backfill's progress counts answered calls (a no-op otherwise)
        return answer

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                close()

    # -- in the worker thread ------------------------------------------------------------------------------
    def _call(self, service: str, region: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        from botocore import xform_name

        client = self._client(service, region)
        result: dict[str, Any] = getattr(client, xform_name(operation))(**params)
        return result

    def _client(self, service: str, region: str) -> Any:
        with self._lock:
            client = self._clients.get((service, region))
            if client is None:
                client = self._clients[(service, region)] = self._new_client(self._get_session(), service, region)
            return client

    def _new_client(self, session: Any, service: str, region: str) -> Any:
        from botocore.config import Config

        config = Config(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            # total_max_attempts counts the first attempt too (botocore's max_attempts counts only retries)
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            user_agent_extra="otel-llm-receiver",
        )
        client = session.client(service, region_name=region, endpoint_url=self.endpoint_for(service), config=config)
        client.meta.events.register("before-send", self._before_send)
        return client

    def _before_send(self, event_name: str = "", **_: Any) -> None:
        """botocore emits ``before-send.<service>.<Operation>`` once per HTTP attempt: count it."""
        self._count(event_name.rsplit(".", 1)[-1])

    def _get_session(self) -> Any:
        if self._session is None:
            import boto3

            base = boto3.session.Session(botocore_session=_botocore_session())
            self._session = base if not self._role_arn else self._assumed(base, self._role_arn)
        return self._session

    def _assumed(self, base: Any, role_arn: str) -> Any:
        """A session whose credentials are ``role_arn``'s, assumed lazily and refreshed before they expire."""
        import boto3
        from botocore.credentials import DeferredRefreshableCredentials

        sts = self._new_client(base, "sts", base.region_name or CE_REGION)

        def refresh() -> dict[str, str]:
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="otel-llm-receiver")["Credentials"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        core = _botocore_session()
        # botocore has no public setter for a session's credentials: set the one attribute it reads them from.
        core._credentials = DeferredRefreshableCredentials(refresh_using=refresh, method="sts-assume-role")
        return boto3.session.Session(botocore_session=core)
