"""The receiver's exception tree.

    ReceiverError
    ├── ConfigError      .problems: every problem found, each naming its key path
    ├── ProviderError    .provider (instance name), .error_type (auth | rate_limited | timeout |
    │                    network | server_error | bad_response | config), .retry_after (seconds, when the API said)
    ├── ResponseShapeError  a provider's answer does not fit its documented shape; the message starts with
    │                    the JSON path of the field (``data[3].results[1].input_tokens``). Also a ValueError.
    │                    The provider turns it into one ProviderError(error_type="bad_response") for the poll
    ├── LedgerError      the ledger could not be read or written (disk full, corrupt file, ...)
    └── ExportError      an OTLP exporter could not be built or failed

Third-party errors (httpx, boto3, grpc, sqlite3) are translated into these at the edge where they occur,
so that the scheduler can classify every failure into one ``error.type`` and log one line for it.
"""

from __future__ import annotations

from typing import Literal

ErrorType = Literal[
    "auth", "rate_limited", "timeout", "network", "server_error", "bad_response", "config", "storage"
]
ERROR_TYPES: tuple[ErrorType, ...] = (
    "auth", "rate_limited", "timeout", "network", "server_error", "bad_response", "config", "storage",
)


class ReceiverError(Exception):
    """Base class of every error the receiver raises on purpose."""


class ConfigError(ReceiverError):
    """The configuration is invalid. ``problems`` holds one line per problem, each starting with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) if self.problems else "invalid configuration")


class ProviderError(ReceiverError):
    """A poll of one provider instance failed, classified for the ``error.type`` attribute."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        error_type: ErrorType = "bad_response",
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.error_type: ErrorType = error_type
        self.retry_after = retry_after
        super().__init__(message)


class ResponseShapeError(ReceiverError, ValueError):
    """A provider's response does not match its documented shape; the message starts with the field's JSON path.

    Raised by the shared readers of ``providers/shape.py``, so that every provider rejects a malformed answer the
    same way, whole, and the poll's one log line names the field. It stays a ``ValueError`` so that code written
    against the parsing of numbers and times (``Decimal``, ``fromisoformat``) keeps catching it.
    """


class LedgerError(ReceiverError):
    """The ledger could not be opened, migrated, read or written."""


class ExportError(ReceiverError):
    """An exporter could not be configured, or an export failed."""
