"""The HTTP endpoint's limits, tried with real sockets on loopback: clients that hold
connections open, send their request slowly, or exhaust the process's file descriptors."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from monitor.exposition.current import CurrentState
from monitor.exposition.http import HttpServer, serve
from monitor.exposition.metrics import build_registry
from tests.fakes import wait_for
from tests.test_http import Health, fetch


def start(**limits: float) -> HttpServer:
    registry, _ = build_registry(CurrentState())
    return serve("127.0.0.1", 0, registry, healthy=lambda: True, ready=Health().ready, **limits)


@pytest.fixture
def connections() -> Iterator[ExitStack]:
    """Where a test's sockets go, so that they are closed however the test ends."""
    with ExitStack() as stack:
        yield stack


def kept_alive(server: HttpServer, stack: ExitStack) -> socket.socket:
    """A connection that has had its answer to one request and is now held open, idle."""
    connection = stack.enter_context(socket.create_connection((server.host, server.port), 5))
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: monitor\r\n\r\n")
    answer = b""
    while not answer.endswith(b"ok\n"):
        chunk = connection.recv(4096)
        assert chunk, f"closed after {answer!r}"
        answer += chunk
    return connection


def read_to_the_end(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return received


def seconds_until_closed(connection: socket.socket, *, byte_every: float, limit: float) -> float:
    """Send one more header byte every `byte_every` s, a slowloris, until the server closes
    the connection; how long that took (`limit` if it never did)."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < limit:
        try:
            connection.sendall(b"X")
            readable, _, _ = select.select([connection], [], [], byte_every)
            if readable and not connection.recv(4096):
                return time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return elapsed


def test_a_65th_connection_is_answered_503_at_once_and_closed_without_a_thread(connections):
    server = start()
    try:
        for _ in range(64):
            kept_alive(server, connections)
        threads = threading.active_count()
        started = time.monotonic()

        extra = connections.enter_context(socket.create_connection((server.host, server.port), 5))
        answer = read_to_the_end(extra)
        waited = time.monotonic() - started
        threads_then = threading.active_count()
    finally:
        server.close()

    head, _, body = answer.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["Connection"] == "close"
    assert int(headers["Retry-After"]) > 0
    assert headers["Content-Type"].startswith("text/plain")
    assert int(headers["Content-Length"]) == len(body) > 0
    assert waited < 1.0
    assert threads_then == threads


def test_a_request_beyond_the_cap_reads_its_503(connections):
    server = start(max_connections=2)
    try:
        for _ in range(2):
            kept_alive(server, connections)

        reply = fetch(f"{server.url}/healthz")
    finally:
        server.close()

    assert reply.status == 503
    assert reply.headers["Connection"] == "close"


def test_healthz_answers_again_as_soon_as_a_held_connection_closes(connections):
    server = start()
    try:
        held = [kept_alive(server, connections) for _ in range(64)]
        assert fetch(f"{server.url}/healthz").status == 503

        held[0].close()

        reply = wait_for(
            lambda: (r := fetch(f"{server.url}/healthz")).status == 200 and r,
            timeout=2.0,
            what="a free place",
        )
    finally:
        server.close()

    assert reply.body == b"ok\n"


def test_a_slowloris_is_cut_off_at_the_head_deadline(connections):
    server = start(head_timeout=1.0)
    try:
        slow = connections.enter_context(socket.create_connection((server.host, server.port), 5))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")

        lasted = seconds_until_closed(slow, byte_every=0.1, limit=5.0)
        answered = fetch(f"{server.url}/healthz").status
    finally:
        server.close()

    assert 0.9 <= lasted < 2.0
    assert answered == 200


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(connections):
    server = start(head_timeout=1.0)
    try:
        silent = connections.enter_context(socket.create_connection((server.host, server.port), 5))
        started = time.monotonic()
        read_to_the_end(silent)
        lasted = time.monotonic() - started
    finally:
        server.close()

    assert 0.9 <= lasted < 2.0


@pytest.mark.slow
def test_by_default_a_request_has_10_seconds_to_send_its_head(connections):
    server = start()
    try:
        slow = connections.enter_context(socket.create_connection((server.host, server.port), 5))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")

        lasted = seconds_until_closed(slow, byte_every=1.0, limit=15.0)
    finally:
        server.close()

    assert 9.9 <= lasted < 11.0


def test_a_kept_alive_connection_waits_idle_for_the_idle_timeout_not_the_head_deadline(
    connections,
):
    server = start(head_timeout=0.5, idle_timeout=1.5)
    try:
        connection = kept_alive(server, connections)
        # Idle for longer than a head may take: the deadline of the next request starts with
        # its first byte.
        time.sleep(0.8)
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: monitor\r\n\r\n")
        second = connection.recv(4096)
        answered = time.monotonic()
        # Nothing more is sent: the connection is closed once idle for the idle timeout.
        remainder = read_to_the_end(connection)
        idle = time.monotonic() - answered
    finally:
        server.close()

    assert second.startswith(b"HTTP/1.1 200 ")
    assert remainder in (b"", b"ok\n")
    assert 1.3 <= idle < 2.5


# --- out of file descriptors ---------------------------------------------------------------

SERVER_WITH_FEW_DESCRIPTORS = """
import logging, os, resource, sys
from prometheus_client import CollectorRegistry
from monitor.exposition.http import Readiness, serve

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
server = serve(
    "127.0.0.1", 0, CollectorRegistry(), healthy=lambda: True,
    ready=lambda: Readiness(True, {}), head_timeout=60.0, idle_timeout=60.0,
)
# Room for a few connections beyond what is open now.
limit = len(os.listdir("/proc/self/fd")) + 5
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.port, limit, flush=True)
sys.stdin.read()
server.close()
"""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_out_of_descriptors_the_accept_loop_waits_without_spinning_and_recovers(
    tmp_path, connections
):
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER_WITH_FEW_DESCRIPTORS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        assert process.stdin is not None
        port, limit = map(int, process.stdout.readline().split())
        for _ in range(20):
            connections.enter_context(socket.create_connection(("127.0.0.1", port), 5))
        wait_for(lambda: open_descriptors(process.pid) >= limit, what="every descriptor used")

        before = cpu_seconds(process.pid)
        time.sleep(2.0)
        spent = cpu_seconds(process.pid) - before
        connections.close()
        reply = wait_for(
            lambda: (r := fetch(f"http://127.0.0.1:{port}/healthz")).status == 200 and r,
            what="the server to serve again",
        )
        process.stdin.close()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert spent < 0.3
    assert reply.body == b"ok\n"
    warnings = [line for line in log.read_text().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "out of file descriptors (EMFILE)" in warnings[0]
