"""The systemd unit, judged by systemd's own `systemd-analyze`, and held to what the daemon needs.

`systemd-analyze verify` checks every executable a unit names, and the unit runs the daemon from
where the README installs it, `/opt/fastlaunch-monitor`, which does not exist on a test machine.
So the verify test checks a copy of the unit in which that one path, and nothing else, is
replaced by the `fastlaunch-monitor` console script of the environment running the tests (which
also proves that script is what the unit's command line expects). `--root=` is no way out: it
needs a whole operating system tree beneath it, `sysinit.target` and `/bin/kill` included.

`systemd-analyze security --offline=yes` reads the unit file alone, so it judges the real file.
Without `systemd-analyze` these tests skip, except under `CI=true`, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.core.durations import parse_duration
from monitor.exposition.http import MAX_CONNECTIONS

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "fastlaunch-monitor.service"
INSTALLED_COMMAND = "/opt/fastlaunch-monitor/bin/fastlaunch-monitor"

#: (target, region) pairs whose kept-alive EC2 connections the descriptor limit must hold.
LARGE_FLEET_PAIRS = 10_000

#: On SIGTERM the daemon exits within 10 s; systemd must wait longer than that.
STOP_BOUND_SECONDS = 10.0
MAX_EXPOSURE = 2.0

_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+) ")


@pytest.fixture
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        message = "systemd-analyze is not installed (Debian: apt-get install systemd)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must not skip the unit's checks", pytrace=False)
        pytest.skip(message)
    return path


def analyze(systemd_analyze: str, *args: str) -> subprocess.CompletedProcess[str]:
    # No colours and no pager, so the output is plain text whatever the terminal.
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [systemd_analyze, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of the unit, values in order (keys can repeat), sections ignored."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.slow
def test_systemd_analyze_verify_accepts_the_unit_without_a_single_warning(
    systemd_analyze: str, tmp_path: Path
) -> None:
    command = Path(sys.executable).with_name("fastlaunch-monitor")
    assert os.access(command, os.X_OK), f"no console script at {command}: pip install -e ."
    original = UNIT.read_text()
    copy = tmp_path / UNIT.name
    copy.write_text(original.replace(f"ExecStart={INSTALLED_COMMAND} ", f"ExecStart={command} "))
    changed = set(copy.read_text().splitlines()) ^ set(original.splitlines())
    assert len(changed) == 2, "the ExecStart= line, and only that line, is replaced"

    result = analyze(systemd_analyze, "verify", str(copy))

    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@pytest.mark.slow
def test_systemd_analyze_security_rates_the_exposure_at_most_2(systemd_analyze: str) -> None:
    result = analyze(systemd_analyze, "security", "--offline=yes", "--threshold=20", str(UNIT))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    found = _EXPOSURE.search(result.stdout)
    assert found, result.stdout
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_the_unit_speaks_the_daemons_notify_protocol_and_outwaits_its_stop() -> None:
    unit = unit_settings(UNIT.read_text())

    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert parse_duration(unit["WatchdogSec"][0]) > 0
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert {"StartLimitIntervalSec", "StartLimitBurst"} <= unit.keys()
    assert parse_duration(unit["TimeoutStopSec"][0]) > STOP_BOUND_SECONDS
    assert unit["ExecStart"] == [
        f"{INSTALLED_COMMAND} --config /etc/fastlaunch-monitor/config.toml run"
    ]


def test_the_unit_keeps_state_and_secrets_where_the_daemon_looks_for_them() -> None:
    unit = unit_settings(UNIT.read_text())

    # The default SQLite file is $STATE_DIRECTORY/history.sqlite3; relative `*_file` paths are
    # read from $CREDENTIALS_DIRECTORY, which LoadCredential= sets.
    assert unit["DynamicUser"] == ["yes"]
    assert unit["StateDirectory"] == ["fastlaunch-monitor"]
    assert unit["ConfigurationDirectory"] == ["fastlaunch-monitor"]
    assert unit["UMask"] == ["0077"]
    assert "db-url:fastlaunch-monitor.db-url" in unit["LoadCredential"]
    assert "webhook.key:fastlaunch-monitor.webhook.key" in unit["LoadCredential"]


def test_the_sandbox_leaves_the_daemon_only_what_it_uses() -> None:
    unit = unit_settings(UNIT.read_text())

    assert unit["MemoryDenyWriteExecute"] == ["yes"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert unit["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["AmbientCapabilities"] == [""]
    assert unit["ProtectSystem"] == ["strict"]
    # AWS and the webhook receivers can be anywhere: an address deny list would cut them off.
    assert "IPAddressDeny" not in unit


def test_the_unit_gives_descriptors_for_a_large_fleet_and_every_http_connection() -> None:
    unit = unit_settings(UNIT.read_text())

    (limit,) = unit["LimitNOFILE"]
    # One number sets the soft limit too: the daemon never has to raise its own.
    assert limit.isdecimal(), limit
    # 1024 for the rest: the database pool, webhooks, poll processes' pipes, Python's files.
    assert int(limit) >= LARGE_FLEET_PAIRS + MAX_CONNECTIONS + 1024
