"""What every benchmark here measures the same way: a whole child process per run, medians, CPU time, peak RSS.

Why a child per run: peak RSS is only honest for a process that did nothing else (a parent that already built the
inputs, or ran another case, carries that memory), and a fresh interpreter cannot reuse a warm cache from the
previous run. The child times only the work (``timed``) and reports wall and CPU seconds of that part; the parent
reads the child's peak RSS from the kernel (``wait4``), so it includes the inputs, as a user's process would.
Figures are the median of the runs; ``--repeat`` is at least 3.

Before and after in one run: ``BENCH_CODE=/path/to/old/checkout python benchmarks/X.py`` runs the same benchmark
against another checkout's package (and its test fakes), e.g. a ``git worktree`` of the commit before a change, so
the "before" figure comes from the same machine, day and benchmark as the "after" one.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "BENCH-RESULT "
#: The checkout whose ``otel_llm_receiver`` (and ``tests.fakes``) is measured: this one unless ``BENCH_CODE`` names
#: another. Imported first, ahead of this checkout, in this process and in every child.
CODE = Path(os.environ.get("BENCH_CODE") or ROOT).resolve()
if CODE != ROOT:
    sys.path.insert(0, str(CODE))


@dataclass(frozen=True)
class Run:
    wall: float  # seconds of the timed part
    cpu: float  # CPU seconds (user + system) of the timed part, this process
    rss_mib: float  # peak RSS of the whole child process
    extra: dict[str, float]


@dataclass(frozen=True)
class Figure:
    """Medians over the runs of one case."""

    name: str
    runs: int
    wall: float
    cpu: float
    rss_mib: float
    extra: dict[str, float]


@contextmanager
def timed(extra: dict[str, float] | None = None) -> Iterator[dict[str, float]]:
    """In the child: time the block and print its figures for the parent (one marked line on stdout)."""
    out: dict[str, float] = dict(extra or {})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    yield out
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(MARK + json.dumps({"wall": wall, "cpu": cpu, "extra": out}), flush=True)


def run_child(script: Path, args: Sequence[str]) -> Run:
    """One run of ``script --child ARGS`` in a fresh interpreter; its timed figures and its peak RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(CODE), str(ROOT)]))}
    proc = subprocess.Popen([sys.executable, str(script), "--child", *args], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout is not None
    lines = proc.stdout.read().splitlines()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{script.name} --child {' '.join(args)} failed with exit {proc.returncode}")
    found = [json.loads(line[len(MARK):]) for line in lines if line.startswith(MARK)]
    if len(found) != 1:
        raise SystemExit(f"{script.name} --child {' '.join(args)} printed {len(found)} results, not 1")
    doc = found[0]
    return Run(doc["wall"], doc["cpu"], usage.ru_maxrss / 1024, {k: float(v) for k, v in doc["extra"].items()})


def measure(name: str, script: Path, args: Sequence[str], repeat: int) -> Figure:
    """Median wall, CPU and peak RSS of ``repeat`` (>= 3) child runs of one case."""
    runs = [run_child(script, args) for _ in range(max(3, repeat))]
    keys = set().union(*(r.extra for r in runs))
    return Figure(
        name, len(runs),
        statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs),
        statistics.median(r.rss_mib for r in runs),
        {k: statistics.median(r.extra.get(k, 0.0) for r in runs) for k in sorted(keys)},
    )


def machine() -> str:
    """One line naming the machine and the moment, printed above every table (figures are only comparable
    within one run on one machine)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        commit = subprocess.run(["git", "-C", str(CODE), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "?"
    except OSError:
        commit = "?"
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, load average {load:.2f} at start, code {CODE} at {commit}")


def table(rows: Sequence[Sequence[str]], head: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    fmt: Callable[[Sequence[str]], str] = lambda r: "  ".join(  # noqa: E731
        str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


# -- whole commands ------------------------------------------------------------------------------------------
# A command's start-up is part of what a user waits for (``--help``, ``run --once``), so for those the whole
# process is the figure: wall from spawn to exit, and CPU and peak RSS from the kernel (``wait4``). No Python of
# ours runs in that process before the command: the figure is the command's own.
#
# Why a spawner: a process's peak RSS as ``wait4`` reports it is never below that of the process that forked it
# (the kernel carries the forking process's high-water mark through ``exec``), so a command forked by this
# process (with a gRPC sink, a built ledger) would report this process's size. A bare interpreter (``-S -E``,
# about 8 MiB, under any Python command's own) forks and waits for the command instead, and reports.

_SPAWNER = """\
import os, sys, time
fd, argv = int(sys.argv[1]), sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
os.write(fd, ("%r %r %r %r" % (os.waitstatus_to_exitcode(status), wall, ru.ru_utime + ru.ru_stime,
                                 ru.ru_maxrss)).encode())
"""


def command_env(**extra: str) -> dict[str, str]:
    """The environment a measured command runs in: ``CODE`` first on the path, so it imports the measured
    checkout's package (an editable install elsewhere comes after it). Bytecode is written and used, as an
    installed package's is (pip compiles on install): with ``PYTHONDONTWRITEBYTECODE`` inherited from a
    developer's shell, every run would compile the modules changed since the last cache from source (0.1 s of
    ``run --once`` was that, not the receiver)."""
    env = {**os.environ, "PYTHONPATH": str(CODE), **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_command(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                ok_codes: Sequence[int] = (0,)) -> Run:
    """One run of a whole command (``argv[0]`` a path): wall seconds from fork to exit, CPU seconds (user +
    system) and peak RSS of that process, from ``wait4`` in a bare spawner. Output goes to temporary files
    (read back only when the exit code is not one of ``ok_codes``), so a full pipe never stalls the command."""
    read_end, write_end = os.pipe()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            subprocess.run([sys.executable, "-S", "-E", "-c", _SPAWNER, str(write_end), *argv], stdout=out,
                           stderr=err, stdin=subprocess.DEVNULL, env=env if env is not None else command_env(),
                           cwd=cwd, pass_fds=(write_end,), check=True)
            os.close(write_end)
            write_end = -1
            with os.fdopen(read_end, "rb") as result:
                read_end = -1
                code_text, wall_text, cpu_text, rss_text = result.read().decode().split()
            code = int(code_text)
            if code not in ok_codes:
                err.seek(0)
                tail = err.read().decode("utf-8", "replace").strip().splitlines()[-5:]
                raise SystemExit(f"{' '.join(argv)} exited {code}:\n" + "\n".join(tail))
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    return Run(float(wall_text), float(cpu_text), int(rss_text) / 1024, {})


def median_figure(name: str, runs: Sequence[Run]) -> Figure:
    """Medians of runs gathered by the caller (e.g. whole commands interleaved with their anchors, round by
    round, so that a change in the machine's load moves every case alike)."""
    keys = set().union(*(r.extra for r in runs))
    return Figure(
        name, len(runs),
        statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs),
        statistics.median(r.rss_mib for r in runs),
        {k: statistics.median(r.extra.get(k, 0.0) for r in runs) for k in sorted(keys)},
    )


def settle_as_run() -> bool:
    """In a child, once its start-up is done: what ``run`` does there (``heap.settle``, the garbage collector's
    settings for polling), when the measured code has it; False for code from before it (which ran with
    CPython's defaults). A child that times a poll calls it, so the poll runs as in the receiver."""
    try:
        from otel_llm_receiver.heap import settle
    except ImportError:
        return False
    settle()
    return True
