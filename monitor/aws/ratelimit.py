"""Client-side rate limits: token buckets, one per (account, region), sized like EC2's own.

EC2 meters its API with a token bucket per account and region; the one for reads
(`Describe*`) holds 100 requests and refills 20 a second. Every target and every thread of
the monitor that reaches an account in a region draws on that one bucket, so keeping our own
copy of it, shared the same way, means a large fleet never throttles itself into retries (and
leaves the rest of the bucket to the account's other callers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: EC2's read-API bucket: requests it refills a second, and requests it holds.
EC2_READ_RATE = 20.0
EC2_READ_BURST = 100

Clock = Callable[[], float]
Sleep = Callable[[float], object]


class TokenBucket:
    """`burst` tokens, refilled at `rate` a second; each request takes one before it goes.

    Thread-safe and fair: a caller that finds the bucket empty reserves the next token to be
    refilled (the count goes below zero) and sleeps until then, outside the lock, so callers
    are served in the order they came and, however many wait, no more than `burst` tokens
    plus `rate` a second are ever handed out. `clock` (seconds, monotonic) and `sleep` are
    injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self._burst
        self._updated = clock()

    def _refill(self) -> float:
        # Called with the lock held.
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        return self._tokens

    def acquire(self) -> float:
        """Take one token, sleeping until there is one; returns the seconds slept (0: none)."""
        with self._lock:
            self._tokens = self._refill() - 1
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait

    def available(self) -> float:
        """Tokens in the bucket now; below zero by the tokens that sleepers have reserved."""
        with self._lock:
            return self._refill()


class RateLimits:
    """One `TokenBucket` per (account, region), made on first use and shared from then on.

    `account` is the AWS account id; a caller that does not know its account yet passes
    something that names itself instead (and cannot be an account id), so it is limited on
    its own until it does.
    """

    def __init__(
        self,
        rate: float = EC2_READ_RATE,
        burst: int = EC2_READ_BURST,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def bucket(self, account: str, region: str) -> TokenBucket:
        """The bucket of `account` in `region`: the same object for every caller."""
        with self._lock:
            found = self._buckets.get((account, region))
            if found is None:
                found = TokenBucket(self._rate, self._burst, clock=self._clock, sleep=self._sleep)
                self._buckets[(account, region)] = found
            return found
