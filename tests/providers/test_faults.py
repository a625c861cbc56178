"""Malformed and hostile provider answers (issue 17, points 2-7): each is rejected whole or handled, never counted.

Bodies are served verbatim by a loopback server (``tests/support/response_world.py``) and polled through the
production ``Receiver.poll``; "nothing written" is checked on a digest of what the rejected source writes (usage
and cost are separate sources: a rejected cost answer leaves the poll's usage landing).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from otel_llm_receiver.scheduler import PollOutcome
from tests.support.response_world import (
    AN_COSTS,
    AN_USAGE,
    ANTHROPIC,
    OA_COSTS,
    OA_USAGE,
    OPENAI,
    SOURCE_OF,
    Served,
    World,
    encode,
    mutated,
)

INSTANCE = {OA_USAGE: OPENAI, OA_COSTS: OPENAI, AN_USAGE: ANTHROPIC, AN_COSTS: ANTHROPIC}
Change = Callable[[dict[str, Any]], None]


#: The one line a rejected response logs: "poll failed", or "<source> source failed" when other sources landed.
FAILED_LINE = re.compile(r"poll failed|source failed")


def assert_source_rejected(outcome: PollOutcome, path: str, log: str, error_type: str = "bad_response") -> None:
    """Usage and cost are separate sources: a rejected usage response fails the poll; a rejected cost response
    fails the cost source only (usage lands, the instance stays healthy)."""
    _, cost = SOURCE_OF[path]
    if cost:
        assert "cost" in outcome.failed_sources and "usage" not in outcome.failed_sources, (outcome, log)
    else:
        assert (outcome.ok, outcome.error_type) == (False, error_type), (outcome, log)


def rejected(tmp_path: Path, path: str, change: Change, caplog: pytest.LogCaptureFixture, says: str) -> None:
    """A first base poll lands; then the changed body fails the poll as bad_response and writes nothing."""
    instance = INSTANCE[path]

    async def scenario() -> None:
        world = World(tmp_path)
        try:
            assert (await world.poll(instance)).ok
            before = world.fingerprint(path)
            totals = world.totals(instance)
            world.server.answers[path] = Served(mutated(path, change))
            caplog.clear()
            outcome = await world.poll(instance)
            assert_source_rejected(outcome, path, caplog.text)
            assert world.fingerprint(path) == before  # nothing of that source written, not even its cursor
            assert world.totals(instance) == totals
            failures = [r.getMessage() for r in caplog.records if FAILED_LINE.search(r.getMessage())]
            assert len(failures) == 1 and says in failures[0], failures
        finally:
            await world.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())


def _bucket_twice(body: dict[str, Any]) -> None:
    body["data"].append(body["data"][0])


def _bucket_twice_across_pages(body: dict[str, Any]) -> None:
    body["data"] = body["data"] + [body["data"][0]]


def _row_twice(body: dict[str, Any]) -> None:
    results = body["data"][1]["results"]
    results.append(dict(results[0]))


def _drop(field: str) -> Change:
    def change(body: dict[str, Any]) -> None:
        del body["data"][0]["results"][0][field]
    return change


def _set(field: str, value: Any) -> Change:
    def change(body: dict[str, Any]) -> None:
        row = body["data"][0]["results"][0]
        if "." in field:
            outer, inner = field.split(".")
            row[outer][inner] = value
        else:
            row[field] = value
    return change


# -- 2. duplicates -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "change", "says"), [
    (OA_USAGE, _bucket_twice, "appears twice"),
    (OA_COSTS, _bucket_twice, "appears twice"),
    (OA_USAGE, _row_twice, "second row for the same group"),
    (OA_COSTS, _row_twice, "second row for the same group"),
    (AN_USAGE, _row_twice, "second row for the same group"),
    (AN_COSTS, _row_twice, "second row for the same group"),
    (AN_USAGE, _bucket_twice, "came on two pages"),
], ids=["openai-usage-bucket", "openai-costs-bucket", "openai-usage-row", "openai-costs-row",
        "anthropic-usage-row", "anthropic-cost-row", "anthropic-usage-bucket"])
def test_a_repeated_bucket_or_row_key_rejects_the_response(
    tmp_path: Path, path: str, change: Change, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    rejected(tmp_path, path, change, caplog, says)


# -- 3. missing grouped fields -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "field"), [
    (OA_USAGE, "model"), (OA_USAGE, "project_id"), (OA_USAGE, "batch"),
    (OA_COSTS, "project_id"), (OA_COSTS, "line_item"),
    (AN_USAGE, "workspace_id"), (AN_USAGE, "model"), (AN_USAGE, "inference_geo"),
    (AN_COSTS, "workspace_id"), (AN_COSTS, "description"),
])
def test_a_row_lacking_a_grouped_field_rejects_the_response(
    tmp_path: Path, path: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    rejected(tmp_path, path, _drop(field), caplog, f"grouped by {field} but the row has no such field")


# -- 6. implausible numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "field", "value"), [
    (OA_USAGE, "num_model_requests", 2**62),
    (OA_USAGE, "output_tokens", 2**53),
    (OA_COSTS, "amount.value", "4611686018427387904"),
    (AN_USAGE, "output_tokens", 2**62),
    (AN_USAGE, "cache_creation.ephemeral_1h_input_tokens", 2**53),
    (AN_COSTS, "amount", "1e30"),
])
def test_implausible_numbers_reject_the_response(
    tmp_path: Path, path: str, field: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rejected(tmp_path, path, _set(field, value), caplog, "implausible")


def test_the_largest_plausible_count_is_kept_exact_and_integer_over_two_polls(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path)
        try:
            for requests in (2**53 - 1, 2**53 - 2):  # a revision of the same bucket, then its latest value
                world.server.answers[OA_USAGE] = Served(mutated(OA_USAGE, _set("num_model_requests", requests)))
                assert (await world.poll(OPENAI)).ok
            assert world.integer_totals()
            assert world.totals(OPENAI)[1] == 2**53 - 2 + 24 - 3  # the base has 24 requests, 3 in that row
        finally:
            await world.close()

    asyncio.run(scenario())


# -- 4. Retry-After beyond the poll deadline -----------------------------------------------------------------------
@pytest.mark.parametrize("header", ["seconds", "http-date"])
def test_retry_after_past_the_deadline_ends_the_poll_rate_limited_and_the_next_poll_waits(
    tmp_path: Path, header: str
) -> None:
    async def scenario() -> None:
        world = World(tmp_path, collection_interval="1s", timeout="200ms")  # poll deadline: 1s
        try:
            value = "2" if header == "seconds" else formatdate(time.time() + 3, usegmt=True)
            world.server.answers[OA_USAGE] = Served(
                encode({"error": {"message": "rate limited", "type": "rate_limit_error"}}), status=429,
                headers={"retry-after": value})
            t0 = time.monotonic()
            outcome = await world.poll(OPENAI)
            assert (outcome.ok, outcome.error_type) == (False, "rate_limited")
            assert outcome.retry_after is not None and outcome.retry_after >= 1.0
            assert time.monotonic() - t0 < 1.0  # ended at once, not at the deadline
            (limited,) = world.server.requests_to(OA_USAGE)
            world.reset()
            assert (await world.poll(OPENAI)).ok
            retried = world.server.requests_to(OA_USAGE)[1]  # the next poll's first (of its chunks)
            assert retried - limited >= outcome.retry_after - 0.05  # never a request before the Retry-After
        finally:
            await world.close()

    asyncio.run(scenario())


# -- 5. huge or infinite Retry-After -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "1e400", "99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_huge_retry_after_is_capped_and_logged(
    tmp_path: Path, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        world = World(tmp_path, collection_interval="5s")
        try:
            world.server.answers[AN_USAGE] = Served(encode({"type": "error", "error": {"type": "rate_limit_error",
                                                                                     "message": "slow down"}}),
                                                    status=429, headers={"retry-after": value})
            outcome = await world.poll(ANTHROPIC)
            assert (outcome.error_type, outcome.retry_after) == ("rate_limited", 50.0)  # min(1h, 10 x 5s)
        finally:
            await world.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "capped at 50s" in caplog.text


# -- 7. response size ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "streamed"])
def test_a_body_over_max_response_bytes_fails_the_poll_clearly(
    tmp_path: Path, with_length: bool, caplog: pytest.LogCaptureFixture
) -> None:
    def pad(body: dict[str, Any]) -> None:
        body["padding"] = "x" * 200_000

    async def scenario() -> None:
        world = World(tmp_path, max_response_bytes=100_000)
        try:
            assert (await world.poll(OPENAI)).ok
            before = world.fingerprint(OA_COSTS)
            world.server.answers[OA_COSTS] = Served(mutated(OA_COSTS, pad), length=with_length)
            outcome = await world.poll(OPENAI)
            assert_source_rejected(outcome, OA_COSTS, caplog.text)
            assert world.fingerprint(OA_COSTS) == before
        finally:
            await world.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "response body too large" in caplog.text and "max_response_bytes is 100000" in caplog.text
