"""``otel-llm-receiver ledger ...``: maintenance commands on a ledger (today: ``copy`` SQLite -> PostgreSQL).

Why its own module: cli.py stays the table of commands; this one imports the PostgreSQL driver only when a ledger
command runs (psycopg is an extra), and holds the command's wording in one place.
"""

from __future__ import annotations

import argparse
import sys

from .errors import ConfigError, LedgerError

__all__ = ["add_arguments", "run"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser, parents: list[argparse.ArgumentParser]) -> None:
    """The ``ledger`` subcommands under ``parser``."""
    sub = parser.add_subparsers(dest="ledger_command", metavar="LEDGER_COMMAND", required=True)
    copy = sub.add_parser(
        "copy", parents=parents,
        help="copy an SQLite ledger into the empty PostgreSQL ledger of a config (storage.dsn), in one transaction",
    )
    copy.add_argument("--from", dest="source", required=True, help="the SQLite ledger file (never modified)")
    copy.add_argument("--config", required=True, help="YAML config with storage.backend postgresql and storage.dsn")


def run(args: argparse.Namespace) -> int:
    """Dispatch a ``ledger`` subcommand; one line on stderr for every refusal or failure."""
    from .config import load_config
    from .logs import redact

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    redact.set(config.secrets | config.substituted)
    storage = config.storage
    if storage.backend != "postgresql" or not storage.dsn:
        print(f"{args.config}: storage.backend must be postgresql with storage.dsn set to copy a ledger into it",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        from .ledger.postgres.copy import copy_ledger

        result = copy_ledger(args.source, str(storage.dsn))
    except LedgerError as exc:
        print(redact(f"ledger copy: {exc}"), file=sys.stderr)
        return EXIT_FAILURE
    for line in result.summary():
        print(line, flush=True)
    return EXIT_OK
