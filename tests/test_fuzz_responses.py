"""A seeded mutation fuzzer over OpenAI and Anthropic report responses (issue 17, fault tests).

Each round serves one mutated body (truncated, wrong types, NaN/Infinity, negatives, huge numbers, duplicated
buckets and rows, missing fields, a self-referencing cursor, an HTML page, invalid UTF-8, a slow body, a body that
stalls past the read timeout, or a legitimate revision) from a real loopback server to the production ``Receiver.poll``, and checks:

* no crash: the poll returns an outcome, and never one for an exception the providers did not expect;
* no hang: every poll ends within its deadline (plus slack);
* a rejected response writes nothing of its source (a digest of that source's series, buckets, rollups and
  cursor is unchanged; the instance's other source may land in the same poll);
* an accepted response changes the totals exactly as the oracle (``response_world.Oracle``) says: its rows are
  revisions of their keys, nothing more;
* totals stay integers.

``FUZZ_ROUNDS`` (default 1000 per instance) and ``FUZZ_SEED`` change the run; ``FUZZ_REPORT`` names a JSON file for
the counts (quoted in CHANGELOG.md).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest

from tests.support.response_world import BASES, ENDPOINTS, OPENAI, SOURCE_OF, Oracle, Served, World, encode

ROUNDS = int(os.environ.get("FUZZ_ROUNDS", "1000"))  # per instance
SEED = int(os.environ.get("FUZZ_SEED", "17"))
HANG_AFTER = 10.0  # seconds: far past the poll deadline (max(2s interval, 5 x 0.5s timeout) = 2.5s)
STALLS = 10  # bodies that stall past the read timeout (each costs about two timeouts): a few are enough

Node = tuple[Any, Any]  # (container, key)


def _nodes(value: Any) -> list[Node]:
    """Every (container, key) of a JSON tree, depth first."""
    found: list[Node] = []
    stack = [value]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else []
        for key in keys:
            found.append((item, key))
            stack.append(item[key])
    return found


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            Decimal(value)
        except InvalidOperation:
            return False
        return True
    return False


def _leaf(rng: random.Random, body: Any, accept: Callable[[Any], bool]) -> Node | None:
    nodes = [(c, k) for c, k in _nodes(body) if accept(c[k])]
    return rng.choice(nodes) if nodes else None


def _wrong_type(value: Any, rng: random.Random) -> Any:
    if isinstance(value, str):
        return rng.choice([1, 1.5, [], {}, True])
    if value is None:
        return rng.choice([1, "x"])
    if isinstance(value, bool):
        return rng.choice(["true", 1, None])
    if isinstance(value, int | float):
        return rng.choice([str(value), [], {}, True, None, 1.5])
    return rng.choice(["x", 1, None, [] if isinstance(value, dict) else {}])


class Mutation:
    """One mutated answer: what to serve, and the body an accepted answer carries (None: it must be rejected)."""

    def __init__(self, kind: str, served: Served, body: Any) -> None:
        self.kind, self.served, self.body = kind, served, body


def mutate(rng: random.Random, path: str, stall: bool = False) -> Mutation:
    body = copy.deepcopy(BASES[path]())
    raw = encode(body)
    if stall:  # each chunk arrives after the 0.5s read timeout: the request times out (and its retry too)
        return Mutation("stall", Served(raw, drip=8 * 0.7), None)
    kind = rng.choice(["truncate", "type", "nonfinite", "negative", "huge", "dup_bucket", "dup_row", "missing",
                       "cursor", "html", "utf8", "revision", "revision", "slow"])
    if kind == "truncate":
        return Mutation(kind, Served(raw[:rng.randrange(len(raw))]), None)
    if kind == "html":
        page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return Mutation(kind, Served(page, content_type="text/html"), None)
    if kind == "utf8":
        at = rng.randrange(len(raw))
        return Mutation(kind, Served(raw[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]) + raw[at:]),
                        None)
    if kind == "cursor":
        body["has_more"], body["next_page"] = True, "page_self"
        return Mutation(kind, Served(encode(body)), None)
    if kind in ("type", "missing"):
        node = _leaf(rng, body, lambda v: True)
        if node is not None:
            container, key = node
            if kind == "missing" and isinstance(container, dict):
                del container[key]
            else:
                container[key] = _wrong_type(container[key], rng)
    elif kind in ("nonfinite", "negative", "huge", "revision", "slow"):
        node = _leaf(rng, body, _numeric)
        if node is not None:
            container, key = node
            value = container[key]
            as_text = isinstance(value, str)
            if kind == "nonfinite":
                new: Any = rng.choice([float("nan"), float("inf"), float("-inf")])
            elif kind == "negative":
                new = -(abs(int(Decimal(str(value)))) or 1)
            elif kind == "huge":
                new = rng.choice([2**53, 2**62, 2**64, 10**30, 1e300])
            else:
                new = rng.randrange(0, 1_000_000)
            container[key] = str(new) if as_text and kind != "nonfinite" else new
    elif kind == "dup_bucket":
        data = body["data"]
        data.insert(rng.randrange(len(data) + 1), copy.deepcopy(rng.choice(data)))
    elif kind == "dup_row":
        bucket = rng.choice(body["data"])
        twin = copy.deepcopy(rng.choice(bucket["results"]))
        node = _leaf(rng, twin, lambda v: isinstance(v, int) and not isinstance(v, bool))
        if node is not None and rng.random() < 0.5:  # the same key with other numbers
            node[0][node[1]] = rng.randrange(0, 1000)
        bucket["results"].append(twin)
    served = Served(json.dumps(body).encode(), drip=0.05 if kind == "slow" else 0.0)
    return Mutation(kind, served, body)


async def fuzz(tmp_path: Path) -> Counter[str]:
    rng = random.Random(SEED)
    world = World(tmp_path, timeout="500ms")
    oracle = Oracle()
    counts: Counter[str] = Counter()
    drift: dict[str, tuple[int, ...]] = {}
    try:
        for instance in ENDPOINTS:  # the base lands first: every later answer is a revision or a rejection
            assert (await world.poll(instance)).ok
            for path in ENDPOINTS[instance]:
                oracle.accept(path, BASES[path]())
            drift[instance] = (0, 0, 0)
        version = world.writes()
        stall_at = set(rng.sample(range(ROUNDS), min(STALLS, ROUNDS)))
        for round_number in range(ROUNDS):
            for instance, paths in ENDPOINTS.items():
                path = rng.choice(paths)
                mutation = mutate(rng, path, stall=round_number in stall_at and instance == OPENAI)
                world.server.answers[path] = mutation.served
                before = version()
                before_source = world.fingerprint(path)
                counts["responses"] += 1
                t0 = time.monotonic()
                try:
                    outcome = await asyncio.wait_for(world.poll(instance), HANG_AFTER)
                except TimeoutError:
                    counts["hangs"] += 1
                    continue
                except Exception:  # Receiver.poll promises never to raise
                    counts["crashes"] += 1
                    continue
                finally:
                    world.reset()
                counts["slowest_ms"] = max(counts["slowest_ms"], int((time.monotonic() - t0) * 1000))
                status = next(s for s in world.receiver.health.statuses() if s.name == instance)
                # Usage and cost are separate sources: the mutated endpoint's source may be rejected while the
                # instance's other source lands (the poll then commits, but nothing of the rejected source).
                source = "cost" if SOURCE_OF[path][1] else "usage"
                if (not outcome.ok and not outcome.failed_sources) or source in outcome.failed_sources:
                    counts["rejected"] += 1
                    failure = status.failing_sources.get(source)
                    last_error = failure.error if failure is not None else status.last_error
                    if (last_error or "").startswith("unexpected "):
                        counts["crashes"] += 1
                    if world.fingerprint(path) != before_source:
                        counts["writes_from_rejected"] += 1
                    if outcome.ok or outcome.failed_sources:  # the other source landed: it re-read its base
                        for other in paths:
                            other_source = "cost" if SOURCE_OF[other][1] else "usage"
                            if other != path and other_source not in outcome.failed_sources:
                                oracle.accept(other, BASES[other]())
                    continue
                counts["accepted"] += 1
                if version() == before:
                    counts["accepted_without_write"] += 1  # the write detector itself must see every commit
                counts[f"accepted_{mutation.kind}"] += 1
                for other in paths:  # the poll re-read the instance's other endpoints, unchanged
                    if other != path:
                        oracle.accept(other, BASES[other]())
                if mutation.body is not None:
                    try:
                        oracle.accept(path, mutation.body)
                    except (KeyError, TypeError, ValueError, ArithmeticError):
                        counts["accepted_unreadable"] += 1  # the oracle cannot read what the receiver took
                        continue
                expected = tuple(e + d for e, d in zip(oracle.totals(instance), drift[instance], strict=True))
                found = world.totals(instance)
                if found != expected:
                    counts["wrong_totals"] += 1
                    counts[f"wrong_totals_{mutation.kind}"] += 1
                    if os.environ.get("FUZZ_DEBUG"):
                        print("MISMATCH", instance, path, mutation.kind, found, expected,
                              mutation.served.body[:3000])
                    # Resynchronise on the base (a re-read of every key), so one miscount is counted once.
                    await world.poll(instance)
                    for other in paths:
                        oracle.accept(other, BASES[other]())
                    drift[instance] = tuple(
                        f - e for f, e in zip(world.totals(instance), oracle.totals(instance), strict=True))
        if not world.integer_totals():
            counts["real_totals"] += 1
    finally:
        await world.close()
    return counts


@pytest.mark.slow
def test_mutated_responses_never_crash_hang_write_or_miscount(tmp_path: Path) -> None:
    t0 = time.monotonic()
    counts = asyncio.run(fuzz(tmp_path))
    counts["seconds"] = round(time.monotonic() - t0)
    report = os.environ.get("FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(sorted(counts.items())), indent=1))
    assert counts["responses"] >= 2 * ROUNDS
    bad = {k: counts[k] for k in ("crashes", "hangs", "writes_from_rejected", "wrong_totals", "real_totals",
                                  "accepted_unreadable", "accepted_without_write")}
    assert bad == dict.fromkeys(bad, 0), dict(counts)
    assert counts["rejected"] > counts["responses"] // 2 and counts["accepted"] > 100  # both paths were exercised
