"""Following OpenAI's lists to their last page, validating each page's envelope.

Usage and costs answer ``{"object": "page", "data": [buckets], "has_more", "next_page"}`` and take the cursor
back as ``page``; the projects list answers ``{"object": "list", "data", "first_id", "last_id", "has_more"}``
and takes ``after=<last_id>``. A cursor that does not advance is a bad response, not an endless loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ResponseShapeError
from ...progress import report_page
from ..http import ApiClient
from .fields import flag, integer, mapping, text

#: Far more pages than any window needs (a 7-day 1m backfill is 7 pages): a cap against a runaway cursor.
MAX_PAGES = 1000
PROJECTS_PAGE_SIZE = 100  # the spec's maximum


@dataclass(frozen=True, slots=True)
class Bucket:
    """One time bucket of a usage or costs page, with the JSON path its results are reported under."""

    start_time: int
    end_time: int
    results: Sequence[Any]
    path: str


async def buckets(
    client: ApiClient, path: str, label: str, params: Sequence[tuple[str, Any]], *, decimals: bool = False
) -> AsyncIterator[Bucket]:
    """Every bucket of a usage or costs query, page after page; each page is reported to the backfill's
    progress (``progress.report_page``) under ``label``."""
    page: str | None = None
    seen: set[str] = set()
    span = dict(params)
    start, end = span.get("start_time"), span.get("end_time")
    for number in range(MAX_PAGES):
        query = list(params) + ([("page", page)] if page is not None else [])
        where = f"{label} page {number + 1}"
        body = mapping(await client.get_json(path, query, decimals=decimals), where)
        if body.get("object") != "page":
            raise ResponseShapeError(f"{where}.object: expected 'page', got {body.get('object')!r}")
        data = body.get("data")
        if not isinstance(data, list):
            raise ResponseShapeError(f"{where}.data: expected an array")
        found: list[Bucket] = []
        for i, raw in enumerate(data):
            at = f"{where}.data[{i}]"
            bucket = mapping(raw, at)
            if bucket.get("object") != "bucket":
                raise ResponseShapeError(f"{at}.object: expected 'bucket', got {bucket.get('object')!r}")
            # The spec names the array `results`; its older schemas said `result`.
            results = bucket.get("results", bucket.get("result"))
            if not isinstance(results, list):
                raise ResponseShapeError(f"{at}.results: expected an array")
            found.append(Bucket(integer(bucket, "start_time", at), integer(bucket, "end_time", at), results, at))
        report_page(label, records=sum(len(b.results) for b in found),
                    newest=max((b.end_time for b in found), default=None),
                    start=start if isinstance(start, int) else None, end=end if isinstance(end, int) else None)
        for found_bucket in found:
            yield found_bucket
        has_more = flag(body, "has_more", where)
        if has_more is None:
            raise ResponseShapeError(f"{where}.has_more: required boolean is missing")
        if not has_more:
            return
        next_page = text(body, "next_page", where)
        if not next_page or next_page in seen:
            raise ResponseShapeError(
                f"{where}.next_page: has_more is true but the cursor {next_page!r} does not advance")
        seen.add(next_page)
        page = next_page
    raise ResponseShapeError(f"{label}: more than {MAX_PAGES} pages")


async def project_names(client: ApiClient) -> dict[str, str]:
    """Every project's name by id, archived projects included (their usage is still in the window)."""
    names: dict[str, str] = {}
    after: str | None = None
    for number in range(MAX_PAGES):
        params: list[tuple[str, Any]] = [("limit", PROJECTS_PAGE_SIZE), ("include_archived", "true")]
        if after is not None:
            params.append(("after", after))
        where = f"projects page {number + 1}"
        body = mapping(await client.get_json("/v1/organization/projects", params), where)
        data = body.get("data")
        if body.get("object") != "list" or not isinstance(data, list):
            raise ResponseShapeError(f"{where}: expected a list object with a data array")
        for i, raw in enumerate(data):
            item: Mapping[str, Any] = mapping(raw, f"{where}.data[{i}]")
            ident = text(item, "id", f"{where}.data[{i}]")
            name = text(item, "name", f"{where}.data[{i}]")
            if ident and name:
                names[ident] = name
        if not flag(body, "has_more", where):
            return names
        last = text(body, "last_id", where)
        if not last or last == after:
            raise ResponseShapeError(f"{where}.last_id: has_more is true but the cursor {last!r} does not advance")
        after = last
    raise ResponseShapeError(f"projects: more than {MAX_PAGES} pages")
