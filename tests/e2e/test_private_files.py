"""What the daemon writes is its user's alone, and a secret file others can read is said so
once at start, by the key and the file, never by its content."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import aws_env, cli, write_config

pytestmark = pytest.mark.slow

CANARY = "https://hooks.example.com/services/secret-canary-7f3a"


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask of most logins (the daemon inherits it), under which new files are readable
    by every user."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def url_file_webhook(tmp_path: Path, file_mode: int) -> str:
    secret = tmp_path / "slack-url"
    secret.write_text(CANARY + "\n")
    secret.chmod(file_mode)
    return f'[[alerts.webhooks]]\nname = "ops"\nformat = "slack"\nurl_file = "{secret}"\n'


def secret_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "WARNING" in line and "chmod" in line]


@pytest.mark.usefixtures("umask_022")
def test_the_daemons_sqlite_files_are_0600_and_a_readable_secret_is_warned_of_once(
    sim, start_daemon, tmp_path
):
    sim.seed(3)
    daemon = start_daemon(extra=url_file_webhook(tmp_path, 0o644))
    daemon.next_poll()
    database = tmp_path / "history.sqlite3"
    # Read while the daemon runs: it keeps the -wal and -shm files open.
    modes = {
        suffix: mode(database.with_name(database.name + suffix)) for suffix in ("", "-wal", "-shm")
    }
    assert daemon.terminate() == 0
    stderr = daemon.stderr()

    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    (warning,) = secret_warnings(stderr)
    assert f"{daemon.config}: alerts.webhooks[0].url_file: {tmp_path / 'slack-url'} " in warning
    assert f"chmod 600 {tmp_path / 'slack-url'}" in warning
    assert "secret-canary" not in stderr


def test_check_warns_of_a_world_readable_secret_file_and_not_of_a_private_one(tmp_path):
    readable = tmp_path / "readable"
    private = tmp_path / "private"
    readable.mkdir()
    private.mkdir()
    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    env = aws_env("http://127.0.0.1:9")
    results = {}
    for folder, file_mode in ((readable, 0o644), (private, 0o600)):
        config = write_config(
            folder, "http://127.0.0.1:9", url, url_file_webhook(folder, file_mode)
        )
        results[folder] = cli(config, "check", env=env)

    (warning,) = secret_warnings(results[readable].stderr)
    assert f"alerts.webhooks[0].url_file: {readable / 'slack-url'} is readable by every" in warning
    assert secret_warnings(results[private].stderr) == []
    assert all("secret-canary" not in r.stdout + r.stderr for r in results.values())
