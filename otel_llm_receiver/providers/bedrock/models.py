"""Bedrock model ids: the model, the inference profile it went through, and application profiles' owners.

CloudWatch's ``ModelId`` dimension holds whatever the caller invoked: a foundation model id
(``anthropic.claude-3-haiku-20240307-v1:0``), a system-defined cross-region inference profile (the model id
with a geography prefix, ``us.anthropic.claude-...``), an ARN of either, or an application inference profile
(its ARN or id), which is how AWS users tag traffic by team or app. ``parse_model_id`` splits the prefix off
so that ``us.anthropic.claude-...`` and ``anthropic.claude-...`` are one model (``gen_ai.request.model``) and
the prefix goes to ``llm.inference_profile``. Application profiles are resolved through
``ListInferenceProfiles`` (``ProfileCache``) to their model, name and tags.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import ProviderError

log = logging.getLogger(__name__)

__all__ = ["GEO_PREFIXES", "ModelRef", "Profile", "ProfileCache", "parse_model_id"]

#: Geography prefixes of system-defined cross-region inference profiles (us., eu., apac., global., ...).
GEO_PREFIXES = frozenset({"us", "eu", "apac", "global", "us-gov", "jp", "au", "ca"})
APPLICATION = "application"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a ``ModelId`` value says: the model, and the profile (geography or ``application``) if any."""

    model: str
    profile: str | None = None
    application_profile: str | None = None  # the application profile's id, to resolve


def parse_model_id(raw: str) -> ModelRef:
    """Split a ``ModelId`` dimension value into model and inference profile (see the module docstring)."""
    if raw.startswith("arn:"):
        parts = raw.split(":", 5)
        resource = parts[5] if len(parts) == 6 else ""
        kind, _, ident = resource.partition("/")
        if kind == "application-inference-profile" and ident:
            return ModelRef(ident, APPLICATION, ident)
        if kind in ("foundation-model", "inference-profile") and ident:
            return parse_model_id(ident)
        return ModelRef(resource or raw)  # provisioned, custom or imported model: its resource id
    head, dot, rest = raw.partition(".")
    if dot and head in GEO_PREFIXES and "." in rest:
        return ModelRef(rest, head)
    return ModelRef(raw)


def looks_like_application_profile(raw: str) -> bool:
    """An application profile's ARN, or a bare id (no provider prefix, so no dot) that may be one."""
    return ":application-inference-profile/" in raw or ("." not in raw and not raw.startswith("arn:"))


@dataclass(frozen=True, slots=True)
class Profile:
    """An application inference profile: who it belongs to (name, tags) and the model behind it."""

    id: str
    arn: str
    name: str
    model: str
    tags: Mapping[str, str] = field(default_factory=dict)


Call = Callable[..., Awaitable[dict[str, Any]]]


def _profile(summary: Any) -> Profile:
    """One ``InferenceProfileSummary``; a missing required field rejects the whole listing."""
    try:
        ident, arn, name = str(summary["inferenceProfileId"]), str(summary["inferenceProfileArn"]), \
            str(summary["inferenceProfileName"])
        models = summary["models"]
        model_arn = str(models[0]["modelArn"]) if models else ""
    except (KeyError, TypeError, IndexError) as exc:
        raise ProviderError(f"ListInferenceProfiles: a summary lacks {exc}", error_type="bad_response") from exc
    model = parse_model_id(model_arn).model if model_arn else ident
    return Profile(ident, arn, name, model)


class ProfileCache:
    """Application inference profiles per region, listed with ``ListInferenceProfiles`` and kept ``ttl`` s.

    A failed listing never blocks usage: it is logged once, the previous listing (if any) stays in use and
    the next try waits for the TTL, so a missing ``bedrock:ListInferenceProfiles`` permission costs one log
    line per TTL, not one per poll.
    """

    def __init__(self, call: Call, *, ttl: float, provider: str, clock: Callable[[], float] = time.monotonic):
        self._call = call
        self.ttl = ttl
        self.provider = provider
        self._clock = clock
        self._profiles: dict[str, dict[str, Profile]] = {}  # region -> id and ARN -> profile
        self._fetched: dict[str, float] = {}

    async def lookup(self, region: str, ident: str) -> Profile | None:
        """The application profile ``ident`` (id or ARN) of ``region``, or None when unknown."""
        now = self._clock()
        if region not in self._fetched or now - self._fetched[region] >= self.ttl:
            self._fetched[region] = now
            try:
                self._profiles[region] = await self._list(region)
            except ProviderError as exc:
                log.warning("%s: inference profiles of %s not resolved (usage goes on without names): %s",
                            self.provider, region, exc)
        return self._profiles.get(region, {}).get(ident)

    async def _list(self, region: str) -> dict[str, Profile]:
        profiles: dict[str, Profile] = {}
        token: str | None = None
        while True:
            params: dict[str, Any] = {"typeEquals": "APPLICATION", "maxResults": 1000}
            if token:
                params["nextToken"] = token
            page = await self._call("bedrock", region, "ListInferenceProfiles", **params)
            summaries = page.get("inferenceProfileSummaries")
            if not isinstance(summaries, list):
                raise ProviderError("ListInferenceProfiles: no inferenceProfileSummaries list",
                                    error_type="bad_response")
            for summary in summaries:
                p = _profile(summary)
                tags = await self._tags(region, p.arn)
                p = Profile(p.id, p.arn, p.name, p.model, tags)
                profiles[p.id] = profiles[p.arn] = p
            token = page.get("nextToken")
            if not token:
                return profiles

    async def _tags(self, region: str, arn: str) -> dict[str, str]:
        """The profile's tags (for attribution rules); a failure leaves them empty, never the profile out."""
        try:
            page = await self._call("bedrock", region, "ListTagsForResource", resourceARN=arn)
        except ProviderError as exc:
            log.info("%s: tags of %s not read: %s", self.provider, arn, exc)
            return {}
        return {str(t["key"]): str(t["value"]) for t in page.get("tags") or [] if "key" in t and "value" in t}
