"""Bedrock's names mapped to ours: model ids and inference profiles, usage types, services, error codes.

Pure functions, so plain tables: each row is a value seen in AWS's docs or public code (docs/providers/bedrock.md
says where) and what the receiver must make of it.
"""

from __future__ import annotations

import pytest

from otel_llm_receiver.providers.bedrock.aws import translate
from otel_llm_receiver.providers.bedrock.costs import model_of, service_selected, token_kind
from otel_llm_receiver.providers.bedrock.models import ModelRef, parse_model_id


@pytest.mark.parametrize(
    ("raw", "ref"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", ModelRef("anthropic.claude-3-haiku-20240307-v1:0")),
        ("us.anthropic.claude-3-haiku-20240307-v1:0", ModelRef("anthropic.claude-3-haiku-20240307-v1:0", "us")),
        ("global.anthropic.claude-sonnet-4-20250514-v1:0", ModelRef("anthropic.claude-sonnet-4-20250514-v1:0", "global")),
        ("apac.amazon.nova-lite-v1:0", ModelRef("amazon.nova-lite-v1:0", "apac")),
        ("us-gov.meta.llama3-8b-instruct-v1:0", ModelRef("meta.llama3-8b-instruct-v1:0", "us-gov")),
        ("arn:aws:bedrock:us-west-2::foundation-model/amazon.titan-embed-text-v1", ModelRef("amazon.titan-embed-text-v1")),
        ("arn:aws:bedrock:eu-central-1:111122223333:inference-profile/eu.anthropic.claude-3-haiku-20240307-v1:0",
         ModelRef("anthropic.claude-3-haiku-20240307-v1:0", "eu")),
        ("arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/a1b2c3d4e5f6",
         ModelRef("a1b2c3d4e5f6", "application", "a1b2c3d4e5f6")),
        ("arn:aws:bedrock:us-east-1:111122223333:provisioned-model/xyz", ModelRef("provisioned-model/xyz")),
        ("cohere.command-r-v1:0", ModelRef("cohere.command-r-v1:0")),  # no geography prefix: kept whole
    ],
)
def test_model_ids_split_into_model_and_inference_profile(raw: str, ref: ModelRef) -> None:
    assert parse_model_id(raw) == ref


@pytest.mark.parametrize(
    ("service", "usage_type", "model", "kind"),
    [
        ("Amazon Bedrock", "USE1-Claude4Sonnet-input-tokens-cross-region-global", "Claude4Sonnet", "input"),
        ("Amazon Bedrock", "USE1-Claude4Sonnet-cache-read-input-token-count-cross-region-global", "Claude4Sonnet",
         "cache_read"),
        ("Amazon Bedrock", "USW2-Nova2.0Lite-cache-write-input-token-count", "Nova2.0Lite", "cache_write"),
        ("Amazon Bedrock", "USW2-Claude4.5Sonnet-output-tokens", "Claude4.5Sonnet", "output"),
        ("Amazon Bedrock", "EUC1-GPT5-mantle-input-tokens-standard", "GPT5", "input"),
        ("Claude 3 Haiku (Amazon Bedrock Edition)", "USW2-MP:USW2_InputTokenCount-Units", "Claude 3 Haiku", "input"),
        ("Claude Opus 5.5 (Amazon Bedrock Edition)", "USW2-MP:USW2_output_tokens_standard-Units", "Claude Opus 5.5",
         "output"),
        ("Amazon Bedrock", "USE1-ProvisionedThroughput-Hours", None, None),  # not tokens: line item only
        ("Some Marketplace Product", "USW2-MP:USW2_Units", None, None),
    ],
)
def test_usage_types_give_model_and_token_type_where_the_pattern_allows(
    service: str, usage_type: str, model: str | None, kind: str | None
) -> None:
    assert model_of(service, usage_type) == model
    assert token_kind(usage_type) == kind


@pytest.mark.parametrize(
    ("service", "selected"),
    [
        ("Amazon Bedrock", True),
        ("Claude 3 Haiku (Amazon Bedrock Edition)", True),
        ("Amazon Bedrock AgentCore", True),
        ("Amazon Elastic Compute Cloud - Compute", False),
        ("AWS Cost Explorer", False),
    ],
)
def test_default_service_rule_keeps_marketplace_bedrock_editions(service: str, selected: bool) -> None:
    assert service_selected(service, ["*Bedrock*"]) is selected
    assert service_selected(service, ["amazon bedrock"]) is (service == "Amazon Bedrock")  # case-insensitive


def test_every_botocore_error_class_is_translated() -> None:
    """No botocore error escapes untranslated: each maps to one of our error types with a one-line message."""
    from botocore import exceptions as bx

    samples: list[BaseException] = [
        bx.NoCredentialsError(), bx.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
        bx.ProfileNotFound(profile="nope"), bx.NoRegionError(),
        bx.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), bx.ReadTimeoutError(endpoint_url="http://x"),
        bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        bx.ParamValidationError(report="bad"), RuntimeError("boom"),
    ]
    types = [translate(e, provider="bedrock", service="cloudwatch", operation="GetMetricData", timeout=3).error_type
             for e in samples]
    assert types == ["auth", "auth", "config", "config", "timeout", "timeout", "network", "bad_response",
                     "bad_response"]


def test_the_example_config_is_valid_and_builds_a_provider() -> None:
    from pathlib import Path

    from otel_llm_receiver.config import load_config
    from otel_llm_receiver.providers import create_provider

    config = load_config(Path(__file__).resolve().parents[3] / "examples" / "bedrock.yaml")
    (section,) = config.providers
    provider = create_provider(section)
    assert section.type == "bedrock" and provider.lookback == 3 * 3600 and provider.backfill == 7 * 86400
    assert section.options["regions"] == ("us-east-1", "eu-central-1")


def test_without_boto3_the_instance_fails_with_one_config_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from otel_llm_receiver.config import parse_config
    from otel_llm_receiver.errors import ProviderError
    from otel_llm_receiver.providers import create_provider

    monkeypatch.setitem(sys.modules, "boto3", None)  # what an install without the [bedrock] extra looks like
    section = parse_config({"providers": {"bedrock": {}}}).providers[0]  # the config itself stays valid
    with pytest.raises(ProviderError) as info:
        create_provider(section)
    assert info.value.error_type == "config" and "otel-llm-receiver[bedrock]" in str(info.value)
