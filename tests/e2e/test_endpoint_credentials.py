"""A password in `[aws] endpoint_url` never leaves the process: not in `check`, `poll`, the
daemon's DEBUG log, `status` or the polls table, whether the endpoint answers or not."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alerts.receivers import refusing_url
from tests.e2e.conftest import aws_env, cli, wait_for, write_config

pytestmark = pytest.mark.slow

CANARY = "s3cret-canary-9d1e"


def with_credentials(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://monitor:{CANARY}@{rest}"


@pytest.fixture(params=["unreachable", "reachable"])
def endpoint(request: pytest.FixtureRequest, simulator_server) -> Iterator[str]:
    """The EC2 endpoint with a user and password in it: a port that refuses connections,
    or the simulator."""
    if request.param == "reachable":
        yield with_credentials(simulator_server.endpoint_url)
        return
    with refusing_url() as url:
        yield with_credentials(url)


def run_daemon_for_two_cycles(config: Path, env: dict[str, str], log: Path) -> str:
    command = [sys.executable, "-m", "monitor", "--config", str(config), "--log-level", "DEBUG"]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "run"],
            env=env,
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: (
                log.read_text(errors="replace").count("cycle done") >= 2
                or process.poll() is not None
            ),
            what="two poll cycles",
        )
    finally:
        process.terminate()
        process.wait(15)
    return log.read_text(errors="replace")


def test_the_endpoint_password_is_never_printed_logged_or_stored(
    endpoint, sim, tmp_path, simulator_server
):
    sim.seed(2)
    database = tmp_path / "history.sqlite3"
    config = write_config(tmp_path, endpoint, f"sqlite:///{database}")
    env = aws_env(simulator_server.endpoint_url)
    reachable = simulator_server.endpoint_url.split("://", 1)[1] in endpoint

    checked = cli(config, "check", env=env)
    polled = cli(config, "--log-level", "DEBUG", "poll", env=env)
    status = cli(config, "status", env=env)
    status_json = cli(config, "status", "--json", env=env)
    logged = run_daemon_for_two_cycles(config, env, tmp_path / "daemon.log")
    with sqlite3.connect(database) as connection:
        errors = [row[0] or "" for row in connection.execute("SELECT error_message FROM polls")]

    assert (checked.returncode, polled.returncode) == ((0, 0) if reachable else (1, 1))
    outputs = [checked, polled, status, status_json]
    printed = "".join(r.stdout + r.stderr for r in outputs) + logged + "".join(errors)
    assert CANARY not in printed
    if not reachable:
        # The error still says where it could not connect to, only the password masked.
        assert 'endpoint URL: "http://monitor:***@127.0.0.1:' in checked.stdout
        assert 'endpoint URL: "http://monitor:***@127.0.0.1:' in polled.stdout
        assert all("monitor:***@127.0.0.1" in error for error in errors), errors
        assert "monitor:***@127.0.0.1" in logged
