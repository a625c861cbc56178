"""OpenAI usage and cost rows -> canonical records: the mapping table of docs/providers/openai.md, in code.

Every reader validates as it goes (``fields``), so a row that does not fit the spec raises ``ShapeError``
naming its field and the whole poll is rejected before anything reaches the ledger.

The token partition (DESIGN.md, "Canonical records") is the delicate part. In the current spec
``input_tokens`` *includes* cached (``input_cached_tokens``) and cache-write (``input_cache_write_tokens``)
tokens, so ``input = input_tokens - cached - cache_write``, and the four types sum to
``input_tokens + output_tokens`` exactly. ``input_uncached_tokens``, where present, must agree; when it does
not, the difference is counted in ``Notes`` and logged, and ``input_tokens`` stays the total we match.
Modalities split that same partition (``llm.token.modality``): audio and image counts are subsets of the
totals, and text is what remains, so a modality split never adds a token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ...model import CostRecord, UsageRecord
from .fields import ShapeError, count, decimal, flag, mapping, text

PROVIDER = "openai"
#: ``llm.tenancy.id`` when a row carries no project id although grouped by project (never seen; kept apart).
UNKNOWN_PROJECT = "unknown"

# Canonical metric names of the measures besides tokens and requests (catalog.yaml).
IMAGES = "llm.usage.images"
CHARACTERS = "llm.usage.characters"
AUDIO_SECONDS = "llm.usage.audio.duration"
SESSIONS = "llm.usage.sessions"
TOOL_REQUESTS = "llm.usage.tool_requests"
STORAGE = "llm.usage.storage"


@dataclass
class Notes:
    """Oddities seen while normalizing one poll, logged once per poll rather than once per row."""

    uncached_disagrees: int = 0  # rows where input_uncached_tokens != input_tokens - cached - cache_write
    modality_unsplit: int = 0  # rows whose modality counts exceed their totals: kept whole as text
    currencies: set[str] = field(default_factory=set)  # non-USD currencies seen in costs


@dataclass(frozen=True, slots=True)
class Row:
    """Where a result row sits: its bucket, the group fields it was grouped by, and its JSON path."""

    bucket_start: int
    bucket_width: int
    grouped: frozenset[str]
    path: str
    tenant: str | None = None


def _common(row: Mapping[str, Any], at: Row) -> tuple[str, str, dict[str, str]]:
    """(tenancy id, model, dimension attributes) from the group fields the query asked for."""
    path = at.path
    project = text(row, "project_id", path)
    tenancy = (project or UNKNOWN_PROJECT) if "project_id" in at.grouped else UNKNOWN_PROJECT
    model = ""
    if "model" in at.grouped:
        model = text(row, "model", path) or "unknown"
    dims: dict[str, str] = {}
    if "batch" in at.grouped:
        batch = flag(row, "batch", path)
        if batch is not None:
            dims["llm.batch"] = "true" if batch else "false"
    for key, attribute in (
        ("service_tier", "llm.service_tier"), ("api_key_id", "llm.api_key.id"), ("user_id", "llm.user.id"),
        ("size", "llm.image.size"), ("source", "llm.image.source"),
    ):
        if key in at.grouped:
            value = text(row, key, path)
            if value is not None:
                dims[attribute] = value
    return tenancy, model, dims


def _record(
    at: Row, tenancy: str, model: str, operation: str, dims: Mapping[str, str], *,
    tokens: Mapping[str, int] | None = None, requests: int | None = None, measures: Mapping[str, int] | None = None,
    sparse: bool = False,
) -> UsageRecord:
    return UsageRecord(
        provider=PROVIDER, model=model, operation=operation, tenancy_id=tenancy, bucket_start=at.bucket_start,
        bucket_width=at.bucket_width, tokens=tokens or {}, requests=requests, tenant=at.tenant,
        dimensions=dims, measures=measures or {}, sparse=sparse,
    )


# ----------------------------------------------------------------------------------------------- completions
_NEW_SHAPE_FIELDS = ("input_uncached_tokens", "input_text_tokens", "input_cached_text_tokens",
                     "input_cached_audio_tokens", "input_cached_image_tokens")


def completions(row: Mapping[str, Any], at: Row, notes: Notes) -> Iterator[UsageRecord]:
    """Tokens by type and modality, and requests, of one completions result."""
    path = at.path
    total_in = count(row, "input_tokens", path, required=True) or 0
    total_out = count(row, "output_tokens", path, required=True) or 0
    requests = count(row, "num_model_requests", path, required=True)
    cached = count(row, "input_cached_tokens", path)
    cache_write = count(row, "input_cache_write_tokens", path)
    uncached = count(row, "input_uncached_tokens", path)
    derived = total_in - (cached or 0) - (cache_write or 0)
    if derived < 0:
        raise ShapeError(
            f"{path}: input_cached_tokens ({cached}) + input_cache_write_tokens ({cache_write or 0}) exceed "
            f"input_tokens ({total_in}), which the spec says includes both"
        )
    if uncached is not None and uncached != derived:
        notes.uncached_disagrees += 1
    tenancy, model, dims = _common(row, at)

    # The full partition first: it is what the totals must equal, whatever the modalities say.
    partition = {"input": derived, "output": total_out}
    if cached is not None:
        partition["cache_read"] = cached
    if cache_write is not None:
        partition["cache_write"] = cache_write

    # Audio and image counts are subsets of the totals; text is what remains. A modality whose fields the row
    # carries is always reported, zeros included (as a sparse record: zeros add no series), so that a bucket
    # whose audio is later corrected down to zero moves those tokens back to text exactly.
    new_shape = any(key in row for key in _NEW_SHAPE_FIELDS)
    parts: dict[str, dict[str, int]] = {}
    for modality in ("audio", "image"):
        names = (f"input_{modality}_tokens", f"input_cached_{modality}_tokens", f"output_{modality}_tokens")
        if not any(name in row for name in names):
            continue
        part = {"input": count(row, names[0], path) or 0, "output": count(row, names[2], path) or 0}
        if new_shape and cached is not None:
            part["cache_read"] = count(row, names[1], path) or 0
        # Before the 2026 spec, input_audio_tokens included cached audio and no cached split existed: the
        # audio input is then all counted as audio "input" and text keeps the whole cache_read.
        parts[modality] = part
    text_part = dict(partition)
    for part in parts.values():
        for token_type, value in part.items():
            text_part[token_type] = text_part.get(token_type, 0) - value
    if any(value < 0 for value in text_part.values()):
        notes.modality_unsplit += 1
        parts = {m: dict.fromkeys(part, 0) for m, part in parts.items()}
        text_part = dict(partition)

    yield _record(at, tenancy, model, "chat", {**dims, "llm.token.modality": "text"}, tokens=text_part)
    for modality, part in parts.items():
        yield _record(
            at, tenancy, model, "chat", {**dims, "llm.token.modality": modality}, tokens=part, sparse=True
        )
    yield _record(at, tenancy, model, "chat", dims, requests=requests)


# ------------------------------------------------------------------------------------- the other usage types
def input_tokens(operation: str) -> Callable[[Mapping[str, Any], Row, Notes], Iterator[UsageRecord]]:
    """Embeddings and moderations: input tokens and requests."""

    def normalize(row: Mapping[str, Any], at: Row, notes: Notes) -> Iterator[UsageRecord]:
        tokens = count(row, "input_tokens", at.path, required=True) or 0
        requests = count(row, "num_model_requests", at.path, required=True)
        tenancy, model, dims = _common(row, at)
        yield _record(at, tenancy, model, operation, dims, tokens={"input": tokens}, requests=requests)

    return normalize


def measure(
    operation: str, source_field: str, metric: str, *, with_requests: bool = True, tool: str | None = None,
    also_required: tuple[str, ...] = (),
) -> Callable[[Mapping[str, Any], Row, Notes], Iterator[UsageRecord]]:
    """A usage type with one measure (images, characters, seconds, sessions, bytes, tool calls)."""

    def normalize(row: Mapping[str, Any], at: Row, notes: Notes) -> Iterator[UsageRecord]:
        value = count(row, source_field, at.path, required=True) or 0
        requests = count(row, "num_model_requests", at.path, required=True) if with_requests else None
        for key in also_required:
            count(row, key, at.path, required=True)
        tenancy, model, dims = _common(row, at)
        if tool is not None:
            dims["gen_ai.tool.name"] = tool
        yield _record(at, tenancy, model, operation, dims, requests=requests, measures={metric: value})

    return normalize


# -------------------------------------------------------------------------------------------------- costs
def cost(row: Mapping[str, Any], at: Row, notes: Notes) -> CostRecord:
    """One ``organization.costs.result``: the amount exactly, its currency, and the billed quantity."""
    path = at.path
    amount_obj = mapping(row.get("amount"), f"{path}.amount")
    amount = decimal(amount_obj.get("value"), f"{path}.amount.value")
    if amount < 0:
        raise ShapeError(f"{path}.amount.value: negative amount {amount} (a credit?) is not supported")
    currency = text(amount_obj, "currency", f"{path}.amount")
    if not currency:
        raise ShapeError(f"{path}.amount.currency: required string is missing")
    currency = currency.upper()
    if currency != "USD":
        notes.currencies.add(currency)
    quantity_raw = row.get("quantity")
    quantity: Decimal | None = None
    if quantity_raw is not None:
        quantity = decimal(quantity_raw, f"{path}.quantity")
        if quantity < 0:
            raise ShapeError(f"{path}.quantity: expected a quantity >= 0, got {quantity}")
    project = text(row, "project_id", path)
    dims = {"llm.cost.source": "reported"}
    if "api_key_id" in at.grouped:
        key_id = text(row, "api_key_id", path)
        if key_id is not None:
            dims["llm.api_key.id"] = key_id
    return CostRecord(
        provider=PROVIDER, tenancy_id=project or UNKNOWN_PROJECT, bucket_start=at.bucket_start,
        bucket_width=at.bucket_width, amount=amount, currency=currency, line_item=text(row, "line_item", path),
        tenant=at.tenant, dimensions=dims, quantity=quantity,
        quantity_unit=text(row, "quantity_unit", path) if quantity is not None else None,
    )
