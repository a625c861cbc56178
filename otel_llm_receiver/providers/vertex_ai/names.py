"""Project display names from Resource Manager (``GET /v3/projects/{id}``), cached, never blocking usage.

``llm.tenancy.name`` is a convenience: a lookup that fails (no ``resourcemanager.projects.get``, a network
error) is logged once per project and tried again after an hour, and the poll goes on without the name.
A name found is kept for a day. Each request is counted as ``projects.get``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import monitoring

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://cloudresourcemanager.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform.read-only",)
NAME_TTL = 24 * 3600.0
RETRY_AFTER_FAILURE = 3600.0


class ProjectNames:
    """A TTL cache of project id -> display name, filled through Resource Manager."""

    def __init__(self, *, endpoint: str | None, credentials: Callable[[], Any], timeout: float,
                 requests: Counter[str], instance: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.plaintext = monitoring.plaintext_target(endpoint) is not None
        self.credentials = credentials
        self.timeout = timeout
        self.requests = requests
        self.instance = instance
        self.clock = clock
        self._names: dict[str, tuple[float, str | None]] = {}  # project -> (valid until, name or None)
        self._session: Any = None

    async def resolve(self, projects: tuple[str, ...]) -> dict[tuple[str, str], str]:
        """Names of ``projects`` (those known), looking up the ones whose cache entry expired."""
        now = self.clock()
        for project in projects:
            entry = self._names.get(project)
            if entry is None or entry[0] <= now:
                name = await asyncio.to_thread(self._lookup, project)
                ttl = NAME_TTL if name is not None else RETRY_AFTER_FAILURE
                self._names[project] = (now + ttl, name)
        return {("tenancy", p): name for p in projects if (name := self._names[p][1])}

    def _lookup(self, project: str) -> str | None:
        self.requests["projects.get"] += 1
        try:
            session = self._get_session()
            response = session.get(f"{self.endpoint}/v3/projects/{project}", timeout=self.timeout)
            if response.status_code != 200:
                reason = f"HTTP {response.status_code}"
                if response.status_code == 403:
                    reason += " (needs resourcemanager.projects.get, e.g. roles/browser)"
                raise LookupError(reason)
            name = response.json().get("displayName")
            return str(name) if name else None
        except Exception as exc:  # names are optional: any failure only costs the name
            log.warning("%s: no display name for project %s: %s", self.instance, project, exc)
            return None

    def _get_session(self) -> Any:
        if self._session is None:
            from google.auth.credentials import AnonymousCredentials
            from google.auth.transport.requests import AuthorizedSession

            credentials = AnonymousCredentials() if self.plaintext else self.credentials()  # type: ignore[no-untyped-call]
            self._session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
