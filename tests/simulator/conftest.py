"""Fixtures for the simulator's tests: moto in-process or as a server, and a manual clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from monitor.demo.simulator import (
    FastLaunchSimulator,
    ManualClock,
    SimulatorServer,
    simulator_for,
    start_server,
    use_clock,
)

ACCOUNT = "123456789012"
REGION = "us-east-1"
START = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)

# One attempt: a test that expects an error must see it, not botocore's retries of it.
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.fixture(autouse=True)
def _no_default_amis(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto otherwise creates ~1300 public AMIs for every new (account, region): slow and noise.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


@pytest.fixture
def clock() -> Iterator[ManualClock]:
    """A manual clock at `START`, shared by every simulator while the test runs."""
    manual = ManualClock(START)
    previous = use_clock(manual)
    yield manual
    use_clock(previous)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in-process, with fake credentials; everything is forgotten after the test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def sim(aws: None, clock: ManualClock) -> FastLaunchSimulator:
    """The simulator of the default account and region, on the manual clock."""
    return simulator_for(ACCOUNT, REGION)


@pytest.fixture(scope="session")
def boto_session() -> boto3.session.Session:
    """One session for every client: it loads EC2's large service model only once."""
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def ec2(aws: None, boto_session: boto3.session.Session) -> Any:
    """An EC2 client of the default account and region, without retries."""
    return boto_session.client("ec2", region_name=REGION, config=NO_RETRIES)


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One simulator server for the module's tests; each test resets it (`served`)."""
    running = start_server()
    yield running
    running.stop()


@pytest.fixture
def connect(boto_session: boto3.session.Session) -> Callable[..., Any]:
    """Make a client: `connect(service, endpoint_url=None, region=REGION, config=..., **keys)`.

    Without keys it uses the session's fake ones; by default without retries, so errors
    surface at once.
    """

    def make(
        service: str,
        endpoint_url: str | None = None,
        region: str = REGION,
        config: Config = NO_RETRIES,
        **keys: str,
    ) -> Any:
        return boto_session.client(
            service, region_name=region, endpoint_url=endpoint_url, config=config, **keys
        )

    return make


@pytest.fixture
def served(server: SimulatorServer, clock: ManualClock) -> Iterator[SimulatorServer]:
    """The module's server, with moto's state forgotten before and after the test."""
    server.reset()
    yield server
    server.reset()
