"""``heap.settle``: the garbage collector's settings of a polling process, set once start-up is done.

Each case runs in a fresh interpreter, so that this test process keeps CPython's defaults and the figures read
are the probe's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from otel_llm_receiver.heap import YOUNG_THRESHOLD
from tests.support.otlp_sink import OTLPSink

_SETTLE_TWICE = """\
import gc, json
from otel_llm_receiver.heap import settle
before = gc.get_threshold()
settle()
first = gc.get_freeze_count()
garbage = [[] for _ in range(1000)]  # made after start-up: never frozen, even by a second call
settle()
print(json.dumps({"before": before, "after": gc.get_threshold(), "first": first, "second": gc.get_freeze_count()}))
"""

_RUN_ONCE = """\
import gc, json, sys
from otel_llm_receiver.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def _probe(script: str, *args: str, cwd: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_settle_freezes_start_up_and_widens_the_young_generation_once(tmp_path: Path) -> None:
    found = _probe(_SETTLE_TWICE, cwd=tmp_path)
    assert found["before"] == [700, 10, 10]  # CPython's defaults until start-up is done
    assert found["after"] == [YOUNG_THRESHOLD, 10, 10]
    assert isinstance(found["first"], int) and found["first"] > 1000
    assert found["second"] == found["first"]  # the second call froze nothing made since


def test_run_once_polls_with_the_settled_collector(tmp_path: Path) -> None:
    with OTLPSink() as sink:
        config = tmp_path / "config.yaml"
        config.write_text(f"storage: {{path: {tmp_path / 'l.db'}}}\nhealth: {{endpoint: ''}}\n"
                          f"exporters: {{otlp: {{endpoint: {sink.grpc_endpoint}, tls: {{insecure: true}}}}}}\n"
                          "providers: {demo: {backfill: 2h}}\n")
        found = _probe(_RUN_ONCE, "run", "--config", str(config), "--once", cwd=tmp_path)
        assert sink.number_points("llm.usage.tokens")
    assert found["code"] == 0
    assert found["threshold"] == [YOUNG_THRESHOLD, 10, 10]
    assert isinstance(found["frozen"], int) and found["frozen"] > 10_000  # the imports, config and ledger
