"""SIGHUP reloads the config of a running daemon: what changes, what waits for a restart, and
what a broken config does (nothing but one ERROR line).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.config.settings import parse_settings
from monitor.core.errors import ConfigError
from monitor.demo.simulator import SimulatorServer
from tests.alerts.receivers import Receiver
from tests.e2e import conftest as e2e
from tests.e2e.conftest import ACCOUNT, REGION, TARGET, DaemonProcess, wait_for, write_config
from tests.processes import alive, children_of

# The e2e fixtures, found by pytest as attributes of this module.
simulator_server = e2e.simulator_server
sim = e2e.sim
start_daemon = e2e.start_daemon

OTHER_REGION = "eu-west-1"
SECOND_TARGET = f"""
[[targets]]
name = "second"
regions = ["{OTHER_REGION}"]
"""
SCOPE = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}
SECOND_SCOPE = {"target": "second", "account_id": ACCOUNT, "region": OTHER_REGION}

Rewrite = Callable[..., Path]


@pytest.fixture
def rewrite(tmp_path: Path, simulator_server: SimulatorServer) -> Rewrite:
    """Write the daemon's config file anew (same database); arguments as `write_config`'s."""

    def write(extra: str = "", database: str = "history.sqlite3", **options: str) -> Path:
        database_url = f"sqlite:///{tmp_path / database}"
        return write_config(tmp_path, simulator_server.endpoint_url, database_url, extra, **options)

    return write


def reload(daemon: DaemonProcess) -> str:
    """Send SIGHUP and wait for the daemon's verdict; returns the log written since."""
    before = len(daemon.stderr())
    daemon.process.send_signal(signal.SIGHUP)

    def verdict() -> str | None:
        since = daemon.stderr()[before:]
        return since if re.search(r"config (not )?reloaded", since) else None

    return wait_for(verdict, what="the reload")


@pytest.mark.slow
def test_a_new_target_and_interval_apply_at_the_next_cycle(sim, start_daemon, rewrite):
    daemon = start_daemon(monitor='interval = "1h"')
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a first poll")

    rewrite(SECOND_TARGET, monitor='interval = "1s"\njitter = "0"')
    assert "config reloaded" in reload(daemon)

    wait_for(
        lambda: daemon.value("fastlaunch_poll_success", **SECOND_SCOPE) == 1,
        what="a poll of the new target",
    )
    daemon.next_poll()
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_a_target_removed_by_a_reload_takes_its_poll_series_along(sim, start_daemon, rewrite):
    daemon = start_daemon(extra=SECOND_TARGET)
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SECOND_SCOPE) == 1, what="polls")

    rewrite()
    reload(daemon)

    wait_for(
        lambda: daemon.value("fastlaunch_poll_success", **SECOND_SCOPE) is None,
        what="the removed target's series to go",
    )
    daemon.next_poll()
    assert daemon.value("fastlaunch_poll_success", **SCOPE) == 1
    assert daemon.value("fastlaunch_poll_duration_seconds_count", **SECOND_SCOPE) is None


@pytest.mark.slow
def test_a_broken_config_is_one_error_line_and_the_running_one_stays(sim, start_daemon, rewrite):
    daemon = start_daemon()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a first poll")

    config = rewrite(SECOND_TARGET, monitor='interval = "1s"\nintervall = "2s"')
    logged = reload(daemon)

    errors = [line for line in logged.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, logged
    assert str(config) in errors[0]
    assert "monitor.intervall" in errors[0]
    assert 'did you mean "interval"' in errors[0]
    assert "Traceback" not in logged
    daemon.next_poll()
    assert daemon.value("fastlaunch_poll_success", **SECOND_SCOPE) is None
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_a_new_log_level_takes_effect(sim, start_daemon, rewrite):
    daemon = start_daemon(log_level=None)
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a first poll")
    assert "DEBUG " not in daemon.stderr()

    rewrite(monitor='interval = "1s"\njitter = "0"\nlog_level = "debug"')
    reload(daemon)
    wait_for(
        lambda: daemon.scrape() and "DEBUG monitor.exposition.http" in daemon.stderr(),
        what="a scrape logged at DEBUG",
    )

    rewrite(monitor='interval = "1s"\njitter = "0"\nlog_level = "warning"')
    reload(daemon)
    quiet_from = len(daemon.stderr())
    daemon.next_poll()
    assert "INFO " not in daemon.stderr()[quiet_from:]
    assert "DEBUG " not in daemon.stderr()[quiet_from:]


@pytest.mark.slow
def test_database_and_http_changes_wait_for_a_restart_with_a_warning(
    sim, start_daemon, rewrite, tmp_path
):
    daemon = start_daemon()
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a first poll")
    rewrite(listen="127.0.0.1:1", database="other.sqlite3")

    logged = reload(daemon)

    warnings = [line for line in logged.splitlines() if line.startswith("WARNING")]
    assert any("[http] changed" in w and "restart" in w for w in warnings), logged
    assert any("[database] changed" in w and "restart" in w for w in warnings), logged
    daemon.next_poll()  # still served at the same address, polling into the same database
    assert not (tmp_path / "other.sqlite3").exists()
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_a_webhook_added_by_a_reload_gets_the_next_alert(sim, start_daemon, rewrite):
    (image,) = sim.seed(1)
    daemon = start_daemon()
    wait_for(lambda: daemon.image_series(image), what="a first poll")

    with Receiver() as receiver:
        rewrite(f'\n[[alerts.webhooks]]\nname = "ops"\nurl = "{receiver.url_for("/hook")}"\n')
        reload(daemon)
        sim.force_state(image, "enabling-failed", "Client.InvalidLaunchTemplateName.NotFound")

        (alert,) = receiver.wait_for_requests(1, timeout=20)
    assert alert.json()["image_id"] == image
    assert alert.json()["state"] == "enabling-failed"
    assert daemon.terminate() == 0


def test_a_config_log_level_is_read_in_any_case_and_a_wrong_one_named():
    settings = parse_settings(
        '[monitor]\nlog_level = "Debug"', source="config.toml", env={}, base_dir=Path()
    )
    assert settings.monitor.log_level == "DEBUG"

    with pytest.raises(ConfigError, match=r'monitor\.log_level: .*did you mean "warning"'):
        parse_settings(
            '[monitor]\nlog_level = "warn"', source="config.toml", env={}, base_dir=Path()
        )


@pytest.mark.slow
def test_a_reload_replaces_the_poll_processes_and_ends_the_old_ones(sim, start_daemon, rewrite):
    with_processes = 'interval = "1s"\njitter = "0"\npoll_processes = 1'
    daemon = start_daemon(monitor=with_processes)
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a first poll")
    (old,) = children_of(daemon.process.pid)

    rewrite(monitor='interval = "1s"\njitter = "0"')
    assert "config reloaded" in reload(daemon)
    wait_for(lambda: not alive(old), what="the old poll process to end")
    daemon.next_poll()
    assert children_of(daemon.process.pid) == []

    rewrite(monitor=with_processes)
    assert "config reloaded" in reload(daemon)
    daemon.next_poll()
    (new,) = children_of(daemon.process.pid)
    assert new != old
    assert daemon.value("fastlaunch_poll_success", **SCOPE) == 1
    assert daemon.terminate() == 0
