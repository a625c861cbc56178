"""Start-up of the command a user types: ``--help``, ``check`` and ``run --once`` on an existing demo ledger,
each a whole process, beside its anchors measured in the same run.

Run by hand: ``python benchmarks/startup.py [--repeat 7]`` (``BENCH_CODE=/old/checkout`` for the "before" figure).
It prints one table. Each figure is the median of ``--repeat`` (>= 5: these are short) runs of the whole command
in a fresh process, exactly as the installed ``otel-llm-receiver`` script starts it: wall seconds from spawn to
exit, CPU seconds (user + system) and peak RSS from ``wait4`` (``harness.run_command``). The cases run round by
round, interleaved, so a change in the machine's load moves every case alike; on a shared machine compare the
CPU column.

Cases:
* ``python -c pass``: the interpreter's own start (with this environment's ``site``): the floor of any command;
* ``python -c "import yaml, httpx"``: the two libraries a config-reading HTTP client needs, for scale;
* ``genai-prices data`` and ``OTLP gRPC exporter``: the third-party floors ``run`` stands on (the price data every
  export's price gauges and the ledger's pricing schedules read; the official exporter, the SDK and protobuf),
  each alone in a bare interpreter;
* ``--help``: the parser and its help text (goal: < 0.2 s);
* ``check``: ``check --config`` of the demo config (the ``demo`` command's own, with an OTLP exporter);
* ``run --once``: one poll of the demo provider into an existing demo ledger, one export to an OTLP sink on
  loopback (in this process), exit (goal: < 0.6 s). The ledger is made once, untimed, the way a user gets one:
  the demo's 14-day backfill, then one more poll (so what that backfill made prunable is pruned, as in any
  ledger the receiver has run on). Each timed run starts from a fresh copy of it (with its -wal, if any).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Run, command_env, machine, median_figure, run_command, table

#: What the installed ``otel-llm-receiver`` console script runs (setuptools' entry-point wrapper).
ENTRY = "import sys; from otel_llm_receiver.cli import main; sys.exit(main())"

GOALS = {"--help": 0.2, "run --once": 0.6}
#: What ``run`` cannot do without, whoever's code it is: genai-prices' data (the price gauges of every export and
#: the schedules ``Ledger.set_pricer`` writes at start), and the official OTLP exporter with the SDK types it uses.
GENAI = "from genai_prices import data_snapshot; data_snapshot.get_snapshot()"
OTLP = ("import opentelemetry.sdk.metrics.export, opentelemetry.exporter.otlp.proto.grpc.metric_exporter, "
        "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")


def demo_config(ledger: Path, endpoint: str) -> str:
    """The ``demo`` command's own configuration (``cli.DEMO_CONFIG`` of the code measured), at this run's ledger
    and sink, so the benchmark measures what a user's demo runs and never drifts from it."""
    import yaml

    from otel_llm_receiver.cli import DEMO_CONFIG  # after the harness: BENCH_CODE's code when given

    raw = yaml.safe_load(DEMO_CONFIG)
    raw["storage"]["path"] = str(ledger)
    raw["exporters"]["otlp"]["endpoint"] = endpoint
    return str(yaml.safe_dump(raw, sort_keys=False))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", ENTRY, *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per case (>= 5); medians are printed")
    args = parser.parse_args()
    repeat = max(5, args.repeat)

    from tests.support.otlp_sink import OTLPSink  # after the harness: BENCH_CODE's test support when given

    print(f"start-up, {machine()}; medians of {repeat} runs, each a whole process")
    with tempfile.TemporaryDirectory() as tmp, OTLPSink(decode_points=False) as sink:
        work = Path(tmp)
        base, ledger = work / "base" / "ledger.db", work / "run" / "ledger.db"
        config = work / "demo.yaml"
        env = command_env()
        # The existing demo ledger: built and settled once, untimed, at the base path.
        base.parent.mkdir()
        config.write_text(demo_config(base, sink.grpc_endpoint))
        for _ in range(2):
            run_command(cli("run", "--config", str(config), "--once"), env=env, cwd=work)
        config.write_text(demo_config(ledger, sink.grpc_endpoint))

        def fresh_ledger() -> None:
            shutil.rmtree(ledger.parent, ignore_errors=True)
            ledger.parent.mkdir()
            for suffix in ("", "-wal"):
                if Path(f"{base}{suffix}").exists():
                    shutil.copyfile(f"{base}{suffix}", f"{ledger}{suffix}")

        cases: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import yaml, httpx"': [sys.executable, "-c", "import yaml, httpx"],
            "  genai-prices data": [sys.executable, "-c", GENAI],
            "  OTLP gRPC exporter": [sys.executable, "-c", OTLP],
            "--help": cli("--help"),
            "check": cli("check", "--config", str(config)),
            "run --once": cli("run", "--config", str(config), "--once"),
        }
        runs: dict[str, list[Run]] = {name: [] for name in cases}
        for _ in range(repeat):
            for name, argv in cases.items():
                if name == "run --once":
                    fresh_ledger()
                runs[name].append(run_command(argv, env=env, cwd=work))

    rows = []
    floor = median_figure("floor", runs["python -c pass"])
    for name, found in runs.items():
        f = median_figure(name, found)
        goal = GOALS.get(name)
        rows.append([name, f"{f.wall:.3f}", f"{f.cpu:.3f}", f"{f.cpu - floor.cpu:+.3f}", f"{f.rss_mib:.0f}",
                     f"< {goal} s" if goal else "", ("met" if f.wall < goal else "NOT met") if goal else ""])
    print(table(rows, ["command", "wall s", "cpu s", "cpu over pass", "peak MiB", "goal", "wall vs goal"]))


if __name__ == "__main__":
    main()
