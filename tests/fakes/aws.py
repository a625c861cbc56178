"""A loopback fake of the AWS APIs the Bedrock provider calls, for what moto cannot do.

moto (``moto_server.py``) does not page ``GetMetricData``, cannot throttle, serves Cost Explorer only from a
queue of canned results (so a restated day or a page split cannot be shown) and has no
``ListInferenceProfiles``. This fake speaks the same wire protocols botocore uses for each service, so the
real boto3 client talks to it unchanged:

* CloudWatch, ``awsJson1_0`` (``X-Amz-Target: GraniteServiceVersion20100801.<Op>``, botocore's default for
  CloudWatch since 1.42.7): ``ListMetrics`` and ``GetMetricData``, both paged (``NextToken``), the latter
  summing data points into periods and splitting one query's points across pages (``PartialData``);
* Cost Explorer, ``awsJson1_1`` (``AWSInsightsIndexService.GetCostAndUsage``): daily groups by up to two
  ``DIMENSION`` / ``TAG`` keys, a ``SERVICE`` filter, paged by ``NextPageToken``; rows can be restated. Every
  requested metric is in each group's ``Metrics`` as ``{"Amount": "<decimal>", "Unit": ...}``: cost metrics in
  ``USD``, ``UsageQuantity`` the rows' quantities summed in their unit, ``N/A`` where a group mixes units (AWS
  sums usage "without taking into account the units");
* Bedrock control plane, ``rest-json``: ``GET /inference-profiles`` (paged by ``nextToken``) and
  ``POST /listTagsForResource``;
* STS, ``query`` (XML): ``GetCallerIdentity`` and ``AssumeRole`` (its keys start ``ASIAFAKEROLE``).

The region of a request is read from its SigV4 credential scope, so one fake serves every region. Faults
per operation (``fail``) answer with AWS's JSON error shape (``__type``); ``hang`` stalls a response until
the client times out. Every call is logged in ``calls`` as (operation, region, parameters) and in ``signers`` as (operation,
access key id of its signature).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from tests.fakes.api import FakeApi, Request, Response

__all__ = ["CostRow", "FakeAws"]

ACCOUNT = "111122223333"


@dataclass
class CostRow:
    """One line of the bill: a day, a service, a usage type, its amount and its usage (decimal strings)."""

    day: str  # YYYY-MM-DD
    service: str
    usage_type: str
    amount: str
    linked_account: str = ACCOUNT
    tags: dict[str, str] = field(default_factory=dict)
    quantity: str = "0"
    unit: str = "N/A"  # the usage type's unit (e.g. "Hrs", "GB-Mo"); N/A: unknown


@dataclass
class _Fault:
    operation: str
    status: int
    code: str
    message: str
    count: int


ROLE_KEY = "ASIAFAKEROLE0000TEST"


def _scope(request: Request) -> list[str]:
    """The SigV4 credential scope: access key id, date, region, service, ``aws4_request``."""
    auth = request.headers.get("authorization", "")
    return auth.partition("Credential=")[2].split(",")[0].split("/")


def _region(request: Request) -> str:
    scope = _scope(request)
    return scope[2] if len(scope) > 2 else "us-east-1"


class FakeAws:
    """CloudWatch, Cost Explorer, Bedrock and STS on one loopback endpoint (``url``)."""

    def __init__(
        self, *, metric_page: int = 1000, list_page: int = 500, cost_page: int = 1000, profile_page: int = 100,
        account: str = ACCOUNT,
    ) -> None:
        self.metric_page = metric_page
        self.list_page = list_page
        self.cost_page = cost_page
        self.profile_page = profile_page
        self.account = account
        self.api = FakeApi()
        self.api.route("POST", "/", self._post_root)
        self.api.route("GET", "/inference-profiles", self._list_profiles)
        self.api.route("POST", "/listTagsForResource", self._list_tags)
        self._lock = threading.Lock()
        # (region, namespace, metric, dimension name, dimension value) -> [(unix time, value)]
        self.datapoints: dict[tuple[str, str, str, str, str], list[tuple[float, float]]] = defaultdict(list)
        self.costs: list[CostRow] = []
        self.profiles: dict[str, list[dict[str, Any]]] = defaultdict(list)  # region -> summaries
        self.tags: dict[str, dict[str, str]] = {}  # ARN -> tags
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.signers: list[tuple[str, str]] = []
        self._faults: list[_Fault] = []
        self._overrides: dict[str, list[Response]] = defaultdict(list)
        self._hangs: dict[str, threading.Event] = {}

    @property
    def url(self) -> str:
        return self.api.base_url

    # -- seeding -------------------------------------------------------------------------------------------
    def put(self, region: str, namespace: str, metric: str, model_id: str, at: float, value: float,
            *, dimension: str = "ModelId") -> None:
        with self._lock:
            self.datapoints[(region, namespace, metric, dimension, model_id)].append((at, value))

    def add_profile(self, region: str, ident: str, name: str, model_arn: str, tags: dict[str, str]) -> str:
        arn = f"arn:aws:bedrock:{region}:{self.account}:application-inference-profile/{ident}"
        self.profiles[region].append({
            "inferenceProfileName": name, "inferenceProfileArn": arn, "inferenceProfileId": ident,
            "models": [{"modelArn": model_arn}], "status": "ACTIVE", "type": "APPLICATION",
            "createdAt": "2026-01-02T03:04:05Z", "updatedAt": "2026-01-02T03:04:05Z",
        })
        self.tags[arn] = dict(tags)
        return arn

    def fail(self, operation: str, status: int, code: str, message: str = "injected", *, count: int = 1) -> None:
        """Answer the next ``count`` calls of ``operation`` with an AWS JSON error."""
        with self._lock:
            self._faults.append(_Fault(operation, status, code, message, count))

    def respond(self, operation: str, response: Response) -> None:
        """Answer the next call of ``operation`` with ``response`` (a malformed body, a wrong shape)."""
        with self._lock:
            self._overrides[operation].append(response)

    def hang(self, operation: str) -> threading.Event:
        """Stall every call of ``operation`` until the returned event is set (or the fake closes)."""
        event = self._hangs[operation] = threading.Event()
        return event

    def calls_of(self, operation: str) -> list[dict[str, Any]]:
        with self._lock:
            return [params for op, _, params in self.calls if op == operation]

    def close(self) -> None:
        for event in self._hangs.values():
            event.set()
        self.api.close()

    def __enter__(self) -> FakeAws:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dispatch ------------------------------------------------------------------------------------------
    def _call(self, operation: str, request: Request, params: dict[str, Any]) -> Response | None:
        """Log the call; a fault or a hang for it answers instead of the handler."""
        with self._lock:
            self.calls.append((operation, _region(request), params))
            self.signers.append((operation, _scope(request)[0]))
            fault = next((f for f in self._faults if f.operation == operation and f.count > 0), None)
            if fault is not None:
                fault.count -= 1
            override = self._overrides[operation].pop(0) if self._overrides.get(operation) else None
        if override is not None:
            return override
        hang = self._hangs.get(operation)
        if hang is not None:
            hang.wait(timeout=30)
        if fault is not None:
            return Response(fault.status, {"__type": fault.code, "message": fault.message},
                            headers={"x-amzn-requestid": "fake"})
        return None

    def _post_root(self, request: Request) -> Response:
        target = request.headers.get("x-amz-target", "")
        if not target:  # the query protocol (STS): a form body with Action=
            form = dict(parse_qsl(request.body.decode()))
            return self._sts(request, form)
        operation = target.rpartition(".")[2]
        params = json.loads(request.body or b"{}")
        failed = self._call(operation, request, params)
        if failed is not None:
            return failed
        handler = {
            "ListMetrics": self._list_metrics,
            "GetMetricData": self._get_metric_data,
            "GetCostAndUsage": self._get_cost_and_usage,
        }.get(operation)
        if handler is None:
            return Response(400, {"__type": "UnknownOperationException", "message": operation})
        return handler(_region(request), params)

    # -- STS -----------------------------------------------------------------------------------------------
    def _sts(self, request: Request, form: dict[str, str]) -> Response:
        action = form.get("Action", "")
        failed = self._call(action, request, form)
        if failed is not None:
            code = failed.body["__type"]
            xml = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected</Message>"
                   "</Error><RequestId>fake</RequestId></ErrorResponse>")
            return Response(failed.status, raw=xml.encode())
        if action == "AssumeRole":
            xml = (
                '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
                f"<Credentials><AccessKeyId>{ROLE_KEY}</AccessKeyId><SecretAccessKey>fake-role-secret</SecretAccessKey>"
                "<SessionToken>fake-role-session</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>"
                f"</Credentials><AssumedRoleUser><Arn>{form.get('RoleArn', '')}/otel-llm-receiver</Arn>"
                "<AssumedRoleId>AROAFAKE:otel-llm-receiver</AssumedRoleId></AssumedRoleUser></AssumeRoleResult>"
                "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata></AssumeRoleResponse>"
            )
            return Response(200, raw=xml.encode())
        if action != "GetCallerIdentity":
            return Response(400, raw=b"<ErrorResponse><Error><Code>InvalidAction</Code></Error></ErrorResponse>")
        xml = (
            '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>'
            f"<Arn>arn:aws:iam::{self.account}:user/usage-reader</Arn><UserId>AIDATESTUSER</UserId>"
            f"<Account>{self.account}</Account></GetCallerIdentityResult>"
            "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
        )
        return Response(200, raw=xml.encode())

    # -- CloudWatch ----------------------------------------------------------------------------------------
    def _list_metrics(self, region: str, params: dict[str, Any]) -> Response:
        with self._lock:
            keys = sorted({k for k in self.datapoints if k[0] == region and k[1] == params.get("Namespace")})
        offset = int(params.get("NextToken") or 0)
        page = keys[offset:offset + self.list_page]
        body: dict[str, Any] = {"Metrics": [
            {"Namespace": ns, "MetricName": metric, "Dimensions": [{"Name": dim, "Value": value}]}
            for _, ns, metric, dim, value in page
        ]}
        if offset + self.list_page < len(keys):
            body["NextToken"] = str(offset + self.list_page)
        return Response(200, body)

    def _get_metric_data(self, region: str, params: dict[str, Any]) -> Response:
        queries = params["MetricDataQueries"]
        if len(queries) > 500:
            return Response(400, {"__type": "ValidationError", "message": "at most 500 queries"})
        start, end = float(params["StartTime"]), float(params["EndTime"])
        flat: list[tuple[str, float, float]] = []  # (id, period start, sum), query by query, time ascending
        for q in queries:
            stat = q["MetricStat"]
            metric = stat["Metric"]
            (dim,) = metric["Dimensions"]
            period = int(stat["Period"])
            sums: dict[float, float] = defaultdict(float)
            with self._lock:
                points = list(self.datapoints.get(
                    (region, metric["Namespace"], metric["MetricName"], dim["Name"], dim["Value"]), []))
            for at, value in points:
                if start <= at < end:
                    sums[start + (at - start) // period * period] += value
            flat += [(q["Id"], t, sums[t]) for t in sorted(sums)]
        offset = int(params.get("NextToken") or 0)
        page = flat[offset:offset + self.metric_page]
        later = {qid for qid, _, _ in flat[offset + self.metric_page:]}
        results: dict[str, dict[str, Any]] = {}
        if offset == 0:  # every query gets a result, even an empty one
            results = {q["Id"]: {"Id": q["Id"], "Label": q["Id"], "Timestamps": [], "Values": []} for q in queries}
        for qid, t, value in page:
            r = results.setdefault(qid, {"Id": qid, "Label": qid, "Timestamps": [], "Values": []})
            r["Timestamps"].append(t)
            r["Values"].append(value)
        for qid, r in results.items():
            r["StatusCode"] = "PartialData" if qid in later else "Complete"
        body: dict[str, Any] = {"MetricDataResults": list(results.values()), "Messages": []}
        if offset + self.metric_page < len(flat):
            body["NextToken"] = str(offset + self.metric_page)
        return Response(200, body)

    # -- Cost Explorer -------------------------------------------------------------------------------------
    def _key(self, row: CostRow, group: dict[str, str]) -> str:
        if group["Type"] == "TAG":
            return f"{group['Key']}${row.tags.get(group['Key'], '')}"
        return {"SERVICE": row.service, "USAGE_TYPE": row.usage_type,
                "LINKED_ACCOUNT": row.linked_account}[group["Key"]]

    def _get_cost_and_usage(self, region: str, params: dict[str, Any]) -> Response:
        metrics = params["Metrics"]
        groups = params.get("GroupBy") or []
        if len(groups) > 2:
            return Response(400, {"__type": "ValidationException", "message": "at most two GroupBy keys"})
        period = params["TimePeriod"]
        flt = params.get("Filter")
        services = set(flt["Dimensions"]["Values"]) if flt else None
        sums: dict[str, dict[tuple[str, ...], list[CostRow]]] = defaultdict(lambda: defaultdict(list))
        with self._lock:
            rows = list(self.costs)
        for row in rows:
            if not (period["Start"] <= row.day < period["End"]) or (services is not None and row.service not in services):
                continue
            sums[row.day][tuple(self._key(row, g) for g in groups)].append(row)
        flat = [(day, keys, members) for day in sorted(sums) for keys, members in sorted(sums[day].items())]
        offset = int(params.get("NextPageToken") or 0)
        page = flat[offset:offset + self.cost_page]
        today = datetime.now(UTC).date().isoformat()
        by_day: dict[str, list[dict[str, Any]]] = {}
        for day, keys, members in page:
            by_day.setdefault(day, []).append({"Keys": list(keys), "Metrics": {m: _metric(m, members) for m in metrics}})
        body: dict[str, Any] = {
            "GroupDefinitions": groups,
            "ResultsByTime": [
                {"TimePeriod": {"Start": day, "End": _next_day(day)}, "Total": {}, "Groups": g,
                 "Estimated": day >= today}
                for day, g in by_day.items()
            ],
            "DimensionValueAttributes": [],
        }
        if offset + self.cost_page < len(flat):
            body["NextPageToken"] = str(offset + self.cost_page)
        return Response(200, body)

    # -- Bedrock -------------------------------------------------------------------------------------------
    def _list_profiles(self, request: Request) -> Response:
        params = dict(request.query)
        failed = self._call("ListInferenceProfiles", request, params)
        if failed is not None:
            return failed
        region = _region(request)
        summaries = [p for p in self.profiles.get(region, []) if p["type"] == params.get("type", p["type"])]
        offset = int(params.get("nextToken") or 0)
        body: dict[str, Any] = {"inferenceProfileSummaries": summaries[offset:offset + self.profile_page]}
        if offset + self.profile_page < len(summaries):
            body["nextToken"] = str(offset + self.profile_page)
        return Response(200, body)

    def _list_tags(self, request: Request) -> Response:
        params = json.loads(request.body or b"{}")
        failed = self._call("ListTagsForResource", request, params)
        if failed is not None:
            return failed
        tags = self.tags.get(params.get("resourceARN", ""))
        if tags is None:
            return Response(404, {"__type": "ResourceNotFoundException", "message": "no such resource"})
        return Response(200, {"tags": [{"key": k, "value": v} for k, v in tags.items()]})


def _metric(name: str, rows: list[CostRow]) -> dict[str, str]:
    """One metric of a group as Cost Explorer gives it: the summed amount as a string, and its unit."""
    if name == "UsageQuantity":
        units = {r.unit for r in rows}
        unit = units.pop() if len(units) == 1 else "N/A"
        return {"Amount": str(sum((Decimal(r.quantity) for r in rows), Decimal(0))), "Unit": unit}
    return {"Amount": str(sum((Decimal(r.amount) for r in rows), Decimal(0))), "Unit": "USD"}


def _next_day(day: str) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()

