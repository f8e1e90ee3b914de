"""`fastlaunch-monitor demo` works on a laptop with no AWS account, and stops by itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def run_without_aws(command: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """`command` with no AWS_ variable and a home without ~/.aws: the demo must need nothing
    of the user's AWS setup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(home)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_demo_polls_the_simulator_and_stops_after_its_duration(tmp_path):
    script = Path(sys.executable).with_name("fastlaunch-monitor")
    result = run_without_aws([str(script), "demo", "--duration", "4s"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"metrics:\s+http://127\.0\.0\.1:\d+/metrics", result.stdout)
    assert "status" in result.stdout
    assert "demo stopped" in result.stdout
    assert "cycle done: 1 scopes polled, 0 failed, 7 images, 7 transitions" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_demo_receiver_prints_an_alert_firing_and_resolving(tmp_path):
    # Fifteen times faster: the scenario's 150 s fail-and-recover story in 10 s.
    demo = "from monitor.demo import run_demo; run_demo(12, speed=15)"
    result = run_without_aws([sys.executable, "-c", demo], tmp_path)
    assert result.returncode == 0, result.stderr
    received = [line for line in result.stdout.splitlines() if line.startswith("receiver:")]
    assert any("FIRING failed alert" in line and "-> enabling-failed" in line for line in received)
    assert any("RESOLVED failed alert" in line and "-> enabled " in line for line in received)
    assert all(line.endswith("signature verified") for line in received), received


def test_the_installed_wheel_ships_and_applies_its_migrations(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("fastlaunch_monitor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "monitor/_migrations/env.py" in names
    assert any(n.startswith("monitor/_migrations/versions/0001") for n in names)
    assert "monitor/simulator/extension.py" in names

    # Installed from the wheel alone (ahead of this checkout on the path), `db upgrade` must
    # find the migrations inside the package.
    target = tmp_path / "lib"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    database = tmp_path / "wheel.sqlite3"
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "FASTLAUNCH_MONITOR_DATABASE_URL": f"sqlite:///{database}",
    }
    upgraded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, monitor, monitor.cli; print(monitor.__file__); "
            "sys.exit(monitor.cli.main(['db', 'upgrade']))",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.startswith(str(target))
    assert "at revision" in upgraded.stdout
