"""moto in server mode on loopback, in its own process, for tests that talk to "AWS" with the real boto3.

Why a separate process rather than ``mock_aws``: the provider must be tested over real HTTP with botocore's own
serializers, signers, retries and parsers, exactly as it talks to AWS; nothing in the test process is patched.
The child binds 127.0.0.1 port 0 (a free port, no race), prints the port once it is listening, and the
parent then checks ``/moto-api/`` answers before handing it out; no sleeps. ``stop()`` ends the process.

What moto serves here (checked against moto 5.2): CloudWatch ``PutMetricData`` / ``ListMetrics`` (paged by
500) / ``GetMetricData`` (no paging; with Dimensions it matches dimension set and metric name but ignores the
namespace), STS, and Cost Explorer ``GetCostAndUsage`` answered from results seeded through
``POST /moto-api/static/ce/cost-and-usage-results`` (a queue: each distinct request body takes the next
result and keeps it). It has no ``ListInferenceProfiles``: ``tests/fakes/aws.py`` covers that.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import TracebackType
from typing import Any

__all__ = ["FAKE_CREDENTIALS", "MotoServer"]

#: Credentials that look like AWS's documented examples; moto accepts any. Set only inside tests.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-not-real",
    "AWS_SESSION_TOKEN": "testing-session",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

_BOOT = """
import sys
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                     request_handler=MotoRequestHandler)
print(server.server_port, flush=True)
server.serve_forever()
"""


class MotoServer:
    """A moto server process on 127.0.0.1; ``url`` is its endpoint for every AWS service."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the child's stderr, kept until stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT], stdout=subprocess.PIPE, stderr=self._log, env=env, text=True
        )
        try:
            port = self._read_port(start_timeout)
            self.url = f"http://127.0.0.1:{port}"
            self._check_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_port(self, timeout: float) -> int:
        assert self._proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"moto server printed no port within {timeout:g}s: {self._stderr()}")
        line = self._proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"moto server did not start: {line!r} {self._stderr()}")
        return int(line)

    def _check_ready(self, timeout: float) -> None:
        """The socket listens before the port is printed; one request proves the app answers too."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=timeout) as r:
                    if r.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def post(self, path: str, body: Any = None) -> int:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(f"{self.url}{path}", data=data, method="POST",
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)

    def reset(self) -> None:
        """Forget every resource and seeded result (between tests)."""
        self.post("/moto-api/reset")

    def seed_cost_and_usage(self, results: list[dict[str, Any]]) -> None:
        """Queue ``GetCostAndUsage`` responses (moto's documented seeding endpoint)."""
        status = self.post("/moto-api/static/ce/cost-and-usage-results", {"results": results})
        if status != 201:
            raise RuntimeError(f"moto refused the cost seed: HTTP {status}")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
