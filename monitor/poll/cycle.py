"""One poll cycle: every (target, region) scope polled, normalised, diffed and persisted.

The pipe of one scope is straight: describe (AWS) → normalise → store (diff against the stored
state and persist, in one transaction) → current state and metrics. One scope's failure is
recorded and counted and never holds up the others; a failed poll changes no image. A scope
whose polls keep failing is polled less and less often (`Backoff`), without a wait: a cycle
that skips it simply does not poll it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from monitor.aws.normalise import InvalidField, normalise_images
from monitor.aws.sessions import PollLimits, Source
from monitor.core.errors import SourceError, StoreError
from monitor.core.model import AppliedPoll, PollResult
from monitor.core.times import rfc3339
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import MonitorMetrics
from monitor.store import Store

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
    """A scope's run of consecutive polls that failed for a cause that needs a person.

    `due`: the earliest start of a cycle that polls it again, on the monotonic clock.
    `backing_off`: whether that is later than the next cycle on schedule, so at least one
    cycle skips it.
    """

    failures: int
    due: float
    backing_off: bool


class Backoff:
    """Which scopes a cycle polls: every scope, except those a person has to fix first.

    Only failures that cannot pass by themselves (`SourceError.permanent`: denied, unknown or
    expired static credentials, a region not opted in) back a scope off. Throttling, 5xx,
    timeouts, unparseable answers or a poll past its deadline may be gone at the next poll,
    and polling costs a request per 200 images that the token buckets already pace: skipping
    the scope would only make the monitor blind for longer once the cause is gone.

    A scope whose last `n` permanent failures ended with one in the cycle that started at `t`
    is polled by the first cycle that starts at or after
    `t + backoff_seconds(interval, n) - interval / 2`. The half interval allows for the
    scheduler's jitter: after one failure the next cycle polls it; after two, one cycle skips
    it; after three, three cycles; after four, seven; and so on until the hour's cap. A
    successful poll ends the run; a transient failure neither ends nor extends it. Times are
    on the monotonic clock, so a step of the wall clock neither stalls nor hurries a scope.
    Thread-safe.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._failing: dict[ScopeKey, Failing] = {}

    def due(self, scope: ScopeKey, now: float) -> bool:
        """Whether the cycle starting at `now` (monotonic) polls `scope`."""
        with self._lock:
            failing = self._failing.get(scope)
        return failing is None or now >= failing.due

    def failed(self, scope: ScopeKey, cycle_started: float) -> tuple[Failing, bool]:
        """Count a permanent failure of `scope` in the cycle that started at `cycle_started`.

        Returns the run of failures now, and whether this failure starts its backing off.
        """
        with self._lock:
            previous = self._failing.get(scope)
            failures = 1 if previous is None else previous.failures + 1
            delay = backoff_seconds(self._interval, failures)
            failing = Failing(
                failures=failures,
                due=cycle_started + delay - self._interval / 2,
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
    `in_flight`: the scopes whose poll (of this cycle or an earlier one) was still running when
    the cycle returned; each records its outcome when it ends.
    """

    polls: tuple[AppliedPoll, ...]
    skipped: tuple[ScopeKey, ...] = ()
    in_flight: tuple[ScopeKey, ...] = ()

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
        if self.in_flight:
            summary += f", {len(self.in_flight)} still polling"
        return summary


@dataclass(slots=True)
class _Flight:
    """One scope's poll from the moment a cycle hands it out until its thread ends.

    `over` is set once, by whoever comes first: the poll, as it records its outcome, or a
    cycle that found it past its deadline and recorded it as failed. The other then records
    nothing, so a poll is recorded once whatever its thread does after its deadline.
    """

    deadline: float | None = None
    started_at: datetime | None = None
    started: float = 0.0
    over: bool = False


#: Seconds a cycle allows a poll beyond its deadline before recording it as failed itself.
#: The poll notices its deadline between two pages; only a single request that hangs past it
#: (an answer that trickles in) needs the cycle to step in.
DEADLINE_GRACE_SECONDS = 1.0

#: `max_pages` unless configured: 200,000 images at 200 a page.
DEFAULT_MAX_PAGES = 1000


class Cycle:
    """Polls every scope of `sources`, at most `max_concurrency` at once.

    `stop` lets a shutdown skip the scopes not started yet; those in flight finish.
    `interval`, the seconds between the starts of two cycles, turns on the `Backoff` of
    scopes whose polls fail for causes that need a person; without it every scope is polled
    every cycle. `poll_timeout` (default: the interval) and `max_pages` bound each poll:
    past either it fails as `PollDeadlineExceeded`. `on_close` releases what the sources hold
    (their poll processes) when the cycle closes. `schedule_clock` is the monotonic clock in
    seconds that the backoff counts cycles on (tests move it by hand); durations and deadlines
    are measured on `time.monotonic()` itself.
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
        poll_timeout: float | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
        on_close: Callable[[], None] | None = None,
        schedule_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = tuple(sources)
        self._on_close = on_close
        self._backoff = Backoff(interval) if interval is not None else None
        self._poll_timeout = poll_timeout if poll_timeout is not None else interval
        self._max_pages = max_pages
        self._store = store
        self._current = current
        self._metrics = metrics
        self._clock = clock
        self._schedule_clock = schedule_clock
        self._stop = stop or threading.Event()
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="poll")
        self._closing = threading.Lock()
        self._closed = False
        self._warned_states: set[str] = set()
        self._warned_fields: set[tuple[str, str, str, str]] = set()
        self._warned_lock = threading.Lock()
        self._last_success: dict[tuple[str, str], datetime] = {}
        # The same polls' starts on `time.monotonic()`, which their age is measured on.
        self._last_success_monotonic: dict[tuple[str, str], float] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._owners_lock = threading.Lock()
        # Every scope whose poll is handed out and whose thread has not ended, by key.
        self._flights: dict[ScopeKey, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._flights_done = threading.Condition(self._flights_lock)

    @property
    def expected(self) -> tuple[tuple[str, str], ...]:
        """Every (target key, region) the cycle polls; readiness expects a success for each."""
        return tuple((s.key, region) for s in self.sources for region in s.regions)

    def last_success(self) -> dict[tuple[str, str], datetime]:
        """When each (target key, region) last had a successful, persisted poll."""
        return dict(self._last_success)

    def last_success_times(self) -> dict[tuple[str, str], tuple[datetime, float]]:
        """`last_success`, each with the poll's start on `time.monotonic()` too: what its age
        is measured on, so that no step of the wall clock makes an old success look new."""
        return {
            key: (when, self._last_success_monotonic[key])
            for key, when in self._last_success.items()
        }

    def run(self, wait: float | None = None) -> CycleResult:
        """Run one cycle now; what the scheduler and `poll` call.

        Scopes backing off are left out: they record nothing, and their metrics keep the
        values of their last (failed) poll. So are scopes whose poll of an earlier cycle is
        still running: a scope is never polled twice at once. Waits for the polls it started
        at most `wait` seconds (default: until each has ended or passed its deadline); polls
        still running then go on, record their outcome when they end, and are listed in
        `in_flight`, so that one slow scope never delays the next cycle of the others.
        """
        now = self._schedule_clock()
        self._expire_overdue()
        due: list[tuple[Source, str]] = []
        skipped: list[ScopeKey] = []
        busy: list[ScopeKey] = []
        for source in self.sources:
            for region in source.regions:
                key = (source.key, region)
                if self._backoff is not None and not self._backoff.due(key, now):
                    skipped.append(key)
                elif not self._hand_out(key):
                    busy.append(key)
                else:
                    due.append((source, region))
        with self._closing:
            # A `close()` from another thread comes before the first submit or after the
            # last, never between two (where the next submit would raise).
            futures = [
                self._executor.submit(self.poll_scope, source, region, cycle_started=now)
                for source, region in (() if self._closed else due)
            ]
            if self._closed:
                for source, region in due:
                    self._land((source.key, region))
        polls, still = self._collect(due, futures, wait)
        return CycleResult(tuple(polls), tuple(skipped), tuple(busy + still))

    def _collect(
        self,
        due: Sequence[tuple[Source, str]],
        futures: Sequence[Future[AppliedPoll | None]],
        wait: float | None,
    ) -> tuple[list[AppliedPoll], list[ScopeKey]]:
        """The polls that ended within `wait` s (default: their deadline), and the scopes of
        those still running."""
        if wait is None and self._poll_timeout is not None:
            wait = self._poll_timeout + DEADLINE_GRACE_SECONDS
        until = None if wait is None else time.monotonic() + wait
        polls: list[AppliedPoll] = []
        still: list[ScopeKey] = []
        for (source, region), future in zip(due, futures, strict=True):
            remaining = None if until is None else max(0.0, until - time.monotonic())
            try:
                applied = future.result(remaining)
            except CancelledError:
                continue
            except FuturesTimeout:
                still.append((source.key, region))
                continue
            if applied is not None:
                polls.append(applied)
        if still:
            self._expire_overdue()
        return polls, still

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` s until no poll of this cycle runs; whether none does."""
        deadline = time.monotonic() + timeout
        with self._flights_done:
            while self._flights:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._flights_done.wait(remaining)
        return True

    def close(self) -> None:
        """Stop the worker threads; scopes not started yet are dropped, also from a `run()`
        in progress, which returns the polls that were made."""
        with self._closing:
            first, self._closed = not self._closed, True
            self._executor.shutdown(wait=False, cancel_futures=True)
        with self._flights_done:
            # The polls the shutdown dropped before they started will not land themselves.
            for key in [k for k, flight in self._flights.items() if flight.started_at is None]:
                del self._flights[key]
            self._flights_done.notify_all()
        if first and self._on_close is not None:
            self._on_close()

    def _hand_out(self, key: ScopeKey) -> bool:
        """Take `key` for a poll; False if a poll of it is still in flight."""
        with self._flights_lock:
            if key in self._flights:
                return False
            self._flights[key] = _Flight()
            return True

    def _land(self, key: ScopeKey) -> None:
        with self._flights_done:
            self._flights.pop(key, None)
            self._flights_done.notify_all()

    def _expire_overdue(self) -> None:
        """Record as failed every poll that outlived its deadline without ending."""
        now = time.monotonic()
        with self._flights_lock:
            overdue = [
                (key, flight)
                for key, flight in self._flights.items()
                if not flight.over
                and flight.deadline is not None
                and now >= flight.deadline + DEADLINE_GRACE_SECONDS
            ]
            for _, flight in overdue:
                flight.over = True
        sources = {source.key: source for source in self.sources}
        for (target, region), flight in overdue:
            source = sources.get(target)
            if source is None or flight.started_at is None:
                continue
            log.warning(
                "poll of %s/%s is still waiting for AWS past its deadline: recorded as failed",
                target,
                region,
                extra={"target": target, "region": region},
            )
            result = self._failed(
                source,
                region,
                flight.started_at,
                now - flight.started,
                SourceError(
                    "PollDeadlineExceeded",
                    f"no complete answer within poll_timeout ({self._poll_timeout:g} s)",
                ),
            )
            self._finish(source, region, self._record(source, region, result))

    def _warn_unknown_state(self, state: str) -> None:
        with self._warned_lock:
            if state in self._warned_states:
                return
            self._warned_states.add(state)
        log.warning("unknown fast launch state %r: kept as text", state)

    def _invalid_field_warner(self, target: str, region: str) -> InvalidField:
        """Warns once per image and field of a value dropped as invalid, not at every poll."""

        def warn(image_id: str, field: str, value: object) -> None:
            with self._warned_lock:
                if (target, region, image_id, field) in self._warned_fields:
                    return
                self._warned_fields.add((target, region, image_id, field))
            log.warning(
                "%s/%s %s: %s %s is not a value an image can have: left out, the rest of the "
                "image is recorded",
                target,
                region,
                image_id,
                field,
                repr(value)[:80],
                extra={"target": target, "region": region, "image": image_id},
            )

        return warn

    def _failed(
        self,
        source: Source,
        region: str,
        started_at: datetime,
        duration: float,
        error: SourceError,
        pages: int = 0,
    ) -> PollResult:
        return PollResult(
            scope=source.scope(region),
            started_at=started_at,
            duration_seconds=duration,
            pages=pages,
            images=None,
            error_code=error.code,
            error_message=error.message,
        )

    def _fetch(
        self, source: Source, region: str, started_at: datetime, started: float
    ) -> tuple[PollResult, bool]:
        """The poll of one scope, and whether its failure (if any) is permanent."""
        limits = None
        if self._poll_timeout is not None:
            limits = PollLimits(started + self._poll_timeout, self._max_pages, self._poll_timeout)
        pages = 0
        try:
            self._claim(source, region)
            raw, pages = source.describe(region, limits)
            if limits is not None and time.monotonic() >= limits.deadline:
                # An answer that came after the deadline (one request that hung) is not
                # trusted to be what AWS holds now.
                limits.check(pages)
            images = normalise_images(
                raw, self._warn_unknown_state, self._invalid_field_warner(source.key, region)
            )
        except SourceError as exc:
            log.warning(
                "poll of %s/%s failed: %s",
                source.key,
                region,
                exc,
                extra={"target": source.key, "region": region},
            )
            duration = time.monotonic() - started
            return self._failed(source, region, started_at, duration, exc, pages), exc.permanent
        return (
            PollResult(
                scope=source.scope(region),
                started_at=started_at,
                duration_seconds=time.monotonic() - started,
                pages=pages,
                images=images,
            ),
            False,
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
            if result.ok and exc.refused:
                # The poll's transaction rolled back whole. The database answers, so it can
                # still take the failure: else `status` would show the poll before as the last.
                with contextlib.suppress(StoreError):
                    self._store.apply_poll(failed, observed_at=self._clock())
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
                permanent=True,
            )

    def poll_scope(
        self, source: Source, region: str, *, cycle_started: float | None = None
    ) -> AppliedPoll | None:
        """Poll and persist one scope; `None` if a shutdown skipped it, or if it ran past its
        deadline and a cycle recorded it as failed meanwhile.

        Never raises: whatever goes wrong is this scope's failed poll, and the others go on.
        `cycle_started` is when the cycle began (monotonic), which the backoff counts from
        (default: now).
        """
        key = (source.key, region)
        with self._flights_lock:
            flight = self._flights.setdefault(key, _Flight())
        try:
            if self._stop.is_set():
                return None
            started_at = self._clock()
            started = time.monotonic()
            with self._flights_lock:
                flight.started_at, flight.started = started_at, started
                if self._poll_timeout is not None:
                    flight.deadline = started + self._poll_timeout
            permanent = False
            try:
                fetched, permanent = self._fetch(source, region, started_at, started)
                with self._flights_lock:
                    if flight.over:
                        return None
                    flight.over = True
                applied = self._record(source, region, fetched)
                committed_at: datetime | None = self._clock()
            except Exception as exc:
                # Not an AWS or database failure but a bug; it must not take the cycle down.
                log.exception(
                    "poll of %s/%s failed unexpectedly",
                    source.key,
                    region,
                    extra={"target": source.key, "region": region},
                )
                failed = self._failed(
                    source,
                    region,
                    started_at,
                    time.monotonic() - started,
                    SourceError(type(exc).__name__, "unexpected error; see the monitor's log"),
                )
                applied = AppliedPoll(result=failed, transitions=(), upserts=0, removed=0)
                committed_at = None
            self._track(
                source,
                region,
                applied.result,
                permanent=permanent,
                cycle_started=self._schedule_clock() if cycle_started is None else cycle_started,
            )
            self._finish(source, region, applied, committed_at, started=started)
            return applied
        finally:
            self._land(key)

    def _finish(
        self,
        source: Source,
        region: str,
        applied: AppliedPoll,
        committed_at: datetime | None = None,
        *,
        started: float | None = None,
    ) -> None:
        """Publish a recorded poll: current state, metrics and the log lines of its changes.

        `committed_at`: when the transaction that recorded its transitions committed;
        `started`: when the poll started, on `time.monotonic()` (default: now)."""
        result = applied.result
        if result.ok:
            self._current.replace_scope(result.scope, result.images or ())
            self._last_success[(source.key, region)] = result.started_at
            self._last_success_monotonic[(source.key, region)] = (
                time.monotonic() if started is None else started
            )
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

    def _track(
        self,
        source: Source,
        region: str,
        result: PollResult,
        *,
        permanent: bool,
        cycle_started: float,
    ) -> None:
        if self._backoff is None:
            return
        key = (source.key, region)
        context = {"target": source.key, "region": region}
        if result.ok:
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
        if not permanent:
            # It may be gone by the next cycle, which polls the scope as usual. A poll that
            # failed only to be stored is no failure of the target's either.
            return
        failing, started = self._backoff.failed(key, cycle_started)
        if started:
            due = self._clock() + timedelta(seconds=failing.due - self._schedule_clock())
            log.warning(
                "%s/%s failed %d polls in a row (%s): backing off, next poll at %s at the "
                "earliest, then ever less often (at most an hour apart) until one succeeds; "
                "a reload (SIGHUP) polls it again at once",
                source.key,
                region,
                failing.failures,
                result.error_code,
                rfc3339(due),
                extra=context,
            )
