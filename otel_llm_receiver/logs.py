"""Logging: one line per event, JSON when ``LOG_FORMAT=json``, readable text otherwise, secrets redacted.

Redaction is done once, in the formatter of the one root handler, so no call site can forget it, and every
library's records (botocore, azure, urllib3, google, grpc, httpx) go through it too (issue 17.9):

* every secret value the config knows (API keys, header values) and every value a ``${env:}`` / ``${file:}``
  substitution produced;
* the values of credential-looking environment variables (``*SECRET*``, ``*TOKEN*``, ``*KEY*``, ...), which is
  where SDK credential chains read them from;
* credential shapes, whatever their source: AWS access key ids (``AKIA...``, ``ASIA...``), ``sk-...`` keys,
  ``Bearer`` tokens, and the values of ``Authorization``, ``X-Amz-Security-Token``, ``api-key`` and similar
  headers or fields, as botocore and azure-core print them at debug level.

Third-party loggers stay at WARNING unless ``--log-level debug`` (issue 18.2): their request dumps are not
events of the receiver. A multi-line message is folded into one line (``\\n``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

REDACTED = "<redacted>"

#: Loggers of the libraries the receiver uses: WARNING unless debug, and through our formatter.
THIRD_PARTY_LOGGERS = (
    "azure", "botocore", "boto3", "s3transfer", "urllib3", "requests", "google", "grpc", "httpx", "httpcore",
    "msal", "hpack",
)
# The OTLP exporters log every retry and failure themselves; the emitter logs one line per state change.
_SILENT_LOGGERS = ("opentelemetry.exporter", "opentelemetry.sdk")

_CREDENTIAL_ENV = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL|IDENTITY_HEADER|MSI_", re.IGNORECASE)
_FIELD = (
    r"x-amz-security-token|x-amz-credential|x-amz-signature|signature|authorization|proxy-authorization"
    r"|x-api-key|api-key|x-goog-api-key|ocp-apim-subscription-key|x-identity-header|client_secret"
    r"|aws_secret_access_key|aws_session_token|secretaccesskey|sessiontoken|access_token|refresh_token"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # a header or field name, then its value (quoted or not; bytes reprs too), as SDKs print them
    (re.compile(rf"(?i)((?:{_FIELD})[\"']?\s*[:=]\s*(?:b(?=[\"']))?[\"']?)(?:bearer\s+|basic\s+)?[^\"'\s,;&}}\]]+"),
     rf"\1{REDACTED}"),
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), f"Bearer {REDACTED}"),
)
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _Redactor:
    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()

    def set(self, secrets: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
        """Redact these values, and those of credential-looking variables of ``environ`` (default: os.environ)."""
        env = os.environ if environ is None else environ
        from_env = {v for k, v in env.items() if _CREDENTIAL_ENV.search(k) and len(v) >= 8}
        # Longest first, so a secret that contains another is replaced whole; very short values are not
        # treated as secrets (redacting "1" would garble every line).
        self.secrets = tuple(sorted({s for s in (*secrets, *from_env) if len(s) >= 6}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


redact = _Redactor()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        message = record.getMessage().replace("\r", "").replace("\n", "\\n")
        line = f"{ts} {record.levelname:<7} {record.name.removeprefix('otel_llm_receiver.')}: {message}"
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD_ATTRS:
                doc[k] = v if isinstance(v, (int, float, bool, type(None))) else redact(str(v))
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            doc["exception"] = redact(self.formatException(record.exc_info))
        # Redacted field by field (a JSON-escaped quote would hide a value's end), then whole (names, keys).
        return redact(json.dumps(doc, ensure_ascii=False))


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is when a line is logged (a redirect, a test's capture), not to the
    stream that was current when logging was set up: ``main()`` may run several times in one process."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "info", *, fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (CLI entry points call this)."""
    fmt = (fmt or os.environ.get("LOG_FORMAT", "text")).lower()
    handler: logging.Handler = logging.StreamHandler(stream or _CurrentStderr())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    debug = level.lower() == "debug"
    for name in _SILENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)
    for name in THIRD_PARTY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(logging.DEBUG if debug else logging.WARNING)
        # A library that installed its own handler would print around our formatter (and its redaction).
        for h in list(library.handlers):
            library.removeHandler(h)
        library.propagate = True
