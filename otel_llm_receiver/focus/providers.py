"""Who is who in a FOCUS row, per provider: the service, the provider, the publisher, the invoice issuer.

FOCUS separates the entity that makes a service available (ProviderName; ServiceProviderName from 1.3), the
one that produced what was used (PublisherName), the one that sends the invoice (InvoiceIssuerName) and, from
1.3, the one whose infrastructure runs it (HostProviderName). For a model vendor's own API they are one company.
On a cloud platform the cloud is provider, host and issuer while the model's maker is the publisher: Claude on
Amazon Bedrock is published by Anthropic and invoiced by AWS (third-party Bedrock models bill through AWS
Marketplace, docs/providers/bedrock.md: FOCUS 1.2's origination appendix, scenario 3.1, makes the cloud the
provider and the maker the publisher), a Llama model on Vertex AI is published by Meta (``llm.publisher``,
docs/providers/vertex_ai.md), GPT-4o on Azure is published by OpenAI and invoiced by Microsoft.

FOCUS 1.3 replaces ProviderName with ServiceProviderName, which "in marketplace scenarios represents the seller
rather than the marketplace operator" (serviceprovidername.md): for a third-party model sold through AWS
Marketplace that is the model's maker, while AWS stays host (the customer chose Bedrock) and invoice issuer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ..providers.descriptors import ProviderFacts, facts_by_genai_name

__all__ = ["PROVIDERS", "ProviderFacts", "facts", "publisher_of", "service_provider_of"]


#: By ``gen_ai.provider.name`` (catalog.yaml), from each provider folder's ``provider.yaml``. The cloud names are
#: the ones the clouds' own FOCUS exports use.
PROVIDERS: Final[Mapping[str, ProviderFacts]] = facts_by_genai_name()

#: Model makers, by the vendor prefix of a model id (``anthropic.claude-...`` on Bedrock), the ``llm.publisher``
#: label (Vertex AI), or a word in the model's name; first match wins.
_VENDORS: Final[tuple[tuple[str, str], ...]] = (
    ("anthropic", "Anthropic"), ("claude", "Anthropic"),
    ("openai", "OpenAI"), ("gpt", "OpenAI"), ("text-embedding", "OpenAI"), ("o1", "OpenAI"), ("o3", "OpenAI"),
    ("o4", "OpenAI"), ("dall-e", "OpenAI"), ("whisper", "OpenAI"),
    ("google", "Google"), ("gemini", "Google"), ("gemma", "Google"), ("imagen", "Google"),
    ("meta", "Meta"), ("llama", "Meta"),
    ("amazon", "Amazon"), ("nova", "Amazon"), ("titan", "Amazon"),
    ("mistral", "Mistral AI"), ("mixtral", "Mistral AI"), ("pixtral", "Mistral AI"), ("codestral", "Mistral AI"),
    ("cohere", "Cohere"), ("command", "Cohere"),
    ("ai21", "AI21 Labs"), ("jamba", "AI21 Labs"),
    ("deepseek", "DeepSeek"), ("qwen", "Alibaba Cloud"), ("writer", "Writer"), ("palmyra", "Writer"),
    ("stability", "Stability AI"), ("xai", "xAI"), ("grok", "xAI"),
)


def facts(provider: str) -> ProviderFacts:
    """The facts of a provider; an unknown one (a gateway, a new provider) is its own everything."""
    found = PROVIDERS.get(provider)
    if found is not None:
        return found
    name = provider or "unknown"
    return ProviderFacts(name, name, name, name, name)


def publisher_of(provider: str, attrs: Mapping[str, str]) -> str:
    """PublisherName: the platform itself, or the maker of the model the row is about."""
    own = facts(provider)
    if own.publisher is not None:
        return own.publisher
    hints = [attrs.get("llm.publisher", ""), attrs.get("gen_ai.request.model", ""), attrs.get("llm.cost.line_item", "")]
    for hint in hints:
        text = hint.lower()
        vendor = text.split(".", 1)[0] if "." in text else ""
        for word, maker in _VENDORS:
            if vendor == word or text == word or text.startswith(word):
                return maker
        for word, maker in _VENDORS:
            if len(word) > 3 and word in text.replace(" ", ""):
                return maker
    return own.provider_name  # nothing says who made it: the platform publishes it


def service_provider_of(provider: str, publisher: str) -> str:
    """ServiceProviderName (1.3): the seller, which is the maker of a third-party model sold on a marketplace."""
    own = facts(provider)
    if own.marketplace and publisher not in (own.provider_name, "Amazon"):
        return publisher
    return own.provider_name
