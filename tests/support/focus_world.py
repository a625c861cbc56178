"""A ledger holding every shape of cost data the FOCUS export meets, with the expected money computed here.

Six provider instances, three UTC days of hourly usage, shaped like what each provider module puts in the
ledger (docs/providers/*.md):

* ``openai/prod``: usage by project and model snapshot; daily reported cost per ``"<model>, <kind>"`` line item
  and project, no model attribute (the OpenAI costs API's shape).
* ``anthropic/main``: usage by workspace; daily reported cost per model and token type (the cost report's shape),
  with a named workspace and an attribution rule (team, cost center).
* ``azure/eu``: usage by deployment; daily reported cost in EUR per meter (``llm.usage.cost.non_usd``), with
  the meter's billed quantity (Cost Management's ``UsageQuantity``, thousands of tokens scaled to ``tokens``).
* ``bedrock/us``: usage by model id and region; daily reported cost per usage type whose model (``Claude4Sonnet``)
  is not the usage's model id, so no usage can be matched to it (no list price), with the usage type's billed
  quantity (Cost Explorer's ``UsageQuantity``, scaled to ``tokens``).
* ``vertex/p1``: usage only (estimated rows), with region and publisher (a Meta model on Vertex AI).
* ``demo``: reported cost per model with one line item for all tokens (``tokens``).

Prices come from ``pricing.overrides`` only (``genai_prices: false``), so every expected amount is computed from
``PRICES`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from otel_llm_receiver.config import Config, load_config
from otel_llm_receiver.config_storage import StorageConfig
from otel_llm_receiver.ledger import open_ledger
from otel_llm_receiver.model import CostRecord, PollResult, UsageRecord
from otel_llm_receiver.pricing import PriceBook

H = 3600
D = 86400
NOW = 1_795_000_000 // D * D + 10 * H  # 10:00 UTC
FIRST_DAY = NOW // D * D - 3 * D  # three whole days before today, then today until 10:00
DAYS = (FIRST_DAY, FIRST_DAY + D, FIRST_DAY + 2 * D)
HOURS = range(FIRST_DAY, NOW, H)

#: USD per million tokens, by model (pricing.overrides below).
PRICES: dict[str, dict[str, Decimal]] = {
    "gpt-4o-2024-08-06": {"input": Decimal("2.5"), "cache_read": Decimal("1.25"), "output": Decimal("10")},
    "claude-sonnet-4": {"input": Decimal("3"), "cache_read": Decimal("0.3"), "cache_write": Decimal("3.75"),
                        "output": Decimal("15")},
    "gpt-4o": {"input": Decimal("2.5"), "output": Decimal("10")},
    "anthropic.claude-sonnet-4-20250514-v1:0": {"input": Decimal("3"), "output": Decimal("15")},
    "meta/llama-3.3-70b-instruct-maas": {"input": Decimal("0.72"), "output": Decimal("0.72")},
    "demo-model": {"input": Decimal("1"), "output": Decimal("2")},
}


@dataclass(frozen=True)
class Workload:
    instance: str
    provider: str
    tenancy: str
    model: str
    tokens: dict[str, int]  # per hour
    dims: tuple[tuple[str, str], ...] = ()


WORKLOADS = (
    Workload("openai/prod", "openai", "proj_a", "gpt-4o-2024-08-06",
             {"input": 120_000, "cache_read": 40_000, "output": 9_000}),
    Workload("anthropic/main", "anthropic", "wrkspc_1", "claude-sonnet-4",
             {"input": 50_000, "cache_read": 200_000, "cache_write": 10_000, "output": 7_000}),
    Workload("azure/eu", "azure.ai.openai", "sub/rg/acct", "gpt-4o", {"input": 30_000, "output": 3_000}),
    Workload("bedrock/us", "aws.bedrock", "123456789012", "anthropic.claude-sonnet-4-20250514-v1:0",
             {"input": 20_000, "output": 2_000}, (("cloud.region", "us-east-1"),)),
    Workload("vertex/p1", "gcp.vertex_ai", "my-project", "meta/llama-3.3-70b-instruct-maas",
             {"input": 11_111, "output": 3_333}, (("cloud.region", "us-central1"), ("llm.publisher", "meta"))),
    Workload("demo", "demo", "proj-demo", "demo-model", {"input": 1_000, "output": 500}),
)

CONFIG = """
storage: {{path: {ledger}}}
providers:
  demo: {{enabled: false}}
pricing:
  genai_prices: false
  overrides:
{overrides}
attribution:
  rules:
    - {{tenancy: Platform Workspace, team: platform, cost_center: CC-42}}
"""


def daily_cost(w: Workload, day: int) -> Decimal:
    """What the provider reports for a workload's day: list price x tokens, rounded to the cent, minus 1%."""
    hours = sum(1 for h in HOURS if day <= h < day + D)
    total = sum((PRICES[w.model].get(t, Decimal(0)) * n * hours for t, n in w.tokens.items()), Decimal(0))
    return (total / 1_000_000 * Decimal("0.99")).quantize(Decimal("0.01"))


def reported_costs(w: Workload, day: int) -> list[CostRecord]:
    """The provider's cost records of one day (none for usage-only Vertex AI)."""
    amount = daily_cost(w, day)
    base = {"provider": w.provider, "tenancy_id": w.tenancy, "bucket_start": day, "bucket_width": D}
    if w.instance == "openai/prod":  # per line item "<model>, <kind>", no model attribute
        kinds = {"input": "input", "cache_read": "cached input", "output": "output"}
        return [CostRecord(**base, amount=share(w, t, amount), line_item=f"{w.model}, {kinds[t]}") for t in w.tokens]
    if w.instance == "anthropic/main":  # per model and token type
        return [CostRecord(**base, amount=share(w, t, amount), model=w.model, line_item=t) for t in w.tokens]
    if w.instance == "azure/eu":  # EUR, per meter, with the meter's billed tokens
        return [CostRecord(**base, amount=share(w, t, amount), currency="EUR",
                           line_item=f"gpt-4o-0806 {'Inp' if t == 'input' else 'Outp'} glbl {t} Tokens",
                           quantity=billed_tokens(w, t, day), quantity_unit="tokens")
                for t in w.tokens]
    if w.instance == "bedrock/us":  # per usage type, with the token type as a dimension and the billed tokens
        return [CostRecord(**base, amount=share(w, t, amount), model="Claude4Sonnet",
                           line_item=f"USE1-Claude4Sonnet-{t}-tokens", dimensions={"gen_ai.token.type": t},
                           quantity=billed_tokens(w, t, day), quantity_unit="tokens")
                for t in w.tokens]
    if w.instance == "demo":
        return [CostRecord(**base, amount=amount, model=w.model, line_item="tokens")]
    return []


def billed_tokens(w: Workload, token_type: str, day: int) -> Decimal:
    """The tokens of one type a provider bills for a day: the usage's, as its billing API reports them."""
    return Decimal(w.tokens[token_type] * sum(1 for h in HOURS if day <= h < day + D))


def share(w: Workload, token_type: str, amount: Decimal) -> Decimal:
    """A token type's part of a day's amount (the last type takes the remainder, so parts sum to the whole)."""
    types = list(w.tokens)
    weights = {t: PRICES[w.model].get(t, Decimal(0)) * w.tokens[t] for t in types}
    total = sum(weights.values(), Decimal(0))
    parts = {t: (amount * weights[t] / total).quantize(Decimal("0.01")) for t in types[:-1]}
    parts[types[-1]] = amount - sum(parts.values(), Decimal(0))
    return parts[token_type]


def estimated_cost(w: Workload, start: int, end: int) -> Decimal:
    """List price x tokens of the hours in [start, end)."""
    hours = sum(1 for h in HOURS if start <= h < end)
    return sum((PRICES[w.model].get(t, Decimal(0)) * n * hours for t, n in w.tokens.items()),
               Decimal(0)) / 1_000_000


def build(tmp_path: Path, *, restated: dict[tuple[str, int], Decimal] | None = None,
          storage: StorageConfig | None = None) -> Config:
    """Write the config and fill the ledger; returns the config. ``storage``: another ledger than the config
    file's SQLite path (a PostgreSQL one: the FOCUS readers on both engines)."""
    lines = []
    for model, prices in PRICES.items():
        body = ", ".join(f'{t}: "{p}"' for t, p in prices.items())
        lines.append(f'    - {{model: "{model}", prices: {{{body}}}}}')
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(ledger=tmp_path / "ledger.db", overrides="\n".join(lines)))
    config = load_config(path)
    if storage is not None:
        config = replace(config, storage=storage)
    with open_ledger(config.storage) as ledger:
        ledger.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
        for w in WORKLOADS:
            usage = [UsageRecord(provider=w.provider, model=w.model, operation="chat", tenancy_id=w.tenancy,
                                 bucket_start=h, bucket_width=H, tokens=w.tokens, requests=10, dimensions=dict(w.dims))
                     for h in HOURS]
            costs = [c for day in DAYS for c in reported_costs(w, day)]  # today's cost has not arrived
            names = {("tenancy", "wrkspc_1"): "Platform Workspace"} if w.instance == "anthropic/main" else {}
            ledger.apply(w.instance, PollResult(usage=usage, costs=costs, names=names))
    return config


def restate(config: Config, instance: str, day: int, factor: Decimal) -> Decimal:
    """Re-report one instance's cost of one day scaled by ``factor`` (a provider restating a day); returns the
    new daily total."""
    w = next(w for w in WORKLOADS if w.instance == instance)
    records = reported_costs(w, day)
    scaled = [CostRecord(**{**{f: getattr(c, f) for f in c.__dataclass_fields__},
                            "amount": (c.amount * factor).quantize(Decimal("0.01"))}) for c in records]
    with open_ledger(config.storage) as ledger:
        ledger.set_pricer(PriceBook(config.pricing.entries, use_genai_prices=False))
        ledger.apply(instance, PollResult(costs=scaled))
    return sum((c.amount for c in scaled), Decimal(0))
