"""Waiting for a condition in tests: polled with a bound, never a sleep standing in for synchronisation."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``condition`` until truthy and return its value; fail after ``timeout`` seconds naming ``what``.

    The 20 ms between polls only spaces the checks: the test waits for the condition, never for the time."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def reap(process: subprocess.Popen[Any]) -> None:
    """A test's child process ended (killed if still running) and its pipes closed, whatever the test did."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()
