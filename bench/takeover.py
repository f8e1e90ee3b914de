"""Standby takeover time after SIGKILL of the leader: two `run` daemons on one PostgreSQL database.

Issue 5's figure. A temporary database is created on `--postgres` (dropped at the end); the
simulator server runs in this process, with `--images` enabled images. Two daemons
(`python -m monitor run`, the console script's entry point) share the database, each in a
process of its own. Each round kills the leader (the one whose `/metrics` says
`fastlaunch_leader 1`) with SIGKILL and times, from the kill, until the other says
`fastlaunch_leader 1` (takeover) and until its first poll has finished (its
`fastlaunch_poll_duration_seconds_count` reaches 1); then a fresh standby is started for the
next round. Last, it checks that the history holds each image's first sight exactly once.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import sqlalchemy
from endpoint_child import endpoint_env
from sqlalchemy import func, make_url, select

from monitor.service.daemon import LEADERSHIP_TICK_SECONDS
from monitor.store.schema import history

ACCOUNT = "123456789012"
REGION = "us-east-1"
TARGET = "bench"
#: How often a daemon's /metrics is read while waiting for it.
POLL_SECONDS = 0.02

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """The first truthy value of `condition()`, asked every `POLL_SECONDS` until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_SECONDS)


@contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty database on the server of `admin_url`; dropped afterwards."""
    server = make_url(admin_url).set(drivername="postgresql+psycopg")
    name = f"fastlaunch_bench_{uuid.uuid4().hex[:16]}"
    admin = sqlalchemy.create_engine(
        server, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def write_config(folder: Path, database_url: str, interval: float) -> Path:
    config = folder / "config.toml"
    config.write_text(
        f'[monitor]\ninterval = "{interval:g}s"\njitter = "0"\n'
        f'[database]\nurl = "{database_url}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n'
        '[aws]\nmax_attempts = 1\nconnect_timeout = "2s"\nread_timeout = "5s"\n'
        f'[[targets]]\nname = "{TARGET}"\nregions = ["{REGION}"]\n'
    )
    return config


def daemon_env(endpoint_url: str) -> dict[str, str]:
    """Fake credentials, EC2 and STS at the simulator, no AWS config of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FASTLAUNCH_"))}
    env.update(endpoint_env(endpoint_url, REGION))
    return env


def _sample(text: str, name: str) -> float | None:
    """The value of the first sample of `name` in a text exposition, labels or not."""
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


class Daemon:
    """A `fastlaunch-monitor run` process, logging to a file, and what its /metrics says."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "--config", str(config), "run"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.url = wait_for(self._listening, 60, f"the daemon logging to {log} to listen")

    def _listening(self) -> str | None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited early:\n{self.log.read_text()}")
        found = re.search(r"metrics at (http://\S+)/metrics", self.log.read_text())
        return found.group(1) if found else None

    def metric(self, name: str) -> float | None:
        """The daemon's `name` now; `None` if it does not export it."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return _sample(response.read().decode(), name)

    def leads(self) -> bool:
        return self.metric("fastlaunch_leader") == 1

    def has_polled(self) -> bool:
        """Whether this daemon has finished a poll (there is one target and region)."""
        return (self.metric("fastlaunch_poll_duration_seconds_count") or 0.0) > 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def leaders_of(daemons: list[Daemon]) -> list[Daemon]:
    return [daemon for daemon in daemons if daemon.leads()]


def measure(
    start: Callable[[], Daemon], rounds: int, interval: float, phase: random.Random
) -> list[tuple[float, float]]:
    """Per round, seconds from the leader's SIGKILL to the takeover and to its first poll.

    A kill as soon as the fresh standby is up would always fall at the same point of its
    leadership checks (they start with it) and of the leader's poll cycle, and so always
    take the same time; a leader dies at any moment, so each kill waits a random part of an
    interval first.
    """
    daemons = [start(), start()]
    times = []
    try:
        for _ in range(rounds):
            leaders = wait_for(partial(leaders_of, daemons), 3 * interval, "a leader")
            if len(leaders) != 1:
                raise RuntimeError(f"{len(leaders)} daemons lead at once")
            (leader,) = leaders
            (standby,) = [d for d in daemons if d is not leader]
            if standby.has_polled():
                raise RuntimeError("the standby has polled")
            time.sleep(phase.uniform(0, interval))
            leader.kill()
            killed = time.monotonic()
            wait_for(standby.leads, 3 * interval, "the takeover")
            took_over = time.monotonic() - killed
            wait_for(standby.has_polled, 3 * interval, "the new leader's first poll")
            times.append((took_over, time.monotonic() - killed))
            daemons = [standby, start()]
    finally:
        for daemon in daemons:
            daemon.stop()
    return times


def history_rows(database_url: str) -> int:
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(history)).scalar_one())
    finally:
        engine.dispose()


def report(times: list[tuple[float, float]], interval: float, images: int, rows: int) -> None:
    tick = min(LEADERSHIP_TICK_SECONDS, interval / 4)
    print(
        f"\nStandby takeover after SIGKILL of the leader: two `run` daemons on one PostgreSQL "
        f"database,\ninterval {interval:g} s (jitter 0), leadership checked every {tick:g} s; "
        "seconds from the kill until the standby says fastlaunch_leader 1,\n"
        "and until its first poll has finished"
    )
    print(f"{'round':>6} {'takeover':>8} {'first poll':>11}")
    for number, (took_over, polled) in enumerate(times, 1):
        print(f"{number:>6} {took_over:>7.2f}s {polled:>10.2f}s")
    takeovers = [took_over for took_over, _ in times]
    polls = [polled for _, polled in times]
    print(f"{'median':>6} {statistics.median(takeovers):>7.2f}s {statistics.median(polls):>10.2f}s")
    print(f"{'max':>6} {max(takeovers):>7.2f}s {max(polls):>10.2f}s")
    verdict = "ok" if max(takeovers) <= interval else "MISSED"
    print(f"every takeover within one interval ({interval:g} s): {verdict}")
    duplicates = "ok" if rows == images else "DUPLICATES OR LOSSES"
    print(f"history rows: {rows} for {images} images, each first sight once: {duplicates}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="kills (default 5)")
    parser.add_argument("--interval", type=float, default=10.0, help="poll interval, seconds")
    parser.add_argument("--images", type=int, default=3, help="images in the simulator")
    parser.add_argument("--seed", type=int, default=5, help="of the random waits before kills")
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a server where a temporary database may be created",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.interval < 1:
        parser.error("--rounds must be at least 1 and --interval at least 1 s")

    # moto would otherwise build ~1300 public AMIs first.
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    from monitor.demo.simulator import simulator_for, start_server

    started = time.monotonic()
    with (
        start_server() as server,
        temporary_database(args.postgres) as database_url,
        tempfile.TemporaryDirectory(prefix="fastlaunch-takeover-") as name,
    ):
        simulator_for(ACCOUNT, REGION).seed(args.images)
        folder = Path(name)
        config = write_config(folder, database_url, args.interval)
        env = daemon_env(server.endpoint_url)
        logs = iter(range(1_000))

        def start() -> Daemon:
            return Daemon(config, env, folder / f"daemon-{next(logs)}.log")

        times = measure(start, args.rounds, args.interval, random.Random(args.seed))
        rows = history_rows(database_url)
    report(times, args.interval, args.images, rows)
    print(f"\n(run time {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
