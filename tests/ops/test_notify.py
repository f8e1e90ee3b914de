"""The systemd notify protocol: `monitor.service.notify` against a bound socket, then the daemon's
whole conversation with a fake `NOTIFY_SOCKET` (a datagram socket this test binds), as
systemd would hear it: READY, STATUS, the watchdog's pings, RELOADING, STOPPING.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from monitor.config.settings import parse_settings
from monitor.core.errors import StoreError
from monitor.service.daemon import Daemon, open_runtime
from monitor.service.notify import Notifier, Watchdog, monotonic_usec, watchdog_interval
from monitor.store import Store
from tests.e2e import conftest as e2e
from tests.e2e.conftest import wait_for
from tests.processes import free_port

# The e2e fixtures, found by pytest as attributes of this module.
simulator_server = e2e.simulator_server
sim = e2e.sim
start_daemon = e2e.start_daemon


@dataclass(frozen=True, slots=True)
class Message:
    """One datagram as the fake systemd got it; `at` is `time.monotonic()` on arrival."""

    at: float
    fields: tuple[str, ...]

    def has(self, field: str) -> bool:
        return field in self.fields

    def value(self, key: str) -> str | None:
        for field in self.fields:
            name, _, value = field.partition("=")
            if name == key:
                return value
        return None


class NotifySocket:
    """systemd's end of `$NOTIFY_SOCKET`: a bound datagram socket that records every message.

    `address` is a path, or `@name` for an abstract socket. `on_message` runs in the reader
    thread as each message arrives, before the next is read.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[Message] = []
        self.on_message: Callable[[Message], None] | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = b"\0" + address[1:].encode() if address.startswith("@") else address
        self._sock.bind(bound)
        self._sock.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            message = Message(time.monotonic(), tuple(data.decode().split("\n")))
            if self.on_message is not None:
                self.on_message(message)
            self.messages.append(message)

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address}

    def with_field(self, field: str) -> list[Message]:
        return [m for m in list(self.messages) if m.has(field)]

    def wait_for(self, field: str, timeout: float = 20.0) -> Message:
        """The first message carrying `field`, waiting for it if need be."""
        found = wait_for(lambda: self.with_field(field), timeout=timeout, what=field)
        return found[0]

    def sync(self) -> None:
        """Wait until every message sent before this call has been read."""
        fence = f"FENCE={uuid.uuid4().hex}"
        assert Notifier(self.address).notify(fence)
        self.wait_for(fence)

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def path_socket() -> Iterator[NotifySocket]:
    # A short folder of its own: a socket path may not exceed 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sd-") as folder:
        notify = NotifySocket(os.path.join(folder, "notify"))
        yield notify
        notify.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    notify = NotifySocket(f"@fastlaunch-test-{uuid.uuid4().hex}")
    yield notify
    notify.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> NotifySocket:
    """The fake systemd socket, once as a path and once abstract."""
    notify: NotifySocket = request.getfixturevalue(f"{request.param}_socket")
    return notify


# ---- monitor.service.notify on its own -----------------------------------------------------------


def test_a_message_reaches_a_path_socket_as_newline_separated_fields(path_socket):
    assert Notifier(path_socket.address).notify("READY=1", "STATUS=polling")

    message = path_socket.wait_for("READY=1")
    assert message.fields == ("READY=1", "STATUS=polling")


def test_a_message_reaches_an_abstract_socket(abstract_socket):
    assert Notifier.from_env(abstract_socket.env).notify("WATCHDOG=1")

    assert abstract_socket.wait_for("WATCHDOG=1").fields == ("WATCHDOG=1",)


def test_a_line_break_inside_a_field_cannot_start_another_field(path_socket):
    Notifier(path_socket.address).notify("STATUS=one\nREADY=1")

    message = path_socket.wait_for("STATUS=one READY=1")
    assert not message.has("READY=1")


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier.from_env({})

    assert not notifier.enabled
    assert not notifier.notify("READY=1")


def test_a_socket_nobody_listens_on_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))

    with caplog.at_level(logging.WARNING, logger="monitor.service.notify"):
        assert not notifier.notify("READY=1")
        assert not notifier.notify("WATCHDOG=1")

    assert len(caplog.records) == 1
    assert "cannot notify systemd" in caplog.records[0].getMessage()


def test_an_address_that_is_neither_a_path_nor_abstract_is_a_logged_failure(caplog):
    with caplog.at_level(logging.WARNING, logger="monitor.service.notify"):
        assert not Notifier("vsock:2:1234").notify("READY=1")

    assert "cannot notify systemd at vsock:2:1234" in caplog.text


def test_the_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15


def test_no_watchdog_without_watchdog_usec_or_when_it_is_meant_for_another_process():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=4242) is None


def test_a_malformed_watchdog_usec_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="monitor.service.notify"):
        assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
        assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None

    assert caplog.text.count("ignoring $WATCHDOG_USEC") == 2


def test_monotonic_usec_is_the_monotonic_clock_in_microseconds():
    before = time.monotonic()
    usec = monotonic_usec()
    after = time.monotonic()

    assert before * 1e6 - 1 <= usec <= after * 1e6 + 1


def test_the_watchdog_pings_only_while_the_check_finds_nothing_wrong(path_socket, caplog):
    problem: list[str] = []
    checks: list[float] = []

    def check() -> str | None:
        checks.append(time.monotonic())
        return problem[0] if problem else None

    stop = threading.Event()
    watchdog = Watchdog(Notifier(path_socket.address), 0.02, check, stop)
    with caplog.at_level(logging.INFO, logger="monitor.service.notify"):
        watchdog.start()
        wait_for(lambda: len(path_socket.with_field("WATCHDOG=1")) >= 3, what="pings")

        problem.append("the database does not answer")
        failing_from = len(checks)
        wait_for(lambda: len(checks) >= failing_from + 2, what="a check finding it")
        path_socket.sync()
        pings = len(path_socket.with_field("WATCHDOG=1"))
        wait_for(lambda: len(checks) >= failing_from + 12, what="ten more checks")
        path_socket.sync()
        assert len(path_socket.with_field("WATCHDOG=1")) == pings

        problem.clear()
        wait_for(lambda: len(path_socket.with_field("WATCHDOG=1")) > pings, what="pings again")
        stop.set()

    assert caplog.text.count("not pinging systemd's watchdog") == 1
    assert "the database does not answer" in caplog.text
    assert caplog.text.count("healthy again") == 1


def test_a_check_that_raises_counts_as_a_problem(path_socket, caplog):
    def broken() -> str | None:
        raise RuntimeError("boom")

    stop = threading.Event()
    with caplog.at_level(logging.ERROR, logger="monitor.service.notify"):
        Watchdog(Notifier(path_socket.address), 0.02, broken, stop).start()
        wait_for(lambda: "not pinging" in caplog.text, what="the problem to be logged")
        stop.set()

    assert "RuntimeError: boom" in caplog.text
    assert not path_socket.with_field("WATCHDOG=1")


# ---- the daemon, as systemd hears it ------------------------------------------------------


@pytest.mark.slow
def test_ready_is_sent_once_healthz_answers(sim, start_daemon, notify_socket):
    port = free_port()
    probes: list[int] = []

    def probe_healthz(message: Message) -> None:
        # Right as READY arrives, before anything else the daemon does is read.
        if message.has("READY=1"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    probes.append(r.status)
            except (urllib.error.URLError, OSError):
                probes.append(0)

    notify_socket.on_message = probe_healthz
    daemon = start_daemon(env=notify_socket.env, listen=f"127.0.0.1:{port}")

    ready = notify_socket.wait_for("READY=1")
    assert probes == [200]
    assert ready.value("STATUS")
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_status_carries_the_summary_of_each_cycle(sim, start_daemon, path_socket):
    sim.seed(2)
    start_daemon(env=path_socket.env)

    first = path_socket.wait_for("STATUS=1 scopes polled, 0 failed, 2 images, 2 transitions")
    later = path_socket.wait_for("STATUS=1 scopes polled, 0 failed, 2 images, 0 transitions")
    assert first.at < later.at


@pytest.mark.slow
def test_sigterm_sends_stopping_then_exits_0(sim, start_daemon, path_socket):
    daemon = start_daemon(env=path_socket.env)
    ready = path_socket.wait_for("READY=1")

    daemon.process.send_signal(signal.SIGTERM)

    assert daemon.process.wait(timeout=15) == 0
    stopping = path_socket.wait_for("STOPPING=1")
    assert stopping.at > ready.at
    assert "stopped" in daemon.stderr()


@pytest.mark.slow
def test_watchdog_pings_come_every_half_of_watchdog_usec(sim, start_daemon, path_socket):
    start_daemon(env={**path_socket.env, "WATCHDOG_USEC": "2000000"})

    wait_for(lambda: len(path_socket.with_field("WATCHDOG=1")) >= 5, what="five pings")

    pings = [m.at for m in path_socket.with_field("WATCHDOG=1")][:5]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.5 < gap < 1.5 for gap in gaps), gaps
    assert sum(gaps) / len(gaps) == pytest.approx(1.0, abs=0.2)
    assert path_socket.with_field("READY=1")[0].at <= pings[0]


@pytest.mark.slow
def test_a_hanging_aws_request_fails_at_its_deadline_and_the_watchdog_keeps_pinging(
    sim, start_daemon, path_socket
):
    # The poll loop goes on however long AWS takes: a request that hangs is one scope's failed
    # poll, not a hung daemon for systemd to restart.
    sim.seed(1)
    daemon = start_daemon(
        env={**path_socket.env, "WATCHDOG_USEC": "1000000"},
        monitor='interval = "500ms"\njitter = "0"\npoll_timeout = "1s"',
        read_timeout="30s",
    )
    wait_for(lambda: len(path_socket.with_field("WATCHDOG=1")) >= 2, what="pings")

    sim.latency(6.0)
    scope = {"target": e2e.TARGET, "account_id": e2e.ACCOUNT, "region": e2e.REGION}
    wait_for(
        lambda: daemon.value("fastlaunch_poll_errors_total", **scope, error="PollDeadlineExceeded"),
        what="the hanging poll recorded as failed",
    )
    pings = path_socket.with_field("WATCHDOG=1")
    assert time.monotonic() - pings[-1].at < 1.5
    assert "not pinging systemd's watchdog" not in daemon.stderr()
    sim.clear_faults()


@pytest.mark.slow
def test_a_reload_is_announced_with_reloading_then_ready(sim, start_daemon, abstract_socket):
    daemon = start_daemon(env=abstract_socket.env)
    abstract_socket.wait_for("READY=1")

    before = monotonic_usec()
    daemon.process.send_signal(signal.SIGHUP)

    reloading = abstract_socket.wait_for("RELOADING=1")
    usec = reloading.value("MONOTONIC_USEC")
    assert usec is not None
    assert before <= int(usec) <= monotonic_usec()
    ready_again = wait_for(
        lambda: [m for m in abstract_socket.with_field("READY=1") if m.at > reloading.at],
        what="READY=1 after the reload",
    )
    assert ready_again
    assert "config reloaded from" in daemon.stderr()
    assert daemon.terminate() == 0


class UnansweringStore(Store):
    """A store whose database has stopped answering."""

    def ping(self) -> None:
        raise StoreError("reaching the database failed on sqlite: disk I/O error")


@pytest.mark.slow
def test_the_watchdog_withholds_pings_while_the_database_does_not_answer(
    sim, simulator_server, path_socket, tmp_path, monkeypatch, caplog
):
    for name, value in e2e.aws_env(simulator_server.endpoint_url).items():
        monkeypatch.setenv(name, value)
    config = e2e.write_config(
        tmp_path, simulator_server.endpoint_url, f"sqlite:///{tmp_path / 'db.sqlite3'}"
    )
    settings = parse_settings(config.read_text(), source=str(config), env={}, base_dir=tmp_path)
    runtime = open_runtime(settings)
    daemon = Daemon(runtime, notifier=Notifier(path_socket.address), watchdog_period=0.05)

    def pings() -> int:
        return len(path_socket.with_field("WATCHDOG=1"))

    def silent_for(seconds: float) -> bool:
        return time.monotonic() - path_socket.with_field("WATCHDOG=1")[-1].at > seconds

    try:
        daemon.start()
        daemon.notify_ready()
        wait_for(lambda: pings() >= 2, what="pings")

        answering, runtime.store = runtime.store, UnansweringStore(runtime.engine)
        wait_for(lambda: silent_for(0.5), what="ten periods without a ping")
        assert "the database does not answer: reaching the database failed" in caplog.text

        silent_from = pings()
        runtime.store = answering
        wait_for(lambda: pings() > silent_from, what="the pings to resume")
    finally:
        assert daemon.shutdown()
        # open_runtime froze the heap for a long-lived daemon; this process is a test run.
        gc.unfreeze()


@pytest.mark.slow
def test_the_watchdog_withholds_pings_while_the_poll_job_hangs_and_resumes_after(
    sim, simulator_server, path_socket, tmp_path, monkeypatch, caplog
):
    for name, value in e2e.aws_env(simulator_server.endpoint_url).items():
        monkeypatch.setenv(name, value)
    config = e2e.write_config(
        tmp_path,
        simulator_server.endpoint_url,
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        monitor='interval = "500ms"\njitter = "0"',
    )
    settings = parse_settings(config.read_text(), source=str(config), env={}, base_dir=tmp_path)
    runtime = open_runtime(settings)
    daemon = Daemon(runtime, notifier=Notifier(path_socket.address), watchdog_period=0.05)
    release = threading.Event()
    polling = runtime.cycle.run

    def hanging_run(wait: float | None = None) -> object:
        # Whatever the cause (a bug, a lock never granted), the poll job does not come back.
        release.wait(30)
        return polling(wait)

    def silent_for(seconds: float) -> bool:
        return time.monotonic() - path_socket.with_field("WATCHDOG=1")[-1].at > seconds

    try:
        daemon.start()
        daemon.notify_ready()
        wait_for(lambda: len(path_socket.with_field("WATCHDOG=1")) >= 2, what="pings")

        runtime.cycle.run = hanging_run  # type: ignore[method-assign]
        wait_for(lambda: silent_for(0.5), what="the pings to stop")
        assert "a poll cycle has run for" in caplog.text

        stopped = len(path_socket.with_field("WATCHDOG=1"))
        release.set()
        wait_for(lambda: len(path_socket.with_field("WATCHDOG=1")) > stopped, what="pings again")
    finally:
        release.set()
        assert daemon.shutdown()
        gc.unfreeze()


def healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


@pytest.mark.slow
def test_healthz_fails_while_the_poll_job_hangs_and_recovers_after(
    sim, simulator_server, tmp_path, monkeypatch
):
    for name, value in e2e.aws_env(simulator_server.endpoint_url).items():
        monkeypatch.setenv(name, value)
    config = e2e.write_config(
        tmp_path,
        simulator_server.endpoint_url,
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        monitor='interval = "500ms"\njitter = "0"',
    )
    settings = parse_settings(config.read_text(), source=str(config), env={}, base_dir=tmp_path)
    runtime = open_runtime(settings)
    daemon = Daemon(runtime)
    release = threading.Event()
    polling = runtime.cycle.run

    def hanging_run(wait: float | None = None) -> object:
        release.wait(30)
        return polling(wait)

    try:
        daemon.start()
        assert healthz(daemon.http_url) == 200

        # A stalled schedule, or a cycle that never ends: no progress for three intervals.
        runtime.cycle.run = hanging_run  # type: ignore[method-assign]
        wait_for(lambda: healthz(daemon.http_url) == 503, what="/healthz to fail")

        release.set()
        wait_for(lambda: healthz(daemon.http_url) == 200, what="/healthz to answer 200 again")
    finally:
        release.set()
        assert daemon.shutdown()
        gc.unfreeze()
