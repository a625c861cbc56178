"""otel-llm-receiver: LLM provider usage and cost, polled, de-duplicated and emitted as OpenTelemetry metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("otel-llm-receiver")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
