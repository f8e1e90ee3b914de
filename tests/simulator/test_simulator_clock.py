from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from monitor.demo.simulator import ManualClock, RealTimeClock, shared_clock, use_clock

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def test_a_manual_clock_stands_still_until_advanced() -> None:
    clock = ManualClock(START)

    assert clock.now() == START
    assert clock.advance(90.5) == START + timedelta(seconds=90.5)
    assert clock.now() == START + timedelta(seconds=90.5)


def test_a_manual_clock_can_be_set_to_any_aware_time() -> None:
    clock = ManualClock(START)
    later = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)

    clock.set(later)

    assert clock.now() == later


def test_a_manual_clock_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="naive"):
        ManualClock(START).set(datetime(2027, 1, 1))


def test_a_real_time_clock_runs_faster_by_its_speed() -> None:
    clock = RealTimeClock(speed=1000.0, start=START)
    deadline = time.monotonic() + 5

    # A thousandfold clock passes a simulated minute within a fraction of a real second.
    while clock.now() < START + timedelta(minutes=1):
        assert time.monotonic() < deadline

    assert clock.now().tzinfo is not None


def test_a_real_time_clock_needs_a_positive_speed() -> None:
    with pytest.raises(ValueError, match="positive"):
        RealTimeClock(speed=0)


def test_use_clock_replaces_the_shared_clock_and_returns_the_previous_one() -> None:
    mine = ManualClock(START)
    previous = use_clock(mine)
    try:
        assert shared_clock() is mine
    finally:
        assert use_clock(previous) is mine
    assert shared_clock() is previous
