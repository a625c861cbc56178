"""Each provider's facts live in its own folder (``provider.yaml``) and are the ones the code uses (issue 19.6)."""

from __future__ import annotations

import importlib
from pathlib import Path

from otel_llm_receiver.focus.providers import PROVIDERS, facts
from otel_llm_receiver.pricing import GENAI_PROVIDER_IDS
from otel_llm_receiver.providers import PROVIDER_TYPES, provider_class
from otel_llm_receiver.providers.descriptors import descriptors, facts_by_genai_name, genai_name
from otel_llm_receiver.providers.vertex_ai.series import GEMINI_PROVIDER, VERTEX_PROVIDER

PROVIDERS_DIR = Path(__file__).resolve().parents[2] / "otel_llm_receiver" / "providers"


def test_every_provider_folder_has_a_descriptor_and_the_registry_reads_them() -> None:
    folders = sorted(p.name for p in PROVIDERS_DIR.iterdir() if (p / "__init__.py").is_file())
    assert sorted(p.parent.name for p in PROVIDERS_DIR.glob("*/provider.yaml")) == folders
    assert set(descriptors()) == {*folders, "demo"}
    for type_name, d in descriptors().items():
        assert PROVIDER_TYPES[type_name] == d.provider_class
        cls = provider_class(type_name)
        assert f"{cls.__module__}:{cls.__name__}".startswith(d.provider_class.split(":")[0])


def test_the_code_reports_the_names_its_descriptor_declares() -> None:
    modules = {"openai": ("otel_llm_receiver.providers.openai.normalize", "PROVIDER"),
               "anthropic": ("otel_llm_receiver.providers.anthropic.reports", "PROVIDER"),
               "bedrock": ("otel_llm_receiver.providers.bedrock.costs", "PROVIDER"),
               "azure_openai": ("otel_llm_receiver.providers.azure_openai.metrics", "PROVIDER_NAME"),
               "demo": ("otel_llm_receiver.providers.demo", "PROVIDER_NAME")}
    for type_name, (module, constant) in modules.items():
        assert getattr(importlib.import_module(module), constant) == genai_name(type_name)
    assert set(descriptors()["vertex_ai"].gen_ai) == {VERTEX_PROVIDER, GEMINI_PROVIDER}


def test_focus_and_pricing_read_the_same_facts() -> None:
    assert facts_by_genai_name() == PROVIDERS
    assert facts("aws.bedrock").marketplace and facts("gcp.gemini").publisher == "Google"
    assert GENAI_PROVIDER_IDS == {"openai": "openai", "anthropic": "anthropic", "azure.ai.openai": "azure",
                                  "aws.bedrock": "aws", "gcp.vertex_ai": "google", "gcp.gemini": "google"}
    unknown = facts("my-gateway")  # a provider no folder describes is its own everything
    assert (unknown.provider_name, unknown.publisher) == ("my-gateway", "my-gateway")
