"""Google Vertex AI (and Gemini Developer API) token usage from Cloud Monitoring.

``provider`` holds the poll; ``monitoring`` the gRPC client edge (paging, retries, error mapping); ``series``
the pure mapping from aligned time series to records. ``google-cloud-monitoring`` is imported only when a
poll runs, so the package imports without the ``[vertex]`` extra and the config check names the missing extra.
"""

from __future__ import annotations

from .provider import VertexAIProvider

__all__ = ["VertexAIProvider"]
