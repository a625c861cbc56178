"""Typed provider options: each provider folder declares its keys once, as a frozen dataclass.

A provider's options class (``OpenAIOptions`` in ``providers/openai/options.py``) is the one place its keys,
kinds, defaults and descriptions are written: ``option(...)`` declares a field and the ``Option`` schema the
config parser validates it with, from the same default. ``schema()`` gives that schema to the registry (so
``check`` reports a bad kind or an unknown key with its key path), ``from_config`` turns a validated
``ProviderConfig`` into the typed value a provider constructor takes, and ``validate()`` returns what only the
provider knows is wrong (a cost lookback past the revision horizon), one ``key: message`` line each, which
``check`` prints as ``providers.NAME.key: message`` like every other config error.

``HttpOptions`` holds what every HTTP provider shares: its retries, its response-size limit, and the common
``timeout`` / ``endpoint`` keys of its section.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self

from ..config_parse import Option, OptionKind, option_default
from ..config_providers import DEFAULT_PROVIDER_TIMEOUT, ProviderConfig

__all__ = ["MAX_RESPONSE_BYTES", "HttpOptions", "ProviderOptions", "common", "option"]

#: Default of ``max_response_bytes``: far above any real page (a 31-day 1h page is a few MiB).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

_OPTION = "option"
_COMMON = "common"


def option(
    kind: OptionKind,
    default: Any = None,
    *,
    required: bool = False,
    choices: tuple[str, ...] | None = None,
    description: str = "",
    minimum: float | str | None = None,
    maximum: float | str | None = None,
) -> Any:
    """A provider-specific key: a dataclass field whose default is also its schema's default (written once).

    ``default`` is the typed value (seconds for a duration, a tuple for a list); ``required`` options default to
    None and the parser refuses a section without them.
    """
    schema = Option(
        kind, default=default, required=required, choices=choices, description=description,
        minimum=minimum, maximum=maximum,
    )
    return field(default=option_default(schema), metadata={_OPTION: schema})


def common(default: Any = None) -> Any:
    """A field filled from one of the section's common keys (``timeout``, ``endpoint``, ...), not an option."""
    return field(default=default, metadata={_COMMON: True})


@dataclass(frozen=True, kw_only=True)
class ProviderOptions:
    """Base of every provider's options class (see the module docstring)."""

    #: Whether ``schema()`` lists the provider's own keys before the inherited (``HttpOptions``) ones.
    OWN_KEYS_FIRST: ClassVar[bool] = True

    @classmethod
    def schema(cls) -> dict[str, Option]:
        """The ``Option`` schema of the provider-specific keys, for config validation.

        ``check`` lists a section's options in this order: the provider's own keys, then the inherited ones
        (``OWN_KEYS_FIRST``), or the other way round.
        """
        by_name = {f.name: f for f in fields(cls) if _OPTION in f.metadata}
        classes = cls.__mro__ if cls.OWN_KEYS_FIRST else reversed(cls.__mro__)
        order = [name for klass in classes for name in inspect.get_annotations(klass)]
        return {name: by_name[name].metadata[_OPTION] for name in dict.fromkeys(order) if name in by_name}

    @classmethod
    def from_config(cls, config: ProviderConfig) -> Self:
        """The typed options of one section: its parsed options, its common keys, defaults for the rest."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if _COMMON in f.metadata:
                value = getattr(config, f.name)
            elif _OPTION in f.metadata:
                value = config.options.get(f.name)
            else:
                continue
            if value is not None or f.default is MISSING:
                values[f.name] = value
        return cls(**values)

    def validate(self) -> list[str]:
        """What the schema cannot see, as ``key: message`` lines (empty: valid); no network, no SDK."""
        return []


@dataclass(frozen=True, kw_only=True)
class HttpOptions(ProviderOptions):
    """What every provider using the shared ``ApiClient`` accepts besides its own keys."""

    max_retries: int = option(
        "int", 4, minimum=0, maximum=20,
        description="Retries of one request after a 429, 5xx, timeout or connection error (0 to 20).",
    )
    retry_initial_interval: float = option(
        "duration", 1.0, maximum="30s",
        description="First backoff between retries; doubles per retry (with jitter), capped at 30s.",
    )
    max_response_bytes: int = option(
        "int", MAX_RESPONSE_BYTES,
        description="Largest response body read (bytes, default 32 MiB): a larger one fails the poll.",
    )
    #: the section's ``timeout`` (per request) and ``endpoint`` (None: the provider's default base URL)
    timeout: float = common(DEFAULT_PROVIDER_TIMEOUT)
    endpoint: str | None = common()
