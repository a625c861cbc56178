"""Command line: ``run`` (the sidecar), ``check`` (validate a config), ``demo`` (zero-setup tour), ``report``
(spend, budgets, anomalies and attribution from the ledger, offline), ``focus`` (a FOCUS export, offline),
``history`` (backfill, then the ledger's hourly history as OpenMetrics, for preloading Prometheus).

Exit codes: 0 success; 1 a provider or exporter failed (``run --once``, ``check --connect``) or the receiver could
not start;
2 the configuration is invalid (one line per problem on stderr, each naming its key path).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError, ReceiverError

# Every command imports what it uses, when it runs: `--help` loads argparse and this module only (tests/test_cli.py
# holds it to that); `check` adds the config and the provider types the config names; the runtime (the scheduler,
# OTLP exporters, the ledger, prices) comes with `run`, and a config error answers before any of it loads.
if TYPE_CHECKING:
    import asyncio

    from .config import Config
    from .emitter import BatchExporter
    from .progress import ProgressState
    from .scheduler import Receiver

log = logging.getLogger("otel_llm_receiver.cli")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

#: The configuration ``demo`` runs: the demo provider with a 14-day backfill (a week of anomaly baseline before the
#: demo week), two budgets and attribution rules, OTLP to a local Collector.
DEMO_CONFIG = """\
collection_interval: 10s
export_interval: 10s
storage:
  path: ./otel-llm-data/demo-ledger.db
health:
  endpoint: ""
exporters:
  otlp:
    endpoint: localhost:4317
    tls:
      insecure: true
providers:
  demo:
    backfill: 336h
    seed: 42
budgets:
  - name: demo-monthly
    amount: 20000
    period: month
    source: best
  - name: research-daily
    amount: 150
    period: day
    source: estimated
    match: {team: research}
attribution:
  rules:
    - {tenancy: Search, team: search, cost_center: CC-100}
    - {tenancy: Research, team: research, cost_center: CC-200}
"""


LOG_LEVELS = ("debug", "info", "warning", "error")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    level = getattr(args, "log_level", None) or os.environ.get("LOG_LEVEL", "").strip().lower()
    if level and level not in LOG_LEVELS:
        print(f"LOG_LEVEL={level}: must be one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return EXIT_CONFIG
    from .logs import setup_logging

    # The demo's terminal summary is the output; its log lines would scroll it away, hence warning there.
    setup_logging(level or ("warning" if args.command == "demo" else "info"))
    handler = {"run": _cmd_run, "check": _cmd_check, "demo": _cmd_demo, "report": _cmd_report,
               "focus": _cmd_focus, "history": _cmd_history, "ledger": _cmd_ledger}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:  # a second Ctrl-C: leave now (the ledger is transactional, nothing half-written)
        return 130
    except BrokenPipeError:
        # `report ... | head`: the reader has what it wanted. Leave quietly, as Unix tools do (128 + SIGPIPE),
        # and point stdout at /dev/null so the interpreter's final flush cannot complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    """The command line, every subcommand and option (public: the docs test parses every documented command)."""
    # --log-level is global: accepted before the command and after it (`-- log-level` on every subparser,
    # SUPPRESS so a subcommand that does not repeat it keeps the value given before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="debug, info, warning or error (default: $LOG_LEVEL, else info; demo: warning)")
    p = argparse.ArgumentParser(
        prog="otel-llm-receiver",
        description="Poll LLM providers' usage and cost APIs and export exact llm.usage.* metrics over OTLP.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add_command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, parents=[common])

    run = add_command("run", "run the receiver (the long-running sidecar)")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--once", action="store_true",
                     help="poll every provider instance once, export once, and exit (non-zero on failure)")
    check = add_command("check", "validate a config and print what would run (secrets redacted)")
    check.add_argument("--config", required=True, help="YAML config file")
    check.add_argument("--connect", action="store_true",
                       help="also read one small page of every provider source and open every exporter's "
                            "connection (nothing stored, nothing exported); exit 1 if any check fails")
    demo = add_command("demo", "run the synthetic demo provider with a live terminal summary")
    demo.add_argument("--duration", help="stop this long after the backfill landed (e.g. 30s, 5m); default: until Ctrl-C")
    demo.add_argument("--storage", help="ledger file (default ./otel-llm-data/demo-ledger.db)")
    demo.add_argument("--otlp-endpoint", default="localhost:4317",
                      help="OTLP gRPC endpoint to export to when something listens there")
    demo.add_argument("--refresh", default="5s", help="how often the summary is redrawn")
    report = add_command("report", "spend, tokens, budgets, anomalies and attribution from the ledger")
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML config file (its ledger, budgets and attribution rules)")
    source.add_argument("--storage", help="a ledger file, without a config (no budgets or teams)")
    report.add_argument("--since", default="7d", help="report the last DURATION (default 7d)")
    report.add_argument("--from", dest="start", help="start (UTC date or time, e.g. 2026-11-01); overrides --since")
    report.add_argument("--to", dest="end", help="end (UTC date or time, exclusive; default now)")
    report.add_argument("--now", help="report as of this UTC time instead of the clock (reproducible reports)")
    report.add_argument("--format", default="table", choices=["table", "json", "csv"])
    from .focus.command import add_arguments as add_focus_arguments

    add_focus_arguments(add_command("focus", "export FOCUS cost and usage rows from the ledger"))
    history = add_command("history", "poll once (the backfill), then write the ledger's hourly history as "
                                     "OpenMetrics for promtool tsdb create-blocks-from openmetrics")
    history.add_argument("--config", required=True, help="YAML config file (the one `run` will use)")
    history.add_argument("--out", required=True,
                         help="OpenMetrics file to write; when it exists already, nothing is done")
    from .ledger_cli import add_arguments as add_ledger_arguments

    add_ledger_arguments(add_command("ledger", "ledger maintenance: copy an SQLite ledger into PostgreSQL"), [common])
    return p


def _load(path: str, *, build_providers: bool = True) -> Config | None:
    """The config, with every provider instance built once to run its own checks; None (problems printed).

    ``report`` reads only the ledger: it skips the providers (their SDK extras need not be installed there).
    """
    from .config import load_config
    from .providers import provider_problems

    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    problems = provider_problems(config.providers) if build_providers else []
    for problem in problems:
        print(problem, file=sys.stderr)
    return None if problems else config


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.connect:
        from .connect import check_connect

        return EXIT_OK if check_connect(config, lambda line: print(line, flush=True)) else EXIT_FAILURE
    print(config.describe())
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from .logs import redact

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    redact.set(config.secrets | config.substituted)
    if not config.exporters:
        print("exporters: none configured; `run` needs at least one otlp or otlphttp exporter "
              "(see docs/configuration.md)", file=sys.stderr)
        return EXIT_CONFIG
    if not any(p.enabled for p in config.providers):
        print("providers: every provider instance is disabled; nothing to run", file=sys.stderr)
        return EXIT_CONFIG
    return _serve(config, once=args.once)


def _serve(
    config: Config,
    *,
    once: bool = False,
    duration: float | None = None,
    exporters: list[tuple[Any, BatchExporter]] | None = None,
    summary_every: float | None = None,
    health_required: bool = True,
) -> int:
    import asyncio

    from .health import HealthServer
    from .heap import settle
    from .ledger.check import check_ledger
    from .scheduler import Receiver

    try:
        if config.storage.backend == "sqlite":  # a damaged ledger is refused here, in one line, before anything runs
            check_ledger(config.storage.path)
        receiver = Receiver(config, exporters=exporters)
    except ReceiverError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    health: HealthServer | None = None
    if config.health.endpoint and not once:
        try:
            routes = None
            if config.focus is not None and config.focus.http:
                from .focus.http import focus_routes

                routes = focus_routes(config, receiver.prices)
            health = HealthServer(config.health.endpoint, receiver.health_report, routes).start()
        except OSError as exc:
            message = f"health.endpoint {config.health.endpoint}: cannot listen: {exc.strerror or exc}"
            if health_required:
                log.error("cannot start: %s", message)
                return EXIT_FAILURE
            log.warning("%s; continuing without /health", message)
    settle()  # start-up is done: the collector's settings for polling (heap.py)
    try:
        return asyncio.run(_main(receiver, once=once, duration=duration, summary_every=summary_every))
    finally:
        if health is not None:
            health.stop()


async def _main(receiver: Receiver, *, once: bool, duration: float | None, summary_every: float | None) -> int:
    import asyncio

    try:
        if once:
            return await receiver.run_once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        first_signal: float | None = None

        def on_signal(signum: int) -> None:
            nonlocal first_signal
            now = time.monotonic()
            if first_signal is None:
                first_signal = now
                log.info("received %s; stopping", signal.Signals(signum).name)
                stop.set()
            elif now - first_signal > 1.0:  # a second, deliberate Ctrl-C (not the same one delivered twice)
                raise KeyboardInterrupt

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        extra: list[asyncio.Task[None]] = []
        if duration is not None:
            extra.append(asyncio.create_task(_stop_after(stop, duration, receiver.first_round)))
        if summary_every is not None:
            extra.append(asyncio.create_task(_summary_loop(receiver, stop, summary_every)))
        code = await receiver.run_forever(stop)
        for task in extra:
            task.cancel()
        await asyncio.gather(*extra, return_exceptions=True)
        if summary_every is not None:
            _print_summary(receiver)
        return code
    finally:
        await receiver.aclose()


async def _stop_after(stop: asyncio.Event, seconds: float, first_round: asyncio.Event) -> None:
    """``--duration`` counts from the end of the first poll round: the demo's backfill always lands."""
    import asyncio

    await first_round.wait()
    await asyncio.sleep(seconds)  # the requested run time itself, not a stand-in for synchronisation
    stop.set()


async def _summary_loop(receiver: Receiver, stop: asyncio.Event, every: float) -> None:
    import asyncio

    from .scheduler import wait_for_stop

    while True:
        # the backfills' progress is read here, on the event loop that updates it; the table in a thread
        await asyncio.to_thread(_print_summary, receiver, receiver.progress_states())
        if await wait_for_stop(stop, every):
            return


def _print_summary(receiver: Receiver, progress: Sequence[ProgressState] = ()) -> None:
    from .ledger import open_ledger
    from .summary import render_summary

    now = int(time.time())
    with open_ledger(receiver.config.storage, readonly=True) as reader:
        table = render_summary(reader, now, receiver.signals.read(reader, now, peak_days=7), progress)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    health = receiver.health.statuses()
    status = ", ".join(
        f"{s.name}: {s.polls} polls" + (f", last error {s.last_error_type}" if s.consecutive_failures else "")
        for s in health
    )
    out = f"otel-llm-receiver demo - {stamp} - {status}\n{table}\n"
    if sys.stdout.isatty():
        out = "\x1b[H\x1b[2J" + out
    sys.stdout.write(out + "\n")
    sys.stdout.flush()


class ProbingExporter:
    """Wraps an exporter for ``demo``: exports only while something listens on the endpoint, warns once."""

    def __init__(self, inner: BatchExporter, host: str, port: int) -> None:
        self.inner, self.host, self.port = inner, host, port
        self.warned = False

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def export_request(self, request: Any, points: int) -> bool:
        if not self._listening():
            if not self.warned:
                log.warning("nothing listens on %s:%d; the demo runs without exporting until a Collector "
                            "starts there (an OpenTelemetry Collector with an otlp receiver)", self.host, self.port)
                self.warned = True
            return True
        return self.inner.export_request(request, points)

    @property
    def last_failure(self) -> str | None:
        from .emitter import failure_detail

        return failure_detail(self.inner)

    def shutdown(self) -> None:
        self.inner.shutdown()


def _cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from .config import parse_config
    from .durations import parse_duration
    from .emitter import build_exporter

    raw = yaml.safe_load(DEMO_CONFIG)
    if args.storage:
        raw["storage"]["path"] = args.storage
    raw["exporters"]["otlp"]["endpoint"] = args.otlp_endpoint
    try:
        config = parse_config(raw)
        duration = parse_duration(args.duration) if args.duration else None
        refresh = parse_duration(args.refresh)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    exporter_cfg = config.exporters[0]
    host, _, port = exporter_cfg.endpoint.removeprefix("http://").rpartition(":")
    probing = ProbingExporter(build_exporter(exporter_cfg), host or "localhost", int(port))
    print(f"otel-llm-receiver demo: 14-day synthetic backfill into {config.storage.path}, "
          f"OTLP to {exporter_cfg.endpoint} when a Collector listens there. Ctrl-C stops.", flush=True)
    return _serve(config, duration=duration, exporters=[(exporter_cfg, probing)],
                  summary_every=refresh, health_required=False)


def _cmd_report(args: argparse.Namespace) -> int:
    from .config import parse_config
    from .durations import parse_window
    from .errors import LedgerError
    from .ledger import open_ledger
    from .ledger.check import check_ledger
    from .money import money_stack
    from .report import build_report, render

    if args.config:
        config = _load(args.config, build_providers=False)
        if config is None:
            return EXIT_CONFIG
    else:
        config = parse_config({"providers": {"demo": {"enabled": False}}, "storage": {"path": args.storage}})
    try:
        now, start, end = parse_window(
            since=args.since, start=args.start, end=args.end, now=args.now, clock=time.time()
        )
    except ValueError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    money = money_stack(config)
    signals, labels = money.signals, money.labels
    try:
        if config.storage.backend == "sqlite":
            check_ledger(config.storage.path)
        with open_ledger(config.storage, readonly=True) as ledger:
            report = build_report(ledger, start, end, now, signals, labels)
    except LedgerError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(render(report, args.format))
    return EXIT_OK


def _cmd_history(args: argparse.Namespace) -> int:
    """Backfill the ledger ``run`` will continue, then write its history up to now (docs/deployment.md)."""
    import asyncio

    from .heap import settle
    from .history import write_history
    from .ledger.check import check_ledger
    from .scheduler import Receiver

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if os.path.exists(args.out):  # a second `docker compose up`: the history is loaded already
        print(f"history: {args.out} exists; nothing to do", flush=True)
        return EXIT_OK
    try:
        if config.storage.backend == "sqlite":
            check_ledger(config.storage.path)
        receiver = Receiver(config, exporters=[])
    except ReceiverError as exc:
        print(f"history: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    async def backfill() -> list[str]:
        try:
            names = [p.name for p in receiver.provider_configs]
            if receiver.replicas is not None:  # a shared ledger: backfill what this process is given a lease of
                await asyncio.to_thread(receiver.replicas.start)
                names = [n for n in names if n in receiver.replicas.held()]
            outcomes = await asyncio.gather(*(receiver.poll(n) for n in names))
        finally:
            await receiver.aclose()  # and leaves: the running replicas take the instances back at once
        return [o.instance for o in outcomes if not o.ok]

    settle()  # start-up is done: the collector's settings for polling (heap.py)
    failed = asyncio.run(backfill())
    if failed:
        print(f"history: the backfill failed for {', '.join(failed)}; nothing written", file=sys.stderr)
        return EXIT_FAILURE
    now = int(time.time())
    samples = write_history(config, args.out, now)
    print(f"history: {samples} samples up to {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))} "
          f"written to {args.out}", flush=True)
    return EXIT_OK


def _cmd_ledger(args: argparse.Namespace) -> int:
    from .ledger_cli import run

    return run(args)


def _cmd_focus(args: argparse.Namespace) -> int:
    from .focus.command import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
