"""Debian's tinyproxy on loopback: a real HTTP proxy for tests that send webhooks through one.

    with tinyproxies(tmp_path) as start:
        proxy = start(credentials=("alice", "s3cret"))
        ...send through proxy.url_with("alice", "s3cret")...
        assert proxy.wait_for_request("CONNECT ")

Each proxy has its own config file and log in a folder of its own, listens on a free loopback
port, and is stopped at the end of the `with`. Its log records every request line it got
(`CONNECT 127.0.0.1:40123 HTTP/1.1`, `POST http://127.0.0.1:40124/hook HTTP/1.1`); every
request it forwards in absolute form carries `Via: 1.1 tinyproxy-under-test (...)`.
Without tinyproxy installed, `tinyproxy_binary` skips the test, except under `CI=true`: there
it fails, since `.ci/run` installs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes import wait_for
from tests.processes import START_ATTEMPTS, free_port, stop

BINARY = "tinyproxy"

#: The name the proxy gives itself in the `Via` header it adds to forwarded requests.
VIA_NAME = "tinyproxy-under-test"

_REQUEST_LINE = re.compile(r"Request \(file descriptor \d+\): (.*)")


def tinyproxy_binary() -> str:
    """The tinyproxy executable; skipped without it, except under CI=true: there, failed."""
    found = shutil.which(BINARY)
    if found is None:
        problem = f"{BINARY} is not installed (Debian package tinyproxy)"
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"PROXY TESTS CANNOT RUN IN CI: {problem}; .ci/run must install it.",
                pytrace=False,
            )
        pytest.skip(problem)
    return found


class Tinyproxy:
    """One running tinyproxy: its address, and what its log says it was asked."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL with credentials in it, as a webhook's `proxy` names them."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """Every request line the proxy got so far, oldest first."""
        if not self.log.exists():
            return []
        return _REQUEST_LINE.findall(self.log.read_text(errors="replace"))

    def wait_for_request(self, start: str) -> str:
        """The first request line that starts with `start`, once it is logged."""
        return wait_for(
            lambda: next((r for r in self.requests() if r.startswith(start)), None),
            timeout=5.0,
            what=f"tinyproxy to log a request starting {start!r}",
        )


def _config(port: int, log: Path, credentials: tuple[str, str] | None) -> str:
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        f'LogFile "{log}"',
        # Connect level and up: every request line, and tinyproxy's errors.
        "LogLevel Connect",
        "MaxClients 20",
        "Allow 127.0.0.1",
        f'ViaProxyName "{VIA_NAME}"',
    ]
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    # No ConnectPort line: CONNECT to any port, the receivers' free ones included.
    return "\n".join(lines) + "\n"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def tinyproxies(folder: Path) -> Iterator[Callable[..., Tinyproxy]]:
    """A starter of tinyproxies (`credentials=(user, password)` requires basic auth), each
    in a folder of its own under `folder`; every one is stopped when the context ends."""
    binary = tinyproxy_binary()
    started: list[subprocess.Popen[bytes]] = []

    def start(*, credentials: tuple[str, str] | None = None) -> Tinyproxy:
        home = folder / f"tinyproxy-{len(started)}"
        home.mkdir(parents=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            config = home / "tinyproxy.conf"
            config.write_text(_config(port, home / "tinyproxy.log", credentials))
            output = home / "stderr.log"
            with output.open("wb") as stderr:
                # -d: in the foreground, a child of the test, stopped by it.
                process = subprocess.Popen(
                    [binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
                )
            started.append(process)
            wait_for(
                lambda: process.poll() is not None or _accepts(port),  # noqa: B023 - used at once
                timeout=10.0,
                what="tinyproxy to listen",
            )
            if process.poll() is None:
                return Tinyproxy(process, port, home / "tinyproxy.log")
            problem = output.read_text(errors="replace")
            if "listening sockets" not in problem or attempt == START_ATTEMPTS:
                raise AssertionError(f"tinyproxy exited early:\n{problem}")
        raise AssertionError("unreachable")  # the last attempt returns or raises

    try:
        yield start
    finally:
        for process in started:
            stop(process)
