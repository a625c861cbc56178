"""Damaged ledger files (issue 17.1): every command that reads the ledger refuses one in one line, or runs on.

A ledger is built by a real ``run --once`` (demo provider, OTLP to a real sink), then damaged the ways files
get damaged: truncated, emptied, a page overwritten, a garbage WAL beside it, a garbage header, replaced by a
text file. For each, ``run --once``, ``report`` and ``focus`` either refuse it in exactly one stderr line that
says what to do (restore, or move it aside), exit 1 and leave the file as it was; or, where SQLite
legitimately recovers (a WAL with an invalid header is ignored), run and report the same totals as before.
Never a traceback. Seeds are fixed, so every run damages the same bytes.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otel_llm_receiver.cli import main
from tests.support.otlp_sink import OTLPSink

NOW = "2026-11-20T12:00:00"
PAGE = 4096


def _config(directory: Path, ledger: Path, sink: OTLPSink) -> Path:
    path = directory / "config.yaml"
    path.write_text(f"""
storage: {{path: {ledger}}}
health: {{endpoint: ""}}
exporters:
  otlphttp: {{endpoint: {sink.http_endpoint}}}
providers:
  demo: {{backfill: 72h, seed: 7}}
pricing: {{genai_prices: false}}
""")
    return path


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process; the root logger ``run`` reconfigures is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code = main(list(argv))
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def sink() -> Iterator[OTLPSink]:
    with OTLPSink() as s:
        yield s


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, sink: OTLPSink) -> Path:
    directory = tmp_path_factory.mktemp("pristine")
    ledger = directory / "ledger.db"
    assert main(["run", "--once", "--config", str(_config(directory, ledger, sink))]) == 0
    logging.getLogger().handlers.clear()
    assert not Path(f"{ledger}-wal").exists()  # closed cleanly: one file holds everything
    return ledger


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2 + 123)


def _zero(path: Path) -> None:
    path.write_bytes(b"")


def _page(seed: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        rng = random.Random(seed)
        pages = path.stat().st_size // PAGE
        page = rng.randrange(2, pages + 1)  # page 1 holds the header and schema: that is the header variant
        with path.open("r+b") as f:
            f.seek((page - 1) * PAGE)
            f.write(rng.randbytes(PAGE))
    return damage


def _garbage_wal(path: Path) -> None:
    Path(f"{path}-wal").write_bytes(random.Random(11).randbytes(64 * 1024))


def _header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(random.Random(5).randbytes(100))


def _text(path: Path) -> None:
    path.write_text("this is a note someone saved over the ledger\n" * 200)


VARIANTS: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate, "zero-length": _zero, "page-seed-1": _page(1), "page-seed-2": _page(2),
    "page-seed-3": _page(3), "garbage-wal": _garbage_wal, "random-header": _header, "text-file": _text,
}
#: Where SQLite legitimately recovers: a WAL whose header checksum fails is ignored (and reset).
RECOVERED = {"garbage-wal"}


def _commands(config: Path, out: Path) -> dict[str, list[str]]:
    return {
        "run --once": ["run", "--once", "--config", str(config)],
        "report": ["report", "--config", str(config), "--format", "json", "--since", "7d", "--now", NOW],
        "focus": ["focus", "--config", str(config), "--out", str(out), "--since", "7d", "--now", NOW],
    }


def _assert_refused(name: str, code: int, out: str, err: str) -> None:
    lines = err.splitlines()
    assert code == 1, (name, code, err)
    assert len(lines) == 1, (name, err)  # one line, no traceback
    assert "Traceback" not in err and out == ""
    line = lines[0]
    assert "is damaged" in line and "restore it from a backup" in line and "move it aside" in line, line


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_command_refuses_a_damaged_ledger_in_one_line_or_runs_on(
    variant: str, pristine: Path, sink: OTLPSink, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "ledger.db"
    shutil.copyfile(pristine, ledger)
    config = _config(tmp_path, ledger, sink)
    code, before, _ = _main(capsys, *_commands(config, tmp_path / "f.csv")["report"])
    assert code == 0
    VARIANTS[variant](ledger)
    damaged = ledger.read_bytes()
    if variant in RECOVERED:
        for name, argv in _commands(config, tmp_path / "f.csv").items():
            code, out, err = _main(capsys, *argv)
            assert code == 0 and "Traceback" not in err, (name, err)
        code, after, _ = _main(capsys, *_commands(config, tmp_path / "f.csv")["report"])
        assert after == before  # the same totals: nothing lost, nothing doubled
        return
    for name, argv in _commands(config, tmp_path / "f.csv").items():
        code, out, err = _main(capsys, *argv)
        _assert_refused(f"{variant}: {name}", code, out, err)
        assert ledger.read_bytes() == damaged, f"{variant}: {name} changed the damaged ledger"
    assert not (tmp_path / "f.csv").exists()


def test_a_new_ledger_is_built_beside_the_path_and_linked_into_place(
    tmp_path: Path, sink: OTLPSink, capsys: pytest.CaptureFixture[str]
) -> None:
    """What makes refusing a 0-byte ledger safe: the receiver never leaves an empty file at storage.path."""
    ledger = tmp_path / "new" / "ledger.db"
    leftover = Path(f"{ledger}.new")
    ledger.parent.mkdir()
    leftover.write_bytes(b"half a ledger from a start that was killed")
    code, _, err = _main(capsys, "run", "--once", "--config", str(_config(tmp_path, ledger, sink)))
    assert code == 0, err
    assert sorted(p.name for p in ledger.parent.iterdir()) == ["ledger.db", "ledger.db.lock"]  # and the writer lock
    assert ledger.stat().st_size > 0


def test_the_refusal_is_one_line_from_the_real_command(pristine: Path, sink: OTLPSink, tmp_path: Path) -> None:
    """End to end through the interpreter: what an operator sees on the console, nothing else."""
    ledger = tmp_path / "ledger.db"
    shutil.copyfile(pristine, ledger)
    _page(1)(ledger)
    config = _config(tmp_path, ledger, sink)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "otel_llm_receiver", "run", "--once", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"ledger {ledger} is damaged" in proc.stderr and "move it aside" in proc.stderr
