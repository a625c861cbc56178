"""Reported cost from the Cloud Billing export to BigQuery (optional, ``billing_export: {table: ...}``).

Google reports Vertex AI money nowhere else: the standard usage cost export table
(``gcp_billing_export_v1_<BILLING_ACCOUNT_ID>``) has one row per service, SKU, project and usage hour, with
``cost`` (FLOAT64) and ``credits`` (an array of negative amounts) in the billing account's ``currency``. This
source sums them per UTC day, project and SKU for the Vertex AI service (and the Gemini API service when the
``gemini_api`` source is on), as exact NUMERIC, net of credits.

It has its own rhythm: billing data arrive hours late and are revised for days, and every query is billed by
BigQuery, so it runs every ``interval`` (default 6h) over ``lookback`` (default 3d) of days, not on every usage
poll. When it last ran is kept as a cursor (``PollResult.cursors``) so a restart does not query again early.

``google-cloud-bigquery`` is sync: the query runs in a thread, each HTTP request bounded by the provider's
``timeout`` and counted by operation (``jobs.query``, ``jobs.getQueryResults``) through the session it uses.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from ...durations import parse_duration
from ...errors import ProviderError, ResponseShapeError
from ...model import CostRecord
from ...retry import backoff_delay
from .. import shape
from ..base import DAY, HOUR
from . import monitoring
from .series import GEMINI_PROVIDER, VERTEX_PROVIDER

log = logging.getLogger(__name__)

CURSOR = "billing_export.last_run"
SCOPES = ("https://www.googleapis.com/auth/bigquery.readonly",)
PERMISSION = "bigquery.jobs.create on the job project and bigquery.tables.getData on the export dataset"
#: The Cloud Billing service of Vertex AI (``service.id``) and the names the Gemini Developer API bills under.
VERTEX_SERVICE_ID = "C7E2-9256-1C43"
VERTEX_SERVICE_NAMES = ("Vertex AI",)
GEMINI_SERVICE_NAMES = ("Gemini API", "Generative Language API")
KEYS = ("table", "project", "interval", "lookback", "endpoint", "location")
MAX_LOOKBACK = 31 * DAY
_TABLE = re.compile(r"[A-Za-z0-9_.:-]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+")
_MAX_BACKOFF = 30.0

QUERY = """\
SELECT
  DATE(usage_start_time) AS day,
  project.id AS project_id,
  ANY_VALUE(project.name) AS project_name,
  service.description AS service,
  sku.description AS sku,
  currency,
  SUM(CAST(cost AS NUMERIC))
    + SUM(IFNULL((SELECT SUM(CAST(c.amount AS NUMERIC)) FROM UNNEST(credits) AS c), 0)) AS net_cost
FROM `{table}`
WHERE usage_start_time >= @start AND usage_start_time < @end
  AND project.id IN UNNEST(@projects)
  AND (service.id = @vertex_service_id OR service.description IN UNNEST(@services))
GROUP BY day, project_id, service, sku, currency
ORDER BY day, project_id, service, sku, currency"""


@dataclass(frozen=True)
class BillingExport:
    """The validated ``billing_export`` settings."""

    table: str
    project: str  # where the query job runs (and is billed)
    interval: float
    lookback: float
    endpoint: str | None
    location: str | None

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> BillingExport:
        """Settings from the config map, or ``ValueError`` naming every bad key."""
        problems = [f"billing_export.{k}: unknown key (valid: {', '.join(KEYS)})" for k in raw if k not in KEYS]
        table = str(raw.get("table") or "")
        if not _TABLE.fullmatch(table):
            problems.append("billing_export.table: must be project.dataset.table (the standard usage cost export)")
        durations = {}
        for key, default in (("interval", 6 * HOUR), ("lookback", 3 * DAY)):
            try:
                durations[key] = parse_duration(raw[key]) if raw.get(key) else float(default)
            except ValueError as exc:
                problems.append(f"billing_export.{key}: {exc}")
        if not 0 < durations.get("lookback", DAY) <= MAX_LOOKBACK:
            problems.append("billing_export.lookback: must be more than 0 and at most 31d")
        endpoint = raw.get("endpoint") or None
        try:
            monitoring.plaintext_target(endpoint)
        except ValueError as exc:
            problems.append(f"billing_export.endpoint: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(table=table, project=str(raw.get("project") or table.split(".")[0]),
                   interval=durations["interval"], lookback=durations["lookback"], endpoint=endpoint,
                   location=raw.get("location") or None)


def _operation(method: str, url: str) -> str:
    """A bounded name for one BigQuery REST request (never the job id)."""
    if method == "POST" and url.split("?")[0].endswith("/queries"):
        return "jobs.query"
    if method == "GET" and "/queries/" in url:
        return "jobs.getQueryResults"
    if "/jobs" in url:
        return "jobs.get" if method == "GET" else "jobs.insert"
    return "other"


def _counting_session(base: type[Any], requests: Counter[str]) -> type[Any]:
    """A ``requests`` session class that counts every request it sends, by operation."""

    class CountingSession(base):  # type: ignore[misc]
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            requests[_operation(method.upper(), url)] += 1
            return super().request(method, url, *args, **kwargs)

    return CountingSession


class BillingReader:
    """Runs the cost query for one poll (a client per poll, like the Monitoring reader)."""

    def __init__(self, settings: BillingExport, *, credentials: Callable[[], Any], timeout: float,
                 requests: Counter[str], max_retries: int, retry_initial_interval: float,
                 max_retry_wait: float) -> None:
        self.settings = settings
        self.credentials = credentials
        self.timeout = timeout
        self.requests = requests
        self.max_retries = max_retries
        self.retry_initial_interval = retry_initial_interval
        self.max_retry_wait = max_retry_wait

    def _client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.auth.transport.requests import AuthorizedSession
        from google.cloud import bigquery

        credentials: Any
        if monitoring.plaintext_target(self.settings.endpoint) is not None:  # loopback only: nothing to leak
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
        else:
            credentials = self.credentials()
        session = _counting_session(AuthorizedSession, self.requests)(credentials)
        options = ClientOptions(api_endpoint=self.settings.endpoint) if self.settings.endpoint else None
        return bigquery.Client(project=self.settings.project, credentials=credentials, _http=session,
                               client_options=options, location=self.settings.location)

    def _query(self, start: int, end: int, projects: tuple[str, ...], services: tuple[str, ...]) -> list[Any]:
        from google.cloud import bigquery

        job_config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("start", "TIMESTAMP", datetime.fromtimestamp(start, UTC)),
            bigquery.ScalarQueryParameter("end", "TIMESTAMP", datetime.fromtimestamp(end, UTC)),
            bigquery.ArrayQueryParameter("projects", "STRING", list(projects)),
            bigquery.ScalarQueryParameter("vertex_service_id", "STRING", VERTEX_SERVICE_ID),
            bigquery.ArrayQueryParameter("services", "STRING", list(services)),
        ], use_legacy_sql=False)
        client = self._client()
        try:
            rows = client.query_and_wait(
                QUERY.format(table=self.settings.table), job_config=job_config, api_timeout=self.timeout,
                wait_timeout=self.timeout, retry=None, job_retry=None,
            )
            return list(rows)
        finally:
            client.close()

    async def costs(self, start: int, end: int, projects: tuple[str, ...], *, gemini: bool,
                    tenant_names: dict[tuple[str, str], str]) -> list[CostRecord]:
        """Daily net cost per project and SKU for ``[start, end)`` (whole UTC days), retried like usage."""
        services = VERTEX_SERVICE_NAMES + (GEMINI_SERVICE_NAMES if gemini else ())
        attempt = 0
        while True:
            attempt += 1
            try:
                rows = await asyncio.to_thread(self._query, start, end, projects, services)
                break
            except ProviderError:
                raise
            except Exception as exc:
                error = monitoring.classify(exc, operation="jobs.query", project=self.settings.project,
                                            permission=PERMISSION)
            if error.error_type not in ("rate_limited", "timeout", "network", "server_error") \
                    or attempt > self.max_retries:
                raise error
            delay = backoff_delay(attempt, base=self.retry_initial_interval, cap=_MAX_BACKOFF,
                                  retry_after=error.retry_after)
            if delay > self.max_retry_wait:
                raise error
            await asyncio.sleep(delay)
        return [_record(row, tenant_names) for row in rows]


def _record(row: Any, names: dict[tuple[str, str], str]) -> CostRecord:
    """One ``CostRecord`` from one result row; a row of another shape fails the poll (``bad_response``)."""
    try:
        day, project, project_name, service, sku, currency, amount = (
            row["day"], row["project_id"], row["project_name"], row["service"], row["sku"], row["currency"],
            row["net_cost"])
        if not isinstance(day, date) or not project or not currency or amount is None:
            raise ResponseShapeError("day, project_id, currency, net_cost: a required column is empty")
        amount = shape.decimal(amount, "net_cost", bound=None)
    except (KeyError, TypeError, ResponseShapeError) as exc:
        raise ProviderError(f"billing export: unexpected row {dict(row.items()) if hasattr(row, 'items') else row!r}: "
                            f"{exc}") from exc
    if project_name:
        names[("tenancy", str(project))] = str(project_name)
    bucket = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    provider = GEMINI_PROVIDER if service in GEMINI_SERVICE_NAMES else VERTEX_PROVIDER
    return CostRecord(provider=provider, tenancy_id=str(project), bucket_start=bucket, bucket_width=DAY,
                      amount=amount, currency=str(currency), line_item=str(sku or service or ""),
                      source="reported")
