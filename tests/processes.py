"""Helpers for tests that start processes: the real tools (Alertmanager, Prometheus) on
loopback, and the daemon's own poll processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

from tests.fakes import wait_for

#: How many free ports a tool is given before its start is a failure.
START_ATTEMPTS = 3


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited within 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start_on_free_port(
    tool: str,
    command: list[str],
    log: Path,
    started: list[subprocess.Popen[bytes]],
) -> tuple[subprocess.Popen[bytes], str]:
    """Run a Prometheus-family `command` (Prometheus, Alertmanager) listening on a free loopback
    port (its `--web.listen-address`) until it answers `GET /-/ready`.

    The free port is found before the tool binds it, so another process may take it in
    between: then the tool exits at once and another port is tried. Every process started is
    appended to `started`, for the caller to stop. Returns the process and its base URL.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [*command, f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: process.poll() is not None or _ready(url),  # noqa: B023 - used at once
            timeout=20.0,
            what=f"{tool} to be ready",
        )
        if process.poll() is None:
            return process, url
        output = log.read_text(errors="replace")
        if "address already in use" not in output or attempt == START_ATTEMPTS:
            raise AssertionError(f"{tool} exited early:\n{output}")
    raise AssertionError("unreachable")  # the last attempt returns or raises


def children_of(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
