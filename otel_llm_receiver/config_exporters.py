"""The ``exporters:`` config section: where and how OTLP is sent, validated like the Collector's exporters.

Kept out of ``config.py`` (which dispatches to ``parse_exporter``) so each section owns its schema; built on
the public readers of ``config_parse``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from otel_llm_receiver.config_parse import (
    INSTANCE_NAME,
    MAX_TIMEOUT,
    Invalid,
    Parser,
    Secret,
    join_path,
    quoted,
    show_value,
    split_host_port,
    unknown_key_message,
    url_problem,
)

__all__ = ["DEFAULT_EXPORTER_TIMEOUT", "EXPORTER_TYPES", "ExporterConfig", "TLSConfig", "parse_exporter", "parse_tls"]

#: Exporter types and the protocol each speaks. ``otlp_grpc`` / ``otlp_http`` are the Collector's names since
#: v0.144; ``otlp`` / ``otlphttp`` are the older names, still accepted by both the Collector and us.
EXPORTER_TYPES: Mapping[str, Literal["grpc", "http"]] = MappingProxyType(
    {"otlp": "grpc", "otlp_grpc": "grpc", "otlphttp": "http", "otlp_http": "http"}
)

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

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
DEFAULT_EXPORTER_TIMEOUT = 10.0


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
    timeout: float = DEFAULT_EXPORTER_TIMEOUT
    tls: TLSConfig = field(default_factory=TLSConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", MappingProxyType({k: Secret(v) for k, v in self.headers.items()}))



def parse_exporter(p: Parser, name: str, raw: Any) -> ExporterConfig | None:
    path = join_path("exporters", name)
    type_, slash, instance = name.partition("/")
    protocol = EXPORTER_TYPES.get(type_)
    if protocol is None:
        valid = ", ".join(EXPORTER_TYPES)
        close = difflib.get_close_matches(type_, list(EXPORTER_TYPES), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        if type_ in ("prometheus", "prometheusremotewrite", "debug"):
            hint += " (this receiver sends OTLP only: configure that exporter in the Collector)"
        p.problem(path, f"unknown exporter type {quoted(type_)} (valid: {valid}){hint}")
        return None
    ok = True
    if slash and not INSTANCE_NAME.fullmatch(instance):
        p.problem(path, f"exporter name {quoted(instance)} must match [A-Za-z0-9_.-]+")
        ok = False
    section = p.mapping(raw, path)
    if section is None:
        return None
    endpoint: str | None = None
    headers: dict[str, str] = {}
    compression: Literal["gzip", "none"] = "gzip"
    timeout = DEFAULT_EXPORTER_TIMEOUT
    tls = TLSConfig()
    for key, value in section.items():
        key_path = join_path(path, key)
        if key == "endpoint":
            if value is None:
                continue
            text = p.text(value, key_path, nonempty=True)
            if isinstance(text, Invalid) or not _check_endpoint(p, text, protocol, key_path):
                ok = False
            else:
                endpoint = text
        elif key == "headers":
            parsed = p.string_map(value, key_path, key_check=lambda name, at: _check_header_name(p, name, at), secret=True)
            if isinstance(parsed, Invalid):
                ok = False
            else:
                headers = parsed
        elif key == "compression":
            if value is None:
                continue
            text = p.text(value, key_path, choices=_COMPRESSIONS)
            if isinstance(text, Invalid):
                ok = False
            else:
                compression = cast(Literal["gzip", "none"], text)
        elif key == "timeout":
            if value is None:
                continue
            seconds = p.duration(value, key_path, positive=True, maximum=MAX_TIMEOUT)
            if isinstance(seconds, Invalid):
                ok = False
            else:
                timeout = seconds
        elif key == "tls":
            parsed_tls = parse_tls(p, value, key_path)
            if parsed_tls is None:
                ok = False
            else:
                tls = parsed_tls
        else:
            p.problem(
                key_path, unknown_key_message(key, _EXPORTER_KEYS, _COLLECTOR_ONLY_KEYS["exporter"])
            )
            ok = False
    if "endpoint" not in section or (section["endpoint"] is None):
        example = "collector:4317" if protocol == "grpc" else "http://collector:4318"
        p.problem(join_path(path, "endpoint"), f"is required (e.g. {example})")
        return None
    if not ok or endpoint is None:
        return None
    if tls.insecure and endpoint.startswith("https://"):
        p.warn(join_path(path, "tls.insecure"), "is true but the endpoint says https://; https:// wins")
    return ExporterConfig(
        name=name,
        protocol=protocol,
        endpoint=endpoint,
        headers=headers,
        compression=compression,
        timeout=timeout,
        tls=tls,
    )

def _check_endpoint(p: Parser, endpoint: str, protocol: str, path: str) -> bool:
    if protocol == "grpc":
        if "://" in endpoint:
            bad = url_problem(endpoint, require_port=True, allow_path=False)
        else:
            split = split_host_port(endpoint)
            bad = split is None or not split[0]
        if bad:
            p.problem(
                path,
                f"{show_value(endpoint)} must be host:port or http(s)://host:port for OTLP/gRPC"
                " (e.g. collector:4317)",
            )
        return not bad
    if url_problem(endpoint, require_port=False, allow_path=True):
        p.problem(
            path,
            f"{show_value(endpoint)} must be a URL http(s)://host[:port][/path] for OTLP/HTTP"
            " (e.g. http://collector:4318)",
        )
        return False
    if endpoint.rstrip("/").endswith("/v1/metrics"):
        p.warn(
            path, "ends with /v1/metrics, which is appended to the endpoint (as the Collector does)"
        )
    return True

def _check_header_name(p: Parser, name: str, path: str) -> bool:
    if not _HEADER_NAME.fullmatch(name):
        p.problem(path, "is not a valid header name")
        return False
    return True

def parse_tls(p: Parser, raw: Any, path: str) -> TLSConfig | None:
    section = p.mapping(raw, path)
    if section is None:
        return None
    ok = True
    insecure = False
    files: dict[str, str | None] = {"ca_file": None, "cert_file": None, "key_file": None}
    for key, value in section.items():
        key_path = join_path(path, key)
        if key == "insecure":
            if value is None:
                continue
            flag = p.boolean(value, key_path)
            if isinstance(flag, Invalid):
                ok = False
            else:
                insecure = flag
        elif key in files:
            resolved = p.file_path(value, key_path)
            if isinstance(resolved, Invalid):
                ok = False
            else:
                files[key] = resolved
        else:
            p.problem(key_path, unknown_key_message(key, _TLS_KEYS, _COLLECTOR_ONLY_KEYS["tls"]))
            ok = False
    if ok and (files["cert_file"] is None) != (files["key_file"] is None):
        p.problem(path, "cert_file and key_file must be given together")
        ok = False
    if not ok:
        return None
    return TLSConfig(insecure=insecure, **files)
