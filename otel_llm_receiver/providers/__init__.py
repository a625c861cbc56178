"""Provider registry: config type name -> provider class.

Classes are imported on demand so that a provider's SDK (boto3, azure-identity, ...) is only needed when a
config uses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Option, ProviderConfig
    from .base import Provider

#: type -> "module:Class"
PROVIDER_TYPES: dict[str, str] = {
    "demo": "otel_llm_receiver.providers.demo:DemoProvider",
    "anthropic": "otel_llm_receiver.providers.anthropic:AnthropicProvider",
    "azure_openai": "otel_llm_receiver.providers.azure_openai:AzureOpenAIProvider",
    "bedrock": "otel_llm_receiver.providers.bedrock:BedrockProvider",
    "openai": "otel_llm_receiver.providers.openai:OpenAIProvider",
    "vertex_ai": "otel_llm_receiver.providers.vertex_ai:VertexAIProvider",
}


def provider_class(type_name: str) -> type[Provider]:
    """The provider class registered for ``type_name`` (KeyError for an unknown type)."""
    module_name, _, class_name = PROVIDER_TYPES[type_name].partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return cls


def provider_options() -> dict[str, Mapping[str, Option]]:
    """Every provider type's own option schema, for config validation."""
    return {name: provider_class(name).OPTIONS for name in PROVIDER_TYPES}


def create_provider(config: ProviderConfig) -> Provider:
    """A provider instance for one validated config section."""
    return provider_class(config.type)(config)


__all__ = ["PROVIDER_TYPES", "create_provider", "provider_class", "provider_options"]
