"""The scheduler: one asyncio task per provider instance, the export loop, and a clean stop.

Data flows one way (DESIGN.md): provider.fetch(window) -> ledger.apply (one transaction, on the single writer
thread) -> emitter (its own reader connection and threads). No lock is held across a network call, so a
provider that hangs or fails only delays itself (invariant 5): its failure is classified, counted, logged in
one line, and retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from .builder import MetricsBuilder, make_resource
from .chunks import DEFAULT_CHUNK, POLL_CHUNK, PollChunk, split
from .config import Config, ExporterConfig
from .emitter import BatchExporter, Emitter, build_exporter
from .errors import LedgerError, ProviderError
from .focus import FocusWriter, WritePass, context_for
from .health import health_document
from .health_ledger import HealthLedger
from .ledger import ApplyStats, ExportRows, Ledger, open_ledger
from .logs import redact
from .model import USAGE, PollResult, SourceFailure, Window, first_window_start
from .money import money_stack
from .progress import POLL_PROGRESS, PollProgress, ProgressState, is_backfill
from .providers import create_provider, provider_class
from .providers.base import DAY, Provider
from .replicas import ReplicaCoordinator, lease_duration, replica_id, replica_label, writer_dsn
from .retry import POLL_DEADLINE, backoff_delay, retry_after_cap
from .selfhealth import SelfHealth
from .signals import SignalsReading, gauge_metrics

log = logging.getLogger(__name__)

JITTER = 0.1  # +-10% on every interval, so instances started together drift apart


class FirstRead:
    """The export's side of the signals' first reading (``signals.Describer``): each page of series it reads is
    described to the builder, and their totals and levels kept, so the first export after start reads every
    series once (issue 20: at 1,000,000 series a second read of the totals cost about 0.6 s).

    The totals count only once the read got to its end (``complete``): a reading that fails partway leaves
    ``rows`` None, and the export reads the totals itself (``Ledger.export_rows``) as on any later export."""

    def __init__(self, builder: MetricsBuilder) -> None:
        self.builder = builder
        self._totals: array[int] = array("q")  # flat, as ``TotalsColumns``
        self._levels: dict[int, int] = {}
        self._names: Mapping[tuple[str, str, str], str] = {}
        self._complete = False

    def page(
        self, series: Iterable[tuple[int, str, str, str]], names: Mapping[tuple[str, str, str], str],
        totals: tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]], levels: Mapping[int, int],
    ) -> None:
        self.builder.describe(series, names)
        flat, at = self._totals, len(self._totals)
        flat.frombytes(bytes(8 * 4 * len(totals[0])))
        for i, column in enumerate(totals):  # interleaved column by column: C loops, no tuple a row
            flat[at + i::4] = array("q", column)
        if levels:
            self._levels.update(levels)
        self._names = names  # the signals' (one dict for the whole read, never changed)

    def complete(self) -> None:
        self._complete = True

    def rows(self) -> ExportRows | None:
        """The totals of the whole read as ``Ledger.export_rows`` gives them (with the names the series were
        described with), or None when the read did not complete (or did not happen: not the first reading)."""
        if not self._complete:
            return None
        return Ledger.export_rows_of(self._totals, dict(self._names), self._levels)


async def wait_for_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait until ``stop`` is set or ``seconds`` pass; True when stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def poll_window(provider: Provider, cursor: str | None, now: int) -> Window:
    """The window of the next poll: the backfill on the first poll (from 00:00 UTC when a day or more, see
    ``first_window_start``), else ``lookback`` before the cursor."""
    limit = None if provider.MAX_BACKFILL is None else int(provider.MAX_BACKFILL)
    if cursor is None:
        return Window(first_window_start(now, int(provider.backfill), limit), now)
    start = min(int(cursor), now) - int(provider.lookback)
    if limit is not None:
        start = max(start, now - limit)
    return Window(start, now)


def prune_horizon(provider: Provider, window: Window) -> int:
    """Bucket rows starting before this can no longer change at the provider: prune them (day-aligned)."""
    before = min(window.start, window.end - int(provider.REVISION_HORIZON))
    return before - before % DAY


@dataclass(frozen=True)
class PollOutcome:
    instance: str
    ok: bool
    error_type: str | None = None
    retry_after: float | None = None
    #: Sources that failed while the others landed (``ok`` is False only when usage failed or every source read failed).
    failed_sources: tuple[str, ...] = ()


@dataclass
class _Landed:
    """What the applied chunks of one poll added up to: the poll's outcome counts, its log line and its
    self-health, as if it had been one fetch and one transaction."""

    chunks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    unmatched: Counter[str] = field(default_factory=Counter)
    failed: dict[str, SourceFailure] = field(default_factory=dict)
    newest_bucket_end: int | None = None
    source_data_until: dict[str, int] = field(default_factory=dict)
    _data_until: int | None = None
    _ends: int | None = None
    #: the sources any chunk read (the first reads them all, the others usage only)
    polled_sources: tuple[str, ...] = ()

    @property
    def points(self) -> int:
        return sum(self.outcomes.values())

    def add(self, result: PollResult, stats: ApplyStats) -> None:
        self.chunks += 1
        self.polled_sources = tuple(dict.fromkeys([*self.polled_sources, *result.polled_sources]))
        self.outcomes.update(stats.outcomes)
        self.unmatched.update(result.unmatched_records)
        self.failed.update(result.failed_sources)
        # What one unchunked result would say: the newest ``data_until`` a chunk gave (the provider knew better
        # than its bucket ends), else the newest bucket end of any chunk.
        if result.data_until is not None:
            self._data_until = max(result.data_until, self._data_until or result.data_until)
        ends = result.newest_bucket_end if result.data_until is None else None
        if ends is not None:
            self._ends = max(ends, self._ends or ends)
        self.newest_bucket_end = self._data_until if self._data_until is not None else self._ends
        for source, until in result.source_data_until.items():
            self.source_data_until[source] = max(until, self.source_data_until.get(source, until))


class Receiver:
    """Everything ``run`` needs, wired once: ledger, providers, emitter, self-health."""

    def __init__(
        self,
        config: Config,
        *,
        exporters: Sequence[tuple[ExporterConfig | str, BatchExporter]] | None = None,
        clock: Callable[[], float] = time.time,
        progress_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        #: times backfill progress (elapsed, ETA, when a line is due); tests pass a clock they move
        self.progress_clock = progress_clock
        #: instance -> the progress of its backfill in flight (none for a steady-state poll)
        self.progress: dict[str, PollProgress] = {}
        self._progress_timers: dict[str, asyncio.Task[None]] = {}
        #: With ``storage.backend: postgresql`` replicas share the ledger: the coordinator says which instances
        #: this one polls (docs/deployment.md, high availability); None on SQLite (one replica, every instance).
        self.replicas: ReplicaCoordinator | None = None
        name = "otel-llm-receiver"
        storage = config.storage
        if storage.backend == "postgresql":
            assert storage.dsn is not None  # the config refuses postgresql without a dsn
            from .ledger.postgres.pooler import require_session_connections

            # Refused in one line before anything runs: a pooler in transaction mode would lose session state.
            require_session_connections(storage.dsn)
            replica = replica_id()
            name = f"otel-llm-receiver {replica}"[:63]
            duration = lease_duration(storage.lease_duration)
            self.replicas = ReplicaCoordinator(
                storage.dsn, [p.name for p in config.providers if p.enabled], duration, replica=replica)
            # A transaction left open by a paused replica must not hold its lease rows past the lease.
            storage = replace(storage, dsn=writer_dsn(storage.dsn, duration))
        self._application_name = name
        #: /health's one kept PostgreSQL connection (None on SQLite, where opening the file per request is cheap)
        self._health_ledger = HealthLedger(config.storage) if self.replicas is not None else None
        self._storage = storage
        self.ledger = open_ledger(storage, application_name=name)
        money = money_stack(config)
        # Estimated cost is priced inside each apply; a changed catalog re-schedules every series once here.
        self.prices = money.prices
        self.ledger.set_pricer(self.prices)
        self.health = SelfHealth(clock=clock)
        self.provider_configs = [p for p in config.providers if p.enabled]
        for p in self.provider_configs:
            self.health.register(p.name, p.collection_interval)
        if self.replicas is not None:
            # A takeover starts the instance's health afresh: its start-up grace counts from the lease, not from
            # this process's start (a failover must not fail this replica's /ready).
            self.replicas.add_tenure_listener(lambda name, _epoch: self.health.tenure_started(name))
        self.providers: dict[str, Provider] = {}
        self._restored: set[str] = set()  # instances whose saved cursors were handed back
        #: instance -> the lease epoch its cursors were restored under: a new tenure re-reads them (another
        #: replica may have moved them meanwhile)
        self._restored_epoch: dict[str, int] = {}
        #: instance -> set when the coordinator's leases change (its poll loop waits on it while not held)
        self._lease_events: dict[str, asyncio.Event] = {}
        #: instance -> set when this replica begins a tenure of it (a takeover): its poll loop, if it is waiting
        #: out a collection interval, polls at once from the shared cursor instead
        self._tenure_events: dict[str, asyncio.Event] = {}
        #: instance -> monotonic time before which no poll may start (a Retry-After the API sent, capped)
        self._not_before: dict[str, float] = {}
        if exporters is None:
            exporters = [(cfg, build_exporter(cfg)) for cfg in config.exporters]
        self.emitter = Emitter(exporters, clock=clock)
        self.attributor = money.attributor
        self.builder = MetricsBuilder(
            make_resource(self.ledger.instance_id), labels=money.labels, enabled=config.metrics,
            attributor=self.attributor,
            # Replicas share the resource; their self-health counters are their own series (docs/deployment.md, high availability).
            self_health_attributes=({} if self.replicas is None
                                    else {"llm.receiver.replica": replica_label(self.replicas.replica)}),
        )
        self.signals = money.signals
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        self._reader: Ledger | None = None
        #: The ledger generation the builder's last points were read at (``Ledger.generation``).
        self._export_generation: tuple[tuple[str, str], ...] | None = None
        self._export_held: frozenset[str] | None = None  # the instances that generation's export was built for
        self._export_lock = threading.Lock()
        self._rollups_pruned_at = float("-inf")
        self.last_export_ok: bool | None = None
        self.last_signals: SignalsReading | None = None
        #: Set once every instance has finished its first poll (succeeded or failed): the backfill landed.
        self.first_round = asyncio.Event()
        self._first_polls: set[str] = set()
        self._focus: FocusWriter | None = None  # the periodic FOCUS writer (focus.path), made on first use
        self._focus_lock = threading.Lock()

    # -- polling -------------------------------------------------------------------------------------------
    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            cfg = next(p for p in self.provider_configs if p.name == name)
            provider = self.providers[name] = create_provider(cfg)
        return provider

    async def poll(self, name: str) -> PollOutcome:
        """One poll of one instance: fetch, apply atomically, record self-health. Never raises.

        A window longer than the instance's ``backfill_chunk`` (a backfill, a catch-up) is read in chunks
        (``chunks.py``): each chunk is fetched, then applied in one transaction; only the last one moves the
        cursors. A steady-state poll is one chunk: one fetch, one transaction, as always.
        """
        t0 = time.monotonic()
        wait = self._not_before.pop(name, 0.0) - time.monotonic()
        if wait > 0:  # the API's Retry-After has not passed yet: never send a request before it
            await asyncio.sleep(wait)
        if self.replicas is None:
            return await self._poll(name, None, t0)
        # In flight from here to the end: the fair share waits for it before handing the instance over.
        lease = self.replicas.begin_poll(name)
        if lease is None:  # not ours (or it may have lapsed, or is being handed over): never poll it
            return PollOutcome(name, False, "not_held")
        try:
            if self._restored_epoch.get(name) != lease.epoch:  # a new tenure: the shared cursors may have moved
                self._restored.discard(name)
                self._restored_epoch[name] = lease.epoch
            return await self._poll(name, lease, t0)
        finally:
            self.replicas.end_poll(name)

    async def _poll(self, name: str, lease: Any, t0: float) -> PollOutcome:
        """``poll`` once it may start: under ``lease`` (replicas) or none (SQLite)."""
        loop = asyncio.get_running_loop()
        cfg = next(p for p in self.provider_configs if p.name == name)
        window: Window | None = None
        provider: Provider | None = None
        try:
            provider = self._provider(name)
            if name not in self._restored:
                cursors = await loop.run_in_executor(self._writer, self.ledger.cursors, name)
                provider.restore(cursors)
                self._restored.add(name)
            cursor = await loop.run_in_executor(self._writer, self.ledger.cursor, name)
            window = poll_window(provider, cursor, int(self.clock()))
            # Per chunk (each is bounded work): a long backfill never times out for being long.
            deadline = max(cfg.collection_interval, 5 * cfg.timeout)
            tracker = self._start_progress(name, window, first_poll=cursor is None, lookback=float(provider.lookback),
                                           interval=cfg.collection_interval)
            parts = split(window, int(cfg.backfill_chunk or DEFAULT_CHUNK))
            polled = _Landed()
            source_cursors: dict[str, str] = {}
            for index, part in enumerate(parts):
                chunk = PollChunk(window, part, index, len(parts)) if len(parts) > 1 else None
                if tracker is not None:
                    tracker.chunk(index, len(parts))
                if lease is not None and self._lease_lapsed(name, lease):
                    raise _LeaseLapsed(name)
                if lease is not None and index > 0 and self.replicas is not None and self.replicas.handing_over(name):
                    raise _LeaseLapsed(name, applied_chunks=index)  # the fair share waits: stop between chunks
                result = await self._fetch(name, provider, part, chunk, deadline, tracker)
                stopped = USAGE in result.failed_sources  # usage did not land: the poll ends with this chunk
                final = stopped or chunk is None or chunk.last
                if tracker is not None and final:
                    tracker.writing()
                cursor_value: str | None = None
                applied = result
                source_cursors.update(result.cursors)
                if final:
                    cursor_value = str(
                        result.complete_until if result.complete_until is not None else window.end)
                    if stopped:
                        cursor_value = cursor  # the next poll re-reads from where it was
                    # Every chunk's source cursors (the latest of each) land with the last chunk, except those of a
                    # source that failed in any chunk: it stays as saved, in the ledger and in the provider.
                    failing = polled.failed.keys() | result.failed_sources.keys()
                    kept = {k: v for k, v in source_cursors.items() if k not in failing}
                    if len(kept) != len(source_cursors):
                        self._restored.discard(name)
                    if kept != result.cursors:
                        applied = replace(result, cursors=kept)
                elif result.cursors:
                    applied = replace(result, cursors={})  # an earlier chunk writes no cursor
                stats: ApplyStats = await loop.run_in_executor(self._writer, partial(
                    self.ledger.apply, name, applied, tenant=cfg.tenant, cursor=cursor_value,
                    prune_before=prune_horizon(provider, window) if final else None,
                    fence=lease,
                ))
                polled.add(result, stats)
                del result, applied  # the chunk landed: its records are not kept while the next one is read
                if final:
                    break
                log.debug("%s: chunk %d of %d applied (%s .. %s), %d points", name, index + 1, len(parts),
                          part.start, part.end, stats.points)
        except asyncio.CancelledError:
            self._stop_progress(name)
            raise
        except Exception as exc:
            self._stop_progress(name)
            self._count_requests(name, provider)
            if lease is not None and self._lost_lease(name, lease, exc, time.monotonic() - t0):
                return PollOutcome(name, False, "stale_lease")
            # Whatever cursors the provider moved in memory were not committed: hand the saved ones back.
            self._restored.discard(name)
            error_type, message, retry_after = _classify(exc)
            if retry_after is not None:
                retry_after = _capped_retry_after(name, retry_after, cfg.collection_interval)
                self._not_before[name] = time.monotonic() + retry_after
            message = redact(message)  # kept for /health: never hold a secret where it can be shown
            elapsed = time.monotonic() - t0
            sources = provider.data_sources if provider is not None else (USAGE,)
            self.health.poll_failed(name, elapsed, error_type, message, sources)
            log.warning(
                "%s: poll failed (%s): %s", name, error_type, message,
                extra={"instance": name, "error_type": error_type, "duration_s": round(elapsed, 3)},
            )
            return PollOutcome(name, False, error_type, retry_after)
        tracker = self.progress.get(name)
        if tracker is not None:
            tracker.finish()
        self._stop_progress(name)
        self._count_requests(name, provider)
        self.health.unmatched(name, polled.unmatched)
        elapsed = time.monotonic() - t0
        await self._prune_rollups_hourly(loop)
        failed_sources = polled.failed
        ok = self.health.poll_succeeded(
            name, elapsed, polled.outcomes, polled.newest_bucket_end, polled.source_data_until,
            polled=[s for s in polled.polled_sources if s not in failed_sources], failed=failed_sources,
        )
        for source, failure in sorted(failed_sources.items()):
            log.warning(
                "%s: %s source failed (%s), other sources kept; retried next poll: %s", name, source,
                failure.error_type, redact(failure.message),
                extra={"instance": name, "source": source, "error_type": failure.error_type},
            )
        chunked = f" in {polled.chunks} chunks" if polled.chunks > 1 else ""
        log.info(
            "%s: poll %s, %d points (%s) in %.2fs%s", name, "ok" if not failed_sources else "partial",
            polled.points, ", ".join(f"{k} {v}" for k, v in sorted(polled.outcomes.items())) or "none", elapsed,
            chunked,
            extra={"instance": name, "window_start": window.start, "window_end": window.end,
                   "cursor": cursor_value, "duration_s": round(elapsed, 3), "chunks": polled.chunks},
        )
        failed = tuple(sorted(failed_sources))
        # A source the API rate-limited: the next poll of the instance waits out its (capped) Retry-After too.
        waits = {src: _capped_retry_after(name, f.retry_after, cfg.collection_interval)
                 for src, f in failed_sources.items() if f.retry_after is not None}
        if waits:
            self._not_before[name] = time.monotonic() + max(waits.values())
        if ok:
            return PollOutcome(name, True, failed_sources=failed)
        first_source = USAGE if USAGE in failed_sources else next(iter(failed_sources), None)
        first = failed_sources.get(first_source) if first_source is not None else None
        return PollOutcome(name, False, first.error_type if first else None,
                           waits.get(first_source) if first_source is not None else None, failed_sources=failed)

    def _lease_lapsed(self, name: str, lease: Any) -> bool:
        """True when this replica no longer holds ``lease`` (the coordinator lost or released it, or its local
        expiry passed)."""
        assert self.replicas is not None
        return not self.replicas.holds(name, lease.epoch)

    def _lost_lease(self, name: str, lease: Any, exc: BaseException, elapsed: float) -> bool:
        """A poll that ended because its lease is gone: the fence rejected its write (a ``StaleLeaseError``:
        counted in ``llm.receiver.stale_writes``, one line) or the lease lapsed before a chunk was read. Its records
        were never applied; the instance is now another replica's, which reads on from the shared cursor. False for
        any other failure (a provider's or the database's: the usual failed poll)."""
        from .ledger.postgres.leases import StaleLeaseError

        assert self.replicas is not None
        self._restored.discard(name)
        self._restored_epoch.pop(name, None)
        if isinstance(exc, _LeaseLapsed) and exc.applied_chunks:
            log.info("%s: handed over to another replica (fair share) after %d chunks of the poll; they stay "
                     "applied, the new holder reads on from the cursor", name, exc.applied_chunks,
                     extra={"instance": name, "epoch": lease.epoch})
            return True
        if isinstance(exc, _LeaseLapsed) and self.replicas.released(name, lease.epoch):
            self.replicas.forget(name)
            log.info("%s: released to another replica during the poll (fair share); its records are dropped, "
                     "the new holder reads them", name, extra={"instance": name, "epoch": lease.epoch})
            return True
        if isinstance(exc, _LeaseLapsed):
            log.warning("%s: lease epoch %d lapsed during the poll; its records are dropped (never applied), the "
                        "next holder re-reads them", name, lease.epoch,
                        extra={"instance": name, "epoch": lease.epoch, "duration_s": round(elapsed, 3)})
            self.replicas.forget(name)
            return True
        if not isinstance(exc, StaleLeaseError):
            return False
        self.replicas.forget(name)
        if self.replicas.released(name, lease.epoch):  # handed over to the fair share while this poll ran
            log.info("%s: released to another replica during the poll (fair share); its records are dropped, "
                     "the new holder reads them", name, extra={"instance": name, "epoch": lease.epoch})
            return True
        n = self.health.stale_write(name)
        log.warning("%s: %s (this replica was paused or cut off past its lease; %d so far); the poll's records are "
                    "dropped, the current holder re-reads them", name, exc, n,
                    extra={"instance": name, "epoch": lease.epoch, "error_type": "stale_lease",
                           "duration_s": round(elapsed, 3)})
        self.replicas.forget(name)
        return True

    async def _fetch(self, name: str, provider: Provider, window: Window, chunk: PollChunk | None,
                     deadline: float, tracker: PollProgress | None) -> PollResult:
        """One fetch (of a whole poll, or of one chunk of it) within ``deadline`` seconds."""
        # Published to the HTTP clients (the fetch task copies this context): a Retry-After that outlasts
        # the deadline ends the poll as rate_limited at once instead of sleeping into this timeout. The progress
        # tracker (backfills only) and the chunk (chunked polls only) are published the same way to the
        # paging helpers and the provider.
        published = POLL_DEADLINE.set(time.monotonic() + deadline)
        tracked = POLL_PROGRESS.set(tracker)
        chunked = POLL_CHUNK.set(chunk)
        try:
            result = await asyncio.wait_for(provider.fetch(window), timeout=deadline)
        except TimeoutError as exc:
            what = "poll" if chunk is None else f"chunk {chunk.index + 1} of {chunk.count} of the poll"
            raise ProviderError(
                f"{what} did not finish within {deadline:g}s", provider=name, error_type="timeout"
            ) from exc
        finally:
            POLL_CHUNK.reset(chunked)
            POLL_PROGRESS.reset(tracked)
            POLL_DEADLINE.reset(published)
        if not isinstance(result, PollResult):
            raise ProviderError(
                f"provider returned {type(result).__name__}, not a PollResult", provider=name
            )
        return result

    def _start_progress(
        self, name: str, window: Window, *, first_poll: bool, lookback: float, interval: float
    ) -> PollProgress | None:
        """A tracker and its timer for a backfill (docs/configuration.md, ``progress_interval``); None for a
        steady-state poll, which logs only its result line."""
        self._stop_progress(name)
        if not is_backfill(window, first_poll=first_poll, lookback=lookback, collection_interval=interval):
            return None
        tracker = PollProgress(name, window, interval=self.config.progress_interval, clock=self.progress_clock)
        self.progress[name] = tracker
        self._progress_timers[name] = asyncio.create_task(tracker.run(), name=f"{name} progress")
        return tracker

    def _stop_progress(self, name: str) -> None:
        self.progress.pop(name, None)
        timer = self._progress_timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def progress_states(self) -> list[ProgressState]:
        """Snapshots of the backfills in flight, by instance (taken on the event loop: safe for a thread)."""
        return [self.progress[name].state() for name in sorted(self.progress)]

    def _count_requests(self, name: str, provider: Provider | None) -> None:
        if provider is not None and provider.api_requests:
            self.health.api_requests(name, provider.api_requests)
            provider.api_requests.clear()

    async def _prune_rollups_hourly(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop hourly rollups older than storage.retention, at most once an hour (on the writer thread)."""
        now = self.clock()
        if now - self._rollups_pruned_at < 3600:
            return
        self._rollups_pruned_at = now
        before = int(now - self.config.storage.retention)
        try:
            removed = await loop.run_in_executor(self._writer, self.ledger.prune_rollups, before)
        except LedgerError as exc:
            log.warning("could not prune rollups older than storage.retention: %s", exc)
            return
        if removed:
            log.info("pruned %d hourly rollups older than storage.retention", removed)

    def _watch_leases(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the poll loops waiting for a lease whenever the coordinator's round (or a ``forget``) ran, and the
        one of an instance this replica just took (a new tenure) even while it waits out its interval."""
        assert self.replicas is not None
        for p in self.provider_configs:
            self._lease_events.setdefault(p.name, asyncio.Event())
            self._tenure_events.setdefault(p.name, asyncio.Event())

        def changed() -> None:
            for event in self._lease_events.values():
                loop.call_soon_threadsafe(event.set)

        def tenure(name: str, _epoch: int) -> None:
            event = self._tenure_events.get(name)
            if event is not None:
                loop.call_soon_threadsafe(event.set)

        self.replicas.add_listener(changed)
        self.replicas.add_tenure_listener(tenure)

    async def _pause(self, name: str, stop: asyncio.Event, seconds: float) -> bool:
        """Wait ``seconds`` between two polls of ``name``, cut short when this replica takes ``name`` over (a new
        tenure: its first poll is due now, not a collection interval later); True when stopping."""
        tenure = self._tenure_events.get(name)
        if tenure is None:
            return await wait_for_stop(stop, seconds)
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(tenure.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return stop.is_set()

    async def _wait_held(self, name: str, stop: asyncio.Event) -> bool:
        """Wait until this replica holds ``name``'s lease (at once on SQLite); False when stopping first."""
        replicas = self.replicas
        if replicas is None:
            return not stop.is_set()
        event = self._lease_events.setdefault(name, asyncio.Event())
        waited = False
        while not stop.is_set():
            event.clear()
            if replicas.lease(name) is not None:
                if waited:
                    log.info("%s: lease held (epoch %d); polling starts", name, replicas.held()[name].epoch)
                return True
            waited = True
            # A round (or a forget) sets the event; the timeout covers a lease that ages out between rounds.
            waits = [asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())]
            try:
                await asyncio.wait(waits, timeout=replicas.round_interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
        return False

    async def _poll_loop(self, name: str, stop: asyncio.Event) -> None:
        cfg = next(p for p in self.provider_configs if p.name == name)
        failures = 0
        while not stop.is_set():
            if not await self._wait_held(name, stop):
                return
            tenure = self._tenure_events.get(name)
            if tenure is not None:  # a tenure begun from here on cuts the pause after this poll short
                tenure.clear()
            try:
                outcome = await self.poll(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # poll() contains its own errors; anything else is counted, never fatal
                self._loop_failed("poll", exc, name)
                outcome = PollOutcome(name, False, "bad_response")
            else:
                self._loop_succeeded("poll")
            if outcome.error_type in ("not_held", "stale_lease"):
                failures = 0
                continue  # another replica's now: wait for the lease again
            self._first_polls.add(name)
            # Replicas: the first round is that of the instances this replica holds.
            expected = (set(self.replicas.held()) if self.replicas is not None
                        else {p.name for p in self.provider_configs})
            if expected <= self._first_polls:
                self.first_round.set()
            interval = cfg.collection_interval
            if outcome.ok:
                failures = 0
                delay = interval * random.uniform(1 - JITTER, 1 + JITTER)
            else:
                failures += 1
                delay = backoff_delay(
                    failures, base=min(5.0, interval), cap=interval, retry_after=outcome.retry_after
                )
            await self._pause(name, stop, delay)

    # -- exporting -----------------------------------------------------------------------------------------
    def export_now(self, *, wait: bool = True) -> bool:
        """Build one export from a fresh ledger snapshot and send it (to all exporters, in parallel)."""
        with self._export_lock:
            if self._reader is None:
                self._reader = open_ledger(self._storage, readonly=True,
                                           application_name=self._application_name)
            try:
                # Replicas: each instance's series are sent by its holder, ledger-wide gauges by the leader only.
                held = None if self.replicas is None else frozenset(self.replicas.held())
                leads = self.replicas is None or self.replicas.is_leader
                # Read before the rows: an unchanged generation (and the same instances held) means the last
                # build's points are current.
                generation = self._reader.generation()
                unchanged = (generation == self._export_generation and held == self._export_held
                             and not self.builder.missing_series)
                now_ns = time.time_ns()
                # The signals first: their first reading reads every series, describes them to the builder and
                # keeps their totals (``FirstRead``); else, or if it failed partway, the totals are read here.
                first = FirstRead(self.builder)
                gauges = self._signal_gauges(self._reader, now_ns, first) if leads else []
                rows = None if unchanged else (first.rows() or self._reader.export_rows(self.builder.known_series))
                del first
                data = self.builder.build(rows, self.health.reading(), now_ns, gauges, instances=held)
                self._export_generation, self._export_held = generation, held
            except BaseException:
                self._reader.close()  # the next export reads through a fresh connection (no stale cache)
                self._reader = None
                self._export_generation = None
                raise
        if not len(self.emitter):
            return True
        ok = self.emitter.send(data, wait_for_all=wait)
        if wait:
            self.last_export_ok = ok
        return ok

    def _signal_gauges(self, reader: Ledger, now_ns: int, first: FirstRead | None = None) -> list[Any]:
        """Budget, anomaly, coverage, reconciliation and price gauges; a failure costs only these gauges."""
        try:
            reading = self.signals.read(reader, int(self.clock()), describe=first)
        except (LedgerError, ArithmeticError, ValueError) as exc:
            log.warning("money signals skipped this export: %s", exc)
            return []
        self.last_signals = reading
        return gauge_metrics(reading, now_ns)

    async def _export_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.export_interval
        while not await wait_for_stop(stop, interval):
            try:
                await asyncio.to_thread(self.export_now, wait=False)
            except Exception as exc:  # ledger damage, a bug: counted and logged, the loop goes on (issue 17.1)
                self._loop_failed("export", exc)
            else:
                self._loop_succeeded("export")

    def _loop_failed(self, loop: str, exc: BaseException, instance: str | None = None) -> None:
        """One line per failed iteration (first, 10th, every 100th when it repeats), counted for the
        ``llm.receiver.loop.errors`` metric and ``/health``."""
        message = redact(f"{type(exc).__name__}: {exc}")
        n = self.health.loop_failed(loop, message)
        if n in (1, 10) or n % 100 == 0:
            log.error(
                "%s loop: iteration failed (%d in a row), the loop goes on: %s%s", loop, n, message,
                " (the ledger may be damaged: see docs/troubleshooting.md)" if isinstance(exc, (LedgerError, sqlite3.Error))
                else "",
                extra={"loop": loop, **({"instance": instance} if instance else {})},
            )

    def _loop_succeeded(self, loop: str) -> None:
        ended = self.health.loop_succeeded(loop)
        if ended:
            log.info("%s loop: iterations succeed again after %d errors", loop, ended)

    # -- FOCUS files ---------------------------------------------------------------------------------------
    def write_focus(self) -> WritePass | None:
        """One pass of the periodic FOCUS writer (docs/focus.md): rewrites the day files whose rows changed.
        None when ``focus.path`` is not configured. Runs on its own read-only ledger connection."""
        focus = self.config.focus
        if focus is None or not focus.path:
            return None
        with self._focus_lock:
            if self._focus is None:
                # Days older than the longest revision horizon of the configured providers cannot change.
                final_after = focus.final_after or max(
                    [float(provider_class(p.type).REVISION_HORIZON) for p in self.provider_configs] or [2.0 * DAY])
                self._focus = FocusWriter(
                    open_ledger(self._storage, readonly=True, application_name=self._application_name), Path(focus.path), version=focus.version,
                    fmt=focus.format, final_after=final_after,
                    context=lambda ledger: context_for(self.config, ledger, self.prices),
                )
            return self._focus.write_pass(int(self.clock()))

    def _write_focus_logged(self) -> None:
        try:
            self.write_focus()
        except Exception as exc:  # a failed pass (disk full, ledger busy) costs only this pass, never the loop
            log.warning("focus: day files not written this pass: %s: %s", type(exc).__name__, redact(str(exc)))
            self.health.loop_failed("focus", redact(f"{type(exc).__name__}: {exc}"))
        else:
            self._loop_succeeded("focus")

    async def _focus_loop(self, stop: asyncio.Event) -> None:
        """A pass once the first polls landed (the backfill), then one every ``focus.interval``."""
        assert self.config.focus is not None
        interval = self.config.focus.interval
        waits = [asyncio.create_task(self.first_round.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        while not stop.is_set():
            await asyncio.to_thread(self._write_focus_logged)
            if await wait_for_stop(stop, interval):
                return

    # -- running -------------------------------------------------------------------------------------------
    async def run_once(self) -> int:
        """One poll of every instance, one export (and one FOCUS pass): 0 when all succeeded, 1 otherwise."""
        names = [p.name for p in self.provider_configs]
        if self.replicas is not None:  # one round: poll what this replica is given, then leave
            await asyncio.to_thread(self.replicas.start)
            names = [n for n in names if n in self.replicas.held()]
            log.info("run --once: replica %s polls %s", self.replicas.replica, ", ".join(names) or "nothing")
        try:
            outcomes = await asyncio.gather(*(self.poll(n) for n in names))
            exported = await asyncio.to_thread(self.export_now, wait=True)
            await asyncio.to_thread(self._write_focus_logged)
        finally:
            if self.replicas is not None:
                await asyncio.to_thread(self.replicas.stop)
        failed = [o.instance for o in outcomes if not o.ok]
        failed += [f"{o.instance} ({', '.join(o.failed_sources)})" for o in outcomes if o.ok and o.failed_sources]
        if failed:
            log.error("run --once: %d of %d provider instance(s) failed: %s",
                      len(failed), len(outcomes), ", ".join(failed))
        if not exported:
            log.error("run --once: the export failed on at least one exporter")
        return 0 if not failed and exported else 1

    async def run_forever(self, stop: asyncio.Event) -> int:
        """Poll and export until ``stop`` is set; then let the poll in flight land or abandon it, export once
        more, and return 0."""
        if self.replicas is not None:
            self._watch_leases(asyncio.get_running_loop())
            await asyncio.to_thread(self.replicas.start)
            log.info("replica %s: %d of %d instances held (%s), %s", self.replicas.replica,
                     len(self.replicas.held()), len(self.provider_configs), ", ".join(self.replicas.held()) or "none",
                     "leader" if self.replicas.is_leader else "not the leader")
        tasks = [asyncio.create_task(self._poll_loop(p.name, stop), name=p.name) for p in self.provider_configs]
        exporter = asyncio.create_task(self._export_loop(stop), name="export")
        if self.config.focus is not None and self.config.focus.path:
            tasks.append(asyncio.create_task(self._focus_loop(stop), name="focus"))
        await stop.wait()
        log.info("stopping: abandoning polls in flight (a poll already writing to the ledger completes)")
        for task in [*tasks, exporter]:
            task.cancel()
        await asyncio.gather(*tasks, exporter, return_exceptions=True)
        # A transaction already handed to the writer finishes (or never starts): wait for it, never cut it.
        await asyncio.to_thread(self._writer.shutdown, wait=True)
        ok = await asyncio.to_thread(self.export_now, wait=True)
        await asyncio.to_thread(self._write_focus_logged)  # the day files catch up with the last polls
        if self.replicas is not None:  # hand the instances over now, not after lease_duration
            await asyncio.to_thread(self.replicas.stop)
        log.info("stopped; final export %s", "succeeded" if ok else "failed")
        return 0

    def health_report(self) -> tuple[bool, dict[str, object]]:
        """(healthy, document) for ``GET /health`` and ``GET /ready`` (``health.health_document``)."""
        return health_document(
            self.health, self.emitter.states, self.config.storage,
            export_failure_window=self.config.export_failure_window, now=self.clock(),
            replica=None if self.replicas is None else self.replicas.state(),
            ledger_reading=None if self._health_ledger is None else self._health_ledger.read,
        )

    async def aclose(self) -> None:
        if self.replicas is not None:
            await asyncio.to_thread(self.replicas.stop)  # a no-op when run_forever stopped it already
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception as exc:  # closing must not fail the stop
                log.debug("%s: close failed: %s", provider.name, exc)
        self._writer.shutdown(wait=True)
        self.emitter.shutdown()
        if self._reader is not None:
            self._reader.close()
        if self._focus is not None:
            self._focus.ledger.close()
        if self._health_ledger is not None:
            self._health_ledger.close()
        self.ledger.close()


class _LeaseLapsed(Exception):
    """Raised inside a poll when its lease lapsed before the next chunk was read, or (``applied_chunks`` > 0)
    when the fair share waits to hand the instance over after the chunks applied so far: the poll stops there."""

    def __init__(self, name: str, *, applied_chunks: int = 0) -> None:
        super().__init__(name)
        self.applied_chunks = applied_chunks


def _capped_retry_after(name: str, retry_after: float, interval: float) -> float:
    """``retry_after`` capped at min(1h, 10 x the collection interval), logged when capped: a huge or infinite
    Retry-After must not stop an instance for good (docs/operations.md)."""
    cap = retry_after_cap(interval)
    if retry_after <= cap:
        return retry_after
    log.warning("%s: Retry-After of %gs capped at %gs (min(1h, 10 x collection_interval)); polling goes on",
                name, retry_after, cap)
    return cap


def _classify(exc: BaseException) -> tuple[str, str, float | None]:
    """(error.type, one-line message, retry_after) for any exception a poll can end with."""
    if isinstance(exc, ProviderError):
        return exc.error_type, str(exc), exc.retry_after
    if isinstance(exc, (LedgerError, sqlite3.Error)):
        return "storage", str(exc), None
    if isinstance(exc, TimeoutError):
        return "timeout", "timed out", None
    # Not one of ours: a provider bug or an unexpected shape. Contained, counted, one line.
    return "bad_response", f"unexpected {type(exc).__name__}: {exc}", None
