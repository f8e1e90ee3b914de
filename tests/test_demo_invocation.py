"""The demo names the commands to try as it was itself started, so they run as printed."""

from __future__ import annotations

import pytest

from monitor.demo.run import invoked_as

VENV_PYTHON = "/home/me/fastlaunch monitor/.venv/bin/python"


def on_path(**found: str):
    """A `shutil.which` whose PATH holds exactly `found` (name: path)."""
    return found.get


@pytest.mark.parametrize(
    ("argv0", "which", "command"),
    [
        (".venv/bin/fastlaunch-monitor", on_path(), ".venv/bin/fastlaunch-monitor"),
        (
            "/opt/fastlaunch-monitor/bin/fastlaunch-monitor",
            on_path(**{"fastlaunch-monitor": "/opt/fastlaunch-monitor/bin/fastlaunch-monitor"}),
            "fastlaunch-monitor",
        ),
        (
            "/srv/my venv/bin/fastlaunch-monitor",
            on_path(**{"fastlaunch-monitor": "/usr/local/bin/fastlaunch-monitor"}),
            "'/srv/my venv/bin/fastlaunch-monitor'",
        ),
    ],
    ids=["as the quickstart runs it", "found on the PATH", "another one on the PATH"],
)
def test_a_console_script_is_named_as_it_was_run(argv0, which, command):
    assert invoked_as(argv0, VENV_PYTHON, which) == command


@pytest.mark.parametrize(
    ("argv0", "which", "command"),
    [
        ("/src/monitor/__main__.py", on_path(), f"'{VENV_PYTHON}' -m monitor"),
        ("/src/monitor/__main__.py", on_path(python=VENV_PYTHON), "python -m monitor"),
        # The system's python, even if the venv's links to it, lacks what the venv installed.
        (
            "/src/monitor/__main__.py",
            on_path(python="/usr/bin/python"),
            f"'{VENV_PYTHON}' -m monitor",
        ),
        ("-c", on_path(), f"'{VENV_PYTHON}' -m monitor"),
        ("", on_path(), f"'{VENV_PYTHON}' -m monitor"),
    ],
    ids=["python -m", "the python on the PATH", "another python on the PATH", "python -c", "none"],
)
def test_otherwise_it_is_this_python_with_dash_m_monitor(argv0, which, command):
    assert invoked_as(argv0, VENV_PYTHON, which) == command
