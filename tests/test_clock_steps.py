"""Wall-clock steps: told apart from slewing, and the scheduler's jobs shifted by them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.interval import IntervalTrigger

from monitor.service.clock_steps import STEP_THRESHOLD_SECONDS, ClockStepDetector, SteadyScheduler
from tests.fakes import wait_for

HOUR = 3600.0


def test_the_first_reading_is_no_step():
    assert ClockStepDetector().observe(1_000_000.0, 50.0) is None


def test_a_step_back_is_told_once_with_its_size():
    steps = ClockStepDetector()
    steps.observe(1_000_000.0, 50.0)

    assert steps.observe(1_000_005.0 - 2 * HOUR, 55.0) == pytest.approx(-2 * HOUR)
    assert steps.observe(1_000_010.0 - 2 * HOUR, 60.0) is None


def test_a_step_forward_is_told_once_with_its_size():
    steps = ClockStepDetector()
    steps.observe(1_000_000.0, 50.0)

    assert steps.observe(1_000_005.0 + 25 * HOUR, 55.0) == pytest.approx(25 * HOUR)
    assert steps.observe(1_000_010.0 + 25 * HOUR, 60.0) is None


def test_a_step_below_the_threshold_is_no_step():
    steps = ClockStepDetector()
    steps.observe(1_000_000.0, 50.0)

    assert steps.observe(1_000_005.0 + STEP_THRESHOLD_SECONDS / 2, 55.0) is None


def test_slewing_never_adds_up_to_a_step():
    steps = ClockStepDetector()
    # NTP's fastest slew, 0.5 ms a second, read every 5 s for a day: 43 s in all.
    found = [steps.observe(1_000_000.0 + n * 5 * 1.0005, 50.0 + n * 5) for n in range(17_280)]

    assert found == [None] * len(found)


class SteppedWall:
    """The real wall clock plus an offset a test steps; counts how often it was read."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return time.time() + self.offset


class Runs:
    """Records when (monotonic) a job ran."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.ran = threading.Event()

    def __call__(self) -> None:
        self.at.append(time.monotonic())
        self.ran.set()


class Stepped:
    """A started scheduler without jobs that has read its wall clock once (the reference),
    and the steps it told of."""

    def __init__(self) -> None:
        self.wall = SteppedWall()
        self.told: list[float] = []
        self.scheduler = SteadyScheduler(wall=self.wall, on_step=self.told.append, timezone=UTC)


@pytest.fixture
def stepped() -> Iterator[Stepped]:
    started = Stepped()
    started.scheduler.start()
    wait_for(lambda: started.wall.reads >= 1, what="the scheduler's first look at the clocks")
    yield started
    started.scheduler.shutdown(wait=False)


def add_job(scheduler: SteadyScheduler, runs: Runs, *, interval: float, due_in: float) -> None:
    """A job of `interval` s, next due `due_in` s from now on the wall clock APScheduler reads.

    Adding it wakes the scheduler, which then sees the step the test made beforehand.
    """
    scheduler.add_job(
        runs,
        IntervalTrigger(seconds=interval, timezone=UTC),
        next_run_time=datetime.now(UTC) + timedelta(seconds=due_in),
        coalesce=True,
        misfire_grace_time=None,
    )


def test_a_job_scheduled_before_the_wall_clock_stepped_back_runs_when_it_was_due(stepped, caplog):
    runs = Runs()

    with caplog.at_level(logging.WARNING, logger="monitor.service.clock_steps"):
        # Due in 0.2 s when it was scheduled, before the clock went back 2 h.
        stepped.wall.offset = -2 * HOUR
        add_job(stepped.scheduler, runs, interval=60, due_in=2 * HOUR + 0.2)

        assert runs.ran.wait(10)
    assert "wall clock stepped by -7200.0 s; rescheduled jobs" in caplog.text
    assert stepped.told == [pytest.approx(-2 * HOUR, abs=0.1)]


def test_a_job_scheduled_before_the_wall_clock_stepped_forward_does_not_run_early(stepped):
    runs = Runs()

    # Due in 0.5 s when it was scheduled, before the clock went a day forward: without the
    # shift, it would look 25 h late and run at once.
    stepped.wall.offset = 25 * HOUR
    added = time.monotonic()
    add_job(stepped.scheduler, runs, interval=60, due_in=-25 * HOUR + 0.5)

    assert runs.ran.wait(10)
    assert runs.at[0] - added >= 0.4


def test_a_job_scheduled_after_a_forward_step_waits_at_most_its_interval(stepped):
    runs = Runs()

    # Scheduled on the new clock before the scheduler noticed the step: shifted by the whole
    # step it would wait a day, but no job waits longer than its interval.
    stepped.wall.offset = 25 * HOUR
    add_job(stepped.scheduler, runs, interval=1, due_in=0.2)

    assert runs.ran.wait(10)
