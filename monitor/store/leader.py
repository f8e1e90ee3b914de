"""Leadership: which one of several instances sharing a database polls and dispatches alerts.

On PostgreSQL the active instance is the one holding a session advisory lock, taken on a
dedicated connection that no pool ever hands out or recycles: the lock lives exactly as long as
that session, so when the process dies or its network goes away the server ends the session and
the lock passes to a standby. TCP keepalives and a short `tcp_user_timeout` make a dead peer an
error within seconds instead of the kernel's minutes.

The lock only decides who does the work. Correctness never depends on it: applying a poll takes
a transaction-scoped lock of its own and re-reads the stored state (see `monitor.store`), so two
instances that both believe they lead still record each transition and enqueue each alert once.
On SQLite there is one instance per file (see `monitor.store.guard`), which always leads.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import URL, make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import ArgumentError

from monitor.core.errors import StoreError
from monitor.store.engine import describe_url
from monitor.store.repository import advisory_key

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

log = logging.getLogger(__name__)

#: The advisory lock key of the leader lock; distinct from the keys of the per-scope locks.
LEADER_KEY = advisory_key("fastlaunch-monitor leader")

#: Test hook: set to "1" to make an instance lead whatever the others do (see `forced_leader`).
FORCE_LEADER_VARIABLE = "FASTLAUNCH_MONITOR_TEST_FORCE_LEADER"

#: Every statement on the lock connection is tiny; one that takes longer means trouble.
STATEMENT_TIMEOUT_MS = 2_000

# Defaults for the lock connection; the same keys in the URL's query win. A dead peer shows as
# an error after about 9 s idle (5 + 2 x 2) or 10 s of unacknowledged data.
_CONNECTION_DEFAULTS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 10_000,
    "application_name": "fastlaunch-monitor leader",
}

Connect = Callable[[str], "psycopg.Connection[TupleRow]"]


class Leadership(Protocol):
    """Whether this instance is the active one: the one that polls and dispatches."""

    @property
    def is_leader(self) -> bool:
        """Whether this instance leads, as of the last `acquire_or_verify` or `release`."""
        ...

    def acquire_or_verify(self) -> bool:
        """Take the lead if it is free, or check it is still held; True while this one leads.

        Called at start, before each cycle and on a short timer. Never raises for a database
        that is down: that is answered False, and the next call tries again.
        """
        ...

    def release(self) -> None:
        """Give the lead up at once (at shutdown), so a standby can take over without delay."""
        ...


class AlwaysLeader:
    """The leadership of an instance that is alone by construction (SQLite: one per file)."""

    @property
    def is_leader(self) -> bool:
        """Always True."""
        return True

    def acquire_or_verify(self) -> bool:
        """Always True."""
        return True

    def release(self) -> None:
        """Nothing to give up."""


class PostgresLeader:
    """Leadership held as a session advisory lock on a dedicated psycopg 3 connection.

    `url` is the SQLAlchemy-style URL of the shared database (`postgresql+psycopg://...`);
    its query may override the connection defaults (keepalives, `tcp_user_timeout`,
    `connect_timeout`). The connection must reach PostgreSQL itself or a session-pooling
    proxy: a transaction-pooling one would hand the session, and the lock, to someone else.

    Each `acquire_or_verify` connects if needed, then either tries the lock or, while
    holding it, verifies in `pg_locks` that this connection's backend still holds it. Any
    error on the connection closes it and steps down at once; an outage is logged once, not
    on every retry. Methods are thread-safe. `connect` (tests) opens a connection from a
    libpq conninfo string; the default is `psycopg.connect`.
    """

    def __init__(
        self,
        url: str,
        *,
        key: int = LEADER_KEY,
        connect_timeout: float = 5,
        connect: Connect | None = None,
    ) -> None:
        parsed = _parse(url)
        self._where = describe_url(parsed)
        self._password = str(parsed.password) if parsed.password else None
        self._conninfo = _conninfo(parsed, connect_timeout)
        self._key = key
        self._connect = connect if connect is not None else _psycopg_connect
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[TupleRow] | None = None
        self._leading = False
        self._outage = False
        self._standby_told = False

    @property
    def is_leader(self) -> bool:
        """The answer of the last `acquire_or_verify` (False after `release`)."""
        return self._leading

    def acquire_or_verify(self) -> bool:
        """Take the leader lock if free, or verify it is still held; True while leading."""
        import psycopg

        with self._lock:
            try:
                connection = self._open() if self._connection is None else self._connection
                if self._leading:
                    self._verify(connection)
                else:
                    self._try_lock(connection)
            except psycopg.Error as exc:
                self._fail(exc)
            return self._leading

    def release(self) -> None:
        """Unlock and close the lock connection; a standby can take over on its next call.

        A later `acquire_or_verify` may take the lead again.
        """
        import psycopg

        with self._lock:
            connection, was_leading = self._connection, self._leading
            self._leading = False
            if connection is None:
                return
            if was_leading:
                # Unlock before closing: the server ends a closed session a moment later, and
                # a standby asking in that moment would still find the lock taken.
                try:
                    connection.execute("SELECT pg_advisory_unlock(%s::bigint)", (self._key,))
                except psycopg.Error:
                    log.debug("unlocking the leader lock failed; closing releases it too")
                log.info("released the leader lock on %s", self._where)
            self._close()

    def _open(self) -> psycopg.Connection[TupleRow]:
        connection = self._connect(self._conninfo)
        self._connection = connection
        connection.autocommit = True
        connection.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        if connection.info.server_version >= 140000:
            # A server-wide idle_session_timeout would end a quiet standby's session, or the
            # leader's between two checks; this session is idle by design.
            connection.execute("SET idle_session_timeout = 0")
        if self._outage:
            log.info("reached %s again for the leader lock", self._where)
            self._outage = False
        return connection

    def _try_lock(self, connection: psycopg.Connection[TupleRow]) -> None:
        row = connection.execute("SELECT pg_try_advisory_lock(%s::bigint)", (self._key,)).fetchone()
        if row is not None and row[0] is True:
            self._leading = True
            self._standby_told = False
            log.info("leading: this instance holds the leader lock on %s", self._where)
        elif not self._standby_told:
            self._standby_told = True
            log.info("standing by: another instance holds the leader lock on %s", self._where)

    def _verify(self, connection: psycopg.Connection[TupleRow]) -> None:
        # A bigint advisory key shows in pg_locks as its high and low 32 bits, objsubid 1.
        row = connection.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1)",
            ((self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF),
        ).fetchone()
        if row is None or row[0] is not True:
            log.warning(
                "stepping down: this session no longer holds the leader lock on %s", self._where
            )
            self._leading = False
            # A fresh session next time, rather than one in a state nobody explains.
            self._close()

    def _fail(self, exc: Exception) -> None:
        reason = self._reason(exc)
        if self._leading:
            log.warning(
                "stepping down: the leader lock connection to %s failed: %s", self._where, reason
            )
        elif not self._outage:
            log.warning(
                "cannot hold the leader lock on %s: %s; standing by, retrying", self._where, reason
            )
        self._leading = False
        self._outage = True
        self._standby_told = False
        self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _reason(self, exc: Exception) -> str:
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason


def forced_leader(env: Mapping[str, str]) -> Leadership | None:
    """TEST HOOK: a leadership that always leads when `FASTLAUNCH_MONITOR_TEST_FORCE_LEADER=1`.

    It exists so that a test can make two instances believe they lead at the same time and
    show that nothing is recorded or alerted twice. Never set it in production: every instance
    so started polls and dispatches. Returns None when the variable is not "1".
    """
    if env.get(FORCE_LEADER_VARIABLE) != "1":
        return None
    log.warning(
        "%s=1 (a test hook): this instance leads whatever the others do", FORCE_LEADER_VARIABLE
    )
    return AlwaysLeader()


def leadership_for(url: str, env: Mapping[str, str]) -> Leadership:
    """The leadership for the database at `url`: advisory lock on PostgreSQL, else always.

    The test hook of `forced_leader` wins over both. Raises `StoreError` for a URL that cannot
    be parsed or (PostgreSQL) a missing driver. Nothing connects yet.
    """
    forced = forced_leader(env)
    if forced is not None:
        return forced
    if _parse(url).get_backend_name() == "postgresql":
        return PostgresLeader(url)
    return AlwaysLeader()


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy's message repeats the URL, password included.
        raise StoreError("the database URL cannot be parsed") from None


def _conninfo(url: URL, connect_timeout: float) -> str:
    try:
        from psycopg.conninfo import make_conninfo
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"the driver for {describe_url(url)} is not installed ({exc.name}); "
            "install fastlaunch-monitor[postgres]"
        ) from None
    # The engine's own dialect reads the URL, so the lock connection reaches the same server
    # (hosts, ports, sockets, TLS options) as the engine's pool.
    psycopg_url = url.set(drivername="postgresql+psycopg")
    dialect: Dialect = psycopg_url.get_dialect()()
    args, params = dialect.create_connect_args(psycopg_url)
    defaults = {**_CONNECTION_DEFAULTS, "connect_timeout": math.ceil(connect_timeout)}
    return make_conninfo(*args, **{**defaults, **params})


def _psycopg_connect(conninfo: str) -> psycopg.Connection[TupleRow]:
    import psycopg

    return psycopg.connect(conninfo)
