"""The receiver's configuration: one Collector-style YAML file, loaded into frozen dataclasses.

``load_config(path)`` reads the file and ``parse_config(raw)`` validates an already-parsed document. Both
gather *every* problem before giving up and raise one ``ConfigError`` whose ``problems`` are one line each,
in file order, each starting with the dotted path of the bad key (instance names are kept whole:
``providers.openai/prod.collection_interval: ...``).

Shape (docs/configuration.md is the reference)::

    collection_interval: 60s          # default poll interval of every provider instance
    export_interval: 30s
    storage: {path: ./otel-llm-data/ledger.db, retention: 90d}   # or backend: postgresql, dsn, lease_duration
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

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from otel_llm_receiver.config_exporters import (
    DEFAULT_EXPORTER_TIMEOUT,
    EXPORTER_TYPES,
    ExporterConfig,
    TLSConfig,
    parse_exporter,
)
from otel_llm_receiver.config_parse import (
    REDACTED,
    Invalid,
    Option,
    OptionKind,
    Parser,
    Secret,
    join_path,
    show_value,
    split_host_port,
    unknown_key_message,
)
from otel_llm_receiver.config_providers import (
    COMMON_PROVIDER_KEYS,
    DEFAULT_COLLECTION_INTERVAL,
    ProviderConfig,
    parse_provider,
)
from otel_llm_receiver.config_storage import StorageConfig, parse_storage
from otel_llm_receiver.config_yaml import compose_config, read_config_text
from otel_llm_receiver.durations import format_duration
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
    "DEFAULT_EXPORTER_TIMEOUT",
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
    "registered_provider_options",
]

_TOP_LEVEL_KEYS = (
    "collection_interval", "export_interval", "progress_interval", "storage", "health", "metrics", "exporters", "providers",
    "pricing", "budgets", "attribution", "focus",
)
_METRIC_KEYS = ("enabled",)
_HEALTH_KEYS = ("endpoint", "export_failure_window")
_MIN_SUBSTRING_SECRET = 4
_DEFAULT_EXPORT_INTERVAL = 30.0
#: The Collector prometheus exporter's default ``metric_expiration``: exports must come more often than this.
_PROMETHEUS_METRIC_EXPIRATION = 300.0
_MAX_COLLECTION_INTERVAL = 86_400.0
_MAX_EXPORT_INTERVAL = 3_600.0
_DEFAULT_PROGRESS_INTERVAL = 5.0  # progress.DEFAULT_INTERVAL (not imported: config stays free of runtime modules)
_MAX_PROGRESS_INTERVAL = 3_600.0



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
    option schema the config was validated against, by provider type (the types it names).
    """

    collection_interval: float = DEFAULT_COLLECTION_INTERVAL
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
                lines.append("    headers: " + ", ".join(f"{k}={REDACTED}" for k in e.headers))
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
        lines.append(self.storage.describe(show))
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
            return REDACTED
        return value


def _describe_optional_duration(value: float | None) -> str:
    return "(provider default)" if value is None else format_duration(value)


def _describe_option(value: Any, kind: str | None, show: _Shower) -> str:
    if isinstance(value, Secret) or kind == "secret":
        return REDACTED if value is not None else "(not set)"
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
                    out.append(f"{join_path(path, key)}: duplicate key (lines {seen[key]} and {line})")
                else:
                    seen[key] = line
                _find_duplicate_keys(value_node, join_path(path, key), out)
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
    schemas = provider_options if provider_options is not None else registered_provider_options()
    parser = _ConfigParser(base_dir=base_dir, environ=environ, schemas=schemas)
    config = parser.parse(raw)
    if parser.problems:
        raise ConfigError(parser.problems)
    return config


def registered_provider_options() -> Mapping[str, Mapping[str, Option]]:
    """Every registered provider type's option schema, looked up when a config is parsed.

    Looked up here, not imported at module level: parsing primitives and sections sit below the providers
    (which declare their options with them), so the registry is only reached once a config is validated.
    """
    from otel_llm_receiver.providers import provider_options

    return provider_options()


class _ConfigParser(Parser):
    """The top-level sections; each other section is read by its own module (exporters, providers, money,
    FOCUS) through the public ``Parser`` readers."""

    def __init__(
        self, *, base_dir: str, environ: Mapping[str, str] | None, schemas: Mapping[str, Mapping[str, Option]]
    ) -> None:
        super().__init__(base_dir=base_dir, environ=environ)
        self.schemas = schemas

    # -- sections ----------------------------------------------------------------------------------------------

    def parse(self, raw: Any) -> Config:
        if raw is None:
            raw = {}
        top = self.mapping(raw, "")
        if top is None:
            return Config()

        # Providers inherit collection_interval, so read it first; its problems are reported in file order.
        collection_interval = DEFAULT_COLLECTION_INTERVAL
        early: list[str] = []
        if top.get("collection_interval") is not None:
            before = len(self.problems)
            value = self.duration(
                top["collection_interval"], "collection_interval", positive=True, maximum=_MAX_COLLECTION_INTERVAL
            )
            if not isinstance(value, Invalid):
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
                    if not isinstance(interval, Invalid):
                        export_interval = interval
            elif key == "progress_interval":
                if value is not None:
                    interval = self.duration(value, key, positive=True, maximum=_MAX_PROGRESS_INTERVAL)
                    if not isinstance(interval, Invalid):
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
                    exporter = parse_exporter(self, name, body)
                    if exporter is not None:
                        exporters.append(exporter)
            elif key == "providers":
                section = self.mapping(value, key)
                saw_providers = bool(section) or section is None
                for name, body in (section or {}).items():
                    provider = parse_provider(self, self.schemas, name, body, collection_interval)
                    if provider is not None:
                        providers.append(provider)
            else:
                self.problem(key, unknown_key_message(key, _TOP_LEVEL_KEYS))

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
            # the schemas of the types it names, not every registered one: looking one up imports its module
            provider_options=MappingProxyType({t: self.schemas[t] for t in dict.fromkeys(p.type for p in providers)}),
        )

    def storage(self, raw: Any) -> StorageConfig:
        return parse_storage(self, raw)

    def metrics(self, raw: Any) -> dict[str, bool]:
        from otel_llm_receiver.catalog import CATALOG  # the catalog is data; imported late like providers

        out: dict[str, bool] = {}
        for name, body in (self.mapping(raw, "metrics") or {}).items():
            path = join_path("metrics", name)
            if name not in CATALOG.metrics:
                close = difflib.get_close_matches(str(name), list(CATALOG.metrics), n=1)
                hint = f"; did you mean {close[0]}?" if close else " (see docs/metrics.md)"
                self.problem(path, f"unknown metric{hint}")
                continue
            for key, value in (self.mapping(body, path) or {}).items():
                if key == "enabled":
                    flag = self.boolean(value, join_path(path, key))
                    if not isinstance(flag, Invalid):
                        out[name] = flag
                else:
                    self.problem(join_path(path, key), unknown_key_message(key, _METRIC_KEYS))
        return out

    def health(self, raw: Any) -> HealthConfig:
        section = self.mapping(raw, "health")
        endpoint = HealthConfig.endpoint
        window: float | None = None
        for key, value in (section or {}).items():
            key_path = join_path("health", key)
            if key == "endpoint":
                text = self.text("" if value is None else value, key_path)
                if isinstance(text, Invalid):
                    continue
                if text and split_host_port(text) is None:
                    self.problem(
                        key_path,
                        f'{show_value(text)} must be host:port such as 127.0.0.1:13133 (or "" to disable)',
                    )
                    continue
                endpoint = text
            elif key == "export_failure_window":
                seconds = self.duration(value, key_path, positive=True)
                if not isinstance(seconds, Invalid):
                    window = seconds
            else:
                self.problem(key_path, unknown_key_message(key, _HEALTH_KEYS))
        return HealthConfig(endpoint=endpoint, export_failure_window=window)
