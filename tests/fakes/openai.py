"""A fake OpenAI Administration API (usage, costs, projects) on loopback, shaped like openai/openai-openapi.

It serves what the spec (``openapi.yaml`` @ f85dbe2) documents, from a model the test owns and changes between
polls:

* ``GET /v1/organization/usage/{type}`` for the ten usage types: ``start_time`` (required), ``end_time``,
  ``bucket_width`` (``1m``/``1h``/``1d``, default ``1d``), ``limit`` (buckets; default and maximum per width,
  400 beyond it), repeated ``group_by`` (400 for a field the type does not accept), ``project_ids``, and
  ``page`` (the previous ``next_page``). Buckets are ``{"object": "bucket", "start_time", "end_time",
  "results": [...]}``; the first starts at ``start_time`` exactly and ends at the next boundary of the width,
  the last ends at ``end_time`` (or "now"); empty buckets carry ``"results": []``. Group fields not grouped by
  are ``null``. ``page_buckets`` makes pages smaller than ``limit`` so paging is exercised.
* ``GET /v1/organization/costs``: ``1d`` only, ``limit`` 1..180 (default 7), ``group_by`` within
  project_id / line_item / api_key_id; ``amount.value`` rendered as a JSON number literal with every digit, or as
  a string when the cost was added with ``as_string=True`` (the live quirk); ``quantity`` only with
  ``group_by=line_item``.
* ``GET /v1/organization/projects``: ``limit`` (1..100, default 20), ``after``, ``include_archived``.

Two completions shapes: ``"2026"`` (every field of the current spec) and ``"2024"`` (the fields of the live
January 2025 output: no cache-write, no uncached, no per-modality cached split; ``input_audio_tokens``
includes cached audio, as that spec said).

Ground truth (``tokens``, ``requests``, ``measure``, ``costs``, ``storage``) is computed from the model's own
atoms, independently of the JSON the server renders.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.fakes.api import FakeApi, Request, Response

ADMIN_KEY = "sk-admin-test-fake-openai-0123456789"
WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, maximum) buckets per page

USER_FIELDS = ("project_id", "user_id", "api_key_id", "model")
#: usage type -> (result object, group fields in the order the spec lists them, measure fields)
USAGE_TYPES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "completions": ("organization.usage.completions.result", (*USER_FIELDS, "batch", "service_tier"), ()),
    "embeddings": ("organization.usage.embeddings.result", USER_FIELDS, ("input_tokens", "num_model_requests")),
    "moderations": ("organization.usage.moderations.result", USER_FIELDS, ("input_tokens", "num_model_requests")),
    "images": ("organization.usage.images.result", (*USER_FIELDS, "size", "source"), ("images", "num_model_requests")),
    "audio_speeches": ("organization.usage.audio_speeches.result", USER_FIELDS, ("characters", "num_model_requests")),
    "audio_transcriptions": (
        "organization.usage.audio_transcriptions.result", USER_FIELDS, ("seconds", "num_model_requests")),
    "vector_stores": ("organization.usage.vector_stores.result", ("project_id",), ("usage_bytes",)),
    "code_interpreter_sessions": (
        "organization.usage.code_interpreter_sessions.result", ("project_id",), ("num_sessions",)),
    "file_search_calls": (
        "organization.usage.file_searches.result", ("project_id", "user_id", "api_key_id", "vector_store_id"),
        ("num_requests",)),
    "web_search_calls": (
        "organization.usage.web_searches.result", (*USER_FIELDS, "context_level"),
        ("num_model_requests", "num_requests")),
}
#: The parts of a completions atom: an exact partition of its tokens by type and modality.
COMPLETION_PARTS = ("text_in", "text_cached", "audio_in", "audio_cached", "image_in", "image_cached",
                    "cache_write", "text_out", "audio_out", "image_out", "requests")
LEVEL_FIELDS = frozenset({"usage_bytes"})


@dataclass(frozen=True)
class _Raw:
    """A number to render as a JSON literal with exactly these digits."""

    text: str


@dataclass
class CostAtom:
    amount: Decimal
    currency: str = "usd"
    quantity: Decimal | None = None
    quantity_unit: str | None = None
    as_string: bool = False


@dataclass
class Project:
    id: str
    name: str
    created_at: int
    archived: bool = False


@dataclass
class FakeOpenAI:
    """The fake API and its data model. Use as a context manager; ``base_url`` is the provider's ``endpoint``."""

    shape: str = "2026"
    page_buckets: int | None = None  # serve at most this many buckets per page (paging with small pages)
    now: int | None = None  # "now" for a query without end_time (default: the wall clock)
    key: str = ADMIN_KEY
    # type -> minute -> dims -> field -> value (indexed by minute so a bucket reads only its own atoms)
    usage: dict[str, dict[int, dict[tuple[tuple[str, Any], ...], dict[str, int]]]] = field(default_factory=dict)
    # (day, dims) -> atom
    cost_atoms: dict[tuple[int, tuple[tuple[str, Any], ...]], CostAtom] = field(default_factory=dict)
    projects: list[Project] = field(default_factory=list)
    #: Generator mode, for organisations too large to store (a benchmark's 90 days x 2,500 series): usage atoms
    #: made on request, ``(usage_type, start, end) -> (minute, dims, values)`` for the minutes in
    #: ``[start, end)``. It must be deterministic: it is the ground truth as well. Stored atoms still count.
    generate: Callable[[str, int, int], Iterable[tuple[int, dict[str, Any], dict[str, int]]]] | None = None
    _corrupt: dict[str, tuple[str, Any, int]] = field(default_factory=dict)
    api: FakeApi = field(init=False)

    def __post_init__(self) -> None:
        self.api = FakeApi(auth_header="authorization", auth_value=f"Bearer {self.key}")
        for name in USAGE_TYPES:
            self.api.route("GET", f"/v1/organization/usage/{name}", self._usage_handler(name))
        self.api.route("GET", "/v1/organization/costs", self._costs)
        self.api.route("GET", "/v1/organization/projects", self._projects)

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()

    @property
    def base_url(self) -> str:
        return self.api.base_url

    # -- the model: what the organisation used ----------------------------------------------------------------
    def add_usage(self, usage_type: str, t: int, dims: Mapping[str, Any], **values: int) -> None:
        """Add ``values`` to the usage of ``usage_type`` at minute ``t`` for group ``dims`` (a bucket grows)."""
        atom = self._atom(usage_type, t, dims)
        for name, value in values.items():
            atom[name] += value

    def set_usage(self, usage_type: str, t: int, dims: Mapping[str, Any], **values: int) -> None:
        """Replace values (a correction: the bucket may shrink)."""
        self._atom(usage_type, t, dims).update(values)

    def _atom(self, usage_type: str, t: int, dims: Mapping[str, Any]) -> dict[str, int]:
        minute = self.usage.setdefault(usage_type, {}).setdefault(t - t % 60, {})
        return minute.setdefault(_key(dims), defaultdict(int))

    def set_cost(
        self, day: int, dims: Mapping[str, Any], amount: Decimal | str, *, currency: str = "usd",
        quantity: Decimal | str | None = None, quantity_unit: str | None = None, as_string: bool = False,
    ) -> None:
        """Set (or restate) one day's cost for a (project_id, line_item, api_key_id) group."""
        self.cost_atoms[(day - day % 86400, _key(dims))] = CostAtom(
            Decimal(amount), currency, None if quantity is None else Decimal(quantity), quantity_unit, as_string)

    def add_project(self, ident: str, name: str, *, archived: bool = False) -> None:
        self.projects.append(Project(ident, name, 1_711_471_533 + len(self.projects), archived))

    def corrupt_next(self, usage_type: str, field_name: str, value: Any) -> None:
        """The next non-empty response of ``usage_type`` carries ``value`` in its first row's ``field_name``.

        Only requests that arrive from now on count: a request of an earlier, abandoned poll that the server
        is still answering must not take it.
        """
        self._corrupt[usage_type] = (field_name, value, len(self.api.requests))

    # -- ground truth, from the atoms ---------------------------------------------------------------------------
    def _atoms(self, usage_type: str, start: int, end: int) -> Iterable[tuple[int, dict[str, Any], dict[str, int]]]:
        if self.generate is not None:
            yield from self.generate(usage_type, start, end)
        by_minute = self.usage.get(usage_type, {})
        first = start + (-start) % 60
        if (end - first) // 60 <= len(by_minute):
            minutes: Iterable[int] = (t for t in range(first, end, 60) if t in by_minute)
        else:
            minutes = sorted(t for t in by_minute if start <= t < end)
        for t in minutes:
            for dims, values in by_minute[t].items():
                yield t, dict(dims), values

    def tokens(self, start: int, end: int, *, by_modality: bool = False) -> dict[tuple[str, ...], int]:
        """Completions tokens by (project, model, token type[, modality]): the partition every token once."""
        out: dict[tuple[str, ...], int] = defaultdict(int)
        for _, dims, v in self._atoms("completions", start, end):
            base = (dims.get("project_id") or "", dims.get("model") or "")
            for modality in ("text", "audio", "image"):
                parts = {"input": v[f"{modality}_in"], "cache_read": v[f"{modality}_cached"],
                         "output": v[f"{modality}_out"],
                         "cache_write": v["cache_write"] if modality == "text" else 0}
                for token_type, n in parts.items():
                    out[(*base, token_type, *((modality,) if by_modality else ()))] += n
        return dict(out)

    def requests(self, usage_type: str, start: int, end: int) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = defaultdict(int)
        field_name = "requests" if usage_type == "completions" else "num_model_requests"
        for _, dims, v in self._atoms(usage_type, start, end):
            out[(dims.get("project_id") or "", dims.get("model") or "")] += v[field_name]
        return dict(out)

    def measure(self, usage_type: str, field_name: str, start: int, end: int) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = defaultdict(int)
        for _, dims, v in self._atoms(usage_type, start, end):
            out[(dims.get("project_id") or "", dims.get("model") or "")] += v[field_name]
        return dict(out)

    def storage(self, start: int, end: int, width: int) -> dict[str, int]:
        """Bytes stored per project in the newest bucket that has any."""
        newest: dict[str, tuple[int, int]] = {}
        for t, dims, v in self._atoms("vector_stores", start, end):
            bucket = t - t % width
            project = dims.get("project_id") or ""
            if project not in newest or bucket > newest[project][0]:
                newest[project] = (bucket, 0)
            if bucket == newest[project][0]:
                newest[project] = (bucket, newest[project][1] + v["usage_bytes"])
        return {p: n for p, (_, n) in newest.items()}

    def costs(self, start: int, end: int) -> dict[tuple[str, str, str], Decimal]:
        """Cost by (project, line item, upper-case currency) over the days in ``[start, end)``."""
        out: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
        for (day, dims), atom in self.cost_atoms.items():
            if start <= day < end:
                d = dict(dims)
                out[(d.get("project_id") or "", d.get("line_item") or "", atom.currency.upper())] += atom.amount
        return dict(out)

    # -- serving ----------------------------------------------------------------------------------------------
    def _window(self, req: Request, widths: Mapping[str, int], limits: Mapping[str, tuple[int, int]],
                default_width: str) -> tuple[list[tuple[int, int]], int, int] | Response:
        """(buckets of this page, index of the first, total) or a 400 response for bad parameters."""
        try:
            start = int(req.param("start_time") or "")
        except ValueError:
            return _bad("start_time is required and must be an integer")
        width_name = req.param("bucket_width", default_width) or default_width
        if width_name not in widths:
            return _bad(f"invalid bucket_width {width_name!r}")
        width = widths[width_name]
        default_limit, max_limit = limits[width_name]
        try:
            limit = int(req.param("limit") or default_limit)
        except ValueError:
            return _bad("limit must be an integer")
        if not 1 <= limit <= max_limit:
            return _bad(f"limit must be between 1 and {max_limit} for bucket_width={width_name}")
        end_param = req.param("end_time")
        now = self.now if self.now is not None else int(time.time())
        end = min(int(end_param), now) if end_param else now
        edges = [start, *range(start - start % width + width, end, width), end]
        grid = [(a, b) for a, b in itertools.pairwise(edges) if a < b]
        first = 0
        page = req.param("page")
        if page:
            try:
                next_start = int(base64.urlsafe_b64decode(page.removeprefix("page_")).decode())
                first = next(i for i, (a, _) in enumerate(grid) if a == next_start)
            except (ValueError, StopIteration):
                return _bad(f"invalid page {page!r}")
        size = min(limit, self.page_buckets or limit)
        return grid[first:first + size], first + size, len(grid)

    def _usage_handler(self, usage_type: str) -> Callable[[Request], Response]:
        obj, group_fields, measures = USAGE_TYPES[usage_type]

        def handle(req: Request) -> Response:
            window = self._window(req, WIDTHS, LIMITS, "1d")
            if isinstance(window, Response):
                return window
            grid, next_index, total = window
            grouped = req.params("group_by")
            bad = [g for g in grouped if g not in group_fields]
            if bad:
                return _bad(f"invalid group_by {bad[0]!r} for {usage_type}")
            projects = set(req.params("project_ids"))
            data = []
            for a, b in grid:
                groups: dict[tuple[Any, ...], dict[str, int]] = {}
                latest: dict[tuple[Any, ...], tuple[int, dict[str, int]]] = {}
                for t, dims, values in self._atoms(usage_type, a, b):
                    if projects and dims.get("project_id") not in projects:
                        continue
                    atom_key = tuple(sorted(dims.items()))
                    if usage_type == "vector_stores":  # a level: the latest reading of each store set
                        if atom_key not in latest or t > latest[atom_key][0]:
                            latest[atom_key] = (t, dict(values))
                        continue
                    group = tuple(dims.get(g) for g in grouped)
                    acc = groups.setdefault(group, defaultdict(int))
                    for k, v in values.items():
                        acc[k] += v
                for atom_key, (_, values) in latest.items():
                    dims = dict(atom_key)
                    acc = groups.setdefault(tuple(dims.get(g) for g in grouped), defaultdict(int))
                    for k, v in values.items():
                        acc[k] += v
                results = []
                for group, values in sorted(groups.items(), key=lambda kv: repr(kv[0])):
                    row: dict[str, Any] = {"object": obj}
                    row.update(self._render_completions(values) if usage_type == "completions"
                               else {m: values.get(m, 0) for m in measures})
                    chosen = dict(zip(grouped, group, strict=True))
                    for g in group_fields:
                        if usage_type == "completions" and self.shape == "2024" and g == "service_tier":
                            continue  # the live 2025 output had no service_tier
                        row[g] = chosen.get(g)
                    results.append(row)
                data.append({"object": "bucket", "start_time": a, "end_time": b, "results": results})
            corrupt = self._corrupt.get(usage_type)
            if corrupt is not None and any(r is req for r in self.api.requests[corrupt[2]:]):
                rows = [r for bucket in data for r in bucket["results"]]
                if rows:
                    rows[0][corrupt[0]] = corrupt[1]
                    del self._corrupt[usage_type]
            return _page(data, next_index, total, grid)

        return handle

    def _render_completions(self, v: Mapping[str, int]) -> dict[str, Any]:
        cached = v.get("text_cached", 0) + v.get("audio_cached", 0) + v.get("image_cached", 0)
        uncached = v.get("text_in", 0) + v.get("audio_in", 0) + v.get("image_in", 0)
        output = v.get("text_out", 0) + v.get("audio_out", 0) + v.get("image_out", 0)
        if self.shape == "2024":
            return {
                "input_tokens": uncached + cached, "output_tokens": output, "num_model_requests": v.get("requests", 0),
                "input_cached_tokens": cached,
                "input_audio_tokens": v.get("audio_in", 0) + v.get("audio_cached", 0),  # "including cached"
                "output_audio_tokens": v.get("audio_out", 0),
            }
        return {
            "input_tokens": uncached + cached + v.get("cache_write", 0),
            "input_cached_tokens": cached,
            "input_cache_write_tokens": v.get("cache_write", 0),
            "input_uncached_tokens": uncached,
            "output_tokens": output,
            "input_text_tokens": v.get("text_in", 0),
            "output_text_tokens": v.get("text_out", 0),
            "input_cached_text_tokens": v.get("text_cached", 0),
            "input_audio_tokens": v.get("audio_in", 0),
            "input_cached_audio_tokens": v.get("audio_cached", 0),
            "output_audio_tokens": v.get("audio_out", 0),
            "input_image_tokens": v.get("image_in", 0),
            "input_cached_image_tokens": v.get("image_cached", 0),
            "output_image_tokens": v.get("image_out", 0),
            "num_model_requests": v.get("requests", 0),
        }

    def _costs(self, req: Request) -> Response:
        window = self._window(req, {"1d": 86400}, {"1d": (7, 180)}, "1d")
        if isinstance(window, Response):
            return window
        grid, next_index, total = window
        grouped = req.params("group_by")
        bad = [g for g in grouped if g not in ("project_id", "line_item", "api_key_id")]
        if bad:
            return _bad(f"invalid group_by {bad[0]!r} for costs")
        projects = set(req.params("project_ids"))
        data = []
        for a, b in grid:
            groups: dict[tuple[Any, ...], list[CostAtom]] = defaultdict(list)
            for (day, dims_key), atom in self.cost_atoms.items():
                dims = dict(dims_key)
                if a <= day < b and (not projects or dims.get("project_id") in projects):
                    groups[(*[dims.get(g) for g in grouped], atom.currency)].append(atom)
            results = []
            for group, atoms in sorted(groups.items(), key=lambda kv: repr(kv[0])):
                chosen = dict(zip(grouped, group[:-1], strict=True))
                amount = sum((x.amount for x in atoms), Decimal(0))
                value: Any = str(amount) if any(x.as_string for x in atoms) else _Raw(str(amount))
                quantity: Any = None
                unit = None
                if "line_item" in grouped and all(x.quantity is not None for x in atoms):
                    quantity = _Raw(str(sum((x.quantity or Decimal(0) for x in atoms), Decimal(0))))
                    unit = atoms[0].quantity_unit
                results.append({
                    "object": "organization.costs.result", "amount": {"value": value, "currency": group[-1]},
                    "line_item": chosen.get("line_item"), "project_id": chosen.get("project_id"),
                    "api_key_id": chosen.get("api_key_id"), "quantity": quantity, "quantity_unit": unit,
                })
            data.append({"object": "bucket", "start_time": a, "end_time": b, "results": results})
        return _page(data, next_index, total, grid)

    def _projects(self, req: Request) -> Response:
        try:
            limit = int(req.param("limit") or 20)
        except ValueError:
            return _bad("limit must be an integer")
        if not 1 <= limit <= 100:
            return _bad("limit must be between 1 and 100")
        archived = (req.param("include_archived") or "false").lower() == "true"
        items = [p for p in self.projects if archived or not p.archived]
        after = req.param("after")
        if after:
            ids = [p.id for p in items]
            if after not in ids:
                return _bad(f"invalid after {after!r}")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return Response(200, {
            "object": "list",
            "data": [{
                "id": p.id, "object": "organization.project", "name": p.name, "created_at": p.created_at,
                "archived_at": p.created_at + 86400 if p.archived else None,
                "status": "archived" if p.archived else "active",
            } for p in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(items) > limit,
        })


def _key(dims: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in dims.items() if v is not None))


def _bad(message: str) -> Response:
    return Response(400, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                    "code": None}})


def _page(data: list[dict[str, Any]], next_index: int, total: int, grid: list[tuple[int, int]]) -> Response:
    has_more = next_index < total
    next_page = None
    if has_more:
        # Opaque to clients, like OpenAI's ("page_AAAAAGdGxdEiJdKOAAAAAGcqsYA="); here: the next bucket's start.
        next_start = grid[-1][1]  # the next bucket starts where this page's last one ends
        next_page = "page_" + base64.urlsafe_b64encode(str(next_start).encode()).decode()
    body = {"object": "page", "data": data, "has_more": has_more, "next_page": next_page}
    text = json.dumps(body, default=lambda o: f"@@RAW:{o.text}@@" if isinstance(o, _Raw) else str(o))
    return Response(200, raw=re.sub(r'"@@RAW:([^@"]*)@@"', r"\1", text).encode())


def populate(
    fake: FakeOpenAI, start: int, end: int, *, projects: int = 3, models: int = 2, step: int = 3600, seed: int = 1,
) -> None:
    """A seeded organisation: every usage type, each project and model, one atom per ``step`` in ``[start, end)``.

    Completions mix text, cached, cache-write, audio and image tokens in the 2026 shape (the 2024 shape gets
    neither cache writes nor image tokens, which it cannot express), batch and non-batch, two service tiers.
    """
    import random

    rng = random.Random(seed)
    new = fake.shape != "2024"
    for p in range(projects):
        project = f"proj_{p:03d}"
        if not any(x.id == project for x in fake.projects):
            fake.add_project(project, f"Project {p}", archived=p == projects - 1 and projects > 1)
        for t in range(start, end, step):
            for m in range(models):
                model = f"gpt-test-{m}"
                dims = {"project_id": project, "model": model, "batch": m % 2 == 1,
                        "service_tier": "default" if m % 2 == 0 else "flex"}
                fake.add_usage(
                    "completions", t, dims,
                    text_in=rng.randint(100, 5000), text_cached=rng.randint(0, 2000),
                    cache_write=rng.randint(0, 300) if new else 0,
                    audio_in=rng.randint(0, 50) if m == 0 else 0, audio_cached=rng.randint(0, 20) if m == 0 and new else 0,
                    image_in=rng.randint(0, 80) if new and m == 1 else 0,
                    image_cached=rng.randint(0, 10) if new and m == 1 else 0,
                    text_out=rng.randint(10, 900), audio_out=rng.randint(0, 30) if m == 0 else 0,
                    image_out=0, requests=rng.randint(1, 40),
                )
            simple = {"project_id": project, "model": "text-embedding-3-small"}
            fake.add_usage("embeddings", t, simple, input_tokens=rng.randint(1, 9000), num_model_requests=rng.randint(1, 9))
            fake.add_usage("moderations", t, {"project_id": project, "model": "omni-moderation-latest"},
                           input_tokens=rng.randint(1, 500), num_model_requests=rng.randint(1, 5))
            fake.add_usage("images", t, {"project_id": project, "model": "gpt-image-1", "size": "1024x1024",
                                         "source": "image.generation"},
                           images=rng.randint(1, 4), num_model_requests=rng.randint(1, 4))
            fake.add_usage("audio_speeches", t, {"project_id": project, "model": "tts-1"},
                           characters=rng.randint(10, 4000), num_model_requests=rng.randint(1, 3))
            fake.add_usage("audio_transcriptions", t, {"project_id": project, "model": "whisper-1"},
                           seconds=rng.randint(1, 600), num_model_requests=rng.randint(1, 3))
            fake.set_usage("vector_stores", t, {"project_id": project}, usage_bytes=1_000_000 * (p + 1) + t % 7919)
            fake.add_usage("code_interpreter_sessions", t, {"project_id": project}, num_sessions=rng.randint(0, 3))
            fake.add_usage("file_search_calls", t, {"project_id": project, "vector_store_id": "vs_1"},
                           num_requests=rng.randint(0, 7))
            fake.add_usage("web_search_calls", t, {"project_id": project, "model": "gpt-test-0"},
                           num_requests=rng.randint(0, 5), num_model_requests=rng.randint(0, 5))
        for day in range(start - start % 86400, end, 86400):
            fake.set_cost(day, {"project_id": project, "line_item": "gpt-test-0, input"},
                          f"{rng.randint(0, 99999)}.{rng.randint(0, 999999):06d}", quantity=str(rng.randint(1, 10**7)),
                          quantity_unit="tokens")
            fake.set_cost(day, {"project_id": project, "line_item": "Image models"},
                          f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}", as_string=True)
