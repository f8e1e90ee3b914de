"""The token bucket and its registry, on a fake clock: burst, refill, fairness under threads."""

from __future__ import annotations

import random
import threading
from bisect import bisect_left

import pytest

from monitor.aws.ratelimit import EC2_READ_BURST, EC2_READ_RATE, RateLimits, TokenBucket


class FakeClock:
    """Seconds that move only when told to; each thread remembers the time it last read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = 0.0
        self._read = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self._read.value = self._now
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def last_read(self) -> float:
        """What this thread's last call returned."""
        value: float = self._read.value
        return value


def most_in_any_window(times: list[float], width: float) -> int:
    """The largest number of `times` that fall within one half-open window of `width`."""
    ordered = sorted(times)
    # A hair less than `width`, so that float rounding of equal schedules does not count.
    return max(bisect_left(ordered, t + width - 1e-9) - i for i, t in enumerate(ordered))


def test_the_defaults_are_ec2s_read_bucket() -> None:
    assert (EC2_READ_RATE, EC2_READ_BURST) == (20.0, 100)


def test_a_full_bucket_gives_its_burst_at_once_then_twenty_a_second() -> None:
    clock = FakeClock()
    # Sleeping moves the fake clock, as real sleep moves the real one.
    bucket = TokenBucket(20, 100, clock=clock, sleep=clock.advance)

    burst = [bucket.acquire() for _ in range(100)]
    then = [bucket.acquire() for _ in range(20)]

    assert burst == [0.0] * 100
    assert then == pytest.approx([0.05] * 20)
    assert clock() == pytest.approx(1.0)


def test_an_idle_bucket_refills_up_to_its_burst_and_no_further() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20, 100, clock=clock, sleep=clock.advance)
    for _ in range(100):
        bucket.acquire()

    clock.advance(2.5)
    half_refilled = bucket.available()
    clock.advance(60)
    refilled = bucket.available()
    again = [bucket.acquire() for _ in range(101)]

    assert half_refilled == pytest.approx(50)
    assert refilled == 100
    assert again[:100] == [0.0] * 100
    assert again[100] == pytest.approx(0.05)


def test_waiters_on_an_empty_bucket_are_each_given_the_next_token_to_come() -> None:
    # The clock stands still: every wait is the bucket's schedule, whichever thread asks.
    bucket = TokenBucket(20, 100, clock=lambda: 0.0, sleep=lambda seconds: None)
    waits: list[float] = []
    waits_lock = threading.Lock()

    def acquire_many() -> None:
        mine = [bucket.acquire() for _ in range(50)]
        with waits_lock:
            waits.extend(mine)

    threads = [threading.Thread(target=acquire_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    expected = [max(0, n + 1 - 100) / 20 for n in range(400)]
    assert sorted(waits) == pytest.approx(expected)
    assert bucket.available() == pytest.approx(-300)


def test_concurrent_acquirers_never_exceed_the_rate_over_any_window() -> None:
    clock = FakeClock()
    # A caller is given its token at the time it read plus the time it slept, so the fake
    # sleep need not wait; the callers themselves move the clock on, as their requests would.
    bucket = TokenBucket(20, 100, clock=clock, sleep=lambda seconds: None)
    granted: list[float] = []
    granted_lock = threading.Lock()
    rounds = threading.Barrier(6)

    def acquire_many(seed: int) -> None:
        work = random.Random(seed)
        mine = []
        for _ in range(100):
            # Every round, all six ask at once.
            rounds.wait(timeout=10)
            waited = bucket.acquire()
            mine.append(clock.last_read() + waited)
            clock.advance(work.uniform(0, 0.05))
        with granted_lock:
            granted.extend(mine)

    threads = [threading.Thread(target=acquire_many, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(granted) == 600
    assert clock() > 10, "the clock should have moved on while tokens were handed out"
    for width in (0.001, 0.05, 0.5, 1.0, 5.0, 30.0):
        assert most_in_any_window(granted, width) <= 100 + 20 * width, width
    # 600 tokens at 100 at once and 20 a second: the last can come no sooner than 25 s on.
    assert max(granted) >= 25 - 1e-9


def test_a_sleeper_does_not_hold_up_the_next_caller_from_reserving_its_token() -> None:
    asleep = threading.Semaphore(0)
    wake = threading.Event()

    def sleep(seconds: float) -> None:
        asleep.release()
        wake.wait(timeout=10)

    bucket = TokenBucket(20, 1, clock=lambda: 0.0, sleep=sleep)
    bucket.acquire()
    sleepers = [threading.Thread(target=bucket.acquire) for _ in range(2)]
    try:
        sleepers[0].start()
        assert asleep.acquire(timeout=10)
        # The first sleeps outside the lock: the second reserves the token after its own.
        sleepers[1].start()
        assert asleep.acquire(timeout=10)
        reserved = bucket.available()
    finally:
        wake.set()
        for sleeper in sleepers:
            sleeper.join(timeout=10)

    assert reserved == -2


@pytest.mark.parametrize(("rate", "burst"), [(0, 100), (-1, 100), (20, 0)])
def test_a_bucket_that_could_never_give_a_token_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TokenBucket(rate, burst)


def test_rate_limits_give_one_bucket_per_account_and_region() -> None:
    limits = RateLimits(clock=lambda: 0.0)

    shared = limits.bucket("111111111111", "us-east-1")
    shared.acquire()

    assert limits.bucket("111111111111", "us-east-1") is shared
    assert limits.bucket("111111111111", "us-east-1").available() == 99
    assert limits.bucket("111111111111", "eu-west-1").available() == 100
    assert limits.bucket("222222222222", "us-east-1").available() == 100


def test_rate_limits_size_their_buckets_as_told() -> None:
    sleeps: list[float] = []
    limits = RateLimits(5, 2, clock=lambda: 0.0, sleep=sleeps.append)
    bucket = limits.bucket("111111111111", "us-east-1")

    for _ in range(3):
        bucket.acquire()

    assert sleeps == [pytest.approx(0.2)]


def test_many_threads_asking_for_one_new_bucket_all_get_the_same() -> None:
    limits = RateLimits()
    found: list[TokenBucket] = []
    start = threading.Barrier(8)

    def look_up() -> None:
        start.wait(timeout=10)
        found.append(limits.bucket("111111111111", "us-east-1"))

    threads = [threading.Thread(target=look_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(found) == 8
    assert len({id(bucket) for bucket in found}) == 1
