"""A real Prometheus on loopback over TSDB blocks built from OpenMetrics text, for query tests.

``promtool tsdb create-blocks-from openmetrics`` writes the blocks, ``prometheus`` serves them (and evaluates
the rule files it is given), and ``query`` runs an instant query through the HTTP API. Both binaries come from
Debian's ``prometheus`` package; a missing binary fails the test with an install hint (no skip).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.support.prometheus_files import tool

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QueryError(AssertionError):
    """Prometheus rejected a query (bad syntax, unknown function): the message is Prometheus' own."""


class PrometheusServer:
    """``with PrometheusServer(workdir, openmetrics_text, rule_files) as prom: prom.query("up")``."""

    def __init__(self, workdir: Path, openmetrics: str, rule_files: list[Path], *, rule_interval: str = "1s",
                 block_duration: str = "2h") -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        source = workdir / "data.om"
        source.write_text(openmetrics, encoding="utf-8")
        proc = subprocess.run([tool("promtool"), "tsdb", "create-blocks-from", "openmetrics", "-q",
                               f"--max-block-duration={block_duration}", str(source), str(self.data)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError("promtool could not load the OpenMetrics data: " + proc.stderr[-2000:])
        # The rule files as given, but every group evaluated every `rule_interval`, so that recorded series
        # exist a moment after start instead of after each group's own interval.
        local_rules = []
        for i, path in enumerate(rule_files):
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            for group in doc["groups"]:
                group["interval"] = rule_interval
            local = workdir / f"rules-{i}-{path.name}"
            local.write_text(yaml.safe_dump(doc), encoding="utf-8")
            local_rules.append(str(local))
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"evaluation_interval": rule_interval, "scrape_interval": "15s"},
            "rule_files": local_rules,
        }), encoding="utf-8")
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=30d",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("Prometheus did not become ready:\n" + self.log.read_text()[-3000:])
            time.sleep(0.05)  # polling a readiness endpoint, not waiting for a result
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}") from None
        return body["data"]

    def query(self, expr: str, at: int | None = None) -> list[dict[str, Any]]:
        """An instant query at ``at`` (Unix seconds; default the server's now); the result vector (a scalar comes
        back as one sample)."""
        data = self.api("query", query=expr, **({} if at is None else {"time": str(at)}))
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for_rule_evaluations(self, timeout: float = 20.0) -> None:
        """Until every rule group has been evaluated at least once since start, without errors."""
        deadline = time.monotonic() + timeout
        while True:
            groups = self.api("rules")["groups"]
            evaluated = groups and all(not g["lastEvaluation"].startswith("0001-") for g in groups)
            if evaluated:
                broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
                          if r.get("health") == "err"]
                if broken:
                    raise AssertionError(f"rules failed to evaluate: {broken}")
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"rule groups not evaluated within {timeout}s: {groups}")
            time.sleep(0.05)  # polling Prometheus' rule status, not waiting for a result
