"""A running daemon is never blind for longer than a cycle after a failure that passes by
itself, is never held up by one endless scope, and picks up a fixed permission at a reload."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.conftest import ACCOUNT, REGION, TARGET, wait_for

pytestmark = pytest.mark.slow

SCOPE = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}
INTERVAL = 2.0


def test_the_daemon_is_current_again_within_one_interval_of_the_endpoint_recovering(
    sim, start_daemon
):
    (image,) = sim.seed(1)
    daemon = start_daemon(monitor=f'interval = "{INTERVAL:g}s"\njitter = "0"')
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")

    sim.throttle(4)
    sim.garbage(3)
    wait_for(
        lambda: daemon.value("fastlaunch_poll_errors_total", **SCOPE, error="InvalidResponse") == 3,
        timeout=60,
        what="four throttled and three garbled polls",
    )
    recovered = time.monotonic()
    sim.force_state(image, "enabled-failed", "Server.InternalError")

    wait_for(
        lambda: (
            daemon.value("fastlaunch_image_state", **SCOPE, image_id=image, state="enabled-failed")
            == 1
        ),
        timeout=3 * INTERVAL,
        what="the failure seen",
    )
    assert time.monotonic() - recovered <= INTERVAL + 1.5
    assert "backing off" not in daemon.stderr()
    assert daemon.terminate() == 0


def test_a_fixed_permission_is_picked_up_at_once_by_a_reload(sim, start_daemon):
    sim.seed(1)
    sim.deny()
    daemon = start_daemon(monitor='interval = "1s"\njitter = "0"')
    wait_for(lambda: "backing off" in daemon.stderr(), timeout=30, what="the backoff")
    # Let the backoff grow well past the time this test waits below.
    wait_for(
        lambda: (
            (
                daemon.value("fastlaunch_poll_errors_total", **SCOPE, error="UnauthorizedOperation")
                or 0
            )
            >= 4
        ),
        timeout=30,
        what="four denied polls",
    )
    sim.allow()
    daemon.process.send_signal(signal.SIGHUP)

    wait_for(
        lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1,
        timeout=4,
        what="a successful poll right after the reload",
    )
    assert daemon.terminate() == 0


def test_an_endpoint_that_pages_for_ever_fails_by_the_deadline_and_sigterm_stays_prompt(
    sim, start_daemon
):
    sim.seed(1)
    sim.endless_pages()
    sim.latency(0.05)
    daemon = start_daemon(monitor='interval = "1s"\njitter = "0"\npoll_timeout = "1s"')

    wait_for(
        lambda: daemon.value("fastlaunch_poll_errors_total", **SCOPE, error="PollDeadlineExceeded"),
        timeout=20,
        what="the deadline",
    )
    stopping = time.monotonic()
    assert daemon.terminate() == 0
    assert time.monotonic() - stopping < 10


def test_a_sqlite_file_deleted_under_the_daemon_stops_it_with_exit_1(sim, start_daemon, tmp_path):
    sim.seed(1)
    database = tmp_path / "history.sqlite3"
    daemon = start_daemon(f"sqlite:///{database}", monitor='interval = "1s"\njitter = "0"')
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")

    for path in tmp_path.glob("history.sqlite3*"):
        if not path.name.endswith(".lock"):
            path.unlink()

    assert daemon.process.wait(20) == 1
    assert (
        f"ERROR monitor.service.daemon: the database file {database} was deleted" in daemon.stderr()
    )
