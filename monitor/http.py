"""The HTTP endpoints: `/metrics` for Prometheus, `/healthz` and `/readyz` for supervisors.

A stdlib `ThreadingHTTPServer` on a daemon thread, one thread per connection, so a slow
scrape never holds up a health check. HTTP/1.1 with keep-alive (Prometheus reuses its
connection), HTTPS when a certificate is given, client certificates when a client CA is.
Requests are logged at DEBUG only: a scrape every 15 s is not news.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import gzip_accepted

from monitor import __version__
from monitor.errors import MonitorError
from monitor.metrics import Body, exposition

log = logging.getLogger(__name__)

#: How long a connection may sit idle (keep-alive) or stall mid-request before it is closed.
CONNECTION_TIMEOUT_SECONDS = 30.0

_TEXT = "text/plain; charset=utf-8"
# What a response is written in: large enough that a scrape is a handful of writes.
_WRITE_BYTES = 8 * 1024 * 1024
# How often the accept loop looks for a shutdown request: the bound on close()'s wait.
_SHUTDOWN_POLL_SECONDS = 0.05
# Health answers are about now; no proxy or browser should keep one.
_NO_STORE = (("Cache-Control", "no-store"),)


@dataclass(frozen=True, slots=True)
class Readiness:
    """The answer of `/readyz`: ready or not, and each check's "ok" or what fails."""

    ready: bool
    checks: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Endpoints:
    registry: CollectorRegistry
    healthy: Callable[[], bool]
    ready: Callable[[], Readiness]


@dataclass(frozen=True, slots=True)
class _Response:
    status: HTTPStatus
    content_type: str
    body: Body
    headers: tuple[tuple[str, str], ...] = ()


def _batches(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`chunks` joined into writes of at least `_WRITE_BYTES` (the last may be shorter).

    A scrape is thousands of small gzip members. Each write gives up the GIL and must win it
    back, which behind busy poll threads takes up to the interpreter's switch interval (5 ms),
    so fewer, larger writes are what keeps a scrape fast while a cycle runs.
    """
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= _WRITE_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _whole(body: bytes) -> Body:
    return Body(len(body), (body,))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_SECONDS
    # Headers and body go out in separate writes; with Nagle on, a kept-alive connection
    # waits for the client's delayed ACK (40 ms) before every response body.
    disable_nagle_algorithm = True

    def __init__(self, *args: Any, endpoints: _Endpoints, **kwargs: Any) -> None:
        # Set before the base class's __init__, which handles the whole connection.
        self.endpoints = endpoints
        super().__init__(*args, **kwargs)

    def version_string(self) -> str:
        # The Server header; the stdlib's would also tell the world the Python version.
        return f"fastlaunch-monitor/{__version__}"

    def setup(self) -> None:
        super().setup()
        # The server hands over TLS connections before their handshake, so a slow or broken
        # client stalls its own thread here (bounded by the timeout) and never the accept loop.
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self) -> None:
        self._send(self._route(), head=False)

    def do_HEAD(self) -> None:
        self._send(self._route(), head=True)

    def _not_allowed(self) -> None:
        # The request may carry a body we do not read, so this connection cannot be reused.
        self.close_connection = True
        response = _Response(
            HTTPStatus.METHOD_NOT_ALLOWED,
            _TEXT,
            _whole(b"only GET and HEAD are allowed\n"),
            (("Allow", "GET, HEAD"), ("Connection", "close")),
        )
        self._send(response, head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _route(self) -> _Response:
        path = urlsplit(self.path).path
        if path == "/metrics":
            return self._metrics()
        if path == "/healthz":
            return self._health()
        if path == "/readyz":
            return self._readiness()
        return _Response(HTTPStatus.NOT_FOUND, _TEXT, _whole(b"not found: try /metrics\n"))

    def _metrics(self) -> _Response:
        try:
            rendered = exposition(self.endpoints.registry, self.headers.get("Accept"))
        except Exception:
            # A broken collector must cost one scrape, not the connection or the server.
            log.exception("could not render /metrics")
            return _Response(HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, _whole(b"metrics failed\n"))
        headers = (("Vary", "Accept, Accept-Encoding"),)
        if not gzip_accepted(self.headers.get("Accept-Encoding") or ""):
            return _Response(HTTPStatus.OK, rendered.content_type, rendered.plain(), headers)
        return _Response(
            HTTPStatus.OK,
            rendered.content_type,
            rendered.gzipped(),
            (*headers, ("Content-Encoding", "gzip")),
        )

    def _health(self) -> _Response:
        try:
            healthy = self.endpoints.healthy()
        except Exception:
            log.exception("the health check raised")
            healthy = False
        if healthy:
            return _Response(HTTPStatus.OK, _TEXT, _whole(b"ok\n"), _NO_STORE)
        return _Response(HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, _whole(b"unhealthy\n"), _NO_STORE)

    def _readiness(self) -> _Response:
        try:
            readiness = self.endpoints.ready()
        except Exception as exc:
            # Only the class: a message could carry what the check touched (a database URL).
            log.warning("the readiness check raised %s", type(exc).__name__)
            readiness = Readiness(False, {"readiness": f"the check raised {type(exc).__name__}"})
        body = json.dumps({"ready": readiness.ready, "checks": readiness.checks}) + "\n"
        status = HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE
        return _Response(status, "application/json", _whole(body.encode()), _NO_STORE)

    def _send(self, response: _Response, *, head: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(response.body.length))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if not head:
            for batch in _batches(response.body.chunks):
                self.wfile.write(batch)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server on any address family, optionally TLS, that can drop its clients."""

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        handler: Callable[..., BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        # Read by TCPServer.__init__ when it creates the socket.
        self.address_family = family
        self._tls = tls
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's FQDN, which can stall start-up for
        # seconds where DNS is slow; nothing here uses the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        if self._tls is not None:
            connection = self._tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets, timeouts and failed TLS handshakes are the client's business; the handler
        # answers its own failures with a 500. Nothing here belongs on stderr.
        log.debug("HTTP connection from %s failed", client_address, exc_info=True)

    def drop_connections(self) -> None:
        """Close every open connection, idle keep-alive ones included."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: its client closed it already.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class HttpServer:
    """A running endpoint server; `close()` stops it."""

    def __init__(self, server: _Server, thread: threading.Thread, scheme: str) -> None:
        self._server = server
        self._thread = thread
        self._scheme = scheme
        self._closed = False

    @property
    def host(self) -> str:
        """The address it is bound to."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port it is bound to (the one the system chose when 0 was asked)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Its base URL, e.g. `http://127.0.0.1:9877` or `https://[::1]:9877`."""
        return f"{self._scheme}://{_authority(self.host, self.port)}"

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop open connections, and wait up to `timeout` s for the thread."""
        if self._closed:
            return
        self._closed = True
        # Returns within serve_forever's poll interval: the accept loop never blocks long.
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()
        self._thread.join(timeout)


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    healthy: Callable[[], bool],
    ready: Callable[[], Readiness],
    tls_cert_file: Path | None = None,
    tls_key_file: Path | None = None,
    tls_client_ca_file: Path | None = None,
) -> HttpServer:
    """Listen on `host:port` (port 0: any free port) and serve the endpoints on a daemon thread.

    `GET /metrics` renders `registry` (content negotiation and gzip as Prometheus expects);
    `/healthz` is 200 while `healthy()`, else 503; `/readyz` is 200 or 503 by `ready()`,
    with the checks as JSON. With `tls_cert_file` and `tls_key_file` it speaks HTTPS only
    (TLS 1.2 or later); with `tls_client_ca_file` too, clients need a certificate that CA
    signed. Raises `MonitorError` when it cannot listen or load the TLS files.
    """
    tls = _tls_context(tls_cert_file, tls_key_file, tls_client_ca_file)
    handler = partial(_Handler, endpoints=_Endpoints(registry, healthy, ready))
    try:
        family, address = _bind_address(host, port)
        server = _Server(address, family, handler, tls)
    except OSError as exc:
        where = _authority(host, port)
        raise MonitorError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS},
        name="http",
        daemon=True,
    )
    thread.start()
    return HttpServer(server, thread, "https" if tls else "http")


def _bind_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    # The first address the resolver gives, in its family: "::1" gets an IPv6 socket.
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return family, address


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_context(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None
) -> ssl.SSLContext | None:
    if cert_file is None and key_file is None and client_ca_file is None:
        return None
    if cert_file is None or key_file is None:
        raise MonitorError("HTTPS needs both a TLS certificate file and its key file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise MonitorError(
            f"cannot load the TLS certificate {cert_file} with key {key_file}: "
            f"{exc.strerror or exc}"
        ) from exc
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MonitorError(
                f"cannot load the TLS client CA {client_ca_file}: {exc.strerror or exc}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context
