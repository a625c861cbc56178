"""Provider registry: config type name -> provider class.

Classes are imported on demand so that a provider's SDK (boto3, azure-identity, ...) is only needed when a
config uses it, and so that validating a config imports the modules of the types it names and no other
(``provider_options()`` is a mapping that imports a type's module when its schema is asked for; the type names
come from the providers' ``provider.yaml`` files). A demo-only ``check`` or ``run`` never loads httpx, gRPC or
a cloud SDK for providers it does not run (tests/test_config_layers.py holds it to that).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config_parse import Option
    from ..config_providers import ProviderConfig
    from .base import Provider

from .descriptors import descriptors

#: type -> "module:Class", from each provider folder's ``provider.yaml`` (tests may register more)
PROVIDER_TYPES: dict[str, str] = {d.type_name: d.provider_class for d in descriptors().values()}


def provider_class(type_name: str) -> type[Provider]:
    """The provider class registered for ``type_name`` (KeyError for an unknown type)."""
    module_name, _, class_name = PROVIDER_TYPES[type_name].partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return cls


class _OptionSchemas(Mapping[str, Mapping[str, "Option"]]):
    """Provider type -> its option schema; a type's module is imported when its schema is first looked up.

    Keys (and ``in``, ``len``, iteration: what an "unknown provider type" message lists) come from
    ``PROVIDER_TYPES`` as it is at that moment, without importing anything.
    """

    def __getitem__(self, type_name: str) -> Mapping[str, Option]:
        if type_name not in PROVIDER_TYPES:
            raise KeyError(type_name)
        return provider_class(type_name).OPTIONS

    def __contains__(self, type_name: object) -> bool:
        return type_name in PROVIDER_TYPES

    def __iter__(self) -> Iterator[str]:
        return iter(list(PROVIDER_TYPES))

    def __len__(self) -> int:
        return len(PROVIDER_TYPES)


def provider_options() -> Mapping[str, Mapping[str, Option]]:
    """Every provider type's own option schema, for config validation; a type's module is imported only when
    its schema is looked up (a config that names it)."""
    return _OptionSchemas()


def create_provider(config: ProviderConfig) -> Provider:
    """A provider instance for one validated config section."""
    return provider_class(config.type)(config)


def provider_problems(configs: Iterable[ProviderConfig]) -> list[str]:
    """What each enabled instance's own checks reject, one ``providers.NAME...: ...`` line per problem.

    The config schema cannot see everything (a cost lookback past the revision horizon, a region that is not
    one, a missing SDK extra); ``check`` and ``run`` ask each instance up front, without any network call, so
    such a config fails at once with exit 2, not at its first poll. A typed provider's ``validate()`` problems
    carry their key (``providers.openai/prod.cost_lookback: ...``); the others are the message of the
    ``ProviderError`` its constructor raised.
    """
    from ..errors import ProviderError

    problems: list[str] = []
    for config in configs:
        if not config.enabled:
            continue
        options_type = provider_class(config.type).OPTIONS_TYPE
        if options_type is not None:
            found = options_type.from_config(config).validate()
            if found:
                problems.extend(f"providers.{config.name}.{problem}" for problem in found)
                continue
        try:
            provider = create_provider(config)
        except ProviderError as exc:
            message = str(exc).removeprefix(f"{config.name}: ")
            problems.append(f"providers.{config.name}: {message}")
            continue
        asyncio.run(provider.aclose())
    return problems


__all__ = ["PROVIDER_TYPES", "create_provider", "provider_class", "provider_options", "provider_problems"]
