"""One poll cycle: every (target, region) scope polled, normalised, diffed and persisted.

The pipe of one scope is straight: describe (AWS) → normalise → store (diff against the stored
state and persist, in one transaction) → current state and metrics. One scope's failure is
recorded and counted and never holds up the others; a failed poll changes no image. A scope
whose polls keep failing is polled less and less often (`Backoff`), without a wait: a cycle
that skips it simply does not poll it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from monitor.aws import Source
from monitor.current import CurrentState
from monitor.errors import SourceError, StoreError
from monitor.metrics import MonitorMetrics
from monitor.model import AppliedPoll, PollResult
from monitor.normalise import normalise_images
from monitor.store import Store
from monitor.times import rfc3339

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: A scope is known by its target's key and a region.
ScopeKey = tuple[str, str]

#: The longest a scope whose polls keep failing goes without a poll.
MAX_BACKOFF_SECONDS = 3600.0


#: A cycle that kept its process busy this share of its wall time used one core whole.
CPU_BOUND_SHARE = 0.9

#: Shorter cycles say nothing about the machine: a burst of first sights, a small fleet.
CPU_BOUND_MIN_SECONDS = 1.0


def poll_processes_advice(
    wall: float, cpu: float, *, poll_processes: int, cores: int
) -> str | None:
    """What to say when a cycle polled in the daemon's own process and kept one core busy
    (`cpu` seconds of the process in `wall` seconds) on a machine of more `cores`."""
    if poll_processes or cores < 2 or wall < CPU_BOUND_MIN_SECONDS:
        return None
    if cpu < CPU_BOUND_SHARE * wall:
        return None
    return (
        f"the poll cycle kept one core busy ({cpu:.1f} s of CPU in {wall:.1f} s): set "
        f"[monitor] poll_processes = {cores} to spread its AWS requests over all {cores} cores"
    )


def utc_now() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


def backoff_seconds(interval: float, failures: int) -> float:
    """The backoff after a scope's `failures`-th failed poll in a row, in seconds.

    `interval * 2 ** (failures - 1)`, at most `MAX_BACKOFF_SECONDS`: after one failure that
    is one interval, so the next cycle polls the scope as if nothing had happened.
    """
    # The exponent is bounded so that a scope failing for weeks cannot overflow a float.
    return min(interval * 2.0 ** min(failures - 1, 32), MAX_BACKOFF_SECONDS)


@dataclass(frozen=True, slots=True)
class Failing:
    """A scope's run of consecutive failed polls.

    `due`: the earliest start of a cycle that polls it again. `backing_off`: whether that is
    later than the next cycle on schedule, so at least one cycle skips it.
    """

    failures: int
    due: datetime
    backing_off: bool


class Backoff:
    """Which scopes a cycle polls: every scope, except those whose polls keep failing.

    A scope whose last `n` polls failed, the last of them in the cycle that started at `t`,
    is polled by the first cycle that starts at or after
    `t + backoff_seconds(interval, n) - interval / 2`. The half interval allows for the
    scheduler's jitter: after one failure the next cycle polls it; after two, one cycle skips
    it; after three, three cycles; after four, seven; and so on until the hour's cap. A
    successful poll ends the run. Thread-safe.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._failing: dict[ScopeKey, Failing] = {}

    def due(self, scope: ScopeKey, now: datetime) -> bool:
        """Whether the cycle starting at `now` polls `scope`."""
        with self._lock:
            failing = self._failing.get(scope)
        return failing is None or now >= failing.due

    def failed(self, scope: ScopeKey, cycle_started: datetime) -> tuple[Failing, bool]:
        """Count a failed poll of `scope` by the cycle that started at `cycle_started`.

        Returns the run of failures now, and whether this failure starts its backing off.
        """
        with self._lock:
            previous = self._failing.get(scope)
            failures = 1 if previous is None else previous.failures + 1
            delay = backoff_seconds(self._interval, failures)
            failing = Failing(
                failures=failures,
                due=cycle_started + timedelta(seconds=delay - self._interval / 2),
                # The next cycle on schedule starts one interval on, and polls the scope
                # if it is due by then.
                backing_off=delay - self._interval / 2 > self._interval,
            )
            self._failing[scope] = failing
            return failing, failing.backing_off and (previous is None or not previous.backing_off)

    def succeeded(self, scope: ScopeKey) -> Failing | None:
        """Count a successful poll of `scope`; returns the run of failures it ended, if any."""
        with self._lock:
            return self._failing.pop(scope, None)


@dataclass(frozen=True, slots=True)
class CycleResult:
    """Every scope's applied poll of one cycle, in the order the scopes are configured.

    `skipped`: the scopes the cycle did not poll because their polls keep failing (`Backoff`).
    """

    polls: tuple[AppliedPoll, ...]
    skipped: tuple[ScopeKey, ...] = ()

    @property
    def failed(self) -> tuple[AppliedPoll, ...]:
        return tuple(p for p in self.polls if not p.result.ok)

    @property
    def transitions(self) -> int:
        return sum(len(p.transitions) for p in self.polls)

    def summary(self) -> str:
        """One line for logs, `poll` output and the systemd status."""
        images = sum(len(p.result.images or ()) for p in self.polls)
        summary = (
            f"{len(self.polls)} scopes polled, {len(self.failed)} failed, "
            f"{images} images, {self.transitions} transitions"
        )
        if self.skipped:
            summary += f", {len(self.skipped)} backing off"
        return summary


class Cycle:
    """Polls every scope of `sources`, at most `max_concurrency` at once.

    `stop` lets a shutdown skip the scopes not started yet; those in flight finish.
    `interval`, the seconds between the starts of two cycles, turns on the `Backoff` of
    scopes whose polls keep failing; without it every scope is polled every cycle.
    `on_close` releases what the sources hold (their poll processes) when the cycle closes.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        store: Store,
        current: CurrentState,
        metrics: MonitorMetrics,
        *,
        max_concurrency: int,
        clock: Clock = utc_now,
        stop: threading.Event | None = None,
        interval: float | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.sources = tuple(sources)
        self._on_close = on_close
        self._backoff = Backoff(interval) if interval is not None else None
        self._store = store
        self._current = current
        self._metrics = metrics
        self._clock = clock
        self._stop = stop or threading.Event()
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="poll")
        self._closing = threading.Lock()
        self._closed = False
        self._warned_states: set[str] = set()
        self._warned_lock = threading.Lock()
        self._last_success: dict[tuple[str, str], datetime] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._owners_lock = threading.Lock()

    @property
    def expected(self) -> tuple[tuple[str, str], ...]:
        """Every (target key, region) the cycle polls; readiness expects a success for each."""
        return tuple((s.key, region) for s in self.sources for region in s.regions)

    def last_success(self) -> dict[tuple[str, str], datetime]:
        """When each (target key, region) last had a successful, persisted poll."""
        return dict(self._last_success)

    def run(self) -> CycleResult:
        """Run one cycle now and wait for it; what the scheduler and `poll` call.

        Scopes backing off are left out: they record nothing, and their metrics keep the
        values of their last (failed) poll.
        """
        now = self._clock()
        due: list[tuple[Source, str]] = []
        skipped: list[ScopeKey] = []
        for source in self.sources:
            for region in source.regions:
                if self._backoff is None or self._backoff.due((source.key, region), now):
                    due.append((source, region))
                else:
                    skipped.append((source.key, region))
        with self._closing:
            # A `close()` from another thread comes before the first submit or after the
            # last, never between two (where the next submit would raise).
            futures = [
                self._executor.submit(self.poll_scope, source, region, cycle_started=now)
                for source, region in (() if self._closed else due)
            ]
        polls = (_finished(f) for f in futures)
        return CycleResult(tuple(p for p in polls if p is not None), tuple(skipped))

    def close(self) -> None:
        """Stop the worker threads; scopes not started yet are dropped, also from a `run()`
        in progress, which returns the polls that were made."""
        with self._closing:
            first, self._closed = not self._closed, True
            self._executor.shutdown(wait=False, cancel_futures=True)
        if first and self._on_close is not None:
            self._on_close()

    def _warn_unknown_state(self, state: str) -> None:
        with self._warned_lock:
            if state in self._warned_states:
                return
            self._warned_states.add(state)
        log.warning("unknown fast launch state %r: kept as text", state)

    def _fetch(self, source: Source, region: str, started_at: datetime) -> PollResult:
        started = time.monotonic()
        pages = 0
        try:
            self._claim(source, region)
            raw, pages = source.describe(region)
            images = normalise_images(raw, self._warn_unknown_state)
        except SourceError as exc:
            log.warning(
                "poll of %s/%s failed: %s",
                source.key,
                region,
                exc,
                extra={"target": source.key, "region": region},
            )
            return PollResult(
                scope=source.scope(region),
                started_at=started_at,
                duration_seconds=time.monotonic() - started,
                pages=pages,
                images=None,
                error_code=exc.code,
                error_message=exc.message,
            )
        return PollResult(
            scope=source.scope(region),
            started_at=started_at,
            duration_seconds=time.monotonic() - started,
            pages=pages,
            images=images,
        )

    def _record(self, source: Source, region: str, result: PollResult) -> AppliedPoll:
        try:
            return self._store.apply_poll(result, observed_at=self._clock())
        except StoreError as exc:
            log.error(
                "could not record the poll of %s/%s: %s",
                source.key,
                region,
                exc,
                extra={"target": source.key, "region": region},
            )
            failed = replace(result, images=None, error_code="StoreError", error_message=str(exc))
            return AppliedPoll(result=failed, transitions=(), upserts=0, removed=0)

    def _claim(self, source: Source, region: str) -> None:
        # Two targets reaching the same account and region would each see the other's images
        # as removed, so one of them owns the scope for the life of the process and the other
        # fails with a clear error. The owner is the first configured target known to reach
        # it, so which one polls does not depend on which thread came first.
        account = source.account_id()
        with self._owners_lock:
            owner = self._owners.get((account, region))
            if owner is None:
                owner = next(
                    other.key
                    for other in self.sources
                    if region in other.regions and other.known_account_id == account
                )
                self._owners[(account, region)] = owner
        if owner != source.key:
            raise SourceError(
                "DuplicateScope",
                f"target {source.key} reaches account {account} in {region} like target "
                f"{owner}; remove one of them",
            )

    def poll_scope(
        self, source: Source, region: str, *, cycle_started: datetime | None = None
    ) -> AppliedPoll | None:
        """Poll and persist one scope; `None` if a shutdown skipped it.

        Never raises: whatever goes wrong is this scope's failed poll, and the others go on.
        `cycle_started` is when the cycle began, which the backoff counts from (default: now).
        """
        if self._stop.is_set():
            return None
        started_at = self._clock()
        started = time.monotonic()
        reached = False
        committed_at = started_at  # a poll that was not stored recorded no transition
        try:
            fetched = self._fetch(source, region, started_at)
            reached = fetched.ok
            applied = self._record(source, region, fetched)
            committed_at = self._clock()
        except Exception as exc:
            # Not an AWS or database failure but a bug; it must not take the cycle down.
            log.exception(
                "poll of %s/%s failed unexpectedly",
                source.key,
                region,
                extra={"target": source.key, "region": region},
            )
            failed = PollResult(
                scope=source.scope(region),
                started_at=started_at,
                duration_seconds=time.monotonic() - started,
                pages=0,
                images=None,
                error_code=type(exc).__name__,
                error_message="unexpected error; see the monitor's log",
            )
            applied = AppliedPoll(result=failed, transitions=(), upserts=0, removed=0)
        if cycle_started is None:
            cycle_started = started_at
        self._track(source, region, reached=reached, cycle_started=cycle_started)
        result = applied.result
        if result.ok:
            self._current.replace_scope(result.scope, result.images or ())
            self._last_success[(source.key, region)] = result.started_at
        self._metrics.poll_finished(result, applied.transitions, committed_at)
        context = {"target": source.key, "region": region}
        first_sights = 0
        for transition in applied.transitions:
            # A first poll sees every image for the first time: one line for all of them at
            # INFO, each at DEBUG; every real change gets its own INFO line.
            first = transition.previous_state is None
            first_sights += first
            log.log(
                logging.DEBUG if first else logging.INFO,
                "%s/%s %s: %s -> %s",
                source.key,
                region,
                transition.image_id,
                transition.previous_state or "(new)",
                transition.new_state,
                extra={**context, "image": transition.image_id},
            )
        if first_sights:
            log.info(
                "%s/%s: %d images seen for the first time",
                source.key,
                region,
                first_sights,
                extra=context,
            )
        return applied

    def _track(
        self, source: Source, region: str, *, reached: bool, cycle_started: datetime
    ) -> None:
        # `reached`: AWS answered. A poll that failed only to be stored is no failure of the
        # target's: a database that fails every scope at once must not leave them all
        # backing off once it is back.
        if self._backoff is None:
            return
        key = (source.key, region)
        context = {"target": source.key, "region": region}
        if reached:
            ended = self._backoff.succeeded(key)
            if ended is not None and ended.backing_off:
                log.info(
                    "%s/%s recovered after %d failed polls: polled every cycle again",
                    source.key,
                    region,
                    ended.failures,
                    extra=context,
                )
            return
        failing, started = self._backoff.failed(key, cycle_started)
        if started:
            log.warning(
                "%s/%s failed %d polls in a row: backing off, next poll at %s at the "
                "earliest, then ever less often (at most an hour apart) until one succeeds",
                source.key,
                region,
                failing.failures,
                rfc3339(failing.due),
                extra=context,
            )


def _finished(future: Future[AppliedPoll | None]) -> AppliedPoll | None:
    """The poll of a scope, or `None` if `close()` dropped it before it started."""
    try:
        return future.result()
    except CancelledError:
        return None
