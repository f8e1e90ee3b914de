"""The daemon through a step of its wall clock, made by libfaketime (Debian package faketime).

The daemon runs with libfaketime preloaded, which reads the faked time from a file that the
test rewrites to step the clock as NTP would. The monotonic clock stays real, as it does when
NTP steps the wall clock. Without faketime installed the tests are skipped, except under
`CI=true`: there they fail, since `.ci/run` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.alerts.receivers import Answer, Receiver
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.slow


def libfaketime() -> str:
    """What `faketime` preloads; skipped without it, except under CI=true: there, failed.

    The daemon runs with the library preloaded, not under `faketime` itself: that would set
    FAKETIME, which takes precedence over the file, and a SIGTERM would stop `faketime` rather
    than the daemon.
    """
    found = shutil.which("faketime")
    if found is None:
        problem = "faketime is not installed (Debian package faketime)"
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"CLOCK STEP TESTS CANNOT RUN IN CI: {problem}; .ci/run must install it.",
                pytrace=False,
            )
        pytest.skip(problem)
    asked = subprocess.run(
        [found, "-f", "+0", "printenv", "LD_PRELOAD"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return asked.stdout.strip()


class SteppedClock:
    """The faked wall clock of a daemon: the real time plus an offset the test can change."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "faketime.rc"
        self.file.write_text("+0\n")
        self.env = {
            "LD_PRELOAD": libfaketime(),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step(self, offset: str) -> None:
        """Set the offset from the real time: `-2h`, `+25h` (libfaketime's notation)."""
        self.file.write_text(f"{offset}\n")


def started_under(clock: SteppedClock, start_daemon):
    daemon = start_daemon(env=clock.env)
    wait_for(lambda: daemon.polls_done() >= 1, what="the first poll")
    return daemon


def readyz(daemon) -> int:
    try:
        with urllib.request.urlopen(f"{daemon.url}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_polls_go_on_every_interval_after_the_wall_clock_steps_back_two_hours(
    sim, start_daemon, tmp_path
):
    clock = SteppedClock(tmp_path)
    daemon = started_under(clock, start_daemon)

    clock.step("-2h")
    seen = daemon.polls_done()

    # Polled every second, three polls take well under 15 s, against 2 h stalled.
    wait_for(lambda: daemon.polls_done() >= seen + 3, timeout=15, what="three more polls")
    assert re.search(r"WARNING .*wall clock stepped by -7\d{3}\.\d s", daemon.stderr())
    assert daemon.terminate() == 0


def test_polls_keep_their_pace_after_the_wall_clock_steps_a_day_forward(
    sim, start_daemon, tmp_path
):
    clock = SteppedClock(tmp_path)
    daemon = started_under(clock, start_daemon)

    clock.step("+25h")
    seen = daemon.polls_done()

    wait_for(lambda: daemon.polls_done() >= seen + 3, timeout=15, what="three more polls")
    assert re.search(r"WARNING .*wall clock stepped by \+90\d{3}\.\d s", daemon.stderr())
    assert daemon.terminate() == 0


def test_an_alert_retried_when_the_wall_clock_steps_back_two_hours_arrives_on_time(
    sim, start_daemon, tmp_path
):
    (image_id,) = sim.seed(1)
    clock = SteppedClock(tmp_path)
    with Receiver() as receiver:
        receiver.answer(*[Answer(503)] * 3)
        hook = f'\n[[alerts.webhooks]]\nname = "ops"\nurl = "{receiver.url_for("/hook")}"\n'
        daemon = start_daemon(env=clock.env, extra=hook)
        wait_for(lambda: daemon.image_series(image_id), what="a first poll")
        sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")
        wait_for(
            lambda: daemon.value(
                "fastlaunch_alert_deliveries_total", receiver="ops", outcome="retry"
            ),
            what="a first attempt recorded as failed",
        )

        # Its retry is due a second later on the clock before the step: 2 h on after it.
        clock.step("-2h")

        # Three retries within 1 + 2 + 4 s of backoff, against 2 h held back.
        receiver.wait_for_requests(4, timeout=20)
        assert daemon.terminate() == 0


def test_readyz_fails_three_intervals_after_the_last_success_though_the_clock_stepped_back(
    sim, start_daemon, tmp_path
):
    clock = SteppedClock(tmp_path)
    daemon = started_under(clock, start_daemon)
    wait_for(lambda: readyz(daemon) == 200, what="/readyz to answer 200")

    clock.step("-2h")
    sim.deny()

    # Three intervals of a second each; on the wall clock, the last success is 2 h ahead.
    wait_for(lambda: readyz(daemon) == 503, what="/readyz to answer 503")
    assert daemon.terminate() == 0
