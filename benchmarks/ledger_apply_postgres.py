"""Ledger apply on PostgreSQL (loopback) beside SQLite and beside a plain COPY / executemany of the same rows.

Run by hand: ``python benchmarks/ledger_apply_postgres.py [--sizes 10000,100000] [--repeat 3]``. It starts a
throw-away PostgreSQL cluster (tests/support/postgres.py: initdb in a temp dir, loopback, fsync off as in the
tests) and prints one table. Every figure is the median of ``--repeat`` (>= 3) runs, each in a fresh child
process (``harness.py``) with a fresh database cloned from a migrated template.

Shape: ``org`` of ledger_apply.py (834 API rows an hour, 2,502 series; ``N`` rows span ``N / 834`` hours).

Cases, on the same points:
* ``pg copy``: ``COPY`` (text) of the points into a bare table with the ledger's bucket primary key, one
  transaction: the floor cost of getting these rows into PostgreSQL at all;
* ``pg copy binary``: the same in COPY's binary format (as the ledger stages its points), packed with ``struct``:
  cheaper for the server to parse. The baseline of the goal is whichever of the two copies cost less total CPU
  in the run (so the ratio never flatters the apply by picking the slower floor);
* ``pg executemany``: psycopg's ``executemany`` (pipelined) of the same rows into the same table;
* ``pg apply`` / ``pg reapply``: ``Ledger.apply`` on PostgreSQL of the records to an empty ledger, with pricing
  on, and the same records again (all unchanged: the overlap every steady-state poll re-reads);
* ``sqlite apply``: the same apply on SQLite, for comparison.

Why wall and "total CPU": on PostgreSQL half the work runs in the server's backend process. The CPU column is
this process's; "server cpu" is the backend's (from /proc), and the ratios to the baseline use wall time and
the sum of both. Goal (issue 21): pg apply >= 30% of the ``pg copy`` baseline's rate.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics

from benchmarks.harness import Figure, machine, run_child, table, timed
from benchmarks.ledger_apply import anchor_points, org_records

_TICKS = os.sysconf("SC_CLK_TCK")
SQL_BARE = ("CREATE TABLE bare (series_id BIGINT NOT NULL, bucket_start BIGINT NOT NULL, bucket_width BIGINT NOT NULL,"
            " value BIGINT NOT NULL, PRIMARY KEY (series_id, bucket_start, bucket_width))")


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the backend process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def child(case: str, size: int, dsn: str) -> None:
    import psycopg

    from otel_llm_receiver.config_storage import StorageConfig
    from otel_llm_receiver.ledger import Ledger, open_ledger
    from otel_llm_receiver.model import PollResult
    from otel_llm_receiver.pricing import PriceBook

    records = org_records(size)
    result = PollResult(usage=records)
    if case in ("pg copy", "pg copy binary", "pg executemany"):
        rows, series = anchor_points(records)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL_BARE)
            pid = conn.info.backend_pid
            before = server_cpu(pid)
            with timed({"records": len(records), "points": len(rows), "series": series}) as out:
                with conn.transaction(), conn.cursor() as cur:
                    if case == "pg copy":
                        data = "".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in rows).encode()
                        with cur.copy("COPY bare FROM STDIN") as copy:
                            copy.write(data)
                    elif case == "pg copy binary":  # header, rows of four 8-byte fields, trailer (COPY docs)
                        row = struct.Struct(">h" + "iq" * 4)
                        data = b"".join([b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0),
                                         *(row.pack(4, 8, a, 8, b, 8, c, 8, d) for a, b, c, d in rows),
                                         struct.pack(">h", -1)])
                        with cur.copy("COPY bare FROM STDIN (FORMAT BINARY)") as copy:
                            copy.write(data)
                    else:
                        cur.executemany("INSERT INTO bare VALUES (%s, %s, %s, %s)", rows)
                out["server_cpu"] = server_cpu(pid) - before
        return
    book = PriceBook()
    book.schedule("llm.usage.tokens", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                                       "gen_ai.token.type": "input"})  # the price data, loaded untimed
    with tempfile.TemporaryDirectory() as tmp:
        ledger = (Ledger(Path(tmp) / "ledger.db") if case == "sqlite apply"
                  else open_ledger(StorageConfig(backend="postgresql", dsn=dsn)))
        with ledger:
            ledger.set_pricer(book)
            if case == "pg reapply":
                ledger.apply("bench", result)
            pid = ledger._conn.raw.info.backend_pid if case.startswith("pg") else None
            before = server_cpu(pid) if pid else 0.0
            with timed({"records": len(records)}) as out:
                stats = ledger.apply("bench", result)
                out["server_cpu"] = server_cpu(pid) - before if pid else 0.0
                out["points"] = stats.points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="org-shape API rows, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (>= 3); medians are printed")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # the DSN comes in the environment: its password never shows in a process list or error
        case, size = args.child
        child(case, int(size), os.environ["BENCH_PG_DSN"])
        return

    from otel_llm_receiver.ledger.postgres import connect as pg_connect
    from otel_llm_receiver.ledger.postgres import schema as pg_schema
    from tests.support.postgres import running_cluster

    script = Path(__file__).resolve()
    print(f"ledger apply on PostgreSQL, {machine()}; medians of {max(3, args.repeat)} runs, each a fresh process")
    out = []
    with running_cluster() as cluster:
        template = cluster.create_database("template")
        with pg_connect.connect(template.socket_dsn, autocommit=True) as conn:
            pg_schema.migrate(conn)
        empty = cluster.create_database("empty")
        print(f"PostgreSQL {cluster.bin_dir} on 127.0.0.1:{cluster.port} (fsync off, as in the tests)")
        for size in [int(n) for n in args.sizes.split(",") if n]:
            figures = {}
            for case in ("pg copy", "pg copy binary", "pg executemany", "pg apply", "pg reapply", "sqlite apply"):
                runs = []
                for _ in range(max(3, args.repeat)):  # a fresh database per run
                    db = cluster.create_database("run", template=empty.name if "apply" not in case else template.name)
                    os.environ["BENCH_PG_DSN"] = db.dsn
                    try:
                        runs.append(run_child(script, [case, str(size)]))
                    finally:
                        cluster.drop_database(db.name)
                keys = set().union(*(r.extra for r in runs))
                figures[case] = Figure(
                    case, len(runs), statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs),
                    statistics.median(r.rss_mib for r in runs),
                    {k: statistics.median(r.extra.get(k, 0.0) for r in runs) for k in sorted(keys)})
            copies = [figures["pg copy"], figures["pg copy binary"]]
            base = min(copies, key=lambda f: f.cpu + f.extra.get("server_cpu", 0.0))  # the stricter floor
            points = base.extra["points"]
            base_total = base.cpu + base.extra.get("server_cpu", 0.0)
            for case, f in figures.items():
                total = f.cpu + f.extra.get("server_cpu", 0.0)
                out.append([
                    f"org {int(base.extra['records']):,} rows" if case == "pg copy" else "",
                    case + (" (baseline)" if f is base else ""), f"{int(points):,}",
                    f"{f.wall:.3f}", f"{f.cpu:.3f}", f"{f.extra.get('server_cpu', 0.0):.2f}", f"{f.rss_mib:.0f}",
                    f"{points / f.wall:,.0f}", f"{base.wall / f.wall:.0%}", f"{base_total / total:.0%}" if total else "-",
                ])
            print(f"org {size:,} rows done", flush=True)  # the table follows when every size is done
    print(table(out, ["shape", "case", "points", "wall s", "cpu s", "server cpu s", "peak MiB", "points/wall s",
                      "of copy (wall)", "of copy (total cpu)"]))
    print("goal: pg apply >= 30% of the baseline (the cheaper copy). Server CPU is read from /proc in clock ticks (10 ms). "
          "The machine is shared: wall times move with other load.")


if __name__ == "__main__":
    main()
