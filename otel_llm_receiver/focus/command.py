"""``otel-llm-receiver focus``: a one-off FOCUS export from the ledger (read-only, beside a running receiver).

    otel-llm-receiver focus --config config.yaml --since 30d --version 1.2 --format parquet --out spend.parquet
    otel-llm-receiver focus --storage ledger.db --from 2026-11-01 --to 2026-12-01 --out - > november.csv

The range is widened to whole UTC days. The file is written atomically (``--out -`` streams CSV or JSON Lines
to stdout instead).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import ConfigError, LedgerError
from .schema import DEFAULT_VERSION, FORMATS, SUFFIX, VERSIONS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML config file (its ledger, price overrides, attribution, labels)")
    source.add_argument("--storage", help="a ledger file, without a config (list prices from genai-prices)")
    p.add_argument("--since", default="30d", help="export the last DURATION of UTC days (default 30d)")
    p.add_argument("--from", dest="start", help="first UTC day (e.g. 2026-11-01); overrides --since")
    p.add_argument("--to", dest="end", help="end, exclusive (UTC date or time; default now)")
    p.add_argument("--now", help="export as of this UTC time instead of the clock")
    p.add_argument("--version", dest="focus_version", choices=VERSIONS,
                   help=f"FOCUS version (default: the config's focus.version, else {DEFAULT_VERSION})")
    p.add_argument("--format", dest="fmt", choices=FORMATS,
                   help="csv, parquet (needs the [focus] extra) or jsonl (default: from --out's suffix, else csv)")
    p.add_argument("--out", required=True, help="output file, or - for stdout (csv, jsonl)")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, parse_config
    from ..durations import parse_window
    from ..heap import collector_paused
    from ..ledger import open_ledger
    from ..ledger.check import check_ledger
    from .export import context_for, export
    from .formats import FocusError

    try:
        if args.config:
            config = load_config(args.config)
        else:
            config = parse_config({"providers": {"demo": {"enabled": False}}, "storage": {"path": args.storage}})
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    version = args.focus_version or (config.focus.version if config.focus else DEFAULT_VERSION)
    fmt = args.fmt
    if fmt is None and args.out == "-":  # to stdout, the config's text format (Parquet needs a file)
        fmt = "csv"
        if config.focus is not None and config.focus.format != "parquet":
            fmt = config.focus.format
    elif fmt is None:  # the suffix says; an unknown one is refused rather than silently written as CSV
        fmt = next((f for f, s in SUFFIX.items() if args.out.lower().endswith(s)), None)
        if fmt is None:
            print(f"focus: cannot tell the format of {args.out} from its suffix; name it "
                  f"{', '.join(SUFFIX.values())} or give --format", file=sys.stderr)
            return EXIT_USAGE
    if args.out == "-" and fmt == "parquet":
        print("focus: parquet cannot go to stdout; give --out a file name", file=sys.stderr)
        return EXIT_USAGE
    try:
        _, start, end = parse_window(
            since=args.since, start=args.start, end=args.end, now=args.now, clock=time.time()
        )
    except ValueError as exc:
        print(f"focus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout if args.out == "-" else Path(args.out)
    try:
        if config.storage.backend == "sqlite":  # a damaged ledger: one line saying what to do, never a traceback
            check_ledger(config.storage.path)
        with open_ledger(config.storage, readonly=True) as ledger, collector_paused():
            count = export(ledger, start, end, version=version, fmt=fmt, out=out, ctx=context_for(config, ledger))
    except BrokenPipeError:
        raise  # the reader went away (`| head`): cli.main leaves quietly
    except (FocusError, LedgerError, OSError) as exc:
        print(f"focus: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.out != "-":
        print(f"focus: {count} FOCUS {version} rows written to {args.out}", file=sys.stderr)
    return EXIT_OK


