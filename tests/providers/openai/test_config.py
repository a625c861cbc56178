"""The ``openai`` config section: validated by ``check`` like every other section, and its key kept secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otel_llm_receiver.config import load_config, parse_config
from otel_llm_receiver.errors import ConfigError, ProviderError
from otel_llm_receiver.model import Window
from otel_llm_receiver.providers import create_provider
from otel_llm_receiver.providers.openai import OpenAIProvider
from otel_llm_receiver.providers.openai.options import OpenAIOptions

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-admin-test-config-key-0123456789"


def test_the_example_config_is_valid_and_its_defaults_are_the_documented_ones() -> None:
    config = load_config(ROOT / "examples" / "openai.yaml", environ={"OPENAI_ADMIN_KEY": KEY})
    (openai,) = config.providers
    assert (openai.name, openai.tenant, openai.collection_interval) == ("openai/prod", "acme", 300.0)
    provider = create_provider(openai)
    assert provider.width == 3600 and provider.lookback == 7200 and provider.backfill == 86400
    assert provider.cost_lookback == 3 * 86400 and provider.cost_backfill == 7 * 86400
    assert provider.dimensions == ("project", "model", "batch")
    assert len(provider.endpoints) == 10 and provider.costs
    assert KEY not in config.describe()


def test_check_names_every_bad_key_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"openai/prod": {
            "bucket_width": "2h", "dimensions": ["project", "team"], "usage_endpoints": ["chat"],
            "cost_lookback": "soon", "api_key": "x",
        }}})
    problems = "\n".join(info.value.problems)
    for path in ("bucket_width", "dimensions", "usage_endpoints", "cost_lookback", "api_key", "admin_key"):
        assert f"providers.openai/prod.{path}" in problems, path


def test_a_cost_lookback_past_the_revision_horizon_is_a_config_error() -> None:
    config = parse_config({"providers": {"openai": {"admin_key": KEY, "cost_lookback": "10d"}}})
    with pytest.raises(ProviderError) as info:
        create_provider(config.providers[0])
    assert info.value.error_type == "config" and "cost_lookback: must be at most 7d" in str(info.value)


def test_check_reports_an_option_the_provider_refuses_with_its_key_path(tmp_path: Path) -> None:
    """Issue 19.3: ``OpenAIOptions.validate()`` problems come out of ``check`` like every other config error."""
    config = tmp_path / "c.yaml"
    config.write_text("providers:\n  openai/prod:\n    admin_key: ${env:K}\n    cost_lookback: 10d\n")
    proc = subprocess.run([sys.executable, "-m", "otel_llm_receiver", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "K": KEY})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "providers.openai/prod.cost_lookback: must be at most 7d (buckets older than 8d are pruned), not 10d"
    ]


def test_the_typed_options_are_the_schema_and_the_defaults_written_once() -> None:
    config = parse_config({"providers": {"openai": {"admin_key": KEY}}}).providers[0]
    options = OpenAIOptions.from_config(config)
    assert options == OpenAIOptions(admin_key=KEY)  # every parsed default is the dataclass default
    assert (options.max_retries, options.retry_initial_interval, options.timeout) == (4, 1.0, 30.0)
    assert list(config.options) == list(OpenAIOptions.schema()) == list(OpenAIProvider.OPTIONS)
    assert OpenAIOptions(admin_key=KEY, cost_lookback=8 * 86400.0).validate() == [
        "cost_lookback: must be at most 7d (buckets older than 8d are pruned), not 8d"
    ]
    assert OpenAIOptions().validate() == ["admin_key: is required"]


def test_the_constructor_takes_typed_options() -> None:
    config = parse_config({"providers": {"openai": {"admin_key": KEY}}}).providers[0]
    provider = OpenAIProvider(config, OpenAIOptions(admin_key=KEY, bucket_width="1d", max_retries=1, timeout=5.0))
    assert provider.width == 86400 and provider.client.max_retries == 1
    assert provider.options.timeout == 5.0


def test_check_cli_redacts_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"providers:\n  openai:\n    admin_key: {KEY}\n")
    proc = subprocess.run([sys.executable, "-m", "otel_llm_receiver", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "admin_key: <redacted>" in proc.stdout and KEY not in proc.stdout + proc.stderr


def test_the_cost_source_reaches_back_from_its_own_cursor_after_an_outage() -> None:
    """Usage and cost are separate sources (issue 16.10): while costs failed, usage moved the poll cursor on; the
    next cost read starts cost_lookback before the cost cursor (its last success), at most cost_backfill back."""
    provider = create_provider(parse_config({"providers": {"openai/prod": {
        "admin_key": "sk-admin-test-0000", "cost_lookback": "72h", "cost_backfill": "7d"}}}).providers[0])
    assert isinstance(provider, OpenAIProvider)
    day, now = 86400, 1_795_000_000
    poll = Window(now - 2 * 3600, now)  # a regular poll, not a catch-up

    def floor(t: int) -> int:
        return t - t % day

    assert provider.cost_start(poll) == floor(now - 3 * day)
    provider.restore({"cost": str(now - 2 * day)})  # costs failed for two days
    assert provider.cost_start(poll) == floor(now - 5 * day)
    provider.restore({"cost": str(now - 6 * day)})  # longer than the backfill: capped there
    assert provider.cost_start(poll) == floor(now - 7 * day)
    provider.restore({})
    assert provider.cost_start(poll) == floor(now - 3 * day)
