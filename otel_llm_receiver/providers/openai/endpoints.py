"""The OpenAI organization usage endpoints: path, result ``object``, accepted ``group_by`` fields, and mapping.

Checked against openai/openai-openapi ``openapi.yaml`` @ f85dbe2 (2026-08-21); see docs/providers/openai.md.
Note the two result objects that do not follow the path: ``file_search_calls`` answers with
``organization.usage.file_searches.result`` and ``web_search_calls`` with ``organization.usage.web_searches.result``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import normalize as n

#: Page ``limit`` maximum per bucket width, in buckets (spec: 1d max 31, 1h max 168, 1m max 1440).
USAGE_PAGE_LIMITS: Mapping[int, int] = {60: 1440, 3600: 168, 86400: 31}
#: Costs: ``bucket_width`` is ``1d`` only, ``limit`` 1..180.
COST_PAGE_LIMIT = 180

_USER_DIMS = frozenset({"project_id", "user_id", "api_key_id", "model"})

@dataclass(frozen=True)
class UsageEndpoint:
    """One ``/v1/organization/usage/{name}`` type."""

    name: str
    result_object: str
    group_fields: frozenset[str]  # what its group_by accepts
    mapper: n.Mapper  # its rows -> records
    always_group: tuple[str, ...] = ()  # grouped whatever the dimensions say (they are bounded attributes)

    @property
    def path(self) -> str:
        return f"/v1/organization/usage/{self.name}"


USAGE_ENDPOINTS: tuple[UsageEndpoint, ...] = (
    UsageEndpoint(
        "completions", "organization.usage.completions.result",
        _USER_DIMS | {"batch", "service_tier"}, n.COMPLETIONS,
    ),
    UsageEndpoint("embeddings", "organization.usage.embeddings.result", _USER_DIMS, n.input_tokens("embeddings")),
    UsageEndpoint("moderations", "organization.usage.moderations.result", _USER_DIMS, n.input_tokens("moderation")),
    UsageEndpoint(
        "images", "organization.usage.images.result", _USER_DIMS | {"size", "source"},
        n.measure("image_generation", "images", n.IMAGES), always_group=("size", "source"),
    ),
    UsageEndpoint(
        "audio_speeches", "organization.usage.audio_speeches.result", _USER_DIMS,
        n.measure("text_to_speech", "characters", n.CHARACTERS),
    ),
    UsageEndpoint(
        "audio_transcriptions", "organization.usage.audio_transcriptions.result", _USER_DIMS,
        n.measure("transcription", "seconds", n.AUDIO_SECONDS),
    ),
    UsageEndpoint(
        "vector_stores", "organization.usage.vector_stores.result", frozenset({"project_id"}),
        n.measure("vector_store", "usage_bytes", n.STORAGE, with_requests=False),
    ),
    UsageEndpoint(
        "code_interpreter_sessions", "organization.usage.code_interpreter_sessions.result", frozenset({"project_id"}),
        n.measure("execute_tool", "num_sessions", n.SESSIONS, with_requests=False, tool="code_interpreter"),
    ),
    UsageEndpoint(
        "file_search_calls", "organization.usage.file_searches.result",
        frozenset({"project_id", "user_id", "api_key_id", "vector_store_id"}),
        n.measure("execute_tool", "num_requests", n.TOOL_REQUESTS, with_requests=False, tool="file_search"),
    ),
    UsageEndpoint(
        "web_search_calls", "organization.usage.web_searches.result", _USER_DIMS | {"context_level"},
        # num_model_requests are the model requests that searched: already counted under completions.
        n.measure("execute_tool", "num_requests", n.TOOL_REQUESTS, with_requests=False, tool="web_search",
                  also_required=("num_model_requests",)),
    ),
)

ENDPOINTS_BY_NAME: Mapping[str, UsageEndpoint] = {e.name: e for e in USAGE_ENDPOINTS}

#: ``dimensions`` config values -> the API's group_by field.
DIMENSION_FIELDS: Mapping[str, str] = {
    "project": "project_id", "model": "model", "batch": "batch", "service_tier": "service_tier",
    "api_key": "api_key_id", "user": "user_id",
}


def group_by(endpoint: UsageEndpoint, dimensions: tuple[str, ...]) -> tuple[str, ...]:
    """The ``group_by`` values to send: the configured dimensions this endpoint accepts, plus its own."""
    wanted = [DIMENSION_FIELDS[d] for d in dimensions] + list(endpoint.always_group)
    return tuple(dict.fromkeys(f for f in wanted if f in endpoint.group_fields))
