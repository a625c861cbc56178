"""``GET /focus.csv`` and ``/focus.json`` on the health endpoint: the same rows as the ``focus`` command, streamed,
with one-line 400s for bad parameters, and nothing served unless ``focus.http`` asks for it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from otel_llm_receiver.cli import main
from otel_llm_receiver.config import Config, HealthConfig
from otel_llm_receiver.focus.http import focus_routes
from otel_llm_receiver.health import HealthServer

from .support import focus_world as world
from .support.focus_conformance import read_back

D = world.D


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return world.build(tmp_path_factory.mktemp("focus-http"))


@pytest.fixture(scope="module")
def server(config: Config) -> Iterator[str]:
    health = HealthServer("127.0.0.1:0", lambda: (True, {"status": "ok"}),
                          focus_routes(config, clock=lambda: float(world.NOW))).start()
    try:
        host, port = health.address
        yield f"http://{host}:{port}"
    finally:
        health.stop()


def test_csv_and_json_hold_the_commands_rows(config: Config, server: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.csv"
    assert main(["focus", "--config", str(Path(config.storage.path).parent / "config.yaml"), "--from", str(world.DAYS[0]),
                 "--to", str(world.NOW), "--out", str(out)]) == 0
    expected_columns, expected = read_back(out, "csv")
    assert len(expected) > 20
    params = {"from": str(world.DAYS[0]), "to": str(world.NOW)}
    response = httpx.get(f"{server}/focus.csv", params=params, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == expected_columns
    assert [{k: (v if v != "" else None) for k, v in r.items()} for r in reader] == expected
    response = httpx.get(f"{server}/focus.json", params=params, timeout=30)
    assert response.status_code == 200
    rows = json.loads(response.text, parse_float=Decimal)
    assert [r["x_ChargeKey"] for r in rows] == [r["x_ChargeKey"] for r in expected]
    assert sum((r["BilledCost"] for r in rows), Decimal(0)) == sum(
        (Decimal(r["BilledCost"] or "x") for r in expected), Decimal(0))
    # Default range: the seven days before now (here the fixed clock), in the config's version (1.2).
    default = list(csv.DictReader(io.StringIO(httpx.get(f"{server}/focus.csv", timeout=30).text)))
    assert len(default) == len(expected) and "ServiceProviderName" not in default[0]
    v13 = httpx.get(f"{server}/focus.csv", params={**params, "version": "1.3"}, timeout=30).text
    assert "ServiceProviderName" in v13.splitlines()[0]


@pytest.mark.parametrize(("query", "message"), [
    ({"version": "2.0"}, "version '2.0' is not one of 1.0, 1.2, 1.3"),
    ({"from": "yesterday"}, "from/to: "),
    ({"from": "2026-11-10", "to": "2026-11-01"}, "to must be after from"),
    ({"from": "2020-01-01", "to": "2026-01-01"}, "at most 366 days per request"),
    ({"limit": "5"}, "unknown query parameter limit (valid: from, to, version)"),
])
def test_bad_parameters_are_a_400_with_one_line(server: str, query: dict[str, str], message: str) -> None:
    response = httpx.get(f"{server}/focus.json", params=query, timeout=30)
    assert response.status_code == 400
    assert message in response.text and len(response.text.strip().splitlines()) == 1


def test_not_served_without_focus_http() -> None:
    health = HealthServer("127.0.0.1:0", lambda: (True, {"status": "ok"})).start()
    try:
        host, port = health.address
        assert httpx.get(f"http://{host}:{port}/focus.csv", timeout=30).status_code == 404
        assert httpx.get(f"http://{host}:{port}/health", timeout=30).status_code == 200
    finally:
        health.stop()
    assert HealthConfig().endpoint.startswith("127.0.0.1:")  # loopback unless configured otherwise
