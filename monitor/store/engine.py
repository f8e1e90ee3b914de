"""Opening the database: engine setup per dialect, and its errors told without secrets.

SQLite is tuned for one writing daemon and a few reading CLI commands: WAL so readers never
block the writer, a busy timeout so short lock waits are not errors, foreign keys enforced, and
write transactions that start with `BEGIN IMMEDIATE` so two writers queue for the lock at the
start instead of failing half way with "database is locked". Reads keep a deferred `BEGIN`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import URL, Connection, Engine, event, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, SQLAlchemyError

from monitor.core.errors import StoreError

#: The execution option that makes a SQLite transaction begin IMMEDIATE (see `writer`).
WRITE_OPTION = "fastlaunch_monitor_write"

SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_CONNECT_TIMEOUT_S = 10


def describe_url(url: URL) -> str:
    """Name a database by its scheme, host and name only: never its user or password."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"sqlite database {url.database or ':memory:'}"
    where = url.host or "local socket"
    if url.port is not None:
        where = f"{where}:{url.port}"
    name = f"{backend} database {url.database}" if url.database else f"{backend} database"
    return f"{name} on {where}"


def create_engine_for(url: str, *, pool_size: int = 5) -> Engine:
    """Return an engine for a `sqlite:///path` or `postgresql+psycopg://...` URL.

    A plain `postgresql://` means psycopg 3 too. Raises `StoreError` for a URL that cannot be
    parsed, an unsupported scheme, a missing driver, or (SQLite) a folder that does not exist;
    the file itself is created on first use. Nothing connects yet.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy's message repeats the URL, password included.
        raise StoreError("the database URL cannot be parsed") from None
    try:
        if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
            return _sqlite_engine(parsed, pool_size)
        if parsed.drivername in ("postgresql", "postgresql+psycopg"):
            # psycopg 3 is the one PostgreSQL driver shipped (extra `postgres`), so a plain
            # postgresql:// means it rather than SQLAlchemy's default of psycopg2.
            return _postgres_engine(parsed.set(drivername="postgresql+psycopg"), pool_size)
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"the driver for {describe_url(parsed)} is not installed ({exc.name}); "
            "install fastlaunch-monitor[postgres]"
        ) from None
    raise StoreError(
        f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or postgresql+psycopg://"
    )


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL, or None: not SQLite, in memory, or a `uri=true` URL.

    (A `uri=true` URL names its file in SQLite's own URI syntax, which SQLite resolves.)
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    return _sqlite_path(parsed) if parsed.get_backend_name() == "sqlite" else None


def _in_memory(url: URL) -> bool:
    return (url.database or "") in ("", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_path(url: URL) -> Path | None:
    if _in_memory(url) or url.query.get("uri"):
        return None
    return Path(url.database or "")


def _sqlite_engine(url: URL, pool_size: int) -> Engine:
    in_memory = _in_memory(url)
    path = _sqlite_path(url)
    if path is not None:
        folder = path.absolute().parent
        if not folder.is_dir():
            raise StoreError(f"the folder of the sqlite database does not exist: {folder}")
    engine = (
        sqlalchemy.create_engine(url)
        if in_memory
        else sqlalchemy.create_engine(url, pool_size=pool_size, max_overflow=10)
    )

    if path is not None:

        @event.listens_for(engine, "do_connect")
        def _create_private(*_args: Any) -> None:
            # SQLite would create the file with the umask's mode (0644 outside systemd), and
            # gives the -wal and -shm files the mode of the database file: made 0600 here
            # first, the history and its journals are the monitor's user's alone. Any other
            # failure than "it exists" is SQLite's to report when it opens the file.
            with contextlib.suppress(OSError):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                os.close(os.open(path, flags, 0o600))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN over from the sqlite3 module, which would skip it before DDL and reads.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                # Only a file with no tables yet takes this (and only before WAL is set): the
                # space a prune frees can then be given back a little at a time.
                cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
                cursor.execute("PRAGMA journal_mode = WAL")
                # WAL makes NORMAL durable across application crashes, and much faster.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: URL, pool_size: int) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    return sqlalchemy.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=10,
        connect_args=connect_args,
    )


def dialect_insert(bind: Connection | Engine) -> Any:
    """The dialect's `insert`: both offer the same `on_conflict_*` methods and `excluded`."""
    from sqlalchemy.dialects import postgresql, sqlite

    return sqlite.insert if bind.dialect.name == "sqlite" else postgresql.insert


def writer(engine: Engine) -> Engine:
    """Return `engine` set up so that each transaction it begins is a write transaction.

    On SQLite that is `BEGIN IMMEDIATE`; elsewhere it changes nothing. The returned engine
    shares the pool of `engine`.
    """
    return engine.execution_options(**{WRITE_OPTION: True})


_sqlite_writers: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_sqlite_writers_lock = threading.Lock()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction on `engine`, committed at the end (rolled back on an error).

    SQLite has one writer at a time; this process's threads queue for it on a lock of their
    own, in order, instead of in SQLite's busy handler, whose sleeps grow and whose timeout
    a burst of concurrent polls can outlast ("database is locked").
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    with _sqlite_writers_lock:
        lock = _sqlite_writers.setdefault(engine, threading.Lock())
    with lock, engine.connect() as connection:
        # The option on this one connection (not `writer(engine)`, which builds a new
        # engine object at each call: a poll's largest cost after its statements).
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            yield connection


@contextmanager
def database_errors(engine: Engine, action: str) -> Iterator[None]:
    """Turn SQLAlchemy errors raised inside into a `StoreError` saying what failed and where.

    The message names the database by `describe_url` and gives the driver's first line of
    explanation, never the SQL parameters or the password.
    """
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(
            f"{action} failed on {describe_url(engine.url)}: {_reason(exc, engine.url)}",
            refused=isinstance(exc, DataError | IntegrityError),
        ) from exc
    except OverflowError as exc:
        # sqlite3 refuses an integer past 64 bits before SQLAlchemy sees the statement.
        raise StoreError(
            f"{action} failed on {describe_url(engine.url)}: a value out of range ({exc})",
            refused=True,
        ) from exc


def _reason(exc: SQLAlchemyError, url: URL) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        name = type(exc.orig).__name__
        lines = str(exc.orig).strip().splitlines()
        detail = f"{name}: {lines[0]}" if lines else name
    else:
        detail = type(exc).__name__
    if url.password:
        detail = detail.replace(str(url.password), "***")
    return detail
