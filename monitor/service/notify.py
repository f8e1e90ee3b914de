"""The systemd notify protocol, without libsystemd: readiness, status, watchdog pings.

A message is one datagram of newline-separated `KEY=VALUE` fields sent to the socket that
systemd names in `$NOTIFY_SOCKET`: a file system path, or an abstract socket when it starts
with `@`. Outside systemd the variable is unset and every message is silently dropped. A
failure to send is logged once and never stops the daemon: systemd decides what a missing
READY or watchdog ping means, not the process that could not send it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

# systemd reads the socket at once; a send that cannot complete in this time will not.
_SEND_TIMEOUT_SECONDS = 1.0


class Notifier:
    """Sends notify messages to one socket address; a no-op when `address` is `None`.

    Safe to call from several threads: every message goes out on a socket of its own, as
    libsystemd's `sd_notify` does.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The notifier of `$NOTIFY_SOCKET` (of `os.environ` unless `env` is given)."""
        return cls((os.environ if env is None else env).get(NOTIFY_SOCKET_ENV))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (`"READY=1"`, `"STATUS=..."`) as one message; True if it was sent.

        Line breaks inside a field would start a new field, so they become spaces.
        """
        if self.address is None or not fields:
            return False
        message = "\n".join(f.replace("\r", " ").replace("\n", " ") for f in fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT_SECONDS)
                sock.sendto(message.encode(), _socket_address(self.address))
        except (OSError, ValueError) as exc:
            # Once: a systemd that stopped listening would otherwise fill the log every ping.
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify systemd at %s: %s (further failures are not logged)",
                    self.address,
                    exc,
                )
            return False
        return True


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        # Linux abstract namespace: a leading NUL byte instead of a file.
        return b"\0" + address[1:].encode()
    if not address.startswith("/"):
        raise ValueError("not an absolute path nor an abstract socket name")
    return address


def monotonic_usec() -> int:
    """`CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` with `RELOADING=1` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between two `WATCHDOG=1` pings: half of `$WATCHDOG_USEC`, as systemd advises.

    `None` when systemd expects no pings: the variable is unset, or `$WATCHDOG_PID` names
    another process (the variables were inherited, not meant for us). A malformed value is
    logged and ignored.
    """
    env = os.environ if env is None else env
    usec = env.get(WATCHDOG_USEC_ENV, "")
    if not usec:
        return None
    owner = env.get(WATCHDOG_PID_ENV, "")
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning(
            "ignoring $%s=%r: not a positive number of microseconds", WATCHDOG_USEC_ENV, usec
        )
        return None
    return value / 2_000_000


class Watchdog:
    """Pings systemd's watchdog every `period` seconds while `check()` finds nothing wrong.

    `check` returns `None` when healthy, else what is wrong. Pings stop while it is wrong, so
    systemd's `WatchdogSec=` runs out and it restarts the service; the first missed ping and
    the recovery are logged, once each. The thread ends when `stop` is set.
    """

    def __init__(
        self,
        notifier: Notifier,
        period: float,
        check: Callable[[], str | None],
        stop: threading.Event,
    ) -> None:
        self._notifier = notifier
        self._period = period
        self._check = check
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        """Ping now, then every `period` seconds, in a thread of its own."""
        self._thread.start()

    def _problem(self) -> str | None:
        try:
            return self._check()
        except Exception as exc:
            # A check that breaks cannot vouch for the daemon: no ping, and say why.
            log.debug("watchdog check failed", exc_info=True)
            return f"the health check failed: {type(exc).__name__}: {exc}"

    def _run(self) -> None:
        healthy = True
        due = time.monotonic()
        while not self._stop.is_set():
            problem = self._problem()
            if problem is None:
                self._notifier.notify("WATCHDOG=1")
                if not healthy:
                    log.info("healthy again: pinging systemd's watchdog")
            elif healthy:
                log.error("not pinging systemd's watchdog, which restarts the service: %s", problem)
            healthy = problem is None
            # Paced from when each check was due, so the time checks take does not stretch
            # the period; after a check that overran it, the next one is due at once.
            due = max(due + self._period, time.monotonic())
            self._stop.wait(due - time.monotonic())
