"""The receiver's configuration: one Collector-style YAML file, loaded into frozen dataclasses.

``load_config(path)`` reads the file and ``parse_config(raw)`` validates an already-parsed document. Both
gather *every* problem before giving up and raise one ``ConfigError`` whose ``problems`` are one line each,
in file order, each starting with the dotted path of the bad key (instance names are kept whole:
``providers.openai/prod.collection_interval: ...``).

Shape (docs/configuration.md is the reference)::

    collection_interval: 60s          # default poll interval of every provider instance
    export_interval: 30s
    storage: {path: ./otel-llm-data/ledger.db, retention: 90d}
    health: {endpoint: 127.0.0.1:13133}
    exporters:
      otlp:                           # or otlp_grpc; otlphttp / otlp_http for OTLP over HTTP; "/NAME" suffixes
        endpoint: collector:4317
        headers: {authorization: "Bearer ${env:TOKEN}"}
        compression: gzip
        timeout: 10s
        tls: {insecure: true}
    providers:
      openai/prod:                    # TYPE or TYPE/NAME
        api_key: ${env:OPENAI_ADMIN_KEY}
        collection_interval: 5m

String scalars are substituted after parsing: ``${env:NAME}`` (or ``${NAME}``), ``${env:NAME:-default}``,
``${file:PATH}`` (contents, trailing newlines stripped, relative to the config file's directory) and ``$$``
for a literal ``$``.

Secrets (DESIGN.md invariant 7): the values of ``secret`` options, every exporter header value and anything
that came from ``${file:...}`` are ``Secret`` strings (``repr()`` shows ``<redacted>``), are collected in
``Config.secrets`` for log redaction, and are never shown by ``Config.describe()`` or in a problem message.
"""

from __future__ import annotations

import datetime
import difflib
import importlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

import yaml

from otel_llm_receiver.config_yaml import compose_config, read_config_text
from otel_llm_receiver.durations import DURATION_HINT, format_duration, parse_duration
from otel_llm_receiver.errors import ConfigError
from otel_llm_receiver.focus_config import FocusConfig, parse_focus
from otel_llm_receiver.signals_config import (
    AttributionConfig,
    BudgetConfig,
    PricingConfig,
    parse_attribution,
    parse_budgets,
    parse_pricing,
)

__all__ = [
    "COMMON_PROVIDER_KEYS",
    "EXPORTER_TYPES",
    "Config",
    "ExporterConfig",
    "HealthConfig",
    "Option",
    "OptionKind",
    "ProviderConfig",
    "Secret",
    "StorageConfig",
    "TLSConfig",
    "load_config",
    "parse_config",
]

OptionKind = Literal["str", "int", "bool", "duration", "list[str]", "map[str,str]", "secret"]
_OPTION_KINDS: frozenset[str] = frozenset(get_args(OptionKind))

#: Keys every provider instance accepts, whatever its type (DESIGN.md, the provider contract).
COMMON_PROVIDER_KEYS: frozenset[str] = frozenset(
    {"collection_interval", "timeout", "tenant", "endpoint", "lookback", "backfill", "labels", "enabled"}
)

#: Exporter types and the protocol each speaks. ``otlp_grpc`` / ``otlp_http`` are the Collector's names since
#: v0.144; ``otlp`` / ``otlphttp`` are the older names, still accepted by both the Collector and us.
EXPORTER_TYPES: Mapping[str, Literal["grpc", "http"]] = MappingProxyType(
    {"otlp": "grpc", "otlp_grpc": "grpc", "otlphttp": "http", "otlp_http": "http"}
)

_TOP_LEVEL_KEYS = (
    "collection_interval", "export_interval", "progress_interval", "storage", "health", "metrics", "exporters", "providers",
    "pricing", "budgets", "attribution", "focus",
)
_METRIC_KEYS = ("enabled",)
_STORAGE_KEYS = ("path", "retention")
_HEALTH_KEYS = ("endpoint", "export_failure_window")
_EXPORTER_KEYS = ("endpoint", "headers", "compression", "timeout", "tls")
_TLS_KEYS = ("insecure", "ca_file", "cert_file", "key_file")
_COMPRESSIONS = ("gzip", "none")

# Keys a Collector user may bring along that this receiver does not implement: named in the problem.
_COLLECTOR_ONLY_KEYS: Mapping[str, frozenset[str]] = {
    "exporter": frozenset(
        {
            "auth",
            "balancer_name",
            "encoding",
            "keepalive",
            "logs_endpoint",
            "metrics_endpoint",
            "read_buffer_size",
            "retry_on_failure",
            "sending_queue",
            "traces_endpoint",
            "write_buffer_size",
        }
    ),
    "tls": frozenset(
        {
            "ca_pem",
            "cert_pem",
            "include_system_ca_certs_pool",
            "insecure_skip_verify",
            "key_pem",
            "max_version",
            "min_version",
            "reload_interval",
            "server_name_override",
        }
    ),
}

_INSTANCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*")
_RESERVED_LABEL_PREFIXES = ("gen_ai.", "llm.")
# Attributes of the metric catalog outside the reserved prefixes: a label must not shadow them either.
_RESERVED_LABEL_NAMES = frozenset({"error.type"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_ENV_REFERENCE = re.compile(r"(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_SCHEME_REFERENCE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

_REDACTED = "<redacted>"
_HINT_CUTOFF = 0.7  # difflib similarity above which "did you mean" names the close key
_MIN_SUBSTRING_SECRET = 4
_DEFAULT_COLLECTION_INTERVAL = 60.0
_DEFAULT_EXPORT_INTERVAL = 30.0
_DEFAULT_EXPORTER_TIMEOUT = 10.0
_DEFAULT_PROVIDER_TIMEOUT = 30.0
_DEFAULT_RETENTION = 90 * 86_400.0
#: The Collector prometheus exporter's default ``metric_expiration``: exports must come more often than this.
_PROMETHEUS_METRIC_EXPIRATION = 300.0

# Limits (docs/configuration.md, "Limits"): every number and string a config can hold is bounded, so that a
# typo or a hostile file is refused by `check` instead of overflowing a timer, a counter or memory later.
_MAX_INT = 2**31 - 1
_MAX_DURATION = 3650 * 86_400.0  # any duration option without its own maximum
_MAX_COLLECTION_INTERVAL = 86_400.0
_MAX_EXPORT_INTERVAL = 3_600.0
_DEFAULT_PROGRESS_INTERVAL = 5.0  # progress.DEFAULT_INTERVAL (not imported: config stays free of runtime modules)
_MAX_PROGRESS_INTERVAL = 3_600.0
_MAX_TIMEOUT = 3_600.0
_MAX_WINDOW = 400 * 86_400.0  # lookback / backfill
_MAX_RETENTION = 3650 * 86_400.0
_MAX_TEXT = 64 * 1024  # any string, after substitution; also the most read from one ${file:...}
_MAX_NAME = 256  # tenant and label values: they become metric attributes
_MAX_DURATION_CHARS = 64
_MAX_QUOTED = 100  # a value quoted in a problem is cut here: a problem is one readable line


class Secret(str):
    """A string whose value must not be shown: ``repr()`` gives ``<redacted>``; ``str()`` and use give the value.

    Config values that are secrets (secret options, exporter header values, anything from ``${file:...}``)
    are ``Secret`` instances, so that the ``repr()`` of any config object is safe to log.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return _REDACTED


@dataclass(frozen=True)
class Option:
    """The schema of one provider-specific option (the keys of a provider section besides the common ones).

    ``kind`` says how the YAML value is read: ``duration`` into float seconds, ``list[str]`` into a tuple,
    ``map[str,str]`` into a read-only mapping, ``secret`` into a ``Secret`` string. ``default`` is used when
    the key is absent or null (a ``duration`` default may be seconds or a string such as ``"24h"``);
    ``choices`` restricts a ``str`` or each item of a ``list[str]``.
    """

    kind: OptionKind
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] | None = None
    description: str = ""
    #: Bounds of an ``int`` (a number) or ``duration`` (seconds or a string such as ``"24h"``) option; unset:
    #: ``int`` 0 .. 2^31-1, ``duration`` 0 .. 3650d (docs/configuration.md, "Limits").
    minimum: float | str | None = None
    maximum: float | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _OPTION_KINDS:
            raise ValueError(f"unknown option kind {self.kind!r} (valid: {', '.join(sorted(_OPTION_KINDS))})")
        if self.choices is not None:
            if self.kind not in ("str", "list[str]"):
                raise ValueError(f"choices only apply to str and list[str] options, not {self.kind}")
            object.__setattr__(self, "choices", tuple(self.choices))
        if (self.minimum is not None or self.maximum is not None) and self.kind not in ("int", "duration"):
            raise ValueError(f"minimum/maximum only apply to int and duration options, not {self.kind}")

    def bounds(self) -> tuple[float, float]:
        """The option's (minimum, maximum): an ``int`` count, or ``duration`` seconds."""
        low, high = (0.0, float(_MAX_INT)) if self.kind == "int" else (0.0, _MAX_DURATION)

        def seconds(value: float | str | None, fallback: float) -> float:
            if value is None:
                return fallback
            return parse_duration(value) if isinstance(value, str) else float(value)

        return seconds(self.minimum, low), seconds(self.maximum, high)


@dataclass(frozen=True)
class TLSConfig:
    """Exporter TLS settings, as the Collector's ``tls:`` block (files are resolved to absolute paths)."""

    insecure: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class ExporterConfig:
    """One ``exporters:`` entry: where and how to send OTLP.

    ``endpoint`` is ``host:port`` or ``http(s)://host:port`` for gRPC, and a base URL for HTTP (the emitter
    appends ``/v1/metrics``, as the Collector's ``otlphttp`` exporter does).
    """

    name: str
    protocol: Literal["grpc", "http"]
    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    compression: Literal["gzip", "none"] = "gzip"
    timeout: float = _DEFAULT_EXPORTER_TIMEOUT
    tls: TLSConfig = field(default_factory=TLSConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", MappingProxyType({k: Secret(v) for k, v in self.headers.items()}))


@dataclass(frozen=True)
class ProviderConfig:
    """One provider instance (``providers:`` entry).

    ``lookback`` / ``backfill`` / ``endpoint`` are None when the provider's own default applies. ``options``
    holds the type-specific keys, validated against the provider's ``Option`` schema with defaults filled in.
    """

    name: str
    type: str
    collection_interval: float = _DEFAULT_COLLECTION_INTERVAL
    timeout: float = _DEFAULT_PROVIDER_TIMEOUT
    tenant: str = "default"
    endpoint: str | None = None
    lookback: float | None = None
    backfill: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    enabled: bool = True
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


@dataclass(frozen=True)
class StorageConfig:
    """Where the ledger lives and how long it keeps buckets (``path`` is relative to the working directory)."""

    path: str = "./otel-llm-data/ledger.db"
    retention: float = _DEFAULT_RETENTION


@dataclass(frozen=True)
class HealthConfig:
    """The health endpoint's ``host:port`` (the empty string disables it), and how long ``/ready`` and
    ``/health`` stay 200 without a successful export (None: 3 times ``export_interval``)."""

    endpoint: str = "127.0.0.1:13133"
    export_failure_window: float | None = None


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration.

    ``secrets`` holds every secret value seen (for log redaction) and is left out of ``repr()``. ``warnings``
    are things that are allowed but probably not meant (``check`` prints them). ``provider_options`` is the
    option schema the config was validated against, by provider type.
    """

    collection_interval: float = _DEFAULT_COLLECTION_INTERVAL
    export_interval: float = _DEFAULT_EXPORT_INTERVAL
    #: seconds between two progress lines of a backfill (a first poll reading days of data)
    progress_interval: float = _DEFAULT_PROGRESS_INTERVAL
    storage: StorageConfig = field(default_factory=StorageConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    exporters: tuple[ExporterConfig, ...] = ()
    providers: tuple[ProviderConfig, ...] = ()
    #: ``metrics: {NAME: {enabled: false}}``, as in the Collector's receivers; absent: the catalog's default.
    metrics: Mapping[str, bool] = field(default_factory=dict, hash=False)
    #: Money signals (docs/pricing.md, docs/budgets.md, docs/attribution.md).
    pricing: PricingConfig = field(default_factory=PricingConfig)
    budgets: tuple[BudgetConfig, ...] = ()
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    #: ``focus:``: the periodic FOCUS writer and endpoints (docs/focus.md); None when the section is absent.
    focus: FocusConfig | None = None
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    #: every value a ``${env:...}`` / ``${file:...}`` substitution produced: redacted from every log line
    substituted: frozenset[str] = field(default=frozenset(), repr=False)
    warnings: tuple[str, ...] = ()
    provider_options: Mapping[str, Mapping[str, Option]] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    @property
    def export_failure_window(self) -> float:
        """Seconds without a successful export after which ``/ready`` and ``/health`` answer 503."""
        window = self.health.export_failure_window
        return 3 * self.export_interval if window is None else window

    def describe(self) -> str:
        """A human-readable summary for ``otel-llm-receiver check``; every secret shows as ``<redacted>``."""
        show = _Shower(self.secrets)
        lines = [
            f"collection_interval: {format_duration(self.collection_interval)} (default for providers)",
            f"export_interval: {format_duration(self.export_interval)}",
            f"progress_interval: {format_duration(self.progress_interval)} (backfill progress lines)",
            f"providers ({len(self.providers)}):",
        ]
        for p in self.providers:
            state = "enabled" if p.enabled else "disabled"
            lines.append(
                f"  {show(p.name)} (type {p.type}): {state}, every {format_duration(p.collection_interval)},"
                f" timeout {format_duration(p.timeout)}, tenant {show(p.tenant)}"
            )
            lines.append(
                f"    endpoint: {show(p.endpoint) if p.endpoint is not None else '(provider default)'}"
            )
            lines.append(f"    lookback: {_describe_optional_duration(p.lookback)}")
            lines.append(f"    backfill: {_describe_optional_duration(p.backfill)}")
            if p.labels:
                lines.append("    labels: " + ", ".join(f"{k}={show(v)}" for k, v in p.labels.items()))
            schema = self.provider_options.get(p.type, {})
            if p.options:
                lines.append("    options:")
                for key, value in p.options.items():
                    kind = schema[key].kind if key in schema else None
                    lines.append(f"      {key}: {_describe_option(value, kind, show)}")
        lines.append(f"exporters ({len(self.exporters)}):")
        if not self.exporters:
            lines.append("  (none: `run` needs at least one)")
        for e in self.exporters:
            lines.append(
                f"  {e.name} (OTLP/{'gRPC' if e.protocol == 'grpc' else 'HTTP'}): endpoint {show(e.endpoint)},"
                f" compression {e.compression}, timeout {format_duration(e.timeout)}"
            )
            if e.headers:
                lines.append("    headers: " + ", ".join(f"{k}={_REDACTED}" for k in e.headers))
            tls = [f"insecure={'true' if e.tls.insecure else 'false'}"]
            tls += [
                f"{k}={v}"
                for k, v in (
                    ("ca_file", e.tls.ca_file),
                    ("cert_file", e.tls.cert_file),
                    ("key_file", e.tls.key_file),
                )
                if v is not None
            ]
            lines.append("    tls: " + ", ".join(show(t) for t in tls))
        lines.append(
            f"storage: path {show(self.storage.path)}, retention {format_duration(self.storage.retention)}"
        )
        health = show(self.health.endpoint) if self.health.endpoint else "(disabled)"
        lines.append(f"health: endpoint {health}, export failure window "
                     f"{format_duration(self.export_failure_window)}")
        lines.append(
            f"pricing: {len(self.pricing.overrides)} override(s)"
            + (f", catalog_file {show(self.pricing.catalog_file)}" if self.pricing.catalog_file else "")
            + ("" if self.pricing.genai_prices else ", genai-prices off")
        )
        for b in self.budgets:
            lines.append(f"budget {show(b.name)}: {b.amount} USD per {b.period} ({b.timezone}), source {b.source}")
        if self.attribution.rules:
            lines.append(f"attribution: {len(self.attribution.rules)} rule(s)")
        if self.focus is not None:
            lines.append(
                f"focus: FOCUS {self.focus.version} {self.focus.format}"
                + (f" every {format_duration(self.focus.interval)} into {show(self.focus.path)}"
                   if self.focus.path else " (no files)")
                + (", GET /focus.csv and /focus.json on the health endpoint" if self.focus.http else "")
            )
        if self.metrics:
            lines.append("metrics: " + ", ".join(
                f"{name} {'enabled' if on else 'disabled'}" for name, on in sorted(self.metrics.items())
            ))
        return "\n".join(lines)


class _Shower:
    """Renders a string for ``describe()``, redacting secrets and anything that contains one."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._exact = frozenset(secrets)
        # Substring matches only for secrets long enough not to hit innocent text by chance.
        self._long = [s for s in self._exact if len(s) >= _MIN_SUBSTRING_SECRET]

    def __call__(self, value: str) -> str:
        if isinstance(value, Secret) or value in self._exact or any(s in value for s in self._long):
            return _REDACTED
        return value


def _describe_optional_duration(value: float | None) -> str:
    return "(provider default)" if value is None else format_duration(value)


def _describe_option(value: Any, kind: str | None, show: _Shower) -> str:
    if isinstance(value, Secret) or kind == "secret":
        return _REDACTED if value is not None else "(not set)"
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "duration" and isinstance(value, int | float):
        return format_duration(value)
    if isinstance(value, str):
        return show(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(str(v)) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={show(str(v))}" for k, v in value.items()) + "}"
    return show(str(value))


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    provider_options: Mapping[str, Mapping[str, Option]] | None = None,
) -> Config:
    """Read, substitute and validate the YAML config file at ``path``; raise ``ConfigError`` listing every problem.

    ``environ`` defaults to ``os.environ``; ``provider_options`` (provider type -> option schema) defaults to
    ``otel_llm_receiver.providers.provider_options()``. Relative ``${file:...}`` and TLS file paths are read
    from the config file's directory.
    """
    shown = os.fspath(path)
    node, raw = compose_config(read_config_text(path), shown)
    duplicates: list[str] = []
    if node is not None:
        _find_duplicate_keys(node, "", duplicates)
    base_dir = os.path.dirname(os.path.abspath(shown))
    try:
        config = parse_config(raw, base_dir=base_dir, environ=environ, provider_options=provider_options)
    except ConfigError as e:
        raise ConfigError(duplicates + e.problems) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config


def _find_duplicate_keys(node: yaml.Node, path: str, out: list[str]) -> None:
    """YAML lets a later duplicate key silently replace an earlier one: report each instead."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    out.append(f"{_join(path, key)}: duplicate key (lines {seen[key]} and {line})")
                else:
                    seen[key] = line
                _find_duplicate_keys(value_node, _join(path, key), out)
            else:
                _find_duplicate_keys(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicate_keys(item, f"{path}[{index}]", out)


def parse_config(
    raw: Any,
    *,
    base_dir: str = ".",
    environ: Mapping[str, str] | None = None,
    provider_options: Mapping[str, Mapping[str, Option]] | None = None,
) -> Config:
    """Validate an already-parsed YAML document (dicts, lists, scalars) into a ``Config``.

    Substitutes ``${...}`` in string scalars, fills defaults and checks everything, then raises one
    ``ConfigError`` with every problem, or returns the config.
    """
    schemas = provider_options if provider_options is not None else _registered_provider_options()
    parser = _Parser(base_dir=base_dir, environ=os.environ if environ is None else environ, schemas=schemas)
    config = parser.parse(raw)
    if parser.problems:
        raise ConfigError(parser.problems)
    return config


def _registered_provider_options() -> Mapping[str, Mapping[str, Option]]:
    # Imported here: the providers package imports this module (for Option), and it is written separately.
    module = importlib.import_module("otel_llm_receiver.providers")
    get = cast(Callable[[], Mapping[str, Mapping[str, Option]]], module.provider_options)
    return get()


# --------------------------------------------------------------------------------------------------------------
# Validation internals


class _Invalid:
    """Marks a value that already produced a problem, so nothing downstream reports it again."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID = _Invalid()


class _Substituted(str):
    """A string scalar that went through ``${...}`` substitution (as opposed to a literal in the file)."""

    pieces: tuple[str, ...]  # the substituted values, each one a secret when the whole is
    from_file: bool
    from_env: bool

    def __new__(cls, value: str, pieces: tuple[str, ...], from_file: bool, from_env: bool = False) -> _Substituted:
        obj = super().__new__(cls, value)
        obj.pieces = pieces
        obj.from_file = from_file
        obj.from_env = from_env
        return obj


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _quoted(value: str) -> str:
    if len(value) > _MAX_QUOTED:
        return json.dumps(value[:_MAX_QUOTED], ensure_ascii=False)[:-1] + '..." (' + f"{len(value)} characters)"
    return json.dumps(value, ensure_ascii=False)


def _a(value: object) -> str:
    """The YAML-ish kind of a value, with its article, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date"
    return f"a {type(value).__name__}"


def _is_hidden(value: object) -> bool:
    """Whether a value must not be quoted in a message: it came from a file or the environment, so it may be a
    secret (an admin key put under the wrong key is still an admin key)."""
    return isinstance(value, Secret) or (isinstance(value, _Substituted) and (value.from_file or value.from_env))


def _show_value(value: str) -> str:
    if not _is_hidden(value):
        return _quoted(value)
    if isinstance(value, _Substituted) and not value.from_file:
        return "the value substituted from ${env:...} (not shown)"
    return "the value read from ${file:...} (not shown)"


def _unknown_key_message(key: str, valid: Iterable[str], collector_only: frozenset[str] = frozenset()) -> str:
    if key in collector_only:
        return "unknown key: a Collector option this receiver does not support"
    choices = sorted(valid)
    close = difflib.get_close_matches(key, choices, n=1, cutoff=_HINT_CUTOFF)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (valid keys: {', '.join(choices)})" if choices else "unknown key"


def _split_host_port(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535:
        return None
    if host and not _HOST.fullmatch(host):
        return None
    return host, int(port)


def _url_problem(text: str, *, require_port: bool, allow_path: bool) -> bool:
    """True when ``text`` is not an ``http(s)://host[:port][/path]`` URL of the required shape."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        return True
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        return True
    if require_port and port is None:
        return True
    return not allow_path and url.path not in ("", "/")


class _Parser:
    def __init__(
        self, *, base_dir: str, environ: Mapping[str, str], schemas: Mapping[str, Mapping[str, Option]]
    ):
        self.base_dir = base_dir
        self.environ = environ
        self.schemas = schemas
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.secrets: set[str] = set()
        #: every value ${env:...} or ${file:...} produced: redacted from logs (they may be credentials)
        self.substituted: set[str] = set()

    # -- reporting ---------------------------------------------------------------------------------------------

    def problem(self, path: str, message: str) -> _Invalid:
        self.problems.append(f"{path or '(top level)'}: {message}")
        return _INVALID

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def secret(self, value: str) -> Secret:
        """Record a secret value (and every piece substituted into it) and return it as a ``Secret``."""
        for piece in (value, *getattr(value, "pieces", ())):
            if piece:
                self.secrets.add(str(piece))
        return Secret(value)

    # -- substitution ------------------------------------------------------------------------------------------

    def substitute(self, value: Any, path: str) -> Any:
        """Resolve ``${...}`` and ``$$`` in a string scalar; other values pass through unchanged."""
        if not isinstance(value, str) or "$" not in value:
            return value
        out: list[str] = []
        pieces: list[str] = []
        from_file = from_env = False
        substituted = False
        failed = False
        i = 0
        while i < len(value):
            char = value[i]
            if char != "$" or i + 1 == len(value) or value[i + 1] not in "${":
                out.append(char)
                i += 1
                continue
            if value[i + 1] == "$":
                out.append("$")
                substituted = True
                i += 2
                continue
            end = value.find("}", i + 2)
            if end < 0:
                # The value is not quoted: it may be a literal secret that happens to contain "${".
                self.problem(path, "unterminated ${ (write $$ for a literal $)")
                return _INVALID
            reference = value[i + 2 : end]
            i = end + 1
            substituted = True
            resolved = self._resolve_reference(reference, path)
            if resolved is None:
                failed = True
                continue
            text, is_file = resolved
            out.append(text)
            pieces.append(text)
            if text:
                self.substituted.add(text)
            if is_file:
                from_file = True
                if text:
                    self.secrets.add(text)
            else:
                from_env = True
        if failed:
            return _INVALID
        if not substituted:
            return value
        result = _Substituted("".join(out), tuple(pieces), from_file, from_env)
        if from_file and result:
            self.secrets.add(str(result))
        return result

    def _resolve_reference(self, reference: str, path: str) -> tuple[str, bool] | None:
        env = None if reference.startswith("file:") else _ENV_REFERENCE.fullmatch(reference)
        if env is not None:
            name, default = env.group(1), env.group(2)
            if name in self.environ:
                return self.environ[name], False
            if default is not None:
                return default, False
            self.problem(path, f"environment variable {name} is not set")
            return None
        scheme = _SCHEME_REFERENCE.fullmatch(reference)
        if scheme is not None and scheme.group(1) == "file":
            content = self._read_file(scheme.group(2), path)
            return None if content is None else (content, True)
        if scheme is not None and scheme.group(1) == "env":
            self.problem(path, f"${{{reference}}}: not a valid environment variable name")
            return None
        if scheme is not None:
            self.problem(
                path, f"${{{reference}}}: unsupported substitution {scheme.group(1)!r} (use env or file)"
            )
            return None
        self.problem(
            path, f"${{{reference}}} is not a substitution (use ${{env:NAME}}, ${{file:PATH}}, or $$ for $)"
        )
        return None

    def _read_file(self, name: str, path: str) -> str | None:
        if not name.strip():
            self.problem(path, "${file:} needs a path")
            return None
        full = self.resolve_path(name)
        try:
            with open(full, "rb") as f:
                data = f.read(_MAX_TEXT + 1)
            if len(data) > _MAX_TEXT:
                self.problem(path, f"file {full} is larger than {_MAX_TEXT // 1024} KiB")
                return None
            return data.decode("utf-8").rstrip("\r\n")
        except OSError as e:
            self.problem(path, f"cannot read file {full}: {e.strerror or e}")
        except UnicodeDecodeError:
            self.problem(path, f"cannot read file {full}: not UTF-8 text")
        return None

    def resolve_path(self, name: str) -> str:
        expanded = os.path.expanduser(name.strip())
        return os.path.normpath(os.path.join(self.base_dir, expanded))

    # -- scalars -----------------------------------------------------------------------------------------------

    def text(
        self,
        raw: Any,
        path: str,
        *,
        secret: bool = False,
        nonempty: bool = False,
        choices: tuple[str, ...] | None = None,
        coerce: bool = False,
        max_length: int = _MAX_TEXT,
    ) -> str | _Invalid:
        """A string (integers are accepted as their digits; with ``coerce`` numbers and booleans too)."""
        value = self.substitute(raw, path)
        if isinstance(value, _Invalid):
            return value
        if isinstance(value, bool):
            if not coerce:
                return self.problem(path, f"must be a string, got {_a(value)} (quote it)")
            value = "true" if value else "false"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not coerce:
                return self.problem(path, f"must be a string, got {_a(value)} (quote it)")
            value = str(value)
        elif not isinstance(value, str):
            return self.problem(path, f"must be a string, got {_a(value)}")
        if len(value) > max_length:
            return self.problem(path, f"is longer than {max_length} characters")
        if nonempty and not value.strip():
            return self.problem(path, "must not be empty")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=_HINT_CUTOFF)
            hint = f"; did you mean {close[0]}?" if close and not _is_hidden(value) else ""
            return self.problem(path, f"{_show_value(value)} is not one of {', '.join(choices)}{hint}")
        if secret:
            if not isinstance(value, _Substituted):
                self.warn(
                    path, "secret written literally in the config file; prefer ${env:NAME} or ${file:PATH}"
                )
            return self.secret(value)
        if _is_hidden(value):
            return Secret(value)
        return str(value)

    def integer(
        self, raw: Any, path: str, *, minimum: float = 0, maximum: float = _MAX_INT
    ) -> int | _Invalid:
        value = self.substitute(raw, path)
        if isinstance(value, _Invalid):
            return value
        if isinstance(value, _Substituted):
            number = int(value.strip()) if re.fullmatch(r"\s*[+-]?[0-9]{1,40}\s*", value) else None
            if number is None:
                return self.problem(path, f"{_show_value(value)} is not an integer")
            value = number
        if isinstance(value, int) and not isinstance(value, bool):
            if not minimum <= value <= maximum:
                return self.problem(path, f"must be between {_number(minimum)} and {_number(maximum)}")
            return value
        hint = (
            " (remove the quotes)"
            if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value)
            else ""
        )
        return self.problem(path, f"must be an integer, got {_a(value)}{hint}")

    def boolean(self, raw: Any, path: str) -> bool | _Invalid:
        value = self.substitute(raw, path)
        if isinstance(value, _Invalid):
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, _Substituted):
            word = value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            return self.problem(path, f"{_show_value(value)} is not a boolean (use true or false)")
        hint = (
            " (remove the quotes)"
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE
            else ""
        )
        return self.problem(path, f"must be true or false, got {_a(value)}{hint}")

    def duration(
        self, raw: Any, path: str, *, positive: bool = False, minimum: float = 0.0, maximum: float = _MAX_DURATION
    ) -> float | _Invalid:
        value = self.substitute(raw, path)
        if isinstance(value, _Invalid):
            return value
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            return self.problem(path, f"must be a duration such as 30s, got {_a(value)}")
        if isinstance(value, str) and len(value) > _MAX_DURATION_CHARS:
            return self.problem(path, f"is not a duration {DURATION_HINT}")
        try:
            seconds = parse_duration(value)
        except (ValueError, OverflowError) as e:
            if isinstance(value, str) and _is_hidden(value):
                return self.problem(path, f"{_show_value(value)} is not a duration {DURATION_HINT}")
            return self.problem(path, str(e))
        if positive and seconds <= 0:
            return self.problem(path, "must be greater than 0")
        if not minimum <= seconds <= maximum:
            return self.problem(
                path, f"must be between {format_duration(minimum)} and {format_duration(maximum)}"
            )
        return seconds

    def string_list(
        self, raw: Any, path: str, *, choices: tuple[str, ...] | None = None
    ) -> tuple[str, ...] | _Invalid:
        if not isinstance(raw, list):
            return self.problem(path, f"must be a list of strings, got {_a(raw)}")
        items: list[str] = []
        ok = True
        for index, item in enumerate(raw):
            value = self.text(item, f"{path}[{index}]", choices=choices, nonempty=True)
            if isinstance(value, _Invalid):
                ok = False
            else:
                items.append(value)
        return tuple(items) if ok else _INVALID

    def string_map(
        self,
        raw: Any,
        path: str,
        *,
        key_check: Callable[[str, str], bool] | None = None,
        secret: bool = False,
        max_length: int = _MAX_TEXT,
    ) -> dict[str, str] | _Invalid:
        """A mapping of strings to strings; numbers and booleans are coerced (except secret values)."""
        mapping = self.mapping(raw, path)
        if mapping is None:
            return _INVALID
        out: dict[str, str] = {}
        ok = True
        for key, item in mapping.items():
            item_path = _join(path, key)
            if key_check is not None and not key_check(key, item_path):
                ok = False
                continue
            if item is None:
                self.problem(item_path, "must be a string, got null")
                ok = False
                continue
            if secret:
                value = self.substitute(item, item_path)
                if isinstance(value, _Invalid):
                    ok = False
                    continue
                if isinstance(value, int) and not isinstance(value, bool):
                    value = str(value)
                if not isinstance(value, str):
                    self.problem(item_path, f"must be a string, got {_a(value)}")
                    ok = False
                    continue
                if len(value) > max_length:
                    self.problem(item_path, f"is longer than {max_length} characters")
                    ok = False
                    continue
                out[key] = self.secret(value)
            else:
                text = self.text(item, item_path, coerce=True, max_length=max_length)
                if isinstance(text, _Invalid):
                    ok = False
                else:
                    out[key] = text
        return out if ok else _INVALID

    def mapping(self, raw: Any, path: str) -> dict[str, Any] | None:
        """A mapping with string keys (null is an empty mapping); None after reporting a problem."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, f"must be a mapping, got {_a(raw)}")
            return None
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                shown = json.dumps(key) if isinstance(key, bool | int | float) or key is None else repr(key)
                self.problem(path, f"key {shown} must be a string (quote it)")
                continue
            out[key] = value
        return out

    def file_path(self, raw: Any, path: str) -> str | _Invalid | None:
        if raw is None:
            return None
        name = self.text(raw, path, nonempty=True)
        if isinstance(name, _Invalid):
            return _INVALID
        full = self.resolve_path(name)
        if not os.path.isfile(full):
            where = "" if full == name else f" (looked for {full})"
            return self.problem(path, f"file {_show_value(name)} does not exist{where}")
        return full

    def option(self, raw: Any, path: str, option: Option) -> Any:
        kind = option.kind
        if kind == "str":
            return self.text(raw, path, choices=option.choices)
        if kind == "secret":
            return self.text(raw, path, secret=True, nonempty=True)
        if kind == "int":
            low, high = option.bounds()
            return self.integer(raw, path, minimum=low, maximum=high)
        if kind == "bool":
            return self.boolean(raw, path)
        if kind == "duration":
            low, high = option.bounds()
            return self.duration(raw, path, minimum=low, maximum=high)
        if kind == "list[str]":
            return self.string_list(raw, path, choices=option.choices)
        value = self.string_map(raw, path)
        return _INVALID if isinstance(value, _Invalid) else MappingProxyType(value)

    # -- sections ----------------------------------------------------------------------------------------------

    def parse(self, raw: Any) -> Config:
        if raw is None:
            raw = {}
        top = self.mapping(raw, "")
        if top is None:
            return Config()

        # Providers inherit collection_interval, so read it first; its problems are reported in file order.
        collection_interval = _DEFAULT_COLLECTION_INTERVAL
        early: list[str] = []
        if top.get("collection_interval") is not None:
            before = len(self.problems)
            value = self.duration(
                top["collection_interval"], "collection_interval", positive=True, maximum=_MAX_COLLECTION_INTERVAL
            )
            if not isinstance(value, _Invalid):
                collection_interval = value
            early, self.problems[before:] = self.problems[before:], []

        export_interval = _DEFAULT_EXPORT_INTERVAL
        progress_interval = _DEFAULT_PROGRESS_INTERVAL
        storage = StorageConfig()
        health = HealthConfig()
        metrics: dict[str, bool] = {}
        pricing, attribution = PricingConfig(), AttributionConfig()
        budgets: tuple[BudgetConfig, ...] = ()
        focus: FocusConfig | None = None
        exporters: list[ExporterConfig] = []
        providers: list[ProviderConfig] = []
        saw_exporters = saw_providers = False
        for key, value in top.items():
            if key == "collection_interval":
                self.problems.extend(early)
            elif key == "export_interval":
                if value is not None:
                    interval = self.duration(value, key, positive=True, maximum=_MAX_EXPORT_INTERVAL)
                    if not isinstance(interval, _Invalid):
                        export_interval = interval
            elif key == "progress_interval":
                if value is not None:
                    interval = self.duration(value, key, positive=True, maximum=_MAX_PROGRESS_INTERVAL)
                    if not isinstance(interval, _Invalid):
                        progress_interval = interval
            elif key == "storage":
                storage = self.storage(value)
            elif key == "health":
                health = self.health(value)
            elif key == "metrics":
                metrics = self.metrics(value)
            elif key == "pricing":
                pricing = parse_pricing(self, value)
            elif key == "budgets":
                budgets = parse_budgets(self, value)
            elif key == "attribution":
                attribution = parse_attribution(self, value)
            elif key == "focus":
                focus = parse_focus(self, value)
            elif key == "exporters":
                section = self.mapping(value, key)
                saw_exporters = bool(section) or section is None
                for name, body in (section or {}).items():
                    exporter = self.exporter(name, body)
                    if exporter is not None:
                        exporters.append(exporter)
            elif key == "providers":
                section = self.mapping(value, key)
                saw_providers = bool(section) or section is None
                for name, body in (section or {}).items():
                    provider = self.provider(name, body, collection_interval)
                    if provider is not None:
                        providers.append(provider)
            else:
                self.problem(key, _unknown_key_message(key, _TOP_LEVEL_KEYS))

        if not saw_providers:
            self.problem("providers", "at least one provider instance is required")
        if not saw_exporters:
            self.warn("exporters", "none configured; `run` needs at least one")
        if export_interval >= _PROMETHEUS_METRIC_EXPIRATION:
            self.warn(
                "export_interval",
                f"{format_duration(export_interval)} is not under 5m, the Collector prometheus exporter's default"
                " metric_expiration: series would go stale between exports",
            )
        return Config(
            collection_interval=collection_interval,
            export_interval=export_interval,
            progress_interval=progress_interval,
            storage=storage,
            health=health,
            metrics=MappingProxyType(metrics),
            pricing=pricing,
            budgets=budgets,
            attribution=attribution,
            focus=focus,
            exporters=tuple(exporters),
            providers=tuple(providers),
            secrets=frozenset(self.secrets),
            substituted=frozenset(self.substituted),
            warnings=tuple(self.warnings),
            provider_options=MappingProxyType(dict(self.schemas)),
        )

    def storage(self, raw: Any) -> StorageConfig:
        section = self.mapping(raw, "storage")
        path, retention = StorageConfig.path, StorageConfig.retention
        for key, value in (section or {}).items():
            key_path = _join("storage", key)
            if key == "path":
                if value is None:
                    self.problem(key_path, "must not be empty")
                    continue
                text = self.text(value, key_path, nonempty=True)
                if not isinstance(text, _Invalid):
                    path = text
            elif key == "retention":
                if value is not None:
                    seconds = self.duration(value, key_path, positive=True, maximum=_MAX_RETENTION)
                    if not isinstance(seconds, _Invalid):
                        retention = seconds
            else:
                self.problem(key_path, _unknown_key_message(key, _STORAGE_KEYS))
        return StorageConfig(path=path, retention=retention)

    def metrics(self, raw: Any) -> dict[str, bool]:
        from otel_llm_receiver.catalog import CATALOG  # the catalog is data; imported late like providers

        out: dict[str, bool] = {}
        for name, body in (self.mapping(raw, "metrics") or {}).items():
            path = _join("metrics", name)
            if name not in CATALOG.metrics:
                close = difflib.get_close_matches(str(name), list(CATALOG.metrics), n=1)
                hint = f"; did you mean {close[0]}?" if close else " (see docs/metrics.md)"
                self.problem(path, f"unknown metric{hint}")
                continue
            for key, value in (self.mapping(body, path) or {}).items():
                if key == "enabled":
                    flag = self.boolean(value, _join(path, key))
                    if not isinstance(flag, _Invalid):
                        out[name] = flag
                else:
                    self.problem(_join(path, key), _unknown_key_message(key, _METRIC_KEYS))
        return out

    def health(self, raw: Any) -> HealthConfig:
        section = self.mapping(raw, "health")
        endpoint = HealthConfig.endpoint
        window: float | None = None
        for key, value in (section or {}).items():
            key_path = _join("health", key)
            if key == "endpoint":
                text = self.text("" if value is None else value, key_path)
                if isinstance(text, _Invalid):
                    continue
                if text and _split_host_port(text) is None:
                    self.problem(
                        key_path,
                        f'{_show_value(text)} must be host:port such as 127.0.0.1:13133 (or "" to disable)',
                    )
                    continue
                endpoint = text
            elif key == "export_failure_window":
                seconds = self.duration(value, key_path, positive=True)
                if not isinstance(seconds, _Invalid):
                    window = seconds
            else:
                self.problem(key_path, _unknown_key_message(key, _HEALTH_KEYS))
        return HealthConfig(endpoint=endpoint, export_failure_window=window)

    def exporter(self, name: str, raw: Any) -> ExporterConfig | None:
        path = _join("exporters", name)
        type_, slash, instance = name.partition("/")
        protocol = EXPORTER_TYPES.get(type_)
        if protocol is None:
            valid = ", ".join(EXPORTER_TYPES)
            close = difflib.get_close_matches(type_, list(EXPORTER_TYPES), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            if type_ in ("prometheus", "prometheusremotewrite", "debug"):
                hint += " (this receiver sends OTLP only: configure that exporter in the Collector)"
            self.problem(path, f"unknown exporter type {_quoted(type_)} (valid: {valid}){hint}")
            return None
        ok = True
        if slash and not _INSTANCE_NAME.fullmatch(instance):
            self.problem(path, f"exporter name {_quoted(instance)} must match [A-Za-z0-9_.-]+")
            ok = False
        section = self.mapping(raw, path)
        if section is None:
            return None
        endpoint: str | None = None
        headers: dict[str, str] = {}
        compression: Literal["gzip", "none"] = "gzip"
        timeout = _DEFAULT_EXPORTER_TIMEOUT
        tls = TLSConfig()
        for key, value in section.items():
            key_path = _join(path, key)
            if key == "endpoint":
                if value is None:
                    continue
                text = self.text(value, key_path, nonempty=True)
                if isinstance(text, _Invalid) or not self.check_exporter_endpoint(text, protocol, key_path):
                    ok = False
                else:
                    endpoint = text
            elif key == "headers":
                parsed = self.string_map(value, key_path, key_check=self.check_header_name, secret=True)
                if isinstance(parsed, _Invalid):
                    ok = False
                else:
                    headers = parsed
            elif key == "compression":
                if value is None:
                    continue
                text = self.text(value, key_path, choices=_COMPRESSIONS)
                if isinstance(text, _Invalid):
                    ok = False
                else:
                    compression = cast(Literal["gzip", "none"], text)
            elif key == "timeout":
                if value is None:
                    continue
                seconds = self.duration(value, key_path, positive=True, maximum=_MAX_TIMEOUT)
                if isinstance(seconds, _Invalid):
                    ok = False
                else:
                    timeout = seconds
            elif key == "tls":
                parsed_tls = self.tls(value, key_path)
                if parsed_tls is None:
                    ok = False
                else:
                    tls = parsed_tls
            else:
                self.problem(
                    key_path, _unknown_key_message(key, _EXPORTER_KEYS, _COLLECTOR_ONLY_KEYS["exporter"])
                )
                ok = False
        if "endpoint" not in section or (section["endpoint"] is None):
            example = "collector:4317" if protocol == "grpc" else "http://collector:4318"
            self.problem(_join(path, "endpoint"), f"is required (e.g. {example})")
            return None
        if not ok or endpoint is None:
            return None
        if tls.insecure and endpoint.startswith("https://"):
            self.warn(_join(path, "tls.insecure"), "is true but the endpoint says https://; https:// wins")
        return ExporterConfig(
            name=name,
            protocol=protocol,
            endpoint=endpoint,
            headers=headers,
            compression=compression,
            timeout=timeout,
            tls=tls,
        )

    def check_exporter_endpoint(self, endpoint: str, protocol: str, path: str) -> bool:
        if protocol == "grpc":
            if "://" in endpoint:
                bad = _url_problem(endpoint, require_port=True, allow_path=False)
            else:
                split = _split_host_port(endpoint)
                bad = split is None or not split[0]
            if bad:
                self.problem(
                    path,
                    f"{_show_value(endpoint)} must be host:port or http(s)://host:port for OTLP/gRPC"
                    " (e.g. collector:4317)",
                )
            return not bad
        if _url_problem(endpoint, require_port=False, allow_path=True):
            self.problem(
                path,
                f"{_show_value(endpoint)} must be a URL http(s)://host[:port][/path] for OTLP/HTTP"
                " (e.g. http://collector:4318)",
            )
            return False
        if endpoint.rstrip("/").endswith("/v1/metrics"):
            self.warn(
                path, "ends with /v1/metrics, which is appended to the endpoint (as the Collector does)"
            )
        return True

    def check_header_name(self, name: str, path: str) -> bool:
        if not _HEADER_NAME.fullmatch(name):
            self.problem(path, "is not a valid header name")
            return False
        return True

    def tls(self, raw: Any, path: str) -> TLSConfig | None:
        section = self.mapping(raw, path)
        if section is None:
            return None
        ok = True
        insecure = False
        files: dict[str, str | None] = {"ca_file": None, "cert_file": None, "key_file": None}
        for key, value in section.items():
            key_path = _join(path, key)
            if key == "insecure":
                if value is None:
                    continue
                flag = self.boolean(value, key_path)
                if isinstance(flag, _Invalid):
                    ok = False
                else:
                    insecure = flag
            elif key in files:
                resolved = self.file_path(value, key_path)
                if isinstance(resolved, _Invalid):
                    ok = False
                else:
                    files[key] = resolved
            else:
                self.problem(key_path, _unknown_key_message(key, _TLS_KEYS, _COLLECTOR_ONLY_KEYS["tls"]))
                ok = False
        if ok and (files["cert_file"] is None) != (files["key_file"] is None):
            self.problem(path, "cert_file and key_file must be given together")
            ok = False
        if not ok:
            return None
        return TLSConfig(insecure=insecure, **files)

    def provider(self, name: str, raw: Any, default_interval: float) -> ProviderConfig | None:
        path = _join("providers", name)
        type_, slash, instance = name.partition("/")
        ok = True
        schema = self.schemas.get(type_)
        if schema is None:
            known = sorted(self.schemas)
            close = difflib.get_close_matches(type_, known, n=1, cutoff=_HINT_CUTOFF)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.problem(
                path, f"unknown provider type {_quoted(type_)} (known: {', '.join(known) or 'none'}){hint}"
            )
            ok = False
        if slash and not _INSTANCE_NAME.fullmatch(instance):
            self.problem(
                path, f"instance name {_quoted(instance)} must match [A-Za-z0-9_.-]+ (as in openai/prod)"
            )
            ok = False
        section = self.mapping(raw, path)
        if section is None:
            return None

        common: dict[str, Any] = {
            "collection_interval": default_interval,
            "timeout": _DEFAULT_PROVIDER_TIMEOUT,
            "tenant": "default",
            "endpoint": None,
            "lookback": None,
            "backfill": None,
            "labels": {},
            "enabled": True,
        }
        options: dict[str, Any] = {}
        # A schema may name a common key to give it a provider-specific default (e.g. backfill); the value is
        # then read as the common key and also passed on in options.
        for key, option in (schema or {}).items():
            if key in COMMON_PROVIDER_KEYS and option.default is not None:
                common[key] = _option_default(option)

        for key, value in section.items():
            key_path = _join(path, key)
            if key in COMMON_PROVIDER_KEYS:
                parsed = self.common_provider_key(key, value, key_path)
                if isinstance(parsed, _Invalid):
                    ok = False
                elif parsed is not None:
                    common[key] = parsed
            elif schema is None:
                continue  # unknown type: its own keys cannot be checked
            elif key in schema:
                if value is None:
                    continue
                parsed = self.option(value, key_path, schema[key])
                if isinstance(parsed, _Invalid):
                    ok = False
                else:
                    options[key] = parsed
            else:
                self.problem(key_path, _unknown_key_message(key, COMMON_PROVIDER_KEYS | set(schema)))
                ok = False

        for key, option in (schema or {}).items():
            if key in COMMON_PROVIDER_KEYS:
                options[key] = common[key]
            elif key not in options:
                if option.required and section.get(key) is None:
                    self.problem(_join(path, key), f"is required ({option.kind} option of {type_})")
                    ok = False
                else:
                    options[key] = _option_default(option)
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
            labels=common["labels"],
            enabled=common["enabled"],
            options={key: options[key] for key in schema},
        )

    def common_provider_key(self, key: str, value: Any, path: str) -> Any:
        """The value of one common provider key; None when unset (null), ``_INVALID`` after a problem."""
        if value is None:
            if key == "tenant":
                return self.problem(path, "must not be empty")
            return None
        if key == "collection_interval":
            return self.duration(value, path, positive=True, maximum=_MAX_COLLECTION_INTERVAL)
        if key == "timeout":
            return self.duration(value, path, positive=True, maximum=_MAX_TIMEOUT)
        if key in ("lookback", "backfill"):
            return self.duration(value, path, maximum=_MAX_WINDOW)
        if key == "tenant":
            return self.text(value, path, nonempty=True, max_length=_MAX_NAME)
        if key == "enabled":
            return self.boolean(value, path)
        if key == "endpoint":
            text = self.text(value, path, nonempty=True)
            if isinstance(text, _Invalid):
                return text
            if _url_problem(text, require_port=False, allow_path=True):
                return self.problem(path, f"{_show_value(text)} must be a URL http(s)://host[:port][/path]")
            return text
        labels = self.string_map(value, path, key_check=self.check_label_name, max_length=_MAX_NAME)
        return labels

    def check_label_name(self, name: str, path: str) -> bool:
        if not _LABEL_NAME.fullmatch(name):
            self.problem(
                path, "is not a valid attribute name (letters, digits, _ and ., not starting with a digit)"
            )
            return False
        if name.startswith(_RESERVED_LABEL_PREFIXES) or name in _RESERVED_LABEL_NAMES:
            self.problem(
                path, "is reserved: gen_ai.*, llm.* and error.type are set by the receiver"
            )
            return False
        return True


def _option_default(option: Option) -> Any:
    default = option.default
    if default is None:
        return None
    if option.kind == "duration" and isinstance(default, str):
        return parse_duration(default)
    if option.kind == "duration" and isinstance(default, int | float):
        return float(default)
    if option.kind == "list[str]":
        return tuple(default)
    if option.kind == "map[str,str]":
        return MappingProxyType(dict(default))
    if option.kind == "secret":
        return Secret(default)
    return default
