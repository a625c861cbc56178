"""The fake Anthropic Admin API refuses what the real one refuses, so provider tests cannot pass by accident."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.anthropic import (
    ADMIN_KEY,
    CLAUDE_CODE_PATH,
    COST_PATH,
    USAGE_PATH,
    FakeAnthropic,
)

HEADERS = {"x-api-key": ADMIN_KEY, "anthropic-version": "2023-06-01"}
START = "2026-11-19T00:00:00Z"


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        yield api


def get(fake: FakeAnthropic, path: str, params: list[tuple[str, str]], headers: dict[str, str] = HEADERS
        ) -> httpx.Response:
    return httpx.get(fake.base_url + path, params=params, headers=headers, timeout=5)


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        (USAGE_PATH, [("bucket_width", "1h"), ("limit", "169")], 400, "limit"),
        (USAGE_PATH, [("bucket_width", "1m"), ("limit", "1441")], 400, "limit"),
        (USAGE_PATH, [("bucket_width", "1d"), ("limit", "32")], 400, "limit"),
        (USAGE_PATH, [("bucket_width", "2h")], 400, "bucket_width"),
        (USAGE_PATH, [("group_by[]", "user_id")], 400, "group_by"),
        (USAGE_PATH, [("group_by[]", "speed")], 400, "beta"),
        (COST_PATH, [("bucket_width", "1h")], 400, "bucket_width"),
        (COST_PATH, [("limit", "32")], 400, "limit"),
        (COST_PATH, [("group_by[]", "model")], 400, "group_by"),
        (USAGE_PATH, [("page", "not-a-token")], 400, "page"),
    ],
)
def test_out_of_spec_requests_are_refused(
    fake: FakeAnthropic, path: str, params: list[tuple[str, str]], status: int, says: str
) -> None:
    response = get(fake, path, [("starting_at", START), *params])
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert says in body["error"]["message"]


def test_auth_version_and_required_parameters(fake: FakeAnthropic) -> None:
    assert get(fake, USAGE_PATH, [("starting_at", START)], {**HEADERS, "x-api-key": "sk-ant-api03-x"}
               ).json()["error"]["type"] == "authentication_error"
    assert get(fake, USAGE_PATH, [("starting_at", START)], {"x-api-key": ADMIN_KEY}).status_code == 400
    assert get(fake, USAGE_PATH, []).status_code == 400
    assert get(fake, CLAUDE_CODE_PATH, [("starting_at", START)]).status_code == 400  # a date, not a timestamp
    ok = get(fake, USAGE_PATH, [("starting_at", START), ("ending_at", "2026-11-20T00:00:00Z")])
    assert ok.status_code == 200
    assert ok.json()["data"][0]["starting_at"] == START and ok.json()["data"][0]["results"] == []  # empty days too
