"""Azure AD bearer tokens for Resource Manager calls: azure-identity credentials, cached, refreshed early.

ARM, Azure Monitor and Cost Management all take one token for the management scope
(``https://management.azure.com/.default`` in the public cloud). azure-identity already caches tokens; we keep
the current one too, so that a poll of many accounts does not cross into a worker thread for every request
(the credentials are synchronous), and take a new one ``REFRESH_MARGIN`` before it expires, so no request leaves
with a token that dies in flight.

azure-identity is an optional dependency (``pip install 'otel-llm-receiver[azure]'``): it is imported here
only when a credential is built, so configs without Azure never need it. Its errors are translated into
``ProviderError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ...errors import ProviderError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

#: Take a new token this long before the current one expires.
REFRESH_MARGIN = 300.0
_MESSAGE_LIMIT = 300


def token_scope(management_endpoint: str) -> str:
    """The AAD scope of a Resource Manager endpoint (``https://management.azure.com`` -> ``.../.default``)."""
    return management_endpoint.rstrip("/") + "/.default"


def build_credential(name: str, options: Mapping[str, Any]) -> TokenCredential:
    """``ClientSecretCredential`` when ``tenant_id``/``client_id``/``client_secret`` are set, else the default chain.

    ``DefaultAzureCredential`` tries environment variables, workload identity, managed identity and the Azure
    CLI in turn; ``authority_host`` points either at a sovereign cloud's Entra ID (it must be https: the
    library refuses anything else, and so do we, as a config error).
    """
    try:
        from azure import identity
    except ImportError:
        raise ProviderError(
            f"{name}: azure_openai needs azure-identity: pip install 'otel-llm-receiver[azure]'",
            provider=name, error_type="config",
        ) from None
    explicit = {k: options.get(k) for k in ("tenant_id", "client_id", "client_secret")}
    given = [k for k, v in explicit.items() if v]
    kwargs: dict[str, Any] = {}
    if options.get("authority_host"):
        kwargs["authority"] = str(options["authority_host"])
    try:
        if len(given) == len(explicit):
            return identity.ClientSecretCredential(
                str(explicit["tenant_id"]), str(explicit["client_id"]), str(explicit["client_secret"]), **kwargs
            )
        if given:
            missing = ", ".join(k for k in explicit if k not in given)
            raise ProviderError(
                f"{name}: {', '.join(given)} set without {missing}: set all three for a service principal, "
                "or none for DefaultAzureCredential", provider=name, error_type="config",
            )
        return identity.DefaultAzureCredential(**kwargs)
    except ValueError as exc:  # e.g. "'http://...' is an invalid authority. The value must be ... https"
        raise ProviderError(
            f"{name}: authority_host: {_first_line(exc)}", provider=name, error_type="config"
        ) from None


class BearerAuth(httpx.Auth):
    """``httpx.Auth`` that sets ``Authorization: Bearer`` from a ``TokenCredential``, refreshing before expiry.

    A 401 with a token we had cached gets one retry with a fresh token (revoked or rotated early).
    """

    def __init__(
        self,
        credential: TokenCredential,
        scope: str,
        *,
        provider: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credential = credential
        self.scope = scope
        self.provider = provider
        self.clock = clock
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        #: how many tokens were taken from the credential (tests check the cache through it)
        self.tokens_fetched = 0

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token, fresh = await self._current()
        request.headers["authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and not fresh:
            self._token = None
            token, _ = await self._current()
            request.headers["authorization"] = f"Bearer {token}"
            yield request

    def sync_auth_flow(self, request: httpx.Request) -> Any:
        raise RuntimeError("BearerAuth is for the async client only")

    async def _current(self) -> tuple[str, bool]:
        """(token, taken just now)."""
        async with self._lock:
            cached = self._token
            if cached is not None and cached.expires_on - self.clock() > REFRESH_MARGIN:
                return cached.token, False
            try:
                token = await asyncio.to_thread(self.credential.get_token, self.scope)
            except Exception as exc:
                raise _credential_error(exc, self.provider, self.scope) from None
            self.tokens_fetched += 1
            self._token = token
            return token.token, True


def _credential_error(exc: Exception, provider: str, scope: str) -> ProviderError:
    """azure-identity's failures as one ``auth`` line (``ClientAuthenticationError`` and kin)."""
    kind = type(exc).__name__
    return ProviderError(
        f"no Azure AD token for {scope} ({kind}): {_first_line(exc)}", provider=provider, error_type="auth"
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:_MESSAGE_LIMIT]


__all__ = ["REFRESH_MARGIN", "BearerAuth", "build_credential", "token_scope"]
