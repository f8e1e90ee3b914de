"""Polling in poll processes (`[monitor] poll_processes`): real processes against the simulator.

A poll process must answer exactly what the daemon's own `TargetSource` would, keep each
account in one process, survive nothing the daemon does not (it ends with the daemon, and
ignores the SIGTERM meant for the daemon), and turn its own death into failed polls that the
next cycle recovers from.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest

from monitor.aws import poll_processes, poll_worker
from monitor.aws.poll_processes import PollProcesses
from monitor.aws.poll_protocol import Reply, Request, Setup, frame, read_frame
from monitor.aws.sessions import TargetSource
from monitor.config.settings import AwsSettings, TargetSettings, parse_settings
from monitor.core.errors import SourceError
from monitor.core.model import Scope
from monitor.demo.simulator import SimulatorServer
from monitor.service import daemon as daemon_module
from tests.e2e.conftest import (
    ACCOUNT,
    DEFAULT_MONITOR,
    REGION,
    TARGET,
    aws_env,
    cli,
    wait_for,
    write_config,
)
from tests.fakes import raised_within
from tests.processes import alive, children_of

pytestmark = pytest.mark.slow

SCOPE = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}


@pytest.fixture
def aws_environment(simulator_server: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment as the daemon's: poll processes inherit it."""
    env = aws_env(simulator_server.endpoint_url)
    for name in os.environ:
        if name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def started() -> Iterator[list[PollProcesses]]:
    """Poll processes made by a test, closed after it."""
    made: list[PollProcesses] = []
    yield made
    for processes in made:
        processes.close()


def spread(
    started: list[PollProcesses],
    targets: list[TargetSettings],
    aws: AwsSettings,
    processes: int = 1,
) -> PollProcesses:
    sources = [TargetSource(index, target, aws) for index, target in enumerate(targets)]
    made = PollProcesses(sources, aws, processes=processes, threads=4)
    started.append(made)
    return made


def simulator_aws(server: SimulatorServer) -> AwsSettings:
    return AwsSettings(max_attempts=1, endpoint_url=server.endpoint_url)


def role(account: str) -> str:
    return f"arn:aws:iam::{account}:role/FastLaunchMonitor"


def test_a_poll_process_answers_what_the_daemons_own_target_would(
    sim, simulator_server, aws_environment, started
):
    sim.seed(3)
    sim.seed(1, states="enabling-failed")
    aws = simulator_aws(simulator_server)
    target = TargetSettings(name=TARGET, regions=(REGION,))
    remote = spread(started, [target], aws).sources[0]

    assert remote.known_account_id == ""
    assert remote.account_id() == ACCOUNT
    assert remote.scope(REGION) == Scope(target=TARGET, account_id=ACCOUNT, region=REGION)
    assert remote.describe(REGION) == TargetSource(0, target, aws).describe(REGION)
    assert remote.process.pid is not None


def test_an_aws_error_crosses_to_the_daemon_with_its_code_and_message(
    sim, simulator_server, aws_environment, started
):
    sim.deny()
    aws = simulator_aws(simulator_server)
    target = TargetSettings(name=TARGET, regions=(REGION,))
    remote = spread(started, [target], aws).sources[0]

    with pytest.raises(SourceError) as remotely:
        remote.describe(REGION)
    with pytest.raises(SourceError) as locally:
        TargetSource(0, target, aws).describe(REGION)
    assert remotely.value.code == "UnauthorizedOperation"
    assert (remotely.value.code, remotely.value.message) == (
        locally.value.code,
        locally.value.message,
    )


def test_each_account_is_served_by_one_process_and_accounts_are_spread_over_them(started):
    targets = [
        TargetSettings(name="a", regions=(REGION,), role_arn=role("111111111111")),
        TargetSettings(name="b", regions=(REGION,), role_arn=role("222222222222")),
        TargetSettings(name="a-again", regions=(REGION,), role_arn=role("111111111111")),
        TargetSettings(name="c", regions=(REGION,), role_arn=role("333333333333")),
        TargetSettings(name="default", regions=(REGION,)),
    ]
    a, b, a_again, c, default = (
        source.process for source in spread(started, targets, AwsSettings(), processes=2).sources
    )

    assert a is a_again
    assert a is not b
    assert c is a
    assert default is b
    # Placing targets starts nothing: a standby never polls.
    assert a.pid is None
    assert b.pid is None


@pytest.fixture
def silent_endpoint() -> Iterator[tuple[str, threading.Event]]:
    """An EC2 endpoint that accepts connections and never answers, and an event set once a
    request has reached it."""
    server = socket.create_server(("127.0.0.1", 0))
    reached = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            reached.set()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", reached
    server.close()
    for connection in held:
        connection.close()


def test_a_poll_process_that_dies_fails_its_polls_in_flight_and_the_next_poll_starts_it_again(
    aws_environment, started, silent_endpoint
):
    silent_url, reached = silent_endpoint
    aws = AwsSettings(max_attempts=1, endpoint_url=silent_url, read_timeout=60.0)
    (hung,) = spread(started, [TargetSettings(name="hung", regions=(REGION,))], aws).sources
    process = hung.process

    with ThreadPoolExecutor(1) as executor:
        in_flight = executor.submit(hung.describe, REGION)
        assert reached.wait(20), "the describe never reached the endpoint"
        first_pid = process.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(SourceError) as failed:
            in_flight.result(timeout=20)

    assert failed.value.code == "PollProcessExited"
    wait_for(lambda: process.pid is None, what="the daemon to see the process exit")
    # Started again by the next request (the account id, from the simulator's STS).
    assert hung.account_id() == ACCOUNT
    assert process.pid not in (None, first_pid)


def test_a_poll_process_ignores_sigterm_and_ends_when_closed(
    sim, simulator_server, aws_environment, started
):
    sim.seed(1)
    target = TargetSettings(name=TARGET, regions=(REGION,))
    processes = spread(started, [target], simulator_aws(simulator_server))
    remote = processes.sources[0]
    remote.describe(REGION)
    pid = remote.process.pid
    assert pid is not None

    os.kill(pid, signal.SIGTERM)
    images, _ = remote.describe(REGION)
    assert len(images) == 1
    assert remote.process.pid == pid

    processes.close()
    assert remote.process.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(SourceError) as closed:
        remote.describe(REGION)
    assert closed.value.code == "PollProcessClosed"


def test_the_daemon_polls_through_poll_processes_which_end_with_it(sim, start_daemon):
    (image_id,) = sim.seed(1, target_resource_count=9)
    daemon = start_daemon(monitor=f"{DEFAULT_MONITOR}\npoll_processes = 2")
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")

    labels = {**SCOPE, "image_id": image_id}
    assert daemon.value("fastlaunch_image_target_resources", **labels) == 9
    assert daemon.value("fastlaunch_leader") == 1
    # One target: one account, so one of the two processes serves it and the other never starts.
    (child,) = children_of(daemon.process.pid)
    assert "monitor.aws.poll_worker" in Path(f"/proc/{child}/cmdline").read_text()

    daemon.process.kill()
    daemon.process.wait()
    wait_for(lambda: not alive(child), what="the poll process to end with the daemon")


def test_a_daemon_stopped_by_sigterm_finishes_and_ends_its_poll_processes(sim, start_daemon):
    sim.seed(2)
    daemon = start_daemon(monitor=f"{DEFAULT_MONITOR}\npoll_processes = 1")
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")
    (child,) = children_of(daemon.process.pid)

    # As systemd stops a unit: SIGTERM to every process of it, poll processes included.
    os.kill(child, signal.SIGTERM)
    daemon.next_poll()
    assert daemon.value("fastlaunch_poll_success", **SCOPE) == 1
    assert daemon.terminate() == 0
    assert not alive(child)
    assert "exited with code" not in daemon.stderr()


def test_a_poll_process_loads_no_database_code():
    # SQLAlchemy alone would cost each poll process 14 MB.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, monitor.aws.poll_worker; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert "'sqlalchemy'" not in loaded
    assert "'monitor.aws.sessions'" in loaded


def test_poll_through_a_poll_process_records_the_same_cycle_and_exits(
    sim, simulator_server, tmp_path
):
    sim.seed(450)
    env = aws_env(simulator_server.endpoint_url)
    config = write_config(
        tmp_path,
        simulator_server.endpoint_url,
        f"sqlite:///{tmp_path / 'history.sqlite3'}",
        monitor=f"{DEFAULT_MONITOR}\npoll_processes = 1",
    )

    result = cli(config, "poll", env=env)

    assert result.returncode == 0, result.stderr
    assert f"{TARGET}/{REGION}: ok, 450 images in 3 pages, 450 transitions" in result.stdout
    assert "poll process 0 started" in result.stderr


def pipe() -> tuple[IO[bytes], IO[bytes]]:
    read, write = os.pipe()
    return os.fdopen(read, "rb"), os.fdopen(write, "wb")


def test_a_reply_that_cannot_be_pickled_is_sent_as_a_failure(monkeypatch):
    monkeypatch.setattr(poll_worker, "setup_logging", lambda level, fmt: None)
    monkeypatch.setattr(
        poll_worker, "answer", lambda sources, request: Reply(request.id, value=lambda: None)
    )
    requests_read, requests_write = pipe()
    replies_read, replies_write = pipe()
    serving = threading.Thread(target=poll_worker.serve, args=(requests_read, replies_write))
    serving.start()
    try:
        requests_write.write(frame(Setup((), AwsSettings(), 1, "INFO", "text")))
        requests_write.write(frame(Request(7, 0, "account", "")))
        requests_write.flush()
        ready, _, _ = select.select([replies_read], [], [], 20)
        assert ready, "no reply: the daemon would wait for it forever"
        reply = read_frame(replies_read)
    finally:
        requests_write.close()
        serving.join(timeout=10)
        for stream in (requests_read, replies_read, replies_write):
            stream.close()

    assert reply.id == 7
    assert reply.error[0] in ("PicklingError", "AttributeError")


def test_an_unreadable_reply_ends_the_poll_process_and_fails_its_requests(
    sim, simulator_server, aws_environment, started, monkeypatch
):
    def torn(stream):
        raise pickle.UnpicklingError("torn frame")

    monkeypatch.setattr(poll_processes, "read_frame", torn)
    target = TargetSettings(name=TARGET, regions=(REGION,))
    remote = spread(started, [target], simulator_aws(simulator_server)).sources[0]

    # Bounded: a reader that died without failing the request would leave it waiting for ever.
    error = raised_within(lambda: remote.describe(REGION), 20, "the describe still waits")

    assert isinstance(error, SourceError)
    assert error.code == "PollProcessExited"
    wait_for(lambda: remote.process.pid is None, what="the process to be ended")


def test_the_daemon_gives_its_poll_processes_advice_once_however_many_cycles_earn_it(
    sim, simulator_server, aws_environment, tmp_path, monkeypatch, caplog
):
    # Every cycle earns it here, whatever this machine's load: what is tested is that each
    # cycle's CPU and wall reach the advice, and that it is said once.
    measured: list[tuple[float, float]] = []

    def always(wall, cpu, *, poll_processes, cores):
        measured.append((wall, cpu))
        return "set poll_processes"

    monkeypatch.setattr(daemon_module, "poll_processes_advice", always)
    config = write_config(
        tmp_path, simulator_server.endpoint_url, f"sqlite:///{tmp_path / 'db.sqlite3'}"
    )
    settings = parse_settings(config.read_text(), source=str(config), env={}, base_dir=tmp_path)
    daemon = daemon_module.Daemon(daemon_module.open_runtime(settings))
    caplog.set_level(logging.INFO, logger="monitor.service.daemon")
    try:
        daemon.start()
        wait_for(lambda: daemon.cycles >= 3, what="three cycles")
    finally:
        assert daemon.shutdown()
        # open_runtime froze the heap for a long-lived daemon; this process is a test run.
        gc.unfreeze()

    assert len(measured) >= 3
    assert all(wall > 0 and cpu > 0 for wall, cpu in measured)
    assert caplog.text.count("set poll_processes") == 1
