"""A fake BigQuery REST API (``jobs.query`` + ``jobs.getQueryResults``) holding a Cloud Billing export table.

Built on ``FakeApi`` (a real loopback HTTP server): the real ``google-cloud-bigquery`` client talks to it over
HTTP, pages through ``pageToken``, and sees BigQuery's error bodies (``fail_next`` with a 403 ``quotaExceeded``).
It stores rows shaped like the standard usage cost export (``usage_start_time``, ``project``, ``service``,
``sku``, ``cost`` FLOAT64, ``credits`` array, ``currency``) and evaluates the one query the provider sends — it
checks that the query has that shape (table, parameters, grouping) and answers it with BigQuery's semantics:
``CAST(FLOAT64 AS NUMERIC)`` rounds to 9 decimals, sums are exact, ``DATE()`` of a timestamp is its UTC date,
NUMERIC values travel as strings.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tests.fakes.api import FakeApi, Request, Response

__all__ = ["BillingRow", "FakeBigQuery"]

_NANO = Decimal("0.000000001")
SCHEMA = [
    {"name": "day", "type": "DATE", "mode": "NULLABLE"},
    {"name": "project_id", "type": "STRING", "mode": "NULLABLE"},
    {"name": "project_name", "type": "STRING", "mode": "NULLABLE"},
    {"name": "service", "type": "STRING", "mode": "NULLABLE"},
    {"name": "sku", "type": "STRING", "mode": "NULLABLE"},
    {"name": "currency", "type": "STRING", "mode": "NULLABLE"},
    {"name": "net_cost", "type": "NUMERIC", "mode": "NULLABLE"},
]


@dataclass(frozen=True)
class BillingRow:
    """One export row (one service, SKU, project and usage hour)."""

    usage_start_time: int
    project_id: str
    project_name: str
    service_id: str
    service: str
    sku: str
    cost: float
    credits: tuple[float, ...] = ()
    currency: str = "USD"


@dataclass
class FakeBigQuery:
    """The fake: ``endpoint`` for the provider's ``billing_export.endpoint``; ``rows`` is the export table."""

    table: str
    job_project: str
    page_size: int = 4
    rows: list[BillingRow] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)  # every jobs.query body

    def __post_init__(self) -> None:
        self.api = FakeApi()
        self._lock = threading.Lock()
        self._jobs = 0
        self.api.route("POST", f"/bigquery/v2/projects/{self.job_project}/queries", self._query)

    @property
    def endpoint(self) -> str:
        return self.api.base_url

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> FakeBigQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ---------------------------------------------------------------------------------------------
    def _query(self, request: Request) -> Response:
        body = json.loads(request.body)
        with self._lock:
            self.queries.append(body)
            self._jobs += 1
            job_id = f"job_fake_{self._jobs}"
        sql = body["query"]
        if f"FROM `{self.table}`" not in sql:
            return _error(404, "notFound", f"Not found: Table {sql.split('`')[1]} was not found in location US")
        if body.get("useLegacySql", True) or "GROUP BY day, project_id, service, sku, currency" not in sql:
            return _error(400, "invalidQuery", "This fake answers the provider's billing query only")
        params = {p["name"]: p for p in body.get("queryParameters", [])}
        result = self._evaluate(params)
        pages = [result[i:i + self.page_size] for i in range(0, len(result), self.page_size)] or [[]]
        if len(pages) > 1:  # a job the client looks up (jobs.get), then pages through (jobs.getQueryResults)
            self.api.route("GET", f"/bigquery/v2/projects/{self.job_project}/jobs/{job_id}",
                           lambda _: Response(200, self._job(job_id, sql)))
            self.api.route("GET", f"/bigquery/v2/projects/{self.job_project}/queries/{job_id}",
                           self._results_handler(job_id, pages, len(result)))
        return Response(200, self._page(job_id, pages, 0, len(result), "bigquery#queryResponse"))

    def _job(self, job_id: str, sql: str) -> dict[str, Any]:
        reference = {"projectId": self.job_project, "jobId": job_id, "location": "US"}
        return {"kind": "bigquery#job", "id": f"{self.job_project}:US.{job_id}", "jobReference": reference,
                "configuration": {"jobType": "QUERY", "query": {"query": sql, "useLegacySql": False}},
                "status": {"state": "DONE"},
                "statistics": {"creationTime": "1795564800000", "startTime": "1795564800100",
                               "endTime": "1795564801000", "query": {"totalBytesProcessed": "1048576"}}}

    def _results_handler(self, job_id: str, pages: list[list[list[str | None]]], total: int) -> Any:
        def handler(request: Request) -> Response:
            token = request.param("pageToken") or ""
            if not token.startswith("page-"):
                return _error(400, "invalid", "Invalid page token")
            return Response(200, self._page(job_id, pages, int(token.removeprefix("page-")), total,
                                            "bigquery#getQueryResultsResponse"))
        return handler

    def _page(self, job_id: str, pages: list[list[list[str | None]]], n: int, total: int, kind: str
              ) -> dict[str, Any]:
        page: dict[str, Any] = {
            "kind": kind, "schema": {"fields": SCHEMA},
            "jobReference": {"projectId": self.job_project, "jobId": job_id, "location": "US"},
            "totalRows": str(total), "jobComplete": True, "cacheHit": False, "totalBytesProcessed": "1048576",
            "rows": [{"f": [{"v": v} for v in row]} for row in pages[n]],
        }
        if n + 1 < len(pages):
            page["pageToken"] = f"page-{n + 1}"
        return page

    def _evaluate(self, params: dict[str, Any]) -> list[list[str | None]]:
        start = _timestamp(params["start"]["parameterValue"]["value"])
        end = _timestamp(params["end"]["parameterValue"]["value"])
        projects = {v["value"] for v in params["projects"]["parameterValue"]["arrayValues"]}
        services = {v["value"] for v in params["services"]["parameterValue"]["arrayValues"]}
        service_id = params["vertex_service_id"]["parameterValue"]["value"]
        groups: dict[tuple[str, str, str, str, str], Decimal] = defaultdict(Decimal)
        names: dict[tuple[str, str, str, str, str], str] = {}
        for r in self.rows:
            if not (start <= r.usage_start_time < end and r.project_id in projects
                    and (r.service_id == service_id or r.service in services)):
                continue
            day = datetime.fromtimestamp(r.usage_start_time, UTC).date().isoformat()
            key = (day, r.project_id, r.service, r.sku, r.currency)
            groups[key] += numeric(r.cost) + sum((numeric(c) for c in r.credits), Decimal(0))
            names[key] = r.project_name
        return [[day, project, names[(day, project, service, sku, cur)], service, sku, cur, str(amount)]
                for (day, project, service, sku, cur), amount in sorted(groups.items())]


def numeric(value: float) -> Decimal:
    """BigQuery's ``CAST(x AS NUMERIC)`` of a FLOAT64: the shortest decimal of the float, rounded to 9 places."""
    return Decimal(repr(value)).quantize(_NANO)


def _timestamp(value: str) -> int:
    # The client sends "2026-11-25 00:00:00+00:00" style TIMESTAMP parameter values.
    return int(datetime.fromisoformat(value.replace(" ", "T")).timestamp())


def _error(status: int, reason: str, message: str) -> Response:
    status_name = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}[status]
    return Response(status, {"error": {"code": status, "message": message, "status": status_name,
                                       "errors": [{"message": message, "domain": "global", "reason": reason}]}})


def quota_error_body() -> bytes:
    """BigQuery's answer to a query over quota: a 403 whose reason is ``quotaExceeded``."""
    message = "Quota exceeded: Your project exceeded quota for concurrent queries."
    return json.dumps({"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED",
                                 "errors": [{"message": message, "domain": "global", "reason": "quotaExceeded"}]}
                       }).encode()
