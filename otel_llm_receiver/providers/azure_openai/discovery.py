"""Which Azure OpenAI / AI Services accounts to poll, and what each one's deployments serve.

Accounts come from the Resource Manager list call of each configured subscription (kinds ``OpenAI`` and
``AIServices``, the AI Foundry resource), or from an explicit ``resources:`` list; deployments (name -> model
and version) from each account's deployments list. Both are cached for ``discovery_interval``, so a new
deployment shows up within that interval without a restart. A failed refresh keeps serving the last good list
(one warning); only a first discovery that fails fails the poll, because without accounts there is nothing
to poll. A failed deployments lookup never blocks usage: the metrics' own ``ModelName`` / ``ModelVersion``
dimensions still name the model where Azure publishes them.

Resource ids are case-insensitive in Azure and come back in different cases from different APIs (Cost
Management lower-cases them, and has been seen to drop the leading ``/``): every comparison here uses
``Account.key``, the id in ``normalize_resource_id`` form.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...errors import ProviderError
from ..http import ApiClient

log = logging.getLogger(__name__)

ARM_API_VERSION = "2023-05-01"
#: Account kinds that serve Azure OpenAI models (AIServices: the multi-service AI Foundry resource).
ACCOUNT_KINDS = frozenset({"openai", "aiservices"})

_ACCOUNT_ID = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.CognitiveServices/accounts/(?P<name>[^/]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Account:
    """One Cognitive Services account: its full ARM id (as Azure spelled it) and the parts we attribute by."""

    id: str
    name: str
    subscription: str
    resource_group: str

    @property
    def key(self) -> str:
        """The id normalised (``normalize_resource_id``): how every Azure API's spelling of it is matched."""
        return normalize_resource_id(self.id)

    @property
    def tenancy_id(self) -> str:
        """``llm.tenancy.id``: the short form ``<subscription>/<resource group>/<account>``, lower-cased."""
        return f"{self.subscription}/{self.resource_group}/{self.name}".lower()


@dataclass(frozen=True, slots=True)
class Deployment:
    """What one deployment serves (``properties.model``)."""

    name: str
    model: str
    version: str


def normalize_resource_id(resource_id: str) -> str:
    """One spelling of an ARM resource id: lower-cased (ids are case-insensitive), one leading ``/``, no
    trailing one. Cost Management answers ``subscriptions/...`` as well as ``/subscriptions/...``."""
    return "/" + resource_id.strip().strip("/").lower()


def account_of(resource_id: str) -> Account | None:
    """An ``Account`` from a full ARM id; None when it is not a Cognitive Services account id."""
    match = _ACCOUNT_ID.fullmatch("/" + resource_id.strip().strip("/"))
    if match is None:
        return None
    return Account(match.group(0), match["name"], match["sub"], match["rg"])


def not_an_account(resource_id: str) -> str:
    """Why ``resource_id`` is refused, with the form it should have."""
    return (f"{resource_id!r} is not an account id (/subscriptions/SUB/resourceGroups/RG/providers/"
            "Microsoft.CognitiveServices/accounts/NAME)")


def parse_account_id(resource_id: str) -> Account:
    """An ``Account`` from a configured ARM id (``resources``); ValueError (a config problem, not a bad response)
    when it is not an account id."""
    account = account_of(resource_id)
    if account is None:
        raise ValueError(not_an_account(resource_id))
    return account


def model_label(name: str, version: str) -> str:
    """``gen_ai.request.model`` for a deployment's model: ``name-version`` (``gpt-4o-2024-11-20``), or the name."""
    return f"{name}-{version}" if version else name


class Discovery:
    """Accounts and deployments, cached for ``ttl`` seconds."""

    def __init__(
        self,
        client: ApiClient,
        *,
        provider: str,
        subscriptions: Sequence[str],
        resources: Sequence[str],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.provider = provider
        self.subscriptions = tuple(subscriptions)
        self.explicit = tuple(parse_account_id(r) for r in resources)
        self.ttl = ttl
        self.clock = clock
        self._accounts: tuple[list[Account], float] | None = None
        self._deployments: dict[str, tuple[dict[str, Deployment], float]] = {}

    async def accounts(self) -> list[Account]:
        """Every account to poll: the explicit ones, then those found in the subscriptions (deduplicated)."""
        now = self.clock()
        if self._accounts is not None and now - self._accounts[1] < self.ttl:
            return self._accounts[0]
        try:
            found = list(self.explicit)
            for sub in self.subscriptions:
                found += await self._list_accounts(sub)
        except ProviderError as exc:
            if self._accounts is None:
                raise
            log.warning("%s: account list refresh failed, using the last one: %s", self.provider, exc)
            self._accounts = (self._accounts[0], now)
            return self._accounts[0]
        unique = list({a.key: a for a in reversed(found)}.values())[::-1]
        self._accounts = (unique, now)
        return unique

    async def deployments(self, account: Account) -> dict[str, Deployment]:
        """The account's deployments by name; the last good list (or none) when the lookup fails."""
        now = self.clock()
        cached = self._deployments.get(account.key)
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        try:
            found = await self._list_deployments(account)
        except ProviderError as exc:
            log.warning("%s: deployments of %s not listed (models come from metric dimensions only): %s",
                        self.provider, account.name, exc)
            previous = cached[0] if cached is not None else {}
            self._deployments[account.key] = (previous, now)
            return previous
        self._deployments[account.key] = (found, now)
        return found

    async def _list_accounts(self, subscription: str) -> list[Account]:
        path = f"/subscriptions/{subscription}/providers/Microsoft.CognitiveServices/accounts"
        items = await self._list(path, "arm.accounts.list", role=f"Reader on subscription {subscription}")
        accounts = []
        for item in items:
            kind = item.get("kind")
            if not isinstance(kind, str) or kind.lower() not in ACCOUNT_KINDS:
                continue
            resource_id = item.get("id")
            if not isinstance(resource_id, str):
                raise self._bad(f"{path}: value[].id is not a string")
            account = account_of(resource_id)
            if account is None:
                raise self._bad(f"{path}: value[].id: {not_an_account(resource_id)}")
            accounts.append(account)
        return accounts

    async def _list_deployments(self, account: Account) -> dict[str, Deployment]:
        path = f"{account.id}/deployments"
        items = await self._list(path, "arm.deployments.list", role=f"Reader on account {account.name}")
        found: dict[str, Deployment] = {}
        for item in items:
            name = item.get("name")
            props = item.get("properties")
            model = props.get("model") if isinstance(props, dict) else None
            if not isinstance(name, str) or not isinstance(model, dict) or not isinstance(model.get("name"), str):
                raise self._bad(f"{path}: value[] needs name and properties.model.name")
            version = model.get("version")
            found[name] = Deployment(name, model["name"], version if isinstance(version, str) else "")
        return found

    async def _list(self, path: str, operation: str, *, role: str) -> list[dict[str, Any]]:
        """Every item of an ARM list, following ``nextLink`` (same host only: it would carry our token)."""
        items: list[dict[str, Any]] = []
        next_path: str | None = path
        params: dict[str, str] | None = {"api-version": ARM_API_VERSION}
        while next_path is not None:
            try:
                body = await self.client.get_json(next_path, params, operation=operation)
            except ProviderError as exc:
                if exc.error_type == "auth":
                    raise ProviderError(f"{exc} (needs {role})", provider=self.provider,
                                        error_type="auth") from None
                raise
            if not isinstance(body, dict) or not isinstance(body.get("value"), list):
                raise self._bad(f"{path}: the answer has no value[] list")
            if not all(isinstance(i, dict) for i in body["value"]):
                raise self._bad(f"{path}: value[] holds a non-object")
            items += body["value"]
            next_path = same_origin_path(body.get("nextLink"), self.client, self.provider)
            params = None  # the nextLink carries its own query
        return items

    def _bad(self, message: str) -> ProviderError:
        return ProviderError(message, provider=self.provider, error_type="bad_response")


def same_origin_path(link: object, client: ApiClient, provider: str) -> str | None:
    """A ``nextLink`` as a path + query on our endpoint; None when there is none.

    A link to another host is refused (``bad_response``): following it would send our bearer token there.
    """
    if link is None or link == "":
        return None
    if not isinstance(link, str):
        raise ProviderError(f"nextLink is not a string: {link!r}", provider=provider, error_type="bad_response")
    parts = urlsplit(link)
    base = urlsplit(client.base_url)
    if parts.scheme and (parts.scheme, parts.netloc.lower()) != (base.scheme, base.netloc.lower()):
        raise ProviderError(
            f"nextLink points at {parts.scheme}://{parts.netloc}, not {base.scheme}://{base.netloc}",
            provider=provider, error_type="bad_response",
        )
    return parts.path + (f"?{parts.query}" if parts.query else "")


__all__ = [
    "ACCOUNT_KINDS", "ARM_API_VERSION", "Account", "Deployment", "Discovery", "account_of", "model_label",
    "normalize_resource_id", "not_an_account", "parse_account_id", "same_origin_path",
]
