"""`fastlaunch-monitor demo` works on a laptop with no AWS account, and stops by itself."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fakes import wait_for

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
    demo = "from monitor.demo.run import run_demo; run_demo(12, speed=15)"
    result = run_without_aws([sys.executable, "-c", demo], tmp_path)
    assert result.returncode == 0, result.stderr
    received = [line for line in result.stdout.splitlines() if line.startswith("receiver:")]
    assert any("FIRING failed alert" in line and "-> enabling-failed" in line for line in received)
    assert any("RESOLVED failed alert" in line and "-> enabled " in line for line in received)
    assert all(line.endswith("signature verified") for line in received), received


def venv_invocations() -> dict[str, tuple[Path, str]]:
    """The demo started as the Quickstart starts it (the console script by its path, relative
    to the folder holding the venv) and as `python -m monitor`: (cwd, command)."""
    folder = Path(sys.prefix).parent
    script = Path(sys.executable).with_name("fastlaunch-monitor")
    return {
        "console script": (folder, shlex.quote(os.path.relpath(script, folder))),
        "python -m": (folder, f"{shlex.quote(sys.executable)} -m monitor"),
    }


@pytest.mark.parametrize("invocation", ["console script", "python -m"])
def test_the_commands_the_demo_suggests_run_as_printed(tmp_path, invocation):
    cwd, command = venv_invocations()[invocation]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)
    # As after the Quickstart: the venv is not activated, its commands are not on the PATH.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    output = tmp_path / "demo.out"
    with output.open("wb") as stdout:
        demo = subprocess.Popen(
            f"exec {command} demo --duration 60s",
            shell=True,
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
    try:
        wait_for(
            lambda: demo.poll() is not None or "Ctrl-C stops" in output.read_text(),
            timeout=30,
            what="the demo's banner",
        )
        assert demo.poll() is None, output.read_text()
        text = output.read_text()
        suggested = re.findall(
            r"^\s+(?:try:\s+)?(\S.* --config .* (?:status|history))$", text, re.M
        )
        assert len(suggested) == 2, text
        for line in suggested:
            ran = subprocess.run(
                line,
                shell=True,
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert ran.returncode == 0, f"{line}\n{ran.stdout}{ran.stderr}"
            assert ran.stdout.splitlines()[0].split()[0] in ("TARGET", "TIME", "no"), ran.stdout
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
        exit_code = demo.wait(30)
    assert exit_code == 0
    assert "demo stopped" in output.read_text()


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
    assert "monitor/demo/simulator/extension.py" in names

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
