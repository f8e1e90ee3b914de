"""Wall-clock steps: noticing them, and keeping the scheduler's pace through them.

APScheduler 3 keeps each job's next run as a wall-clock time, though it waits for it on the
monotonic clock. A wall clock stepped back (by NTP, an operator, a VM restored) would leave
every job waiting for the length of the step on top of its interval; one stepped forward would
run every job at once and work through each run it seems to have missed. `SteadyScheduler`
shifts every job by the step instead, so each runs when it would have on the monotonic clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)

#: How far the wall clock must move against the monotonic clock between two looks to count as
#: a step. Between looks seconds apart, slewing (NTP's gradual correction, at most 0.5 ms a
#: second) moves it by a few milliseconds; a step smaller than this one shifts the schedule by
#: less than a second, which no interval notices. A look delayed between its two readings
#: counts as a step twice over, there and back: a needless warning, no harm to the schedule.
STEP_THRESHOLD_SECONDS = 1.0


class ClockStepDetector:
    """Tells, from readings of both clocks, by how much the wall clock stepped since the last.

    Each reading becomes the reference for the next one, so slewing, however long it goes on,
    never adds up to a step.
    """

    def __init__(self, threshold: float = STEP_THRESHOLD_SECONDS) -> None:
        self._threshold = threshold
        self._offset: float | None = None

    def observe(self, wall: float, monotonic: float) -> float | None:
        """The step in seconds (negative: backward) since the last reading, or `None`."""
        offset = wall - monotonic
        previous, self._offset = self._offset, offset
        if previous is None:
            return None
        step = offset - previous
        return step if abs(step) >= self._threshold else None


# Untyped: APScheduler has no type information.
class SteadyScheduler(BackgroundScheduler):  # type: ignore[misc]
    """A `BackgroundScheduler` whose jobs keep their monotonic pace through wall-clock steps.

    It looks for a step each time it wakes, before it picks the jobs that are due. It wakes
    when the next job is due on the monotonic clock (or sooner), so it sees a step before any
    job runs on the stepped clock. `wall` and `monotonic` are the clocks it compares;
    `on_step` hears of each step (in seconds, negative: backward) once the jobs are shifted.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_step: Callable[[float], None] = lambda step: None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._wall = wall
        self._monotonic = monotonic
        self._on_step = on_step
        self._steps = ClockStepDetector()

    def _process_jobs(self) -> float | None:
        # APScheduler 3 offers no hook between waking and picking the due jobs; each wakeup
        # of its thread begins here.
        step = self._steps.observe(self._wall(), self._monotonic())
        if step is not None:
            self._shift_jobs(step)
            self._on_step(step)
        wait: float | None = super()._process_jobs()
        return wait

    def _shift_jobs(self, step: float) -> None:
        now = datetime.now(self.timezone)
        for job in self.get_jobs():
            if job.next_run_time is None:
                continue
            shifted = job.next_run_time + timedelta(seconds=step)
            latest = _latest_next_run(job.trigger, now)
            if step > 0 and latest is not None:
                # A job another thread rescheduled since the step is on the new clock already:
                # pushed forward too, it would wait the length of the step. No job of an
                # interval waits longer than one.
                shifted = min(shifted, latest)
            job.modify(next_run_time=shifted)
        log.warning("wall clock stepped by %+.1f s; rescheduled jobs", step)


def _latest_next_run(trigger: object, now: datetime) -> datetime | None:
    """The latest a job of `trigger` can be due, seen from `now`; `None`: no such bound."""
    if not isinstance(trigger, IntervalTrigger):
        return None
    interval: timedelta = trigger.interval
    jitter: float = trigger.jitter or 0
    return now + interval + timedelta(seconds=jitter)
