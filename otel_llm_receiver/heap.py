"""The garbage collector's settings for a polling process: set once, when start-up is done.

Why: a poll allocates objects by the hundred thousand that all stay alive until it is applied (the parsed pages'
buckets, a record or four per API row), and CPython's default collector looks at the youngest objects every 700
net allocations and, every so often, at everything alive. Measured on an hourly OpenAI backfill of 169k API rows
(``benchmarks/openai_poll.py``), collections that free almost nothing were 25-35% of the fetch's CPU, and a
young generation of 700 objects churns the CPU caches besides.

What ``settle`` does, in the process that polls (``run``, ``history``), after the configuration, the ledger and
the price data are loaded:

* ``gc.collect()`` then ``gc.freeze()``: whatever start-up built (modules, the catalog, the price book: about
  240k objects) lives as long as the process, so later full collections no longer walk it;
* the young generation's threshold is raised from 700 to ``YOUNG_THRESHOLD`` allocations: reference cycles (the
  only garbage the collector is for: asyncio tasks, exceptions and their tracebacks) are still found, a little
  later. Everything else is freed by reference counting as before, so memory stays bounded
  (``benchmarks/backfill_memory.py``: 131 MiB for a 7-day backfill, as before). The one cost: a cycle that holds
  much (a failed poll's traceback, whose frames hold a page) may outlive its poll until the next 50k
  allocations, that is, into the next poll; a chunk (``chunks.py``) bounds what a page holds.

Once per process: a second call (a test calling ``cli.main`` twice) changes nothing, so objects made since are
never frozen.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

#: Net allocations of container objects between two collections of the youngest generation (CPython: 700).
YOUNG_THRESHOLD: Final = 50_000

_settled = False


def settle() -> None:
    """Freeze what start-up built and widen the young generation (once per process; see the module)."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for a bulk computation, back on after if it was on.

    For work that allocates containers by the hundred thousand, none in a reference cycle (a FOCUS export's
    rows, a signals reading's parsed attribute sets): reference counting frees them all, yet the full collections
    their allocations trigger walk the whole heap, 10-50% of such work's CPU. A cycle made meanwhile is found at
    the next collection after. Two threads pausing at once are fine: whichever found it on turns it back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
