"""otel-llm-receiver: LLM provider usage and cost, polled, de-duplicated and emitted as OpenTelemetry metrics."""

from ._version import __version__

__all__ = ["__version__"]
