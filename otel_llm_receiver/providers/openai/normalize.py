"""OpenAI usage and cost rows -> canonical records: the mapping table of docs/providers/openai.md, in code.

Every reader validates as it goes (``fields``), so a row that does not fit the spec raises ``ResponseShapeError``
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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter, sub
from types import MappingProxyType
from typing import Any

from ...errors import ResponseShapeError
from ...model import MAX_COUNT, CostRecord, UsageRecord, usage_record
from ..descriptors import genai_name
from .fields import count, decimal, flag, mapping, text

PROVIDER = genai_name("openai")
#: ``llm.tenancy.id`` when a row carries no project id although grouped by project (never seen; kept apart).
UNKNOWN_PROJECT = "unknown"
#: ``llm.tenancy.id`` of usage not grouped by project (``dimensions`` without ``project``): every project.
ALL_PROJECTS = "all"

# Canonical metric names of the measures besides tokens and requests (catalog.yaml).
IMAGES = "llm.usage.images"
CHARACTERS = "llm.usage.characters"
AUDIO_SECONDS = "llm.usage.audio.duration"
SESSIONS = "llm.usage.sessions"
TOOL_REQUESTS = "llm.usage.tool_requests"
STORAGE = "llm.usage.storage"


@dataclass
class Notes:
    """Per-poll state of normalization: oddities to log once per poll (not once per row), and a memo.

    ``groups`` memoizes each distinct set of group-field values -> (tenancy, model, dimension dicts), so that
    the thousands of rows of one group share one validated set of attribute dicts (records are read-only).
    """

    uncached_disagrees: int = 0  # rows where input_uncached_tokens != input_tokens - cached - cache_write
    modality_unsplit: int = 0  # rows whose modality counts exceed their totals: kept whole as text
    currencies: set[str] = field(default_factory=set)  # non-USD currencies seen in costs
    costs_without_amount: int = 0  # cost rows with no amount (the spec makes it optional): skipped
    groups: dict[tuple[Any, ...], Group] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Row:
    """Where a result row sits: its bucket, the group fields it was grouped by, and where in the JSON.

    ``where`` is the bucket's path and ``index`` the row's place in its ``results`` (-1: ``where`` is the
    row's whole path); ``path`` is only built when an error message needs it.
    """

    bucket_start: int
    bucket_width: int
    grouped: frozenset[str]
    where: str
    index: int = -1
    tenant: str | None = None

    @property
    def path(self) -> str:
        return self.where if self.index < 0 else f"{self.where}.results[{self.index}]"


@dataclass(frozen=True, slots=True)
class Group:
    """The attributes of one group of rows: tenancy, model, and the dimension dicts its records carry."""

    tenancy: str
    model: str
    dims: dict[str, str]
    by_modality: dict[str, dict[str, str]]  # dims plus llm.token.modality, per modality
    variants: dict[str, dict[str, str]] = field(default_factory=dict)  # dims plus gen_ai.tool.name, per tool


@dataclass(frozen=True, slots=True)
class Part:
    """One of the records a row maps to, as a block of ``UsageColumns``: its operation, its dimensions (a modality
    of ``Group.by_modality``, else the group's own, plus ``gen_ai.tool.name`` when ``tool``), whether it is sparse,
    and the names of its columns: token types, then requests (when ``requests``), then measures."""

    operation: str
    modality: str | None
    sparse: bool
    tokens: tuple[str, ...] = ()
    requests: bool = False
    measures: tuple[str, ...] = ()
    tool: str | None = None


#: The parts a bucket's rows map to, in order: their output columns follow the same order.
Layout = tuple[Part, ...]
#: One row -> its records, validating every field (``ResponseShapeError`` naming the bad one).
Normalizer = Callable[[Mapping[str, Any], Row, Notes], list[UsageRecord]]
#: One row of a validated group -> its records, when every count is plainly valid; None: let the Normalizer decide.
FastNormalizer = Callable[[Mapping[str, Any], Group, int, int, str | None], list[UsageRecord] | None]
#: The rows of one bucket, all of validated groups -> (layout, output columns), when every count of every row is
#: plainly valid and no row needs a note; None: let the rows be mapped one by one.
ColumnsNormalizer = Callable[[Sequence[Mapping[str, Any]]], tuple[Layout, list[Sequence[int]]] | None]


@dataclass(frozen=True, slots=True)
class Mapper:
    """How the rows of one usage type become records (the mapping table of docs/providers/openai.md).

    ``row`` is the reference: it validates every field and raises naming the one that is wrong. ``fast`` maps
    the common case, a row of a group already seen whose counts are plainly valid, with a few C-level checks
    instead of one reader per field; it returns None for anything else, and ``row`` decides. ``columns`` maps a
    whole bucket of such rows at once, column by column (C-level passes over each count of the bucket, no Python
    code per row), into the columns of ``UsageColumns`` blocks; it returns None when any row is not plainly
    valid, and the bucket is read row by row. All three give the same records for the same rows
    (``tests/providers/openai/test_reader.py`` holds them to it).
    """

    row: Normalizer
    fast: FastNormalizer
    columns: ColumnsNormalizer


_NO_TOKENS: Mapping[str, int] = MappingProxyType({})  # shared, read-only
_NO_MEASURES: Mapping[str, int] = MappingProxyType({})
_GROUP_FIELDS = ("project_id", "model", "batch", "service_tier", "api_key_id", "user_id", "size", "source")
_TEXT_DIMS = (("service_tier", "llm.service_tier"), ("api_key_id", "llm.api_key.id"), ("user_id", "llm.user.id"),
              ("size", "llm.image.size"), ("source", "llm.image.source"))
_MODALITIES = ("text", "audio", "image")


def group_of(row: Mapping[str, Any], at: Row, notes: Notes) -> Group:
    """The row's ``Group``, validated once per distinct set of group-field values in a poll."""
    get = row.get
    # project_id is read whether grouped or not; a field not grouped by is not read (and may hold anything)
    values: tuple[Any, ...] = (at.grouped, get("project_id"), *[get(f) for f in _GROUP_FIELDS if f in at.grouped])
    key: tuple[Any, ...] | None = values
    try:
        cached = notes.groups.get(values)
    except TypeError:  # an unhashable (so wrong-typed) group field: validation below names it
        cached, key = None, None
    if cached is not None:
        return cached
    path = at.path
    project = text(row, "project_id", path)
    tenancy = (project or UNKNOWN_PROJECT) if "project_id" in at.grouped else ALL_PROJECTS
    model = ""
    if "model" in at.grouped:
        model = text(row, "model", path) or "unknown"
    dims: dict[str, str] = {}
    if "batch" in at.grouped:
        batch = flag(row, "batch", path)
        if batch is not None:
            dims["llm.batch"] = "true" if batch else "false"
    for source_field, attribute in _TEXT_DIMS:
        if source_field in at.grouped:
            value = text(row, source_field, path)
            if value is not None:
                dims[attribute] = value
    group = Group(tenancy, model, dims, {m: {**dims, "llm.token.modality": m} for m in _MODALITIES})
    if key is not None:
        notes.groups[key] = group
    return group


def _record(
    at: Row, group: Group, operation: str, dims: Mapping[str, str], *,
    tokens: Mapping[str, int] | None = None, requests: int | None = None, measures: Mapping[str, int] | None = None,
    sparse: bool = False,
) -> UsageRecord:
    return UsageRecord(
        PROVIDER, group.model, operation, group.tenancy, at.bucket_start, at.bucket_width, tokens or _NO_TOKENS,
        requests, at.tenant, dims, measures or _NO_MEASURES, sparse,
    )


# ----------------------------------------------------------------------------------------------- completions
_REQUIRED = ("input_tokens", "output_tokens", "num_model_requests")
_OPTIONAL = ("input_cached_tokens", "input_cache_write_tokens", "input_uncached_tokens",
             "input_audio_tokens", "input_cached_audio_tokens", "output_audio_tokens",
             "input_image_tokens", "input_cached_image_tokens", "output_image_tokens")
_NEW_SHAPE_FIELDS = ("input_uncached_tokens", "input_text_tokens", "input_cached_text_tokens",
                     "input_cached_audio_tokens", "input_cached_image_tokens")


def completions(row: Mapping[str, Any], at: Row, notes: Notes) -> list[UsageRecord]:
    """Tokens by type and modality, and requests, of one completions result.

    The reference mapping: every field is read through the validating readers, so a wrong one raises naming its
    path. ``reader.UsageReader`` takes it for the first row of each group and for any row the fast mapping
    (``completions_fast``) declines; both give the same records for the same row.
    """
    get = row.get
    required: tuple[Any, ...] = tuple(count(row, key, at.path, required=True) for key in _REQUIRED)
    optional: tuple[Any, ...] = tuple(count(row, key, at.path) for key in _OPTIONAL)
    total_in, total_out, requests = required
    cached, cache_write, uncached, a_in, a_cached, a_out, i_in, i_cached, i_out = optional
    derived = total_in - (cached or 0) - (cache_write or 0)
    if derived < 0:
        raise ResponseShapeError(
            f"{at.path}: input_cached_tokens ({cached}) + input_cache_write_tokens ({cache_write or 0}) exceed "
            f"input_tokens ({total_in}), which the spec says includes both"
        )
    if uncached is not None and uncached != derived:
        notes.uncached_disagrees += 1
    group = group_of(row, at, notes)

    # The full partition first: it is what the totals must equal, whatever the modalities say.
    partition = {"input": derived, "output": total_out}
    if cached is not None:
        partition["cache_read"] = cached
    if cache_write is not None:
        partition["cache_write"] = cache_write

    # Audio and image counts are subsets of the totals; text is what remains. A modality whose fields the row
    # carries is always reported, zeros included (as a sparse record: zeros add no series), so that a bucket
    # whose audio is later corrected down to zero moves those tokens back to text exactly.
    with_cached = cached is not None and any(get(k) is not None for k in _NEW_SHAPE_FIELDS)
    parts: dict[str, dict[str, int]] = {}
    for modality, part_in, part_cached, part_out in (("audio", a_in, a_cached, a_out),
                                                     ("image", i_in, i_cached, i_out)):
        if part_in is None and part_cached is None and part_out is None:
            continue
        part = {"input": part_in or 0, "output": part_out or 0}
        # Before the 2026 spec, input_audio_tokens included cached audio and no cached split existed: the
        # audio input is then all counted as audio "input" and text keeps the whole cache_read.
        if with_cached:
            part["cache_read"] = part_cached or 0
        parts[modality] = part
    text_part = dict(partition)
    for part in parts.values():
        for token_type, value in part.items():
            text_part[token_type] = text_part.get(token_type, 0) - value
    if parts and min(text_part.values()) < 0:
        notes.modality_unsplit += 1
        parts = {m: dict.fromkeys(part, 0) for m, part in parts.items()}
        text_part = dict(partition)

    # UsageRecord(provider, model, operation, tenancy_id, bucket_start, bucket_width, tokens, requests, tenant,
    # dimensions, measures, sparse), built inline: this runs for every row of every poll.
    model, tenancy, start, width, tenant = group.model, group.tenancy, at.bucket_start, at.bucket_width, at.tenant
    by_modality = group.by_modality
    records = [UsageRecord(PROVIDER, model, "chat", tenancy, start, width, text_part, None, tenant,
                           by_modality["text"], _NO_MEASURES, False)]
    for modality, part in parts.items():
        records.append(UsageRecord(PROVIDER, model, "chat", tenancy, start, width, part, None, tenant,
                                   by_modality[modality], _NO_MEASURES, True))
    records.append(UsageRecord(PROVIDER, model, "chat", tenancy, start, width, _NO_TOKENS, requests, tenant,
                               group.dims, _NO_MEASURES, False))
    return records


_COUNT_FIELDS = (*_REQUIRED, *_OPTIONAL)
_COUNTS_OF = itemgetter(*_COUNT_FIELDS)  # every count of the 2026 shape at once; KeyError when one is absent
_INTS = frozenset({int})
_INTS_OR_NULL = frozenset({int, type(None)})


def _plain_counts(values: tuple[Any, ...], required: int) -> bool:
    """True when every value is an int from 0 to ``MAX_COUNT`` (the first ``required`` ones present, the rest
    possibly null): the whole check of a row's counts in a few C-level passes. False sends the row to the
    validating readers, which name the field that is wrong."""
    kinds = set(map(type, values))
    if kinds == _INTS:
        present: tuple[int, ...] | list[int] = values
    elif kinds == _INTS_OR_NULL and None not in values[:required]:
        present = [v for v in values if v is not None]
    else:
        return False
    # Each is at most MAX_COUNT when their sum is (a row whose sum is larger is left to the readers, which
    # check each count on its own).
    return bool(min(present) >= 0 and sum(present) <= MAX_COUNT)


def completions_fast(
    row: Mapping[str, Any], group: Group, start: int, width: int, tenant: str | None
) -> list[UsageRecord] | None:
    """``completions`` for a row of an already validated group whose counts are plainly valid; None for anything
    else (a bad field, or an oddity to note: uncached disagreeing, modalities over their totals), which
    ``completions`` then decides. Same records as ``completions``, in the same order, with the same dicts."""
    try:
        values: tuple[Any, ...] = _COUNTS_OF(row)
    except KeyError:  # the live 2025 shape leaves some out: absent is null
        values = tuple(map(row.get, _COUNT_FIELDS))
    if not _plain_counts(values, 3):
        return None
    total_in, total_out, requests, cached, cache_write, uncached, a_in, a_cached, a_out, i_in, i_cached, i_out = values
    derived = total_in - (cached or 0) - (cache_write or 0)
    if derived < 0 or (uncached is not None and uncached != derived):
        return None
    # As in ``completions``: text is what the audio and image parts leave of the partition.
    with_cached = cached is not None and (
        uncached is not None or a_cached is not None or i_cached is not None
        or row.get("input_text_tokens") is not None or row.get("input_cached_text_tokens") is not None)
    text_in = derived - (a_in or 0) - (i_in or 0)
    text_out = total_out - (a_out or 0) - (i_out or 0)
    text_cached = cached - (a_cached or 0) - (i_cached or 0) if with_cached else cached
    if text_in < 0 or text_out < 0 or (text_cached is not None and text_cached < 0):
        return None  # a modality over its totals: counted as text by ``completions``, and noted
    if cached is not None and cache_write is not None:
        text = {"input": text_in, "output": text_out, "cache_read": text_cached, "cache_write": cache_write}
    else:
        text = {"input": text_in, "output": text_out}
        if cached is not None:
            text["cache_read"] = text_cached
        if cache_write is not None:
            text["cache_write"] = cache_write
    model, tenancy, by_modality = group.model, group.tenancy, group.by_modality
    records = [usage_record(PROVIDER, model, "chat", tenancy, start, width, text, None, tenant,
                               by_modality["text"], _NO_MEASURES, False)]
    if a_in is not None or a_cached is not None or a_out is not None:
        audio = ({"input": a_in or 0, "output": a_out or 0, "cache_read": a_cached or 0} if with_cached
                 else {"input": a_in or 0, "output": a_out or 0})
        records.append(usage_record(PROVIDER, model, "chat", tenancy, start, width, audio, None, tenant,
                                    by_modality["audio"], _NO_MEASURES, True))
    if i_in is not None or i_cached is not None or i_out is not None:
        image = ({"input": i_in or 0, "output": i_out or 0, "cache_read": i_cached or 0} if with_cached
                 else {"input": i_in or 0, "output": i_out or 0})
        records.append(usage_record(PROVIDER, model, "chat", tenancy, start, width, image, None, tenant,
                                    by_modality["image"], _NO_MEASURES, True))
    records.append(usage_record(PROVIDER, model, "chat", tenancy, start, width, _NO_TOKENS, requests, tenant,
                                group.dims, _NO_MEASURES, False))
    return records


def _count_columns(values: list[tuple[Any, ...]], required: int) -> list[tuple[int, ...] | None] | None:
    """The columns of a bucket's counts (``values``: one tuple per row), each all ints from 0 to ``MAX_COUNT`` or
    all null (None: absent; never one of the first ``required``); None when any column is anything else (a
    wrong value, or a field null in some rows only), or there is no row, for the rows to be read one by one.

    Three C-level passes a column (the kinds of its values, ``min``, ``max``): about 1 us an API row of 12
    counts, where one reader call per count was 12."""
    if not values:
        return None
    found: list[tuple[int, ...] | None] = []
    for i, column in enumerate(zip(*values, strict=True)):
        kinds = set(map(type, column))
        if kinds == _INTS:
            if min(column) < 0 or max(column) > MAX_COUNT:
                return None
            found.append(column)
        elif kinds == _NULLS and i >= required:
            found.append(None)
        else:
            return None
    return found


def _minus(column: Sequence[int], *others: Sequence[int] | None) -> Sequence[int]:
    """``column`` less each present one of ``others``, element by element (C-level ``map``)."""
    for other in others:
        if other is not None:
            column = list(map(sub, column, other))
    return column


_NULLS = frozenset({type(None)})
_TEXT_SPLIT_FIELDS = ("input_text_tokens", "input_cached_text_tokens")
_REQUESTS_PART = Part("chat", None, False, requests=True)


def _completions_layout(cached: bool, cache_write: bool, audio: bool, image: bool, with_cached: bool) -> Layout:
    text = ("input", "output", *(("cache_read",) if cached else ()), *(("cache_write",) if cache_write else ()))
    modality = ("input", "output", "cache_read") if with_cached else ("input", "output")
    return (Part("chat", "text", False, text), *((Part("chat", "audio", True, modality),) if audio else ()),
            *((Part("chat", "image", True, modality),) if image else ()), _REQUESTS_PART)


#: Every layout a completions bucket can have, by (cached, cache_write, audio, image, with_cached): made once.
_COMPLETIONS_LAYOUTS: dict[tuple[bool, ...], Layout] = {}


def completions_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[Layout, list[Sequence[int]]] | None:
    """``completions_fast`` for a whole bucket, column by column: the same records (as ``UsageColumns``), or
    None when any row is not plainly valid or needs a note (uncached disagreeing, modalities over their totals).

    Each optional field must be present in every row or in none (true of every response seen: the API fills
    the same fields for every row); a bucket that mixes them is read row by row.
    """
    n = len(rows)
    try:
        values: list[tuple[Any, ...]] = list(map(_COUNTS_OF, rows))
    except KeyError:  # the live 2025 shape leaves some out: absent is null
        values = [tuple(map(row.get, _COUNT_FIELDS)) for row in rows]
    columns = _count_columns(values, 3)
    if columns is None:
        return None
    total_in, total_out, requests, cached, cache_write, uncached, a_in, a_cached, a_out, i_in, i_cached, i_out = (
        columns)
    if total_in is None or total_out is None or requests is None:  # required: never null (for the type checker)
        return None
    derived = _minus(total_in, cached, cache_write)
    if min(derived) < 0 or (uncached is not None and list(uncached) != list(derived)):
        return None
    if cached is None:
        with_cached = False
    elif uncached is not None or a_cached is not None or i_cached is not None:
        with_cached = True
    else:  # as in ``completions``: the 2026 shape's text split says cached audio and images are split too
        split = {row.get(_TEXT_SPLIT_FIELDS[0]) is not None or row.get(_TEXT_SPLIT_FIELDS[1]) is not None
                 for row in rows}
        if len(split) != 1:
            return None
        with_cached = split.pop()
    text_in = _minus(derived, a_in, i_in)
    text_out = _minus(total_out, a_out, i_out)
    text_cached = _minus(cached, a_cached, i_cached) if with_cached and cached is not None else cached
    if min(text_in) < 0 or min(text_out) < 0 or (text_cached is not None and min(text_cached) < 0):
        return None  # a modality over its totals: counted as text by ``completions``, and noted
    out: list[Sequence[int]] = [text_in, text_out]
    if text_cached is not None:
        out.append(text_cached)
    if cache_write is not None:
        out.append(cache_write)
    zeros = (0,) * n
    audio = a_in is not None or a_cached is not None or a_out is not None
    if audio:
        out += (a_in or zeros, a_out or zeros, *((a_cached or zeros,) if with_cached else ()))
    image = i_in is not None or i_cached is not None or i_out is not None
    if image:
        out += (i_in or zeros, i_out or zeros, *((i_cached or zeros,) if with_cached else ()))
    out.append(requests)
    flags = (cached is not None, cache_write is not None, audio, image, with_cached)
    layout = _COMPLETIONS_LAYOUTS.get(flags)
    if layout is None:
        layout = _COMPLETIONS_LAYOUTS[flags] = _completions_layout(*flags)
    return layout, out


def _plain_columns(rows: Sequence[Mapping[str, Any]], fields: tuple[str, ...]) -> list[tuple[int, ...]] | None:
    """The columns of ``fields`` (all required counts) of a bucket's rows; None when any is not plainly valid."""
    values: list[tuple[Any, ...]] = [tuple(map(row.get, fields)) for row in rows]
    columns = _count_columns(values, len(fields))
    return None if columns is None else [c for c in columns if c is not None]


# ------------------------------------------------------------------------------------- the other usage types
def input_tokens(operation: str) -> Mapper:
    """Embeddings and moderations: input tokens and requests."""

    def normalize(row: Mapping[str, Any], at: Row, notes: Notes) -> list[UsageRecord]:
        tokens = count(row, "input_tokens", at.path, required=True) or 0
        requests = count(row, "num_model_requests", at.path, required=True)
        group = group_of(row, at, notes)
        return [_record(at, group, operation, group.dims, tokens={"input": tokens}, requests=requests)]

    def fast(
        row: Mapping[str, Any], group: Group, start: int, width: int, tenant: str | None
    ) -> list[UsageRecord] | None:
        tokens, requests = row.get("input_tokens"), row.get("num_model_requests")
        if not (type(tokens) is int and type(requests) is int and 0 <= tokens <= MAX_COUNT
                and 0 <= requests <= MAX_COUNT):
            return None
        return [usage_record(PROVIDER, group.model, operation, group.tenancy, start, width, {"input": tokens},
                             requests, tenant, group.dims, _NO_MEASURES, False)]

    layout: Layout = (Part(operation, None, False, ("input",), requests=True),)

    def columns(rows: Sequence[Mapping[str, Any]]) -> tuple[Layout, list[Sequence[int]]] | None:
        found = _plain_columns(rows, ("input_tokens", "num_model_requests"))
        return None if found is None else (layout, list(found))

    return Mapper(normalize, fast, columns)


def measure(
    operation: str, source_field: str, metric: str, *, with_requests: bool = True, tool: str | None = None,
    also_required: tuple[str, ...] = (),
) -> Mapper:
    """A usage type with one measure (images, characters, seconds, sessions, bytes, tool calls)."""
    required = (source_field, *(("num_model_requests",) if with_requests else ()), *also_required)

    def normalize(row: Mapping[str, Any], at: Row, notes: Notes) -> list[UsageRecord]:
        value = count(row, source_field, at.path, required=True) or 0
        requests = count(row, "num_model_requests", at.path, required=True) if with_requests else None
        for key in also_required:
            count(row, key, at.path, required=True)
        group = group_of(row, at, notes)
        return [_record(at, group, operation, tool_dims(group, tool), requests=requests, measures={metric: value})]

    def fast(
        row: Mapping[str, Any], group: Group, start: int, width: int, tenant: str | None
    ) -> list[UsageRecord] | None:
        values: tuple[Any, ...] = tuple(map(row.get, required))
        if not _plain_counts(values, len(values)):
            return None
        return [usage_record(PROVIDER, group.model, operation, group.tenancy, start, width, _NO_TOKENS,
                             values[1] if with_requests else None, tenant, tool_dims(group, tool),
                             {metric: values[0]}, False)]

    # The record's columns: requests, then the measure (``Part`` order); ``also_required`` are checked only.
    layout: Layout = (Part(operation, None, False, requests=with_requests, measures=(metric,), tool=tool),)

    def columns(rows: Sequence[Mapping[str, Any]]) -> tuple[Layout, list[Sequence[int]]] | None:
        found = _plain_columns(rows, required)
        if found is None:
            return None
        out: list[Sequence[int]] = [found[1]] if with_requests else []
        return layout, [*out, found[0]]

    return Mapper(normalize, fast, columns)


def tool_dims(group: Group, tool: str | None) -> dict[str, str]:
    """The group's dimensions, plus ``gen_ai.tool.name`` for a tool's usage: one dict per group and tool, shared
    by its records like every other dimensions dict."""
    if tool is None:
        return group.dims
    dims = group.variants.get(tool)
    if dims is None:
        dims = group.variants[tool] = {**group.dims, "gen_ai.tool.name": tool}
    return dims


COMPLETIONS = Mapper(completions, completions_fast, completions_columns)


# -------------------------------------------------------------------------------------------------- costs
def cost(row: Mapping[str, Any], at: Row, notes: Notes) -> CostRecord | None:
    """One ``organization.costs.result``: the amount exactly, its currency, and the billed quantity.

    The spec requires only ``object``: a row without an ``amount`` carries no money and is skipped (counted).
    """
    path = at.path
    if row.get("amount") is None:
        notes.costs_without_amount += 1
        return None
    amount_obj = mapping(row.get("amount"), f"{path}.amount")
    amount = decimal(amount_obj.get("value"), f"{path}.amount.value")
    if amount < 0:
        raise ResponseShapeError(f"{path}.amount.value: negative amount {amount} (a credit?) is not supported")
    currency = text(amount_obj, "currency", f"{path}.amount")
    if not currency:
        raise ResponseShapeError(f"{path}.amount.currency: required string is missing")
    currency = currency.upper()
    if currency != "USD":
        notes.currencies.add(currency)
    quantity_raw = row.get("quantity")
    quantity: Decimal | None = None
    if quantity_raw is not None:
        quantity = decimal(quantity_raw, f"{path}.quantity")
        if quantity < 0:
            raise ResponseShapeError(f"{path}.quantity: expected a quantity >= 0, got {quantity}")
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
