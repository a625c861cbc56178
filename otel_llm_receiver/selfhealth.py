"""Self-health bookkeeping: how each provider instance's polls went, for metrics, logs and ``/health``.

Counters here are process-local (their start time is the process start): they describe this process's work,
not usage, so restarting them at zero is correct, unlike the ledger's usage totals.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .model import USAGE, SourceFailure

#: Bucket bounds (seconds) of the ``llm.receiver.poll.duration`` histogram.
DURATION_BOUNDS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class DurationHistogram:
    bounds: tuple[float, ...] = DURATION_BOUNDS
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BOUNDS) + 1))
    count: int = 0
    sum: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")

    def record(self, seconds: float) -> None:
        self.bucket_counts[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)


@dataclass
class SourceStatus:
    """A source of an instance that is failing while its other sources may land (``/health``)."""

    error_type: str
    error: str
    since_unix: float
    consecutive_failures: int = 1


@dataclass
class InstanceStatus:
    """One provider instance's state as ``/health`` shows it."""

    name: str
    interval: float
    last_success_unix: float | None = None
    last_error: str | None = None
    last_error_type: str | None = None
    last_error_unix: float | None = None
    consecutive_failures: int = 0
    newest_bucket_end: int | None = None
    polls: int = 0
    source_ends: dict[str, int] = field(default_factory=dict)  # source -> how far its data reach
    failing_sources: dict[str, SourceStatus] = field(default_factory=dict)  # llm.data.source -> its failure
    #: replicas on a shared ledger: when this replica's current tenure of the instance's lease began (its start-up
    #: grace counts from here, not from the process start); None on SQLite (one replica holds everything)
    tenure_unix: float | None = None


@dataclass
class LoopStatus:
    """One of the receiver's loops (``poll``, ``export``, ``focus``): iterations that ended in an error.

    A loop never ends on an error; it logs it, counts it here and goes on. ``consecutive_errors`` is reset by
    the next iteration that succeeds, so ``/health`` is unhealthy only while the loop keeps failing.
    """

    errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    last_error_unix: float | None = None


@dataclass(frozen=True)
class SelfHealthReading:
    """A copy of every self-health value, taken under the lock, for one export."""

    started_ns: int
    polls: dict[tuple[str, str, str, str], int]  # (instance, llm.data.source, outcome, error.type) -> count
    records: dict[tuple[str, str], int]
    durations: dict[str, DurationHistogram]
    last_success: dict[str, float]
    data_lag: dict[str, float]
    api_requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (instance, operation) -> count
    source_lag: dict[tuple[str, str], float] = field(default_factory=dict)  # (instance, source) -> seconds
    loop_errors: dict[str, int] = field(default_factory=dict)  # loop -> iterations that ended in an error
    unmatched: dict[tuple[str, str], int] = field(default_factory=dict)  # (instance, source) -> records
    stale_writes: dict[str, int] = field(default_factory=dict)  # instance -> polls whose write was fenced off


class SelfHealth:
    """Thread-safe: the scheduler writes from the event loop, the emitter and health server read."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started_ns = time.time_ns()
        self.started_unix = clock()
        self._lock = threading.Lock()
        self._polls: Counter[tuple[str, str, str, str]] = Counter()
        self._records: Counter[tuple[str, str]] = Counter()
        self._durations: dict[str, DurationHistogram] = {}
        self._api_requests: Counter[tuple[str, str]] = Counter()
        self._unmatched: Counter[tuple[str, str]] = Counter()
        self._stale_writes: Counter[str] = Counter()
        self.instances: dict[str, InstanceStatus] = {}
        self._loops: dict[str, LoopStatus] = {}

    def register(self, name: str, interval: float) -> None:
        with self._lock:
            self.instances.setdefault(name, InstanceStatus(name, interval))

    def poll_succeeded(
        self,
        name: str,
        seconds: float,
        outcomes: Counter[str],
        newest_bucket_end: int | None,
        source_ends: Mapping[str, int] | None = None,
        *,
        polled: tuple[str, ...] | list[str] = (USAGE,),
        failed: Mapping[str, SourceFailure] | None = None,
    ) -> bool:
        """A poll whose result was applied: ``polled`` sources landed, ``failed`` ones did not. The instance
        counts as failed (consecutive failures, last error; returned False) when its usage failed or every
        source it read failed; a failing cost source alone shows in its own counters and ``failing_sources``."""
        failed = failed or {}
        with self._lock:
            st = self.instances[name]
            st.polls += 1
            now = self._clock()
            for source in polled:
                self._polls[(name, source, "success", "")] += 1
                st.failing_sources.pop(source, None)
            for source, failure in sorted(failed.items()):
                self._source_failed(st, source, failure.error_type, failure.message, now)
            ok = USAGE not in failed and (bool(polled) or not failed)  # nothing due is not a failure
            if ok:
                st.last_success_unix = now
                st.consecutive_failures = 0
            else:
                source, failure = next((s, f) for s, f in sorted(failed.items(), key=lambda kv: kv[0] != USAGE))
                st.consecutive_failures += 1
                st.last_error, st.last_error_type, st.last_error_unix = (
                    f"{source}: {failure.message}", failure.error_type, now)
            if newest_bucket_end is not None:
                st.newest_bucket_end = max(st.newest_bucket_end or 0, newest_bucket_end)
            for source, end in (source_ends or {}).items():
                st.source_ends[source] = max(st.source_ends.get(source, 0), end)
            self._durations.setdefault(name, DurationHistogram()).record(seconds)
            for outcome, n in outcomes.items():
                self._records[(name, outcome)] += n
            return ok

    def poll_failed(
        self, name: str, seconds: float, error_type: str, message: str, sources: tuple[str, ...] = (USAGE,)
    ) -> None:
        """A poll that failed whole (nothing applied): every one of its ``sources`` failed."""
        with self._lock:
            st = self.instances[name]
            st.polls += 1
            st.consecutive_failures += 1
            st.last_error, st.last_error_type, st.last_error_unix = message, error_type, self._clock()
            for source in sources:
                self._source_failed(st, source, error_type, message, st.last_error_unix)
            self._durations.setdefault(name, DurationHistogram()).record(seconds)

    def _source_failed(self, st: InstanceStatus, source: str, error_type: str, message: str, now: float) -> None:
        self._polls[(st.name, source, "failure", error_type)] += 1
        before = st.failing_sources.get(source)
        st.failing_sources[source] = SourceStatus(
            error_type, message, before.since_unix if before else now, (before.consecutive_failures if before else 0) + 1)

    def tenure_started(self, name: str) -> None:
        """This replica took ``name``'s lease (a failover, a rebalance, or a lease retaken after it lapsed): the
        instance's state is that of the new tenure, as if the instance had just been registered.

        Why: the instance was polled by another replica (or by this one long ago) until now. Its start-up grace
        must count from the takeover, not from the process start, or a healthy replica fails ``/ready`` during
        every failover (and Kubernetes pulls it out of the Service); and its last success, data lag and failures
        from an earlier tenure describe polls this replica no longer makes (an old ``llm.receiver.last_success``
        would fire the "no success for an hour" alert). The process-local counters (polls, records, durations)
        keep counting."""
        with self._lock:
            st = self.instances[name]
            st.tenure_unix = self._clock()
            st.last_success_unix = None
            st.consecutive_failures = 0
            st.newest_bucket_end = None
            st.source_ends.clear()
            st.failing_sources.clear()

    def api_requests(self, name: str, requests: Counter[str]) -> None:
        """Add a poll's API requests by operation (``Provider.api_requests``, drained by the caller)."""
        with self._lock:
            for operation, n in requests.items():
                self._api_requests[(name, operation)] += n

    def loop_failed(self, loop: str, message: str) -> int:
        """Count an iteration of ``loop`` that ended in an error; returns the consecutive errors so far."""
        with self._lock:
            st = self._loops.setdefault(loop, LoopStatus())
            st.errors += 1
            st.consecutive_errors += 1
            st.last_error, st.last_error_unix = message, self._clock()
            return st.consecutive_errors

    def loop_succeeded(self, loop: str) -> int:
        """An iteration of ``loop`` went through; returns the consecutive errors it ended."""
        with self._lock:
            st = self._loops.get(loop)
            if st is None:
                return 0
            ended, st.consecutive_errors = st.consecutive_errors, 0
            return ended

    def loops(self) -> dict[str, LoopStatus]:
        with self._lock:
            return {name: replace(st) for name, st in self._loops.items()}
    def unmatched(self, name: str, counts: Mapping[str, int]) -> None:
        """Add a poll's records that matched nothing (``PollResult.unmatched_records``), by source."""
        with self._lock:
            for source, n in counts.items():
                if n:
                    self._unmatched[(name, source)] += n

    def stale_write(self, name: str) -> int:
        """Count a poll of instance ``name`` whose ledger write was rejected by the lease fence (a
        ``StaleLeaseError``: this replica's lease lapsed or moved while it polled); returns the count so far.

        Why a counter of its own and not a failed poll: nothing is wrong with the provider or the ledger, and
        the instance is now another replica's to poll; a replica that keeps counting these was paused (GC,
        SIGSTOP, a partition) for longer than ``storage.lease_duration`` (``llm.receiver.stale_writes``).
        """
        with self._lock:
            self._stale_writes[name] += 1
            return self._stale_writes[name]

    def reading(self) -> SelfHealthReading:
        now = self._clock()
        with self._lock:
            return SelfHealthReading(
                started_ns=self.started_ns,
                polls=dict(self._polls),
                records=dict(self._records),
                durations={k: replace(v, bucket_counts=list(v.bucket_counts)) for k, v in self._durations.items()},
                last_success={n: s.last_success_unix for n, s in self.instances.items() if s.last_success_unix},
                data_lag={
                    n: max(0.0, now - s.newest_bucket_end)
                    for n, s in self.instances.items() if s.newest_bucket_end is not None
                },
                api_requests=dict(self._api_requests),
                unmatched=dict(self._unmatched),
                stale_writes=dict(self._stale_writes),
                source_lag={
                    (n, source): max(0.0, now - end)
                    for n, s in self.instances.items() for source, end in s.source_ends.items()
                },
                loop_errors={name: st.errors for name, st in self._loops.items() if st.errors},
            )

    def healthy(self, name: str) -> bool:
        """Succeeded within its last 3 intervals. Before the first success an instance gets 3 intervals
        of grace to start up, unless it has already failed; on a shared ledger the grace counts from this
        replica's tenure of the instance's lease (``tenure_started``)."""
        now = self._clock()
        with self._lock:
            st = self.instances[name]
            if st.last_success_unix is None:
                since = self.started_unix if st.tenure_unix is None else max(self.started_unix, st.tenure_unix)
                return st.consecutive_failures == 0 and now - since <= 3 * st.interval
            return now - st.last_success_unix <= 3 * st.interval

    def statuses(self) -> list[InstanceStatus]:
        with self._lock:
            return [replace(s, source_ends=dict(s.source_ends),
                            failing_sources={k: replace(v) for k, v in s.failing_sources.items()})
                    for s in self.instances.values()]
