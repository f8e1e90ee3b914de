"""One poll cycle: every (target, region) scope polled, normalised, diffed and persisted.

The pipe of one scope is straight: describe (AWS) → normalise → store (diff against the stored
state and persist, in one transaction) → current state and metrics. One scope's failure is
recorded and counted and never holds up the others; a failed poll changes no image.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from monitor.aws import TargetSource
from monitor.current import CurrentState
from monitor.errors import SourceError, StoreError
from monitor.metrics import MonitorMetrics
from monitor.model import AppliedPoll, PollResult
from monitor.normalise import normalise_images
from monitor.store import Store

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CycleResult:
    """Every scope's applied poll of one cycle, in the order the scopes are configured."""

    polls: tuple[AppliedPoll, ...]

    @property
    def failed(self) -> tuple[AppliedPoll, ...]:
        return tuple(p for p in self.polls if not p.result.ok)

    @property
    def transitions(self) -> int:
        return sum(len(p.transitions) for p in self.polls)

    def summary(self) -> str:
        """One line for logs, `poll` output and the systemd status."""
        images = sum(len(p.result.images or ()) for p in self.polls)
        return (
            f"{len(self.polls)} scopes polled, {len(self.failed)} failed, "
            f"{images} images, {self.transitions} transitions"
        )


class Cycle:
    """Polls every scope of `sources`, at most `max_concurrency` at once.

    `stop` lets a shutdown skip the scopes not started yet; those in flight finish.
    """

    def __init__(
        self,
        sources: Sequence[TargetSource],
        store: Store,
        current: CurrentState,
        metrics: MonitorMetrics,
        *,
        max_concurrency: int,
        clock: Clock = utc_now,
        stop: threading.Event | None = None,
    ) -> None:
        self._sources = tuple(sources)
        self._store = store
        self._current = current
        self._metrics = metrics
        self._clock = clock
        self._stop = stop or threading.Event()
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="poll")
        self._warned_states: set[str] = set()
        self._warned_lock = threading.Lock()
        self._last_success: dict[tuple[str, str], datetime] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._owners_lock = threading.Lock()

    @property
    def expected(self) -> tuple[tuple[str, str], ...]:
        """Every (target key, region) the cycle polls; readiness expects a success for each."""
        return tuple((s.key, region) for s in self._sources for region in s.regions)

    def last_success(self) -> dict[tuple[str, str], datetime]:
        """When each (target key, region) last had a successful, persisted poll."""
        return dict(self._last_success)

    def run(self) -> CycleResult:
        """Run one cycle now and wait for it; what the scheduler and `poll` call."""
        futures = [
            self._executor.submit(self.poll_scope, source, region)
            for source in self._sources
            for region in source.regions
        ]
        polls = (_finished(f) for f in futures)
        return CycleResult(tuple(p for p in polls if p is not None))

    def close(self) -> None:
        """Stop the worker threads; scopes not started yet are dropped, also from a `run()`
        in progress, which returns the polls that were made."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _warn_unknown_state(self, state: str) -> None:
        with self._warned_lock:
            if state in self._warned_states:
                return
            self._warned_states.add(state)
        log.warning("unknown fast launch state %r: kept as text", state)

    def _fetch(self, source: TargetSource, region: str, started_at: datetime) -> PollResult:
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

    def _record(self, source: TargetSource, region: str, result: PollResult) -> AppliedPoll:
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

    def _claim(self, source: TargetSource, region: str) -> None:
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
                    for other in self._sources
                    if region in other.regions and other.known_account_id == account
                )
                self._owners[(account, region)] = owner
        if owner != source.key:
            raise SourceError(
                "DuplicateScope",
                f"target {source.key} reaches account {account} in {region} like target "
                f"{owner}; remove one of them",
            )

    def poll_scope(self, source: TargetSource, region: str) -> AppliedPoll | None:
        """Poll and persist one scope; `None` if a shutdown skipped it.

        Never raises: whatever goes wrong is this scope's failed poll, and the others go on.
        """
        if self._stop.is_set():
            return None
        started_at = self._clock()
        started = time.monotonic()
        try:
            applied = self._record(source, region, self._fetch(source, region, started_at))
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
        result = applied.result
        if result.ok:
            self._current.replace_scope(result.scope, result.images or ())
            self._last_success[(source.key, region)] = result.started_at
        self._metrics.poll_finished(result, applied.transitions)
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


def _finished(future: Future[AppliedPoll | None]) -> AppliedPoll | None:
    """The poll of a scope, or `None` if `close()` dropped it before it started."""
    try:
        return future.result()
    except CancelledError:
        return None
