"""The clock that drives the simulated fast launch state machine.

Every simulator in the process reads one shared clock, so a test advances time for all
accounts and regions at once. Transitions are computed from it lazily at each call; nothing
runs in the background.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class SimulatorClock(Protocol):
    """Tells the simulator what time it is (an aware UTC datetime)."""

    def now(self) -> datetime:
        """The current simulated time."""
        ...


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("the simulator clock needs an aware datetime, got a naive one")
    return when.astimezone(UTC)


class ManualClock:
    """A clock that only moves when told to: `advance(seconds)` or `set(when)`.

    It starts at `start`, or at the current second of the wall clock. Setting it backwards is
    allowed; transitions already applied stay applied.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = _utc(start) if start else datetime.now(UTC).replace(microsecond=0)

    def now(self) -> datetime:
        """The time the clock was last set or advanced to."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by `seconds` and return the new time."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, when: datetime) -> None:
        """Put the clock at `when` (an aware datetime)."""
        moved = _utc(when)
        with self._lock:
            self._now = moved


class RealTimeClock:
    """Wall-clock time from `start` (default: now), running `speed` times faster than real time.

    The demo uses a speed above 1 to show minutes of state changes in seconds.
    """

    def __init__(self, speed: float = 1.0, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"the clock speed must be positive, got {speed}")
        self.speed = speed
        self._origin = _utc(start) if start else datetime.now(UTC)
        self._origin_monotonic = time.monotonic()

    def now(self) -> datetime:
        """The origin plus the real time elapsed since, scaled by `speed`."""
        elapsed = (time.monotonic() - self._origin_monotonic) * self.speed
        return self._origin + timedelta(seconds=elapsed)


_shared_lock = threading.Lock()
_shared: SimulatorClock = RealTimeClock()


def shared_clock() -> SimulatorClock:
    """The clock every simulator of this process reads (real time until `use_clock`)."""
    with _shared_lock:
        return _shared


def use_clock(clock: SimulatorClock) -> SimulatorClock:
    """Make `clock` the one every simulator reads from now on; returns the previous one."""
    global _shared
    with _shared_lock:
        previous, _shared = _shared, clock
        return previous
