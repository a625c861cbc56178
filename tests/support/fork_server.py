"""A fork server: one clean process that imports the receiver once and forks a real ``otel-llm-receiver``
process per request, so a kill -9 storm can start hundreds of receivers without paying interpreter start-up
and imports (about a second each on a loaded CI machine) every time.

Why a separate process rather than ``os.fork()`` in the test: the test process runs fake provider servers and
an OTLP sink on threads, and forking a threaded process can leave the child holding locks no thread will ever
release. The server is single-threaded when it forks. Each child runs ``cli.main(argv)`` exactly as the console
script does, with its stdout and stderr in a log file, and leaves with ``os._exit`` (nothing of the server's
state runs twice).

Protocol, one JSON object a line: ``{"op": "run", "argv": [...], "log": PATH, "env": {...}}`` answers
``{"pid": N}``; ``{"op": "wait", "pid": N}`` answers ``{"signal": S | null, "code": C | null}`` once the child
ended. ``ForkServer`` is the test side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any


def _preload() -> Any:
    """Import everything a ``run`` with an OpenAI provider and an OTLP/HTTP exporter needs, before any fork."""
    # cli imports what each command needs when it runs (issue 20): the config and the runtime are named here
    from otel_llm_receiver import cli, config, health, ledger, scheduler  # noqa: F401
    from otel_llm_receiver.emitter import _http_exporter_class
    from otel_llm_receiver.providers import provider_class

    _http_exporter_class()
    provider_class("openai")
    return cli


def _child(cli: Any, request: dict[str, Any]) -> None:
    code = 70
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ.update(request.get("env", {}))
        code = int(cli.main(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    cli = _preload()
    stdout.write(json.dumps({"ready": True}) + "\n")
    stdout.flush()
    for line in stdin:
        request = json.loads(line)
        if request["op"] == "run":
            pid = os.fork()
            if pid == 0:
                _child(cli, request)
            reply: dict[str, Any] = {"pid": pid}
        elif request["op"] == "wait":
            _, status = os.waitpid(int(request["pid"]), 0)
            reply = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                     "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


class ForkServer:
    """The test side: start the server, ``run`` receivers, ``wait`` for them, ``close``."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fork_server"], cwd=cwd, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server exited ({self.proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        return int(self._ask({"op": "run", "argv": argv, "log": str(log), "env": env or {}})["pid"])

    def wait(self, pid: int) -> tuple[int | None, int | None]:
        """(signal, exit code) of an ended child; blocks until it ends."""
        reply = self._ask({"op": "wait", "pid": pid})
        return reply["signal"], reply["code"]

    def close(self) -> None:
        """End the server (it reads end-of-file), and close both pipes."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
