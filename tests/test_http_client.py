"""The shared provider HTTP client against a real loopback server: retries, Retry-After, error classes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from otel_llm_receiver.errors import ProviderError
from otel_llm_receiver.providers.http import ApiClient
from tests.fakes.api import FakeApi, Request, Response

KEY = "sk-admin-test-http-client-0000"


@pytest.fixture()
def api() -> Iterator[FakeApi]:
    with FakeApi(auth_header="authorization", auth_value=f"Bearer {KEY}") as fake:
        fake.route("GET", "/v1/things", lambda req: Response(200, {"data": [1, 2], "page": req.param("page")}))
        yield fake


def client(api: FakeApi, *, key: str = KEY, timeout: float = 5.0, retries: int = 3) -> ApiClient:
    return ApiClient(
        provider="test/prod",
        base_url=api.base_url,
        headers={"authorization": f"Bearer {key}"},
        timeout=timeout,
        max_retries=retries,
        retry_initial_interval=0.01,
    )


def get(api: FakeApi, path: str = "/v1/things", **kwargs: object) -> object:
    async def go() -> object:
        c = client(api, **kwargs)  # type: ignore[arg-type]
        try:
            return await c.get_json(path, params={"page": "p2"})
        finally:
            await c.aclose()

    return asyncio.run(go())


def test_ok_returns_json_and_sends_params_and_user_agent(api: FakeApi) -> None:
    assert get(api) == {"data": [1, 2], "page": "p2"}
    (req,) = api.requests_to("/v1/things")
    assert req.param("page") == "p2"
    assert req.headers["user-agent"].startswith("otel-llm-receiver/")


def test_429_with_retry_after_is_retried_no_sooner_than_asked(api: FakeApi) -> None:
    api.fail_next("/v1/things", 429, count=2, retry_after="0.2")
    started = time.monotonic()
    assert get(api) == {"data": [1, 2], "page": "p2"}
    assert len(api.requests_to("/v1/things")) == 3
    assert time.monotonic() - started >= 0.4  # two waits of Retry-After 0.2 s, not the 10 ms backoff


@pytest.mark.parametrize(("status", "error_type"), [(500, "server_error"), (503, "server_error"),
                                                    (529, "server_error"), (504, "timeout")])
def test_transient_statuses_retry_then_fail_classified(api: FakeApi, status: int, error_type: str) -> None:
    api.fail_next("/v1/things", status, count=10)
    with pytest.raises(ProviderError) as info:
        get(api, retries=2)
    assert info.value.error_type == error_type
    assert f"HTTP {status}" in str(info.value)
    assert len(api.requests_to("/v1/things")) == 3  # the first try and two retries


def test_long_retry_after_fails_at_once_for_the_scheduler_to_wait(api: FakeApi) -> None:
    api.fail_next("/v1/things", 429, count=1, retry_after="3600")
    with pytest.raises(ProviderError) as info:
        get(api)
    assert info.value.error_type == "rate_limited"
    assert info.value.retry_after == pytest.approx(3600)
    assert len(api.requests_to("/v1/things")) == 1


def test_bad_key_is_auth_and_not_retried_and_key_not_in_message(api: FakeApi) -> None:
    wrong = "sk-admin-test-wrong-key-9999"
    with pytest.raises(ProviderError) as info:
        get(api, key=wrong)
    assert info.value.error_type == "auth"
    assert "invalid credentials" in str(info.value)
    assert wrong not in str(info.value) and KEY not in str(info.value)
    assert len(api.requests) == 1


def test_other_4xx_is_config_and_names_the_path(api: FakeApi) -> None:
    with pytest.raises(ProviderError) as info:
        get(api, path="/v1/nope")
    assert info.value.error_type == "config"
    assert "GET /v1/nope: HTTP 404" in str(info.value)


def test_non_json_body_is_bad_response(api: FakeApi) -> None:
    api.route("GET", "/v1/html", lambda req: Response(200, raw=b"<html>maintenance</html>"))
    with pytest.raises(ProviderError) as info:
        get(api, path="/v1/html")
    assert info.value.error_type == "bad_response"
    assert "not JSON" in str(info.value) and "maintenance" in str(info.value)


def test_stalled_server_times_out_then_retry_succeeds(api: FakeApi) -> None:
    release = threading.Event()
    api.fail_next("/v1/things", 200, count=1, hang=release)
    try:
        assert get(api, timeout=0.3) == {"data": [1, 2], "page": "p2"}
    finally:
        release.set()
    assert len(api.requests_to("/v1/things")) == 2


def test_connection_refused_is_a_network_error() -> None:
    with FakeApi() as fake:
        url = fake.base_url
    c = ApiClient(provider="t", base_url=url, headers={}, timeout=1.0, max_retries=1, retry_initial_interval=0.01)

    async def go() -> None:
        try:
            await c.get_json("/x")
        finally:
            await c.aclose()

    with pytest.raises(ProviderError) as info:
        asyncio.run(go())
    assert info.value.error_type == "network" and "cannot reach the API" in str(info.value)


def test_request_log_keeps_repeated_params(api: FakeApi) -> None:
    seen: list[Request] = []

    def handler(req: Request) -> Response:
        seen.append(req)
        return Response(200, {})

    api.route("GET", "/v1/multi", handler)

    async def go() -> None:
        c = client(api)
        try:
            await c.get_json("/v1/multi", params=[("group_by", "a"), ("group_by", "b")])
        finally:
            await c.aclose()

    asyncio.run(go())
    assert seen[0].params("group_by") == ["a", "b"]


def test_every_attempt_is_counted_by_operation(api: FakeApi) -> None:
    from collections import Counter

    counts: Counter[str] = Counter()
    api.fail_next("/v1/things", 503, count=1)

    async def go() -> None:
        c = ApiClient(provider="t", base_url=api.base_url, headers={"authorization": f"Bearer {KEY}"},
                      timeout=5, retry_initial_interval=0.01, requests=counts)
        try:
            await c.get_json("/v1/things")
            await c.get_json("/v1/things", operation="things")
        finally:
            await c.aclose()

    asyncio.run(go())
    assert counts == {"/v1/things": 2, "things": 1}  # the 503 and its retry, then one named call
