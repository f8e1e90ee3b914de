"""Real webhook receivers on loopback, for any test that sends alerts over HTTP.

A `Receiver` is a threaded HTTP/1.1 server on 127.0.0.1 (HTTPS when given a server TLS
context) that records every request it gets and answers from a script:

    with Receiver() as receiver:
        receiver.answer(Answer(503, headers=(("Retry-After", "7"),)), Answer(200))
        ...send to receiver.url_for("/hook")...
        first, second = receiver.wait_for_requests(2)
        assert first.json()["event_id"] == second.json()["event_id"]

Queued answers (`answer`) are used one per request, in order; once they run out, every request
gets the standing answer (`always`, 200 by default), unless a `respond_with` function decides.
An answer can be delayed (to provoke a read timeout), hang up without a word, or be raw bytes
(to provoke a protocol error).

`CertificateAuthority` makes a private CA and server certificates for an HTTPS receiver;
`refusing_url` gives a URL whose port refuses connections. `tests/alerts/conftest.py` wraps
these in fixtures; tests elsewhere import them from `tests.alerts.receivers`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"

# A handler waits this long for a slow client, so a stuck test connection cannot pin a thread.
_SOCKET_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver does with one request.

    `status`, `headers` and `body` make an ordinary answer (with a `Content-Length`), sent
    after `delay` seconds. `hang_up` closes the connection without answering; `raw` is sent
    as the whole answer, byte for byte, and the connection closed.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    delay: float = 0.0
    hang_up: bool = False
    raw: bytes | None = None

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Answer:
        """A redirect to `location`."""
        return cls(status, headers=(("Location", location),))


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the receiver got it; `at` is `time.monotonic()` on arrival."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        """The value of header `name` (any case), or `None` if it was not sent."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def json(self) -> Any:
        """The body, parsed as JSON."""
        return json.loads(self.body)


class Receiver:
    """A recording, scripted HTTP(S) server on loopback; `close` it (or use `with`)."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._lock = threading.Condition()
        self._received: list[Received] = []
        self._queued: deque[Answer] = deque()
        self._standing = Answer()
        self._responder: Callable[[Received], Answer] | None = None
        self._server = _Server(self, tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:40123` (no trailing slash)."""
        scheme = "https" if self._server.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    def url_for(self, path: str = "/") -> str:
        """The URL of `path` (with any query) on this receiver."""
        return self.url + path

    def answer(self, *answers: Answer) -> None:
        """Queue answers for the next requests, one each, in order."""
        with self._lock:
            self._queued.extend(answers)

    def always(self, answer: Answer) -> None:
        """The answer to every request once the queue is empty (initially a plain 200)."""
        with self._lock:
            self._standing = answer

    def respond_with(self, responder: Callable[[Received], Answer] | None) -> None:
        """Let `responder` choose the answer of each request the queue does not cover."""
        with self._lock:
            self._responder = responder

    @property
    def requests(self) -> tuple[Received, ...]:
        """Every request received so far, oldest first."""
        with self._lock:
            return tuple(self._received)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> tuple[Received, ...]:
        """The requests once at least `count` have arrived; `AssertionError` after `timeout`."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(
                    f"the receiver got {len(self._received)} requests in {timeout}s, "
                    f"expected {count}"
                )
            return tuple(self._received)

    def close(self) -> None:
        """Stop serving; answers still being delayed are abandoned."""
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, received: Received) -> Answer:
        with self._lock:
            self._received.append(received)
            self._lock.notify_all()
            if self._queued:
                return self._queued.popleft()
            if self._responder is not None:
                return self._responder(received)
            return self._standing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections from a client's pool would otherwise hold `close` up.
    block_on_close = False

    def __init__(self, receiver: Receiver, tls: ssl.SSLContext | None) -> None:
        self.receiver = receiver
        self.tls = tls
        self.stopping = threading.Event()
        super().__init__((LOOPBACK, 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a client that
        # refuses our certificate never stalls the accept loop.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_SOCKET_TIMEOUT)
        try:
            secured = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            return
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up are part of the tests; no tracebacks on stderr.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT
    server: _Server

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        received = Received(
            method=self.command,
            path=self.path,
            headers=tuple(self.headers.items()),
            body=self._read_body(),
            at=time.monotonic(),
        )
        answer = self.server.receiver._record(received)
        if answer.delay and self.server.stopping.wait(answer.delay):
            self.close_connection = True
            return
        try:
            self._send(answer)
        except OSError:
            # The client gave up waiting (a timeout test): nobody is left to answer.
            self.close_connection = True

    def _send(self, answer: Answer) -> None:
        if answer.hang_up or answer.raw is not None:
            self.close_connection = True
            if answer.raw is not None:
                self.wfile.write(answer.raw)
            return
        self.send_response(answer.status)
        names = {name.lower() for name, _ in answer.headers}
        for name, value in answer.headers:
            self.send_header(name, value)
        if "content-length" not in names:
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD" and answer.status not in (204, 304):
            self.wfile.write(answer.body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"".join(self._chunks())
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _chunks(self) -> Iterator[bytes]:
        while size := int(self.rfile.readline().split(b";")[0], 16):
            yield self.rfile.read(size)
            self.rfile.readline()
        # The trailer section ends with an empty line.
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass


class CertificateAuthority:
    """A private CA whose certificate is in `ca_file` (PEM), issuing server certificates.

    No system trusts it, so a client verifies its servers only when given `ca_file`.
    """

    def __init__(self, directory: Path, name: str = "fastlaunch-monitor test CA") -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self._certificate = (
            _builder(subject, subject, public)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / f"{_slug(name)}.pem"
        self.ca_file.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))

    def server_context(self, hosts: Iterable[str] = (LOOPBACK, "localhost")) -> ssl.SSLContext:
        """A server TLS context with a fresh certificate for `hosts` (IP addresses or names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        hosts = tuple(hosts)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        issuer_key = self._key.public_key()
        certificate = (
            _builder(subject, self._certificate.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        stem = self.directory / f"server-{certificate.serial_number:x}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


@contextlib.contextmanager
def refusing_url(path: str = "/") -> Iterator[str]:
    """A loopback URL whose port refuses connections for as long as the context lasts.

    The port is bound but not listening, so no other test can take it meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind((LOOPBACK, 0))
        yield f"http://{LOOPBACK}:{bound.getsockname()[1]}{path}"


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())
