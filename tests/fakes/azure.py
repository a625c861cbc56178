"""A fake Azure Resource Manager on loopback: accounts, deployments, Azure Monitor metrics, Cost Management.

Built on ``FakeApi`` (a real HTTP server). Every answer is shaped like the documented API:

* ``GET /subscriptions/{sub}/providers/Microsoft.CognitiveServices/accounts`` and ``GET {account}/deployments``
  (api-version 2023-05-01): ``{"value": [...], "nextLink"?}``; the accounts list pages after ``arm_page_size``;
* ``GET {account}/providers/Microsoft.Insights/metrics`` (2023-10-01): ``value[]`` per requested metric with
  ``name.value``, ``unit``, ``errorCode``, ``timeseries[].metadatavalues[]{name{value}, value}`` (dimension names
  lower-cased, as Azure answers) and ``data[]{timeStamp, total}`` for every grain of the timespan (``total``
  left out where there is no data); split by the ``Dim eq '*'`` clauses of ``$filter``, summed over the other
  dimensions, and cut to ``top`` series (default 10), like the real API;
* ``POST {scope}/providers/Microsoft.CostManagement/query`` (2023-11-01): ``properties.columns/rows`` with one
  column per aggregation (named after the aggregated column: ``Cost``, ``UsageQuantity``, JSON numbers), then
  ``UsageDate``, one per grouping (``ResourceId``, ``Meter``, ``UnitOfMeasure``; at most two, else 400) and
  ``Currency``; a ``nextLink`` with ``$skiptoken`` after ``cost_page_size`` rows, 204 for a scope marked empty,
  400 for a grouping listed in ``unsupported_groupings``, and 429 with
  ``x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after`` on demand.

``cost_resource_id`` spells each answered ``ResourceId`` (lower-cased by default, as Cost Management does).
Tests change the data between polls (``set_point`` on a bucket already served is a revision). Every request
needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from tests.fakes.api import FakeApi, Request, Response

TOKEN = "test-aad-token-0001"
INTERVALS = {"PT1M": 60, "PT5M": 300, "PT15M": 900, "PT30M": 1800, "PT1H": 3600}


@dataclass(eq=False)  # hashable by identity: tests key expected values by account
class FakeAccount:
    subscription: str
    resource_group: str
    name: str
    kind: str = "OpenAI"
    #: deployment name -> (model name, version)
    deployments: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: the metric definitions of the account (None: every metric); asking for another one is a 400, as in Azure
    metrics: set[str] | None = None

    @property
    def id(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                f"/providers/Microsoft.CognitiveServices/accounts/{self.name}")


def _iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}})


class FakeAzure:
    """The fake's data and routes. ``base_url`` is the management endpoint to configure."""

    def __init__(self) -> None:
        self.api = FakeApi(auth_header="authorization", auth_value=f"Bearer {TOKEN}")
        self.accounts: list[FakeAccount] = []
        #: (account id, metric) -> list of (dimensions, {bucket start (1-minute grain): value})
        self.points: dict[tuple[str, str], dict[tuple[tuple[str, str], ...], dict[int, float]]] = defaultdict(dict)
        #: scope (/subscriptions/ID) -> rows (day start, account id, meter, amount, currency)
        #: scope -> (day, resource id, meter, amount, currency, quantity in the meter's unit)
        self.cost_rows: dict[str, list[tuple[int, str, str, Decimal, str, Decimal]]] = defaultdict(list)
        #: meter -> its unit of measure (a meter has one); Azure OpenAI token meters bill per 1K tokens
        self.meter_units: dict[str, str] = {}
        self.unsupported_groupings: set[str] = set()
        self.unit_answer: dict[str, Any] | None = None  # served instead to a query grouped by UnitOfMeasure
        self.empty_cost_scopes: set[str] = set()
        self.arm_page_size = 100
        self.cost_page_size = 1000
        self.throttle_cost = 0  # the next N cost queries answer 429
        self.cost_retry_after = "0.05"
        self.forbidden_cost_scopes: set[str] = set()
        #: how the cost answer spells a row's ResourceId (Cost Management lower-cases it; some answers drop
        #: the leading "/")
        self.cost_resource_id: Callable[[str], str] = str.lower
        self._lock = threading.Lock()
        self._routed_subs: set[str] = set()

    @property
    def base_url(self) -> str:
        return self.api.base_url

    def close(self) -> None:
        self.api.close()

    # -- data ---------------------------------------------------------------------------------------------
    def add_account(self, account: FakeAccount) -> FakeAccount:
        self.accounts.append(account)
        if account.subscription not in self._routed_subs:
            self._routed_subs.add(account.subscription)
            sub_path = f"/subscriptions/{account.subscription}"
            self.api.route("GET", f"{sub_path}/providers/Microsoft.CognitiveServices/accounts",
                           lambda r, s=account.subscription: self._accounts(r, s))
            self.api.route("POST", f"{sub_path}/providers/Microsoft.CostManagement/query",
                           lambda r, s=sub_path: self._cost_query(r, s))
        self.api.route("GET", f"{account.id}/deployments", lambda r, a=account: self._deployments(r, a))
        self.api.route("GET", f"{account.id}/providers/Microsoft.Insights/metrics",
                       lambda r, a=account: self._metrics(r, a))
        return account

    def set_point(self, account: FakeAccount, metric: str, dims: Mapping[str, str], start: int, value: float) -> None:
        """The value of one series (metric + dimensions, Azure's spelling) in the minute or hour at ``start``."""
        key = tuple(sorted(dims.items()))
        with self._lock:
            self.points[(account.id, metric)].setdefault(key, {})[start] = value

    def add_cost(self, account: FakeAccount, day: int, meter: str, amount: str, currency: str = "USD",
                 quantity: str = "0", unit: str = "1K") -> None:
        """A cost row: ``quantity`` in the meter's ``unit`` of measure (one unit per meter, the last given)."""
        with self._lock:
            self.cost_rows[f"/subscriptions/{account.subscription}"].append(
                (day, account.id, meter, Decimal(amount), currency, Decimal(quantity)))
            self.meter_units[meter] = unit

    # -- handlers -----------------------------------------------------------------------------------------
    def _accounts(self, request: Request, subscription: str) -> Response:
        if request.param("api-version") is None and request.param("$skiptoken") is None:
            return _error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        mine = [a for a in self.accounts if a.subscription == subscription]
        skip = int(request.param("$skiptoken") or 0)
        page = mine[skip:skip + self.arm_page_size]
        body: dict[str, Any] = {"value": [{
            "id": a.id, "name": a.name, "type": "Microsoft.CognitiveServices/accounts", "location": "swedencentral",
            "sku": {"name": "S0"}, "kind": a.kind, "tags": {},
            "properties": {"endpoint": f"https://{a.name}.openai.azure.com/", "provisioningState": "Succeeded"},
        } for a in page]}
        if skip + self.arm_page_size < len(mine):
            body["nextLink"] = (f"{self.base_url}{request.path}?api-version=2023-05-01"
                                f"&$skiptoken={skip + self.arm_page_size}")
        return Response(200, body)

    def _deployments(self, request: Request, account: FakeAccount) -> Response:
        return Response(200, {"value": [{
            "id": f"{account.id}/deployments/{name}", "name": name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": {"name": "GlobalStandard", "capacity": 100},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": version},
                           "provisioningState": "Succeeded"},
        } for name, (model, version) in account.deployments.items()]})

    def _metrics(self, request: Request, account: FakeAccount) -> Response:
        if request.param("api-version") != "2023-10-01":
            return _error(400, "BadRequest", "unsupported api-version")
        if (request.param("aggregation") or "").lower() != "total":
            return _error(400, "BadRequest", "this fake serves aggregation=Total only")
        interval = INTERVALS.get(request.param("interval") or "PT1M")
        if interval is None:
            return _error(400, "BadRequest", f"interval {request.param('interval')} is not supported")
        start_text, _, end_text = (request.param("timespan") or "").partition("/")
        start, end = _ts(start_text), _ts(end_text)
        names = [n for n in (request.param("metricnames") or "").split(",") if n]
        split = [c.split(" eq ")[0].strip() for c in (request.param("$filter") or "").split(" and ") if c.strip()]
        for clause in (request.param("$filter") or "").split(" and "):
            if clause.strip() and not clause.strip().endswith("eq '*'"):
                return _error(400, "BadRequest", f"this fake splits only: {clause}")
        top = int(request.param("top") or 10)
        unknown = [n for n in names if account.metrics is not None and n not in account.metrics]
        if unknown:
            return _error(400, "BadRequest", (
                "Failed to find metric configuration for provider: Microsoft.CognitiveServices, resource Type: "
                f"accounts, metric: {unknown[0]}, Valid metrics: {', '.join(sorted(account.metrics or ()))}"))
        value = []
        for name in names:
            grouped: dict[tuple[str, ...], dict[int, float]] = defaultdict(lambda: defaultdict(float))
            with self._lock:
                series = dict(self.points.get((account.id, name), {}))
            for dims, buckets in series.items():
                d = dict(dims)
                if any(s not in d for s in split):
                    return _error(400, "BadRequest",
                                  f"Metric {name} does not support requested dimension combination: {split}")
                key = tuple(d[s] for s in split)
                for t, v in buckets.items():
                    if start <= t < end:
                        grouped[key][t - (t - start) % interval] += v
            timeseries = [{
                "metadatavalues": [{"name": {"value": s.lower(), "localizedValue": s}, "value": v}
                                   for s, v in zip(split, key, strict=True)],
                "data": [{"timeStamp": _iso(t), **({"total": buckets[t]} if t in buckets else {})}
                         for t in range(start, end, interval)],
            } for key, buckets in sorted(grouped.items())]
            value.append({
                "id": f"{account.id}/providers/Microsoft.Insights/metrics/{name}",
                "type": "Microsoft.Insights/metrics",
                "name": {"value": name, "localizedValue": name},
                "displayDescription": "", "unit": "Count",
                "timeseries": timeseries[:top] if split else timeseries,
                "errorCode": "Success",
            })
        return Response(200, {
            "cost": 0, "timespan": f"{_iso(start)}/{_iso(end)}", "interval": request.param("interval"),
            "value": value, "namespace": "Microsoft.CognitiveServices/accounts", "resourceregion": "swedencentral",
        })

    def _cost_query(self, request: Request, scope: str) -> Response:
        if scope in self.forbidden_cost_scopes:
            return _error(403, "RBACAccessDenied", "The client does not have authorization to perform action.")
        with self._lock:
            if self.throttle_cost > 0:
                self.throttle_cost -= 1
                return Response(429, {"error": {"code": "429", "message": "Too many requests. Please retry."}},
                                headers={"x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after":
                                         self.cost_retry_after})
        body = json.loads(request.body or b"{}")
        dataset = body.get("dataset")
        if not isinstance(dataset, dict):  # e.g. a nextLink POSTed without the query (azure-rest-api-specs#12276)
            return _error(400, "BadRequest", "Invalid query definition, Dataset is invalid or not supplied.")
        grouping = [g["name"] for g in dataset.get("grouping", [])]
        if len(grouping) > 2:
            return _error(400, "BadRequest", "Invalid query: at most 2 groupings are allowed.")
        if body.get("type") != "ActualCost" or dataset.get("granularity") != "Daily":
            return _error(400, "BadRequest", "this fake serves ActualCost Daily only")
        for name in grouping:
            if name in self.unsupported_groupings or name not in ("ResourceId", "Meter", "UnitOfMeasure"):
                return _error(400, "BadRequest", f"Invalid query: grouping by {name} is not supported.")
        aggregations = [a["name"] for a in dataset.get("aggregation", {}).values()]
        if not aggregations or not set(aggregations) <= {"Cost", "UsageQuantity"}:
            return _error(400, "BadRequest", "this fake aggregates Cost and UsageQuantity only")
        if scope in self.empty_cost_scopes:
            return Response(204, raw=b"")
        if "UnitOfMeasure" in grouping and self.unit_answer is not None:
            return Response(200, self.unit_answer)
        first = _ts(body["timePeriod"]["from"])
        last = _ts(body["timePeriod"]["to"])
        allowed = {v.lower() for v in dataset.get("filter", {}).get("dimensions", {}).get("values", [])}
        sums: dict[tuple[Any, ...], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        with self._lock:
            rows = list(self.cost_rows.get(scope, []))
            units = dict(self.meter_units)
        for day, resource, meter, amount, currency, quantity in rows:
            if first <= day <= last and (not allowed or resource.lower() in allowed):
                # Cost Management answers resource ids lower-cased.
                values = {"ResourceId": self.cost_resource_id(resource), "Meter": meter, "UnitOfMeasure": units[meter]}
                key = (day, *(values[g] for g in grouping), currency)
                sums[key]["Cost"] += amount
                sums[key]["UsageQuantity"] += quantity
        table = [
            [*(float(totals[a]) for a in aggregations),
             int(datetime.datetime.fromtimestamp(key[0], datetime.UTC).strftime("%Y%m%d")), *key[1:]]
            for key, totals in sorted(sums.items())
        ]
        columns = [*({"name": a, "type": "Number"} for a in aggregations), {"name": "UsageDate", "type": "Number"},
                   *({"name": g, "type": "String"} for g in grouping), {"name": "Currency", "type": "String"}]
        skip = int(request.param("$skiptoken") or 0)
        page = table[skip:skip + self.cost_page_size]
        next_link = None
        if skip + self.cost_page_size < len(table):
            token = quote(str(skip + self.cost_page_size))
            next_link = f"{self.base_url}{request.path}?api-version=2023-11-01&$skiptoken={token}"
        return Response(200, {
            "id": f"{scope}/providers/Microsoft.CostManagement/query/00000000-0000-0000-0000-000000000001",
            "name": "00000000-0000-0000-0000-000000000001", "type": "Microsoft.CostManagement/query",
            "location": None, "sku": None, "eTag": None,
            "properties": {
                "nextLink": next_link,
                "columns": columns,
                "rows": page,
            },
        })





class FixedTokenCredential:
    """An azure-identity ``TokenCredential`` that hands out a fixed token without a network call.

    The contract tests use it instead of a real credential talking to a fake Entra ID over HTTPS: what we own is
    the scope we ask for, the caching and refresh, and the mapping of credential failures, and all of that is
    exercised through the ``get_token`` protocol; the token exchange itself is azure-identity's (and MSAL's).
    """

    def __init__(self, token: str = TOKEN, *, lifetime: float = 3600.0, error: Exception | None = None) -> None:
        self.token = token
        self.lifetime = lifetime
        self.error = error
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        if self.error is not None:
            raise self.error
        import time

        return AccessToken(self.token, int(time.time() + self.lifetime))
__all__ = ["TOKEN", "FakeAccount", "FakeAzure", "FixedTokenCredential"]
