"""Azure OpenAI / AI Foundry: token metrics per deployment from Azure Monitor, spend from Cost Management.

Modules, one job each: ``auth`` (azure-identity tokens), ``discovery`` (accounts and deployments),
``metrics`` (Azure Monitor -> usage records), ``costs`` (Cost Management -> cost records), ``provider``
(one poll). See docs/providers/azure_openai.md.
"""

from __future__ import annotations

from .provider import AzureOpenAIProvider

__all__ = ["AzureOpenAIProvider"]
