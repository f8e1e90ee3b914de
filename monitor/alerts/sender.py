"""Webhook HTTP: one request to one receiver through urllib3, and what came back (adapter).

The only module that talks HTTP to webhook receivers. Its contract:

- TLS is always verified: against the webhook's `ca_file` alone when it has one (a private CA),
  else against the system's trust store (`ssl.create_default_context()`).
- A URL with a proxy (`WebhookSettings.proxies`) goes through it: an HTTPS receiver through a
  `CONNECT` tunnel, TLS verified end to end as above; an HTTP receiver in absolute form. The
  proxy's credentials go as `Proxy-Authorization` (basic), to the proxy only. A proxy that
  cannot be reached or refuses the tunnel is a `ProxyError`; so is a 407 (proxy authentication
  required) to an HTTP request, which never is the receiver's answer.
- Redirects are not followed: a 3xx is an answer like any other, and nothing reaches the
  `Location` it names.
- Nothing is retried here; the dispatcher owns retries, backoff and `Retry-After`.
- A request that gets no answer has `DeliveryOutcome.error` set to the class name of the
  exception (`ReadTimeoutError`, `NewConnectionError`, `SSLError`, ...), never its message,
  which names the URL.
- URLs, header values and proxy credentials may be secrets (a Slack URL, a token): they never
  reach a log record, an outcome or an exception. That includes urllib3's own log records,
  several of which print the URL: while a delivery runs, they are withheld (see
  `_UrllibLogGuard`).
"""

from __future__ import annotations

import email.utils
import functools
import logging
import re
import ssl
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError

from monitor.alerts.records import DeliveryOutcome, WebhookRequest
from monitor.config.proxies import proxy_address, proxy_credentials
from monitor.config.settings import WebhookSettings
from monitor.core.errors import ConfigError

# Receivers' answers are not used; a bounded read keeps small answers' connections reusable
# without letting a receiver make us read (or decompress) an unbounded body.
_ANSWER_LIMIT: Final = 64 * 1024

# Only so that arithmetic on an absurd Retry-After cannot overflow; the dispatcher caps it.
_RETRY_AFTER_CEILING: Final = 365 * 86400.0

_DELTA_SECONDS = re.compile(r"-?[0-9]+")

# "Proxy Authentication Required": only a proxy answers it.
_PROXY_AUTH_REQUIRED: Final = 407

# Every logger urllib3 logs to; urllib3 names them after its modules.
_URLLIB3_LOGGERS: Final = (
    "urllib3",
    "urllib3.connection",
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
    "urllib3.http2.connection",
    "urllib3.contrib.pyopenssl",
)

_log = logging.getLogger(__name__)

# The receiver whose delivery runs in this thread (context), for the urllib3 log guard.
_delivering_to: ContextVar[str | None] = ContextVar("delivering_to", default=None)


class WebhookSender:
    """Sends requests to one webhook's receivers; thread-safe; `close` it when done.

    A request goes out as given: its headers (the webhook's own among them) are the format's
    business (`monitor.alerts.formats`), not the transport's.
    """

    def __init__(self, webhook: WebhookSettings) -> None:
        """Build the connection pools; raise `ConfigError` if `ca_file` is not a CA bundle."""
        self._name = webhook.name
        # Half of the budget to connect (TCP and TLS handshake), all of it for the whole
        # exchange: urllib3 gives the answer what the connection left of `total`.
        self._timeout = urllib3.Timeout(total=webhook.timeout, connect=webhook.timeout / 2)
        tls = _tls_context(webhook)
        num_pools = max(1, len(webhook.urls))
        self._pool = urllib3.PoolManager(
            num_pools=num_pools, cert_reqs="CERT_REQUIRED", ssl_context=tls
        )
        # The proxy of each receiver, by origin: requests go to paths under the webhook's URLs.
        self._proxied: dict[_Origin, _Route] = {}
        routes: dict[str, _Route] = {}
        for url, proxy in zip(webhook.urls, webhook.proxies, strict=False):
            if proxy is not None:
                if proxy not in routes:
                    routes[proxy] = _Route(proxy, tls, num_pools)
                self._proxied[_origin(url)] = routes[proxy]
        _guard_urllib3_logs()

    def send(self, request: WebhookRequest) -> DeliveryOutcome:
        """Send `request` once; return the status it got, or the class of the error if none.

        Never raises for a receiver's failure: timeouts, refused connections, TLS failures and
        broken answers are all outcomes. `seconds` is the monotonic duration of the attempt.
        """
        started = time.monotonic()
        route = self._route(request.url)
        token = _delivering_to.set(self._name)
        try:
            outcome = self._exchange(request, route, started)
        finally:
            _delivering_to.reset(token)
        # The proxy's address helps to tell a proxy's failure from the receiver's; its
        # credentials are not part of it.
        through = f" through proxy {route.address}" if route else ""
        if outcome.status is None:
            _log.debug(
                "webhook %s: no answer (%s) after %.3f s%s",
                self._name,
                outcome.error,
                outcome.seconds,
                through,
                extra={"receiver": self._name},
            )
        else:
            _log.debug(
                "webhook %s answered %d in %.3f s%s",
                self._name,
                outcome.status,
                outcome.seconds,
                through,
                extra={"receiver": self._name},
            )
        return outcome

    def close(self) -> None:
        """Close every pooled connection; the sender opens new ones if used again."""
        self._pool.clear()
        for route in self._proxied.values():
            route.pool.clear()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _route(self, url: str) -> _Route | None:
        try:
            return self._proxied.get(_origin(url))
        except ValueError:
            # Not a URL urllib3 can send to either: the request fails as it would direct.
            return None

    def _exchange(
        self, request: WebhookRequest, route: _Route | None, started: float
    ) -> DeliveryOutcome:
        pool = self._pool if route is None else route.pool
        try:
            response = pool.request(
                request.method,
                request.url,
                body=request.body,
                headers=request.headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=self._timeout,
            )
        except (HTTPError, OSError, ValueError) as exc:
            # The class only: urllib3's messages name the URL, its path and query.
            return DeliveryOutcome(
                status=None, error=type(exc).__name__, seconds=time.monotonic() - started
            )
        if route is not None and response.status == _PROXY_AUTH_REQUIRED:
            # The proxy refused us, as it does a tunnel (urllib3's ProxyError): the alert is
            # retried once the credentials are fixed, not failed as if the receiver refused it.
            _discard_answer(response)
            return DeliveryOutcome(
                status=None, error="ProxyError", seconds=time.monotonic() - started
            )
        retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        _discard_answer(response)
        return DeliveryOutcome(
            status=response.status,
            error=None,
            seconds=time.monotonic() - started,
            retry_after=retry_after,
        )


_Origin = tuple[str, str, int | None]


def _origin(url: str) -> _Origin:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or ""), parts.port


class _Route:
    """The way through one proxy: its connection pools, and the address it is logged by."""

    __slots__ = ("address", "pool")

    def __init__(self, proxy: str, tls: ssl.SSLContext, num_pools: int) -> None:
        self.address = urlsplit(proxy_address(proxy)).netloc
        credentials = proxy_credentials(proxy)
        self.pool = urllib3.ProxyManager(
            proxy_address(proxy),
            num_pools=num_pools,
            proxy_headers=(
                urllib3.make_headers(proxy_basic_auth=credentials) if credentials else None
            ),
            cert_reqs="CERT_REQUIRED",
            ssl_context=tls,
        )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from `now` according to a `Retry-After` value, or `None` if unusable.

    Takes delta-seconds or an HTTP-date (any of the three forms of RFC 9110); a time in the
    past counts as 0. An absent, empty or malformed value gives `None`.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return min(max(float(int(text)), 0.0), _RETRY_AFTER_CEILING)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # The asctime form carries no zone; HTTP dates are always GMT.
        when = when.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), _RETRY_AFTER_CEILING)


def _tls_context(webhook: WebhookSettings) -> ssl.SSLContext:
    if webhook.ca_file is None:
        return _system_tls_context()
    try:
        # With a CA file, only that file is trusted: a private receiver's CA, nothing else.
        return ssl.create_default_context(cafile=str(webhook.ca_file))
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "unreadable"
        raise ConfigError(
            str(webhook.ca_file),
            None,
            f'webhook "{webhook.name}": ca_file is not a PEM bundle of CA certificates ({reason})',
        ) from None


@functools.cache
def _system_tls_context() -> ssl.SSLContext:
    # The system store, not certifi: it is what `update-ca-certificates` and SSL_CERT_FILE
    # manage, so an operator's corporate CA works, and it needs no extra dependency. Loading
    # it takes tens of milliseconds, so every sender shares one context (contexts are
    # thread-safe, and urllib3 configures it the same way for each).
    return ssl.create_default_context()


def _discard_answer(response: urllib3.BaseHTTPResponse) -> None:
    try:
        response.read(_ANSWER_LIMIT, decode_content=False)
    except (HTTPError, OSError):
        # The status line and headers arrived: that is the answer. A body that breaks or
        # stalls only costs the connection.
        response.close()
    if not response.closed:
        # More than we read is coming: dropping the connection is cheaper than reading it.
        response.close()
    response.release_conn()


class _UrllibLogGuard(logging.Filter):
    """Withholds what urllib3 logs while a webhook delivery runs in this thread.

    urllib3 logs the request line (`"POST /path?query HTTP/1.1" 200`) at DEBUG and the whole
    URL in some warnings, so none of its records can be trusted with a webhook URL. Records of
    other requests (botocore's, in other threads) pass untouched. Below WARNING they are
    dropped; from WARNING on, the fact is kept and the message and traceback are replaced.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        receiver = _delivering_to.get()
        if receiver is None:
            return True
        if record.levelno < logging.WARNING:
            return False
        record.msg = (
            "urllib3 logged a %s during delivery to webhook %s; withheld: it may hold the URL"
        )
        record.args = (record.levelname, receiver)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.__dict__["receiver"] = receiver
        return True


_URLLIB3_GUARD: Final = _UrllibLogGuard()


def _guard_urllib3_logs() -> None:
    # A logger's filters see only the records created on that very logger, not those that
    # propagate from its children, so the guard goes on each of urllib3's loggers.
    names = set(_URLLIB3_LOGGERS)
    names.update(
        name
        for name in logging.root.manager.loggerDict
        if name == "urllib3" or name.startswith("urllib3.")
    )
    for name in names:
        # addFilter ignores a filter the logger already has.
        logging.getLogger(name).addFilter(_URLLIB3_GUARD)
