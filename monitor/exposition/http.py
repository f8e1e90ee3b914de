"""The HTTP endpoints: `/metrics` for Prometheus, `/healthz` and `/readyz` for supervisors.

A stdlib `ThreadingHTTPServer` on a daemon thread, one thread per connection, so a slow
scrape never holds up a health check. HTTP/1.1 with keep-alive (Prometheus reuses its
connection), HTTPS when a certificate is given, client certificates when a client CA is.
Requests are logged at DEBUG only: a scrape every 15 s is not news.

Clients that hold connections open must not take the process down with them: at most
`MAX_CONNECTIONS` are served at once (one more is answered 503 by the accept loop itself, with
no thread for it), a request has `HEAD_TIMEOUT_SECONDS` in all to send its head, and running
out of file descriptors makes the accept loop pause instead of spin.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import socket
import socketserver
import ssl
import threading
import time
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
from monitor.config.settings import HttpSettings
from monitor.core.errors import ConfigError, MonitorError
from monitor.exposition.metrics import Body, exposition

log = logging.getLogger(__name__)

#: How long a kept-alive connection may sit idle between requests, and how long one read or
#: write of a response may stall, before the connection is closed.
CONNECTION_TIMEOUT_SECONDS = 30.0
#: Connections served at once; one more is answered 503 at once and closed.
MAX_CONNECTIONS = 64
#: The time a request has, in all, to send its request line and headers. A deadline, not a
#: timeout per read: a client sending a byte a second is cut off all the same.
HEAD_TIMEOUT_SECONDS = 10.0

_TEXT = "text/plain; charset=utf-8"
# What a response is written in: large enough that a scrape is a handful of writes.
_WRITE_BYTES = 8 * 1024 * 1024
# How often the accept loop looks for a shutdown request: the bound on close()'s wait.
_SHUTDOWN_POLL_SECONDS = 0.05
# Health answers are about now; no proxy or browser should keep one.
_NO_STORE = (("Cache-Control", "no-store"),)
# Connections waiting to be accepted: a burst beyond the cap should get its 503 at once, not
# wait for SYN retries because the stdlib's backlog of 5 was full.
_BACKLOG = 128
# What a connection beyond the cap is told. It is written by the accept loop in one send on
# a fresh socket, whose buffer is empty, so it never blocks.
_BUSY_BODY = b"too many connections; try again shortly\n"
_BUSY_RETRY_AFTER_SECONDS = 1
# How long the accept loop pauses when the process is out of file descriptors: the pending
# connection keeps the listening socket readable, so without a pause the loop would spin.
_DESCRIPTOR_BACKOFF_SECONDS = 0.1
# Warnings a flood could repeat (a full house, no descriptors) are logged at most this often.
_WARNING_INTERVAL_SECONDS = 300.0


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
class _Limits:
    connections: int
    head_seconds: float
    idle_seconds: float


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


class _HeadDeadlineReader(io.RawIOBase):
    """The reading side of a connection, which holds each request's head to a deadline.

    The first request's deadline runs from the accept (a connection that sends nothing is
    closed then too); a later request's from its first byte, after an idle wait of up to
    `idle_seconds`. Once the head is read, reads and writes get `idle_seconds` each again.
    """

    def __init__(self, connection: socket.socket, limits: _Limits) -> None:
        super().__init__()
        self._connection = connection
        self._limits = limits
        self._in_head = True
        self._deadline: float | None = time.monotonic() + limits.head_seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._in_head and self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the request head took too long")
            self._connection.settimeout(remaining)
        count = self._connection.recv_into(buffer)
        if self._in_head and self._deadline is None and count:
            self._deadline = time.monotonic() + self._limits.head_seconds
        return count

    def start_head(self) -> None:
        """A new request begins: its deadline starts with its first byte."""
        if not self._in_head:
            self._in_head = True
            self._deadline = None
            self._connection.settimeout(self._limits.idle_seconds)

    def head_read(self) -> None:
        """The head is in: what follows (the response) has the per-operation timeout."""
        self._in_head = False
        self._connection.settimeout(self._limits.idle_seconds)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a kept-alive connection
    # waits for the client's delayed ACK (40 ms) before every response body.
    disable_nagle_algorithm = True
    # Made in setup(), which runs before anything reads.
    _reader: _HeadDeadlineReader

    def __init__(self, *args: Any, endpoints: _Endpoints, limits: _Limits, **kwargs: Any) -> None:
        # Set before the base class's __init__, which handles the whole connection.
        self.endpoints = endpoints
        self._limits = limits
        super().__init__(*args, **kwargs)

    def version_string(self) -> str:
        # The Server header; the stdlib's would also tell the world the Python version.
        return f"fastlaunch-monitor/{__version__}"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self._limits.idle_seconds)
        reader = _HeadDeadlineReader(self.connection, self._limits)
        self.rfile.close()
        self.rfile = io.BufferedReader(reader)
        self._reader = reader
        # The server hands over TLS connections before their handshake, so a slow or broken
        # client stalls its own thread here, and never the accept loop. The handshake is part
        # of the first request's time to send its head.
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(self._limits.head_seconds)
            self.connection.do_handshake()

    def handle_one_request(self) -> None:
        self._reader.start_head()
        super().handle_one_request()

    def parse_request(self) -> bool:
        # The base class reads the headers in here; a timeout raised while it does is caught
        # by handle_one_request, which closes the connection.
        parsed = super().parse_request()
        self._reader.head_read()
        return parsed

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
    """A threading HTTP server on any address family, optionally TLS, that can drop its clients.

    It serves at most `max_connections` at once and turns the next ones away from its accept
    loop (`verify_request`), and pauses that loop while the process is out of descriptors.
    """

    request_queue_size = _BACKLOG

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        handler: Callable[..., BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None,
        max_connections: int,
    ) -> None:
        # Read by TCPServer.__init__ when it creates the socket.
        self.address_family = family
        self._tls = tls
        self._max_connections = max_connections
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._stopping = threading.Event()
        self._full_warning = _Occasional(_WARNING_INTERVAL_SECONDS)
        self._descriptors_warning = _Occasional(_WARNING_INTERVAL_SECONDS)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's FQDN, which can stall start-up for
        # seconds where DNS is slow; nothing here uses the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            connection, address = super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._descriptors_warning.warning(
                    "out of file descriptors (%s): new HTTP connections wait until some "
                    "close; if this lasts, raise the limit (LimitNOFILE= in the unit)",
                    errno.errorcode[exc.errno],
                )
                # The waiting connection keeps the listening socket readable: without a pause
                # the loop would go straight back to a failing accept, at 100% CPU.
                self._stopping.wait(_DESCRIPTOR_BACKOFF_SECONDS)
            # The base class takes an OSError here to mean "no connection this time".
            raise
        if self._tls is not None:
            connection = self._tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Runs on the accept loop, before any thread is started for the connection.
        with self._connections_lock:
            open_connections = len(self._connections)
            if open_connections < self._max_connections:
                self._connections.add(request)
                return True
        self._full_warning.warning(
            "%d HTTP connections open, the most served at once: new ones get 503 until some close",
            open_connections,
        )
        _turn_away(request)
        return False

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()

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


class _Occasional:
    """Logs a warning at most once per `interval` seconds: for what a flood would repeat."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: float | None = None

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last >= self._interval:
            self._last = now
            log.warning(message, *args)


def _busy_answer() -> bytes:
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Server: fastlaunch-monitor/{__version__}\r\n"
        f"Content-Type: {_TEXT}\r\n"
        f"Content-Length: {len(_BUSY_BODY)}\r\n"
        f"Retry-After: {_BUSY_RETRY_AFTER_SECONDS}\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("ascii") + _BUSY_BODY


_BUSY_ANSWER = _busy_answer()
# Enough to take in any request head a client sent before it read the answer.
_DRAIN_BYTES = 64 * 1024


def _turn_away(connection: socket.socket) -> None:
    """Answer a connection beyond the cap with a 503, without ever blocking; it is closed next.

    Over TLS nothing can be said before a handshake, which could stall the accept loop, so the
    connection is only closed.
    """
    if isinstance(connection, ssl.SSLSocket):
        return
    # OSError: the client is gone already, or sent more than fits in one read.
    with contextlib.suppress(OSError):
        connection.setblocking(False)
        connection.send(_BUSY_ANSWER)
        # What the client sent is read and dropped: closing a socket with unread data resets
        # the connection, and the reset can reach the client before it reads the answer.
        connection.recv(_DRAIN_BYTES)


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
    tls: ssl.SSLContext | None = None,
    max_connections: int = MAX_CONNECTIONS,
    head_timeout: float = HEAD_TIMEOUT_SECONDS,
    idle_timeout: float = CONNECTION_TIMEOUT_SECONDS,
) -> HttpServer:
    """Listen on `host:port` (port 0: any free port) and serve the endpoints on a daemon thread.

    `GET /metrics` renders `registry` (content negotiation and gzip as Prometheus expects);
    `/healthz` is 200 while `healthy()`, else 503; `/readyz` is 200 or 503 by `ready()`,
    with the checks as JSON. With `tls` (`server_tls_context`) it speaks HTTPS only.
    At most `max_connections` are served at once, the next ones get a 503 at once; a request
    has `head_timeout` seconds in all to send its head, a kept-alive connection may be idle
    for `idle_timeout`. The defaults are the module's constants, which tests may shrink.
    Raises `MonitorError` when it cannot listen.
    """
    limits = _Limits(max_connections, head_timeout, idle_timeout)
    handler = partial(_Handler, endpoints=_Endpoints(registry, healthy, ready), limits=limits)
    try:
        family, address = _bind_address(host, port)
        server = _Server(address, family, handler, tls, max_connections)
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


def server_tls_context(http: HttpSettings, source: str) -> ssl.SSLContext | None:
    """The TLS context `[http]` asks for, or `None` for plain HTTP.

    What `run` serves with and what `check` loads, so that both accept and refuse the same
    files. `tls_cert_file` holds the certificate (chain), and its private key too when
    `tls_key_file` is not given; TLS 1.2 or later; with `tls_client_ca_file`, clients need a
    certificate that CA signed. Raises `ConfigError` naming the key in `source` (the config
    file) when a file does not load.
    """
    if http.tls_cert_file is None:
        # The config refuses a key or a client CA without a certificate.
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_certificate(context, http.tls_cert_file, http.tls_key_file, source)
    if http.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=http.tls_client_ca_file)
        except OSError as exc:
            problem = (
                f"is not a PEM bundle of CA certificates ({_reason(exc)}); fix the file"
                if isinstance(exc, ssl.SSLError)
                else f"cannot be read ({_reason(exc)})"
            )
            raise ConfigError(
                source, "http.tls_client_ca_file", f"{http.tls_client_ca_file} {problem}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_certificate(
    context: ssl.SSLContext, cert_file: Path, key_file: Path | None, source: str
) -> None:
    try:
        # Loaded alone first, so that an error can say which of the two files is wrong.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except OSError as exc:
        problem = (
            f"holds no PEM certificate ({_reason(exc)}); fix the file"
            if isinstance(exc, ssl.SSLError)
            else f"cannot be read ({_reason(exc)})"
        )
        raise ConfigError(source, "http.tls_cert_file", f"{cert_file} {problem}") from None
    key_key, holder = ("http.tls_key_file", key_file) if key_file else ("http.tls_cert_file", None)
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal, and a daemon would hang.
        asked.append(True)
        return b""

    try:
        context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    except OSError as exc:
        where = holder or cert_file
        if not isinstance(exc, ssl.SSLError):
            message = f"{where} cannot be read ({_reason(exc)})"
        elif asked:
            message = f"the private key in {where} is encrypted; give it unencrypted"
        elif getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            message = f"the key in {where} is not the key of the certificate in {cert_file}"
        elif holder is None:
            message = (
                f"{cert_file} holds no private key; append the certificate's key to it or name "
                "the key's file in tls_key_file"
            )
        else:
            message = f"{holder} holds no PEM private key ({_reason(exc)}); fix the file"
        raise ConfigError(source, key_key, message) from None


def _reason(exc: OSError) -> str:
    """OpenSSL's reason (`NO_CERTIFICATE_OR_CRL_FOUND`), else the system's, for one line."""
    reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
    # An SSLError's text ends in the place in CPython's source it came from.
    return str(reason).split(" (_ssl.c:")[0]
