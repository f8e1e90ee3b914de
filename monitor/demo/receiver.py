"""The demo's webhook receiver: prints every alert it gets, and checks its signature.

A stand-in for a team's own service, on loopback: it verifies the Standard Webhooks signature
the way any receiver should, and answers 204 so the dispatcher records the alert delivered.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from monitor.alerts.signing import verify


class DemoReceiver:
    """A loopback HTTP server that hands each alert's one-line description to `show`."""

    def __init__(self, secret: str, show: Callable[[str], None] = print) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.received(self.headers, body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """The printed alerts are the demo's log; no access log beside them."""

        self._secret = secret
        self._show = show
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    def received(self, headers: Message, body: bytes) -> None:
        """Show one alert (`headers` and `body` as the HTTP request brought them)."""

        def header(name: str) -> str:
            return str(headers.get(name) or "")

        try:
            signed = verify(
                self._secret,
                header("webhook-id"),
                int(header("webhook-timestamp") or "0"),
                body,
                header("webhook-signature"),
            )
            alert = json.loads(body)
        except ValueError:
            self._show("receiver: got a request that is not a fast launch alert")
            return
        status = str(alert.get("status", "?")).upper()
        self._show(
            f"receiver: {status} {alert.get('kind')} alert: {alert.get('image_id')} "
            f"{alert.get('previous_state') or '(new)'} -> {alert.get('state')} "
            f"({alert.get('state_transition_reason') or 'no reason given'}); "
            f"signature {'verified' if signed else 'INVALID'}"
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
