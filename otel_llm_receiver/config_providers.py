"""The ``providers:`` config section: common keys of every instance plus its type's own ``Option`` schema.

Kept out of ``config.py`` (which dispatches to ``parse_provider``); the option schemas (provider type ->
``Option`` mapping) are handed in, so this module never imports the provider registry.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from otel_llm_receiver.chunks import chunk_problem
from otel_llm_receiver.config_parse import (
    HINT_CUTOFF,
    INSTANCE_NAME,
    MAX_TIMEOUT,
    Invalid,
    Option,
    Parser,
    join_path,
    option_default,
    quoted,
    show_value,
    unknown_key_message,
    url_problem,
)

__all__ = [
    "COMMON_PROVIDER_KEYS",
    "DEFAULT_COLLECTION_INTERVAL",
    "DEFAULT_PROVIDER_TIMEOUT",
    "ProviderConfig",
    "parse_provider",
]

#: Keys every provider instance accepts, whatever its type (DESIGN.md, the provider contract).
COMMON_PROVIDER_KEYS: frozenset[str] = frozenset(
    {"collection_interval", "timeout", "tenant", "endpoint", "lookback", "backfill", "backfill_chunk", "labels",
     "enabled"}
)


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*")
_RESERVED_LABEL_PREFIXES = ("gen_ai.", "llm.")
# Attributes of the metric catalog outside the reserved prefixes: a label must not shadow them either.
_RESERVED_LABEL_NAMES = frozenset({"error.type"})
DEFAULT_COLLECTION_INTERVAL = 60.0
DEFAULT_PROVIDER_TIMEOUT = 30.0
_MAX_COLLECTION_INTERVAL = 86_400.0
_MAX_WINDOW = 400 * 86_400.0  # lookback / backfill
_MAX_NAME = 256  # tenant and label values: they become metric attributes


@dataclass(frozen=True)
class ProviderConfig:
    """One provider instance (``providers:`` entry).

    ``lookback`` / ``backfill`` / ``endpoint`` are None when the provider's own default applies;
    ``backfill_chunk`` is None for the default chunk of a long poll (``chunks.DEFAULT_CHUNK``). ``options``
    holds the type-specific keys, validated against the provider's ``Option`` schema with defaults filled in.
    """

    name: str
    type: str
    collection_interval: float = DEFAULT_COLLECTION_INTERVAL
    timeout: float = DEFAULT_PROVIDER_TIMEOUT
    tenant: str = "default"
    endpoint: str | None = None
    lookback: float | None = None
    backfill: float | None = None
    backfill_chunk: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    enabled: bool = True
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


def parse_provider(
    p: Parser, schemas: Mapping[str, Mapping[str, Option]], name: str, raw: Any, default_interval: float
) -> ProviderConfig | None:
    path = join_path("providers", name)
    type_, slash, instance = name.partition("/")
    ok = True
    schema = schemas.get(type_)
    if schema is None:
        known = sorted(schemas)
        close = difflib.get_close_matches(type_, known, n=1, cutoff=HINT_CUTOFF)
        hint = f"; did you mean {close[0]}?" if close else ""
        p.problem(
            path, f"unknown provider type {quoted(type_)} (known: {', '.join(known) or 'none'}){hint}"
        )
        ok = False
    if slash and not INSTANCE_NAME.fullmatch(instance):
        p.problem(
            path, f"instance name {quoted(instance)} must match [A-Za-z0-9_.-]+ (as in openai/prod)"
        )
        ok = False
    section = p.mapping(raw, path)
    if section is None:
        return None

    common: dict[str, Any] = {
        "collection_interval": default_interval,
        "timeout": DEFAULT_PROVIDER_TIMEOUT,
        "tenant": "default",
        "endpoint": None,
        "lookback": None,
        "backfill": None,
        "backfill_chunk": None,
        "labels": {},
        "enabled": True,
    }
    options: dict[str, Any] = {}
    # A schema may name a common key to give it a provider-specific default (e.g. backfill); the value is
    # then read as the common key and also passed on in options.
    for key, option in (schema or {}).items():
        if key in COMMON_PROVIDER_KEYS and option.default is not None:
            common[key] = option_default(option)

    for key, value in section.items():
        key_path = join_path(path, key)
        if key in COMMON_PROVIDER_KEYS:
            parsed = _common_key(p, key, value, key_path)
            if isinstance(parsed, Invalid):
                ok = False
            elif parsed is not None:
                common[key] = parsed
        elif schema is None:
            continue  # unknown type: its own keys cannot be checked
        elif key in schema:
            if value is None:
                continue
            parsed = p.option(value, key_path, schema[key])
            if isinstance(parsed, Invalid):
                ok = False
            else:
                options[key] = parsed
        else:
            p.problem(key_path, unknown_key_message(key, COMMON_PROVIDER_KEYS | set(schema)))
            ok = False

    for key, option in (schema or {}).items():
        if key in COMMON_PROVIDER_KEYS:
            options[key] = common[key]
        elif key not in options:
            if option.required and section.get(key) is None:
                p.problem(join_path(path, key), f"is required ({option.kind} option of {type_})")
                ok = False
            else:
                options[key] = option_default(option)
    if not ok or schema is None:
        return None
    return ProviderConfig(
        name=name,
        type=type_,
        collection_interval=common["collection_interval"],
        timeout=common["timeout"],
        tenant=common["tenant"],
        endpoint=common["endpoint"],
        lookback=common["lookback"],
        backfill=common["backfill"],
        backfill_chunk=common["backfill_chunk"],
        labels=common["labels"],
        enabled=common["enabled"],
        options={key: options[key] for key in schema},
    )


def _common_key(p: Parser, key: str, value: Any, path: str) -> Any:
    """The value of one common provider key; None when unset (null), ``INVALID`` after a problem."""
    if value is None:
        if key == "tenant":
            return p.problem(path, "must not be empty")
        return None
    if key == "collection_interval":
        return p.duration(value, path, positive=True, maximum=_MAX_COLLECTION_INTERVAL)
    if key == "timeout":
        return p.duration(value, path, positive=True, maximum=MAX_TIMEOUT)
    if key in ("lookback", "backfill"):
        return p.duration(value, path, maximum=_MAX_WINDOW)
    if key == "backfill_chunk":  # a long poll is read and applied a chunk at a time (chunks.py)
        seconds = p.duration(value, path, positive=True)
        if isinstance(seconds, Invalid):
            return seconds
        problem = chunk_problem(seconds)
        return p.problem(path, problem) if problem else seconds
    if key == "tenant":
        return p.text(value, path, nonempty=True, max_length=_MAX_NAME)
    if key == "enabled":
        return p.boolean(value, path)
    if key == "endpoint":
        text = p.text(value, path, nonempty=True)
        if isinstance(text, Invalid):
            return text
        if url_problem(text, require_port=False, allow_path=True):
            return p.problem(path, f"{show_value(text)} must be a URL http(s)://host[:port][/path]")
        return text
    return p.string_map(
        value, path, key_check=lambda name, at: _check_label_name(p, name, at), max_length=_MAX_NAME
    )


def _check_label_name(p: Parser, name: str, path: str) -> bool:
    if not _LABEL_NAME.fullmatch(name):
        p.problem(
            path, "is not a valid attribute name (letters, digits, _ and ., not starting with a digit)"
        )
        return False
    if name.startswith(_RESERVED_LABEL_PREFIXES) or name in _RESERVED_LABEL_NAMES:
        p.problem(
            path, "is reserved: gen_ai.*, llm.* and error.type are set by the receiver"
        )
        return False
    return True
