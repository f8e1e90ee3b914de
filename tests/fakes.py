"""What the AWS adapter's and the poll cycle's tests share: moto with the fast launch simulator,
targets built the way the daemon builds them, and a cycle wired to a real store and registry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from moto import mock_aws
from prometheus_client import CollectorRegistry

from monitor.aws.sessions import PollLimits, RawImage, TargetSource
from monitor.config.settings import AwsSettings, TargetSettings
from monitor.demo.simulator import ManualClock, use_clock
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import MonitorMetrics, build_registry
from monitor.poll.cycle import Cycle
from monitor.store import Store

#: moto's account for any access key it did not hand out: the default credential chain's.
ACCOUNT = "123456789012"
REGION = "us-east-1"
START = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)

#: One attempt: a fault shows at once, and no test waits for botocore's backoff.
NO_RETRIES = AwsSettings(max_attempts=1)

T = TypeVar("T")


def role_arn(account: str) -> str:
    """An IAM role in `account`; moto lets any caller assume it."""
    return f"arn:aws:iam::{account}:role/X"


def fake_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials in `REGION`, and none of the developer's AWS config or environment."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_STS",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # moto otherwise creates ~1300 public AMIs for every new (account, region): slow and noise.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


@contextmanager
def simulated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ManualClock]:
    """moto in-process with the fast launch simulator, on a manual clock at `START`.

    The credentials are fake, and the developer's own AWS config and environment are kept
    out of it (`fake_aws_environment`), so the default credential chain means moto's
    default account.
    """
    fake_aws_environment(monkeypatch, tmp_path)
    clock = ManualClock(START)
    previous = use_clock(clock)
    try:
        with mock_aws():
            yield clock
    finally:
        use_clock(previous)


def source(
    target: TargetSettings | None = None, aws: AwsSettings = NO_RETRIES, *, index: int = 0
) -> TargetSource:
    """The `TargetSource` the daemon would build for `target` (default: the default chain)."""
    return TargetSource(index, target or TargetSettings(), aws)


def assume_role_calls(account: str) -> int:
    """How many times AWS (moto) was asked to assume a role in `account`."""
    from moto.sts.models import sts_backends

    return len(sts_backends[account]["aws"].assumed_roles)


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, what: str = "", interval: float = 0.01
) -> T:
    """The first truthy value of `condition()`, polled every `interval` until `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
    return value


def raised_within(call: Callable[[], object], timeout: float, what: str) -> BaseException | None:
    """What `call()` raised (None if nothing), run in a thread of its own so that a call that
    never returns fails the test after `timeout` s instead of hanging the run."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{what} after {timeout} s"
    return raised[0] if raised else None


class GatedSource(TargetSource):
    """A real target whose describes wait at a gate until `release()`, to hold a poll in flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self._gate = threading.Event()

    def release(self) -> None:
        """Let every describe, waiting or to come, go on to AWS."""
        self._gate.set()

    def hold(self) -> None:
        """Make the describes to come wait at the gate again."""
        self.entered.clear()
        self._gate.clear()

    def pass_gate(self) -> None:
        """Say this target's poll has arrived at the gate, and wait there until `release()`."""
        self.entered.set()
        if not self._gate.wait(timeout=30):
            raise AssertionError("the gate was never released")

    def describe(self, region: str, limits: PollLimits | None = None) -> tuple[list[RawImage], int]:
        self.pass_gate()
        return super().describe(region, limits)


class PeakCountingSource(TargetSource):
    """A real target that remembers how many of its describes were ever in flight at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self.peak = 0

    def describe(self, region: str, limits: PollLimits | None = None) -> tuple[list[RawImage], int]:
        with self._count_lock:
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
        try:
            return super().describe(region, limits)
        finally:
            with self._count_lock:
                self._in_flight -= 1


def seconds_of(clock: ManualClock) -> Callable[[], float]:
    """A monotonic clock that moves as `clock` does: its seconds since `START`."""

    def seconds() -> float:
        return (clock.now() - START).total_seconds()

    return seconds


@dataclass
class Monitor:
    """A poll cycle wired as the daemon wires it: real store, current state, registry."""

    cycle: Cycle
    store: Store
    current: CurrentState
    registry: CollectorRegistry
    metrics: MonitorMetrics

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample's value from the registry, as a scrape would see it; `None` if absent."""
        return self.registry.get_sample_value(name, labels)


@contextmanager
def monitor(
    store: Store,
    sources: list[TargetSource],
    *,
    clock: ManualClock,
    max_concurrency: int = 4,
    stop: threading.Event | None = None,
    interval: float | None = None,
) -> Iterator[Monitor]:
    """A `Monitor` over `sources`; its worker threads end with the block.

    With `interval`, its cycle knows it runs that often: failing scopes back off.
    """
    current = CurrentState()
    current.load(store.current_images())
    registry, metrics = build_registry(current)
    metrics.set_leader(True)
    cycle = Cycle(
        sources,
        store,
        current,
        metrics,
        max_concurrency=max_concurrency,
        clock=clock.now,
        stop=stop,
        interval=interval,
        schedule_clock=seconds_of(clock),
    )
    try:
        yield Monitor(cycle, store, current, registry, metrics)
    finally:
        cycle.close()
