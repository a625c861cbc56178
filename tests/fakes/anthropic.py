"""A fake Anthropic Admin API on loopback: usage report, cost report and workspaces, shaped like the API reference.

Built on ``tests.fakes.api.FakeApi`` (real HTTP server, request log, ``fail_next`` for 429 / 529 / hangs / bad bodies).
This module owns the Anthropic specifics, each from the API reference (docs/providers/anthropic.md lists them):

* ``x-api-key`` must be the admin key and ``anthropic-version`` must be sent, else 401 / 400 with Anthropic's
  error body ``{"type": "error", "error": {"type": ..., "message": ...}}``;
* reports: ``starting_at`` required and snapped to the bucket start, ``ending_at`` exclusive of buckets that end
  after it, ``bucket_width`` ``1m|1h|1d`` (default ``1d``; cost: ``1d`` only), ``limit`` default and maximum per
  width (400 above it), ``group_by[]`` checked against the documented values (``speed`` needs the fast-mode beta
  header), every bucket in range returned even when empty, ``has_more`` / ``next_page`` (an opaque token) paging;
* usage rows carry ``uncached_input_tokens``, nested ``cache_creation`` by TTL, ``cache_read_input_tokens``,
  ``output_tokens`` and ``server_tool_use``; group fields are ``null`` when not grouped by (or left out, with
  ``omit_ungrouped``), ``workspace_id`` is null for the default workspace, ``api_key_id`` null for Console usage;
* cost rows carry ``amount`` as a decimal string in cents, ``currency`` ``USD``, and with ``group_by[]=description``
  the model, ``cost_type``, ``token_type``, ``service_tier``, ``context_window``; Priority Tier usage has no cost
  row (the docs say it is not in the cost report);
* workspaces: ``after_id`` cursor paging, ``limit`` 1..1000, ``include_archived``; the default workspace is never
  listed (it has no id in the reports);
* Claude Code analytics: ``starting_at`` one UTC date (``YYYY-MM-DD``), ``limit`` 1..1000 (default 20), one record
  per actor and day with ``core_metrics``, ``tool_actions`` and ``model_breakdown``, ``next_page`` paging.

The data are a seeded model held at one-minute resolution, so every bucket width sums the same events, and tests
change it between polls: ``add`` (a bucket grows, or a late row lands in an old bucket), ``remove`` (a shrink),
``restate_cost`` (a cost day changes), ``add_code`` (a Claude Code day grows). ``truth_*`` give the exact totals a
receiver must end up with. Paging uses the base's ``paginate`` (opaque ``next_page`` tokens).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tests.fakes.api import FakeApi, Request, Response, paginate

ADMIN_KEY = "sk-ant-admin01-test-0123456789abcdef"
USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"
WORKSPACES_PATH = "/v1/organizations/workspaces"
CLAUDE_CODE_PATH = "/v1/organizations/usage_report/claude_code"
ORGANIZATION_ID = "12345678-1234-5678-1234-567812345678"
CODE_TOOLS = ("edit_tool", "multi_edit_tool", "write_tool", "notebook_edit_tool")
FAST_MODE_BETA = "fast-mode-2026-02-01"

MINUTE, HOUR, DAY = 60, 3600, 86400
WIDTHS = {"1m": MINUTE, "1h": HOUR, "1d": DAY}
#: bucket_width -> (default limit, maximum limit), from the usage report reference.
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COST_LIMITS = (7, 31)
USAGE_GROUPS = ("api_key_id", "workspace_id", "model", "service_tier", "context_window", "inference_geo", "speed")
COST_GROUPS = ("workspace_id", "description")

OVERLOADED = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
RATE_LIMITED = b'{"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}}'

#: List prices in US cents per token (USD per million tokens / 1e4), by model and token type.
PRICES_CENTS: dict[str, dict[str, Decimal]] = {
    "claude-sonnet-4-20250514": {"input": Decimal("0.0003"), "output": Decimal("0.0015")},
    "claude-opus-4-1-20250805": {"input": Decimal("0.0015"), "output": Decimal("0.0075")},
    "claude-3-5-haiku-20241022": {"input": Decimal("0.00008"), "output": Decimal("0.0004")},
}
WEB_SEARCH_CENTS = Decimal(1)
CENT_PRECISION = Decimal("0.00001")  # $10 per 1,000 searches
TOKEN_FIELDS = ("uncached_input_tokens", "cache_read_input_tokens", "ephemeral_5m_input_tokens",
                "ephemeral_1h_input_tokens", "output_tokens", "web_search_requests")


@dataclass(frozen=True, order=True)
class Group:
    """The values of every group-by field for a stream of usage (None: default workspace / Console key)."""

    workspace_id: str | None
    model: str
    service_tier: str = "standard"
    context_window: str = "0-200k"
    inference_geo: str = "global"
    api_key_id: str | None = "apikey_01"
    speed: str = "standard"


@dataclass(frozen=True)
class Counts:
    """Usage of one group in one minute, in the API's own fields."""

    uncached_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0
    output_tokens: int = 0
    web_search_requests: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Counts)))

    def __sub__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(Counts)))


@dataclass
class CodeActivity:
    """One Claude Code actor's day, in the report's own fields (accumulated as tests add activity)."""

    sessions: int = 0
    added: int = 0
    removed: int = 0
    commits: int = 0
    pull_requests: int = 0
    tools: dict[str, list[int]] = field(default_factory=dict)  # tool -> [accepted, rejected]
    models: dict[str, list[int]] = field(default_factory=dict)  # model -> [input, output, cache_read, cache_creation]


def rfc3339(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def error(status: int, kind: str, message: str) -> Response:
    return Response(status, {"type": "error", "error": {"type": kind, "message": message},
                             "request_id": "req_fake_0001"})


WORKSPACES: tuple[dict[str, Any], ...] = (
    {"id": "wrkspc_01Prod", "name": "Production", "archived_at": None},
    {"id": "wrkspc_02Research", "name": "Research", "archived_at": None},
    {"id": "wrkspc_03Old", "name": "Old Experiments", "archived_at": "2025-06-01T00:00:00Z"},
)

#: The seeded organisation: (group, mean counts per active minute).
STREAMS: tuple[tuple[Group, Counts], ...] = (
    (Group("wrkspc_01Prod", "claude-sonnet-4-20250514"), Counts(1200, 5000, 800, 200, 900, 1)),
    (Group("wrkspc_01Prod", "claude-3-5-haiku-20241022", service_tier="batch"), Counts(4000, 0, 0, 0, 700, 0)),
    (Group("wrkspc_02Research", "claude-opus-4-1-20250805", context_window="200k-1M", inference_geo="us"),
     Counts(9000, 20000, 0, 3000, 2500, 3)),
    (Group("wrkspc_02Research", "claude-sonnet-4-20250514", service_tier="priority"), Counts(800, 100, 50, 0, 300, 0)),
    (Group(None, "claude-3-5-haiku-20241022", api_key_id=None), Counts(300, 0, 0, 0, 90, 0)),  # default ws, Console
    (Group("wrkspc_03Old", "claude-sonnet-4-20250514", service_tier="flex"), Counts(500, 0, 20, 0, 100, 0)),
)


class FakeAnthropic:
    """The fake Admin API. ``base_url`` is the provider ``endpoint``; mutate the data between polls."""

    def __init__(
        self,
        *,
        admin_key: str = ADMIN_KEY,
        max_page_buckets: int | None = None,
        max_page_workspaces: int | None = None,
        omit_ungrouped: bool = False,
    ) -> None:
        self.admin_key = admin_key
        self.max_page_buckets = max_page_buckets  # the API may return fewer buckets than `limit`: page sooner
        self.max_page_workspaces = max_page_workspaces
        self.omit_ungrouped = omit_ungrouped  # leave ungrouped fields out instead of sending null
        self.usage: dict[int, dict[Group, Counts]] = defaultdict(dict)  # minute start -> group -> counts
        self.cost_factor: dict[int, Decimal] = {}  # day start -> restatement factor
        self.workspaces: list[dict[str, Any]] = [dict(w) for w in WORKSPACES]
        #: Claude Code analytics: (day, actor type, actor, customer type, terminal type) -> CodeActivity
        self.code: dict[tuple[int, str, str, str, str], CodeActivity] = {}
        self.max_page_code_records = max_page_buckets
        self.api = FakeApi()
        self.api.route("GET", USAGE_PATH, self._usage_report)
        self.api.route("GET", COST_PATH, self._cost_report)
        self.api.route("GET", WORKSPACES_PATH, self._workspaces)
        self.api.route("GET", CLAUDE_CODE_PATH, self._claude_code)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.api.base_url

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> FakeAnthropic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the data model ---------------------------------------------------------------------------------------------
    def populate(self, start: int, end: int, *, seed: int = 1, every: int = 7 * MINUTE) -> None:
        """Seeded traffic for every stream in ``[start, end)``: one busy minute per ``every`` seconds on average."""
        rng = random.Random(seed)
        for group, mean in STREAMS:
            t = start - start % MINUTE
            while t < end:
                t += MINUTE * rng.randint(1, max(1, 2 * every // MINUTE))
                if t >= end:
                    break
                scale = rng.uniform(0.2, 1.8)
                self.add(t, group, Counts(*(int(getattr(mean, f.name) * scale) for f in fields(Counts))))

    def add(self, t: int, group: Group, counts: Counts) -> None:
        """Usage of ``group`` at time ``t`` (a growing bucket, or a late row when ``t`` is old)."""
        minute = t - t % MINUTE
        self.usage[minute][group] = self.usage[minute].get(group, Counts()) + counts

    def remove(self, t: int, group: Group, counts: Counts) -> None:
        """A correction: the bucket holding ``t`` shrinks by ``counts``."""
        minute = t - t % MINUTE
        left = self.usage[minute][group] - counts
        assert min(getattr(left, f.name) for f in fields(Counts)) >= 0, "cannot remove more than was there"
        self.usage[minute][group] = left

    def restate_cost(self, day: int, factor: str) -> None:
        """Anthropic restates a cost day: every amount of that UTC day is multiplied by ``factor``."""
        self.cost_factor[day - day % DAY] = Decimal(factor)

    def add_code(
        self, day: int, actor: str, *, api_key: bool = False, customer_type: str = "api",
        terminal_type: str = "vscode", sessions: int = 0, added: int = 0, removed: int = 0, commits: int = 0,
        pull_requests: int = 0, tools: dict[str, tuple[int, int]] | None = None,
        models: dict[str, tuple[int, int, int, int]] | None = None,
    ) -> None:
        """Claude Code activity of ``actor`` (an email, or a key name with ``api_key``) on the UTC day of ``day``."""
        key = (day - day % DAY, "api_actor" if api_key else "user_actor", actor, customer_type, terminal_type)
        a = self.code.setdefault(key, CodeActivity())
        a.sessions += sessions
        a.added += added
        a.removed += removed
        a.commits += commits
        a.pull_requests += pull_requests
        for tool, (accepted, rejected) in (tools or {}).items():
            counts_ = a.tools.setdefault(tool, [0, 0])
            counts_[0] += accepted
            counts_[1] += rejected
        for model, tokens in (models or {}).items():
            totals = a.models.setdefault(model, [0, 0, 0, 0])
            for i, n in enumerate(tokens):
                totals[i] += n

    def populate_code(self, first_day: int, days: int, *, seed: int = 1) -> None:
        """Seeded Claude Code activity: three people and one CI key over ``days`` UTC days from ``first_day``."""
        rng = random.Random(seed)
        actors = (("ada@example.com", False, "api", "vscode"), ("grace@example.com", False, "subscription", "iTerm.app"),
                  ("linus@example.com", False, "api", "vscode"), ("ci-bot", True, "api", "non-interactive"))
        for d in range(days):
            for actor, key, customer, terminal in actors:
                self.add_code(
                    first_day + d * DAY, actor, api_key=key, customer_type=customer, terminal_type=terminal,
                    sessions=rng.randint(1, 9), added=rng.randint(0, 900), removed=rng.randint(0, 300),
                    commits=rng.randint(0, 6), pull_requests=rng.randint(0, 2),
                    tools={t: (rng.randint(0, 40), rng.randint(0, 8)) for t in CODE_TOOLS[:rng.randint(1, 4)]},
                    models={"claude-sonnet-4-20250514": (rng.randint(0, 10**6), rng.randint(0, 10**5),
                                                         rng.randint(0, 10**6), rng.randint(0, 10**5))},
                )

    def truth_code(self) -> dict[str, dict[tuple[str, ...], int]]:
        """Claude Code ground truth: metric -> (breakdown) -> count, summed over actors and days."""
        out: dict[str, dict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
        for (_, _, _, customer, _), a in self.code.items():
            out["llm.usage.code.sessions"][(customer,)] += a.sessions
            out["llm.usage.code.commits"][(customer,)] += a.commits
            out["llm.usage.code.pull_requests"][(customer,)] += a.pull_requests
            out["llm.usage.code.lines"][(customer, "added")] += a.added
            out["llm.usage.code.lines"][(customer, "removed")] += a.removed
            for tool, (accepted, rejected) in a.tools.items():
                out["llm.usage.code.tool_actions"][(customer, tool, "accepted")] += accepted
                out["llm.usage.code.tool_actions"][(customer, tool, "rejected")] += rejected
            for model, tokens in a.models.items():
                for token_type, n in zip(("input", "output", "cache_read", "cache_write"), tokens, strict=True):
                    out["llm.usage.code.tokens"][(customer, model, token_type)] += n
        return {m: {k: v for k, v in d.items() if v} for m, d in out.items()}

    def events(self) -> Iterable[tuple[int, Group, Counts]]:
        for minute in sorted(self.usage):
            for group, counts in self.usage[minute].items():
                yield minute, group, counts

    # -- ground truth -----------------------------------------------------------------------------------------------
    def truth_tokens(self, since: int = 0) -> dict[tuple[str, str, str, str | None], int]:
        """(tenancy, model, token type, cache ttl) -> tokens, for all usage from ``since`` on."""
        out: dict[tuple[str, str, str, str | None], int] = defaultdict(int)
        for minute, g, c in self.events():
            if minute < since:
                continue
            ws = g.workspace_id or "default"
            out[(ws, g.model, "input", None)] += c.uncached_input_tokens
            out[(ws, g.model, "cache_read", None)] += c.cache_read_input_tokens
            out[(ws, g.model, "cache_write", "5m")] += c.ephemeral_5m_input_tokens
            out[(ws, g.model, "cache_write", "1h")] += c.ephemeral_1h_input_tokens
            out[(ws, g.model, "output", None)] += c.output_tokens
        return dict(out)

    def truth_tool_requests(self, since: int = 0) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = defaultdict(int)
        for minute, g, c in self.events():
            if minute >= since:
                out[(g.workspace_id or "default", g.model)] += c.web_search_requests
        return dict(out)

    def truth_cost_usd(self, since: int = 0) -> dict[str, Decimal]:
        """Tenancy -> reported spend in USD (exact), for the cost days from ``since`` on."""
        out: dict[str, Decimal] = defaultdict(Decimal)
        for day, rows in self._cost_rows().items():
            if day >= since:
                for key, cents in rows.items():
                    out[key[0] or "default"] += cents / 100
        return dict(out)

    # -- cost model -------------------------------------------------------------------------------------------------
    def _cost_rows(self) -> dict[int, dict[tuple[Any, ...], Decimal]]:
        """Day -> (workspace, description, model, cost_type, token_type, tier, window, geo) -> cents."""
        days: dict[int, dict[tuple[Any, ...], Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        for minute, g, c in self.events():
            if g.service_tier == "priority":
                continue  # "Priority Tier costs are not included in the cost endpoint" (the usage-cost guide)
            day = minute - minute % DAY
            price = PRICES_CENTS[g.model]
            base = price["input"] * (Decimal("0.5") if g.service_tier == "batch" else 1)
            parts = (
                ("Input Tokens", "uncached_input_tokens", c.uncached_input_tokens * base),
                ("Cache Read", "cache_read_input_tokens", c.cache_read_input_tokens * base / 10),
                ("Cache Write 5m", "cache_creation.ephemeral_5m_input_tokens",
                 c.ephemeral_5m_input_tokens * base * Decimal("1.25")),
                ("Cache Write 1h", "cache_creation.ephemeral_1h_input_tokens", c.ephemeral_1h_input_tokens * base * 2),
                ("Output Tokens", "output_tokens", c.output_tokens * price["output"]),
            )
            key: tuple[Any, ...]
            for label, token_type, cents in parts:
                if cents:
                    key = (g.workspace_id, f"{g.model} Usage - {label}", g.model, "tokens", token_type,
                           g.service_tier, g.context_window, g.inference_geo)
                    days[day][key] += cents
            if c.web_search_requests:
                key = (g.workspace_id, "Web Search Usage", None, "web_search", None, None, None, None)
                days[day][key] += c.web_search_requests * WEB_SEARCH_CENTS
        for day, factor in self.cost_factor.items():
            for key in days.get(day, {}):
                days[day][key] *= factor
        for rows in days.values():  # the API's amounts carry at most 5 decimals of a cent ("123.78912")
            for key in rows:
                rows[key] = rows[key].quantize(CENT_PRECISION)
        return days

    # -- handlers ---------------------------------------------------------------------------------------------------
    def _check_headers(self, request: Request) -> Response | None:
        if request.headers.get("x-api-key") != self.admin_key:
            return error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    def _window(self, request: Request, width_name: str, limits: tuple[int, int]) -> tuple[int, int, int] | Response:
        """(first bucket start, end bound, limit) of a report request, or the 400 the API would send."""
        raw_start = request.param("starting_at")
        if not raw_start:
            return error(400, "invalid_request_error", "starting_at: Field required")
        try:
            start = parse_rfc3339(raw_start)
            raw_end = request.param("ending_at")
            end = parse_rfc3339(raw_end) if raw_end else None
        except ValueError:
            return error(400, "invalid_request_error", "starting_at/ending_at: invalid datetime")
        raw_limit = request.param("limit")
        limit = limits[0] if raw_limit is None else int(raw_limit)
        if not 1 <= limit <= limits[1]:
            return error(400, "invalid_request_error", f"limit: must be between 1 and {limits[1]} for {width_name}")
        width = WIDTHS[width_name]
        first = start - start % width
        last = end if end is not None else max(self.usage, default=first) + MINUTE
        return first, last, limit

    def _page(self, request: Request, buckets: list[dict[str, Any]], limit: int) -> Response:
        """Slice a report's buckets into the page the ``page`` token points at."""
        try:
            page = paginate(buckets, request.param("page"), min(limit, self.max_page_buckets or limit))
        except ValueError:
            return error(400, "invalid_request_error", "page: invalid token")
        return Response(200, {"data": page.items, "has_more": page.has_more, "next_page": page.next_page})

    def _usage_report(self, request: Request) -> Response:
        bad = self._check_headers(request)
        if bad is not None:
            return bad
        width_name = request.param("bucket_width") or "1d"
        if width_name not in WIDTHS:
            return error(400, "invalid_request_error", f"bucket_width: unsupported value {width_name!r}")
        group_by = request.params("group_by[]")
        unknown = [g for g in group_by if g not in USAGE_GROUPS]
        if unknown:
            return error(400, "invalid_request_error", f"group_by: unsupported value {unknown[0]!r}")
        if "speed" in group_by and FAST_MODE_BETA not in request.headers.get("anthropic-beta", ""):
            return error(400, "invalid_request_error", f"group_by speed requires the {FAST_MODE_BETA} beta header")
        window = self._window(request, width_name, LIMITS[width_name])
        if isinstance(window, Response):
            return window
        first, last, limit = window
        width = WIDTHS[width_name]
        grouped: dict[int, dict[tuple[Any, ...], Counts]] = defaultdict(dict)
        for minute, g, c in self.events():
            if first <= minute < last:
                bucket = minute - minute % width
                key = tuple(getattr(g, f) if f in group_by else None for f in USAGE_GROUPS)
                grouped[bucket][key] = grouped[bucket].get(key, Counts()) + c
        buckets = []
        for start in range(first, last, width):
            if start + width > last:
                break  # "time buckets that end before ending_at"
            rows = [self._usage_row(key, c, group_by) for key, c in sorted(grouped.get(start, {}).items(),
                                                                          key=lambda kv: repr(kv[0]))]
            buckets.append({"starting_at": rfc3339(start), "ending_at": rfc3339(start + width), "results": rows})
        return self._page(request, buckets, limit)

    def _usage_row(self, key: tuple[Any, ...], c: Counts, group_by: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "uncached_input_tokens": c.uncached_input_tokens,
            "cache_creation": {"ephemeral_1h_input_tokens": c.ephemeral_1h_input_tokens,
                               "ephemeral_5m_input_tokens": c.ephemeral_5m_input_tokens},
            "cache_read_input_tokens": c.cache_read_input_tokens,
            "output_tokens": c.output_tokens,
            "server_tool_use": {"web_search_requests": c.web_search_requests},
        }
        for name, value in zip(USAGE_GROUPS, key, strict=True):
            if name == "speed" and name not in group_by:
                continue  # only reported with the fast-mode beta
            if name in group_by or not self.omit_ungrouped:
                row[name] = value
        return row

    def _cost_report(self, request: Request) -> Response:
        bad = self._check_headers(request)
        if bad is not None:
            return bad
        if (request.param("bucket_width") or "1d") != "1d":
            return error(400, "invalid_request_error", "bucket_width: only 1d is supported")
        group_by = request.params("group_by[]")
        unknown = [g for g in group_by if g not in COST_GROUPS]
        if unknown:
            return error(400, "invalid_request_error", f"group_by: unsupported value {unknown[0]!r}")
        window = self._window(request, "1d", COST_LIMITS)
        if isinstance(window, Response):
            return window
        first, last, limit = window
        all_rows = self._cost_rows()
        buckets = []
        for day in range(first, last, DAY):
            if day + DAY > last:
                break
            merged: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
            for key, cents in all_rows.get(day, {}).items():
                ws = key[0] if "workspace_id" in group_by else None
                rest = key[1:] if "description" in group_by else (None,) * 7
                merged[(ws, *rest)] += cents
            rows = []
            for key, cents in sorted(merged.items(), key=lambda kv: repr(kv[0])):
                ws, description, model, cost_type, token_type, tier, window_, geo = key
                rows.append({
                    "currency": "USD", "amount": format(cents.normalize(), "f"), "workspace_id": ws,
                    "description": description, "cost_type": cost_type, "context_window": window_,
                    "model": model, "service_tier": tier, "token_type": token_type, "inference_geo": geo,
                })
            buckets.append({"starting_at": rfc3339(day), "ending_at": rfc3339(day + DAY), "results": rows})
        return self._page(request, buckets, limit)

    def _claude_code(self, request: Request) -> Response:
        bad = self._check_headers(request)
        if bad is not None:
            return bad
        raw = request.param("starting_at") or ""
        try:
            day = int(datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
        except ValueError:
            return error(400, "invalid_request_error", "starting_at: expected a UTC date YYYY-MM-DD")
        limit = int(request.param("limit") or 20)
        if not 1 <= limit <= 1000:
            return error(400, "invalid_request_error", "limit: must be between 1 and 1000")
        rows = []
        for (d, actor_type, actor, customer, terminal), a in sorted(self.code.items()):
            if d != day:
                continue
            who = {"type": actor_type, ("email_address" if actor_type == "user_actor" else "api_key_name"): actor}
            rows.append({
                "date": raw, "actor": who, "organization_id": ORGANIZATION_ID, "customer_type": customer,
                "terminal_type": terminal,
                "core_metrics": {"num_sessions": a.sessions, "lines_of_code": {"added": a.added, "removed": a.removed},
                                 "commits_by_claude_code": a.commits, "pull_requests_by_claude_code": a.pull_requests},
                "tool_actions": {t: {"accepted": acc, "rejected": rej} for t, (acc, rej) in a.tools.items()},
                "model_breakdown": [
                    {"model": m, "tokens": {"input": i, "output": o, "cache_read": r, "cache_creation": c},
                     "estimated_cost": {"currency": "USD", "amount": (i * 3 + o * 15) // 10000}}
                    for m, (i, o, r, c) in a.models.items()
                ],
            })
        try:
            page = paginate(rows, request.param("page"), min(limit, self.max_page_code_records or limit))
        except ValueError:
            return error(400, "invalid_request_error", "page: invalid token")
        return Response(200, {"data": page.items, "has_more": page.has_more, "next_page": page.next_page})

    def _workspaces(self, request: Request) -> Response:
        bad = self._check_headers(request)
        if bad is not None:
            return bad
        limit = int(request.param("limit") or 20)
        if not 1 <= limit <= 1000:
            return error(400, "invalid_request_error", "limit: must be between 1 and 1000")
        archived = request.param("include_archived") == "true"
        items = [
            {"type": "workspace", "id": w["id"], "name": w["name"], "created_at": "2025-01-01T00:00:00Z",
             "archived_at": w["archived_at"], "display_color": "#6C5BB9"}
            for w in self.workspaces if archived or w["archived_at"] is None
        ]
        after = request.param("after_id")
        if after:
            ids = [w["id"] for w in items]
            if after not in ids:
                return error(404, "not_found_error", f"after_id {after!r} not found")
            items = items[ids.index(after) + 1:]
        size = min(limit, self.max_page_workspaces or limit)
        page = items[:size]
        return Response(200, {
            "data": page, "has_more": len(items) > size,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None,
        })


def counts(**values: int) -> Counts:
    """``Counts`` from keyword arguments (readable in tests)."""
    return replace(Counts(), **values)


__all__ = ["ADMIN_KEY", "OVERLOADED", "RATE_LIMITED", "STREAMS", "Counts", "FakeAnthropic", "Group", "counts",
           "rfc3339"]
