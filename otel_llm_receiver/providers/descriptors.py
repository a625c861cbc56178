"""What the rest of the receiver knows about each provider, read from one file in the provider's own folder.

Each provider folder holds a ``provider.yaml`` (the demo's is ``providers/demo.yaml``): its config type, the class
the registry loads, its display name and, per ``gen_ai.provider.name`` it reports, the FOCUS facts (who provides,
hosts, publishes and invoices) and the genai-prices provider id. The registry, FOCUS and pricing all read them
here, so adding a provider is one folder, and nothing needs to import a provider's code (or its SDK) to know
its name. Plain data files, read once; no import of the provider packages.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ProviderDescriptor", "ProviderFacts", "descriptors", "facts_by_genai_name", "genai_name"]

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class ProviderFacts:
    """One ``gen_ai.provider.name``: who is who in a FOCUS row, and the price catalog's id for it."""

    service_name: str
    provider_name: str
    invoice_issuer: str
    host_provider: str
    #: The publisher when the platform only serves its own models; None: the model's maker (FOCUS publisher_of).
    publisher: str | None
    #: Third-party models are sold through the cloud's marketplace (their maker is the 1.3 ServiceProviderName).
    marketplace: bool = False
    #: genai-prices' provider id; None: matched by model name alone.
    genai_prices_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderDescriptor:
    type_name: str  # the config's `type:`
    provider_class: str  # "module:Class", imported only when an instance is built
    display_name: str
    gen_ai: Mapping[str, ProviderFacts]  # gen_ai.provider.name -> its facts


def _read(path: Path) -> ProviderDescriptor:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc: Any = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    try:
        gen_ai = {name: ProviderFacts(**fields) for name, fields in doc["gen_ai"].items()}
        return ProviderDescriptor(doc["type"], doc["class"], doc["display_name"], gen_ai)
    except (KeyError, TypeError, AttributeError) as exc:  # a packaging mistake, caught by the tests
        raise RuntimeError(f"{path}: not a provider descriptor ({exc!r})") from exc


@functools.cache
def descriptors() -> Mapping[str, ProviderDescriptor]:
    """Every provider's descriptor by config type, in a stable order."""
    paths = [HERE / "demo.yaml", *sorted(HERE.glob("*/provider.yaml"))]
    found = [_read(p) for p in paths]
    return {d.type_name: d for d in found}


@functools.cache
def facts_by_genai_name() -> Mapping[str, ProviderFacts]:
    """Every ``gen_ai.provider.name`` any provider reports, with its facts."""
    return {name: facts for d in descriptors().values() for name, facts in d.gen_ai.items()}


def genai_name(type_name: str) -> str:
    """The one ``gen_ai.provider.name`` of a provider that reports one (its modules' ``PROVIDER`` constant)."""
    names = list(descriptors()[type_name].gen_ai)
    if len(names) != 1:
        raise LookupError(f"provider type {type_name!r} reports {len(names)} gen_ai.provider.name values")
    return names[0]
