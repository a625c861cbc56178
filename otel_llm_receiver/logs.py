"""Logging: one line per event, JSON when ``LOG_FORMAT=json``, readable text otherwise, secrets redacted.

Redaction is done once, on the handler, so no call site can forget it: every secret value the config knows
(API keys, header values, file-substituted values) is replaced by ``<redacted>`` in every formatted line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

REDACTED = "<redacted>"
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _Redactor:
    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()

    def set(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole; very short values are not
        # treated as secrets (redacting "1" would garble every line).
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


redact = _Redactor()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        line = f"{ts} {record.levelname:<7} {record.name.removeprefix('otel_llm_receiver.')}: {record.getMessage()}"
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
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD_ATTRS:
                doc[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            doc["exception"] = self.formatException(record.exc_info)
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
    # The OTLP exporters log every retry and failure themselves; the emitter logs one line per state change.
    for noisy in ("opentelemetry.exporter", "opentelemetry.sdk", "urllib3", "httpx", "httpcore", "grpc"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if level.lower() != "debug" else logging.DEBUG)
