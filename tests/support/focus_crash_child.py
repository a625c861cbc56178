"""A child process for tests/test_focus_writer.py: rewrites one FOCUS day file through the real atomic writer,
and stops half-way (after the first row has gone into the temporary file) until its parent kills it.

Usage: python -m tests.support.focus_crash_child CONFIG DAY OUT FORMAT
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from otel_llm_receiver.config import load_config
from otel_llm_receiver.focus import context_for, day_rows, write_atomically
from otel_llm_receiver.focus.rows import Row
from otel_llm_receiver.ledger import Ledger


def main() -> None:
    config_path, day, out, fmt = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    config = load_config(config_path)
    with Ledger(config.storage.path, readonly=True) as ledger:
        rows = day_rows(ledger, day, context_for(config, ledger))

        def paused() -> Iterator[Row]:
            for i, row in enumerate(rows):
                if i == 1:  # one row written: the temporary file exists and holds a partial file
                    print("MIDWAY", flush=True)
                    sys.stdin.read()  # blocks until the parent kills us (it never writes or closes)
                yield row

        write_atomically(out, paused(), "1.2", fmt)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
