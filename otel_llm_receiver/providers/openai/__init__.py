"""The ``openai`` provider: OpenAI organization usage and costs (docs/providers/openai.md).

Modules, one job each: ``provider`` (windows, endpoints, names cache), ``pages`` (paging and envelopes),
``endpoints`` (the usage types and their group fields), ``normalize`` (rows -> canonical records: the
validating reference mapping and the fast one), ``reader`` (a query's rows checked, de-duplicated and mapped in
one pass), ``keys`` (what makes a row unique), ``records`` (``UsageRecord`` built through its slots) and
``fields`` (typed reads that name the bad field).
"""

from .provider import OpenAIProvider

__all__ = ["OpenAIProvider"]
