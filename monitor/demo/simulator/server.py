"""A moto server with the fast launch extension, on loopback, for the demo and end-to-end tests.

The server runs in a thread of this process and serves moto's in-process backends, so the
simulators `simulator_for` returns here are the ones the server answers from.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from monitor.demo.simulator.extension import install


class SimulatorServer:
    """A running moto server; `endpoint_url` is where clients send EC2 (and STS) calls."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port
        self.endpoint_url = f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget every account's state in this process: moto's backends and the simulators."""
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()

    def stop(self) -> None:
        """Stop serving and wait for the server thread to end."""
        self._server.stop()

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(host: str = "127.0.0.1", port: int = 0) -> SimulatorServer:
    """Install the extension and start a moto server on `host`; port 0 picks a free one."""
    from moto.server import ThreadedMotoServer

    install()
    # werkzeug logs every request at INFO, to a handler of its own when none is configured;
    # the simulator's traffic is not worth a line per poll.
    access_log = logging.getLogger("werkzeug")
    if access_log.level == logging.NOTSET:
        access_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    return SimulatorServer(server, bound_host, bound_port)
