"""`fastlaunch-monitor run` as a user runs it, polling the simulator over HTTP."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import ACCOUNT, REGION, TARGET, cli, wait_for

pytestmark = pytest.mark.slow


SCOPE = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}


def image_labels(image_id: str) -> dict[str, str]:
    return {**SCOPE, "image_id": image_id}


def test_the_gauges_on_metrics_match_the_images(sim, start_daemon):
    small = sim.seed(1, target_resource_count=3, max_parallel_launches=6)[0]
    large = sim.seed(1, target_resource_count=20, max_parallel_launches=12)[0]
    failed = sim.seed(1, states="enabling-failed")[0]
    daemon = start_daemon()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")

    samples = daemon.scrape()
    for image_id, count, parallel in ((small, 3, 6), (large, 20, 12)):
        labels = frozenset(image_labels(image_id).items())
        assert samples[("fastlaunch_image_target_resources", labels)] == count
        assert samples[("fastlaunch_image_max_parallel_launches", labels)] == parallel
    state = dict(image_labels(failed), state="enabling-failed")
    assert samples[("fastlaunch_image_state", frozenset(state.items()))] == 1
    state["state"] = "enabled"
    assert samples[("fastlaunch_image_state", frozenset(state.items()))] == 0
    expected_time = sim.image(failed).state_transition_time.timestamp()
    assert samples[
        (
            "fastlaunch_image_state_transition_timestamp_seconds",
            frozenset(image_labels(failed).items()),
        )
    ] == pytest.approx(expected_time, abs=0.001)
    assert daemon.value("fastlaunch_leader") == 1
    assert daemon.terminate() == 0


def test_a_failed_poll_keeps_the_last_values_and_sets_poll_success_to_0(sim, start_daemon):
    (image_id,) = sim.seed(1, target_resource_count=7)
    daemon = start_daemon()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")
    before = daemon.image_series(image_id)

    sim.throttle(10**6)
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 0, what="a failure")
    assert daemon.image_series(image_id) == before
    errors = daemon.value("fastlaunch_poll_errors_total", **SCOPE, error="RequestLimitExceeded")
    assert errors is not None
    assert errors >= 1

    sim.clear_faults()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a recovery")
    assert daemon.terminate() == 0


def test_a_removed_image_drops_its_series_and_is_recorded_in_history(sim, start_daemon):
    kept, gone = sim.seed(2)
    daemon = start_daemon()
    wait_for(lambda: daemon.image_series(gone), what="the image's series")

    sim.remove(gone)
    wait_for(lambda: not daemon.image_series(gone), what="the series to vanish")
    assert daemon.image_series(kept)

    history = cli(daemon.config, "history", gone, "--json", env=daemon.env)
    assert history.returncode == 0, history.stderr
    states = [t["state"] for t in json.loads(history.stdout)["transitions"]]
    assert states == ["removed", "enabled"]
    assert daemon.terminate() == 0


def test_a_new_failure_is_recorded_with_its_reason_and_shown_by_status(sim, start_daemon):
    (image_id,) = sim.seed(1, states="enabled")
    daemon = start_daemon()
    wait_for(lambda: daemon.image_series(image_id), what="the image")

    sim.force_state(image_id, "enabled-failed", "Client.InsufficientLaunchTemplatePermissions")
    failed = dict(image_labels(image_id), state="enabled-failed")
    wait_for(lambda: daemon.value("fastlaunch_image_state", **failed) == 1, what="the failure")

    status = cli(daemon.config, "status", "--json", env=daemon.env)
    assert status.returncode == 0, status.stderr
    (shown,) = json.loads(status.stdout)["images"]
    assert shown["state"] == "enabled-failed"
    assert shown["state_transition_reason"] == "Client.InsufficientLaunchTemplatePermissions"
    assert shown["state_transition_time"].endswith("Z")
    transitions = json.loads(cli(daemon.config, "history", "--json", env=daemon.env).stdout)
    assert [t["state"] for t in transitions["transitions"]] == ["enabled-failed", "enabled"]
    assert daemon.terminate() == 0


def test_sigterm_stops_the_daemon_with_exit_0_within_10_seconds(sim, start_daemon):
    sim.seed(3)
    daemon = start_daemon()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")
    started = time.monotonic()
    assert daemon.terminate(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert "Traceback" not in daemon.stderr()


def test_sigterm_during_a_slow_poll_still_exits_0_within_10_seconds(sim, start_daemon):
    sim.seed(1)
    daemon = start_daemon()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")
    sim.latency(4.0)
    polls = sim.calls
    wait_for(lambda: sim.calls > polls, what="a poll in flight")
    started = time.monotonic()
    assert daemon.terminate(timeout=10) == 0
    assert time.monotonic() - started < 10


def test_readyz_turns_ready_after_the_first_successful_poll(sim, start_daemon):
    import urllib.error
    import urllib.request

    sim.seed(1)
    sim.deny()
    daemon = start_daemon()
    wait_for(lambda: daemon.polls_done() >= 1, what="a failed poll")
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"{daemon.url}/readyz", timeout=5)
    body = json.loads(not_ready.value.read())
    assert not_ready.value.code == 503
    assert body["ready"] is False
    assert body["checks"][f"poll {TARGET}/{REGION}"] == "no successful poll yet"

    sim.allow()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")
    with urllib.request.urlopen(f"{daemon.url}/readyz", timeout=5) as ready:
        assert json.loads(ready.read())["ready"] is True
    with urllib.request.urlopen(f"{daemon.url}/healthz", timeout=5) as healthy:
        assert healthy.status == 200
    assert daemon.terminate() == 0
