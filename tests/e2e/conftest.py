"""The daemon end to end: a real `fastlaunch-monitor` process against the simulator server.

The simulator server runs in the test process (a moto server thread), so the tests steer it
directly — seed images, force states, inject faults — while the daemon, a separate process,
polls it over HTTP exactly as it would poll AWS.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.demo.simulator import (
    FastLaunchSimulator,
    ManualClock,
    SimulatorServer,
    simulator_for,
    start_server,
    use_clock,
)
from tests import fakes

ACCOUNT = "123456789012"
REGION = "us-east-1"
TARGET = "e2e"

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """`tests.fakes.wait_for` with the patience a daemon in another process needs, and polling
    gentle enough (its conditions scrape the daemon) not to slow it down."""
    return fakes.wait_for(condition, timeout, what, interval=0.05)


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[SimulatorServer]:
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    server = start_server()
    yield server
    server.stop()


@pytest.fixture
def sim(simulator_server: SimulatorServer) -> Iterator[FastLaunchSimulator]:
    """The simulator of the daemon's account and region, on a manual clock, fresh per test."""
    simulator_server.reset()
    previous = use_clock(ManualClock())
    yield simulator_for(ACCOUNT, REGION)
    use_clock(previous)


def aws_env(endpoint_url: str) -> dict[str, str]:
    """The daemon's environment: fake credentials, STS at the simulator, no real AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_STS": endpoint_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return env


DEFAULT_MONITOR = 'interval = "1s"\njitter = "0"'


def write_config(
    folder: Path,
    endpoint_url: str,
    database_url: str,
    extra: str = "",
    *,
    monitor: str = DEFAULT_MONITOR,
    listen: str = "127.0.0.1:0",
    read_timeout: str = "5s",
) -> Path:
    """The daemon's config: `monitor` is the body of `[monitor]`, `extra` follows the target.

    The tests poll every second or so, far more often than the first poll of a cold daemon
    (a process, clients, credentials) takes on a busy machine, so a poll gets 20 s unless
    `monitor` gives its own `poll_timeout` (by default it would get one interval).
    """
    if "poll_timeout" not in monitor:
        monitor += '\npoll_timeout = "20s"'
    config = folder / "config.toml"
    config.write_text(
        f"""\
[monitor]
{monitor}

[database]
url = "{database_url}"

[http]
listen = "{listen}"

[aws]
endpoint_url = "{endpoint_url}"
max_attempts = 1
connect_timeout = "2s"
read_timeout = "{read_timeout}"

[[targets]]
name = "{TARGET}"
regions = ["{REGION}"]
{extra}"""
    )
    return config


def cli(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one `fastlaunch-monitor` command to its end."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class DaemonProcess:
    """A running `fastlaunch-monitor run` and what it serves."""

    process: subprocess.Popen[bytes]
    log: Path
    config: Path
    env: dict[str, str]
    url: str = field(default="")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def scrape(self) -> Samples:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.scrape().get((name, frozenset(labels.items())))

    def image_series(self, image_id: str) -> Samples:
        return {
            key: value for key, value in self.scrape().items() if ("image_id", image_id) in key[1]
        }

    def polls_done(self) -> float:
        """Polls finished so far, failed ones included (the duration histogram's count)."""
        return (
            self.value(
                "fastlaunch_poll_duration_seconds_count",
                target=TARGET,
                account_id=ACCOUNT,
                region=REGION,
            )
            or 0.0
        )

    def next_poll(self) -> None:
        """Wait until at least one complete poll has run after this call."""
        seen = self.polls_done()
        wait_for(lambda: self.polls_done() >= seen + 2, what="two more polls")

    def terminate(self, timeout: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@pytest.fixture
def start_daemon(
    tmp_path: Path, simulator_server: SimulatorServer
) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(
        database_url: str | None = None,
        extra: str = "",
        log_level: str | None = "INFO",
        *,
        env: Mapping[str, str] | None = None,
        **config_options: str,
    ) -> DaemonProcess:
        """Start `run`; `log_level=None` leaves `--log-level` out, `env` adds variables, and
        `config_options` go to `write_config`."""
        database_url = database_url or f"sqlite:///{tmp_path / 'history.sqlite3'}"
        config = write_config(
            tmp_path, simulator_server.endpoint_url, database_url, extra, **config_options
        )
        daemon_env = {**aws_env(simulator_server.endpoint_url), **(env or {})}
        log = tmp_path / f"daemon-{len(started)}.log"
        level = ["--log-level", log_level] if log_level is not None else []
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "--config", str(config), *level, "run"],
                env=daemon_env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        daemon = DaemonProcess(process, log, config, daemon_env)
        started.append(daemon)

        def listening() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"the daemon exited early:\n{daemon.stderr()}")
            found = re.search(r"metrics at (http://\S+)/metrics", daemon.stderr())
            return found.group(1) if found else None

        daemon.url = wait_for(listening, what="the daemon to listen")
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
