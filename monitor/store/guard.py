"""One instance per SQLite file: an exclusive lock on `<database file>.lock`.

Two daemons on one SQLite file would each poll every target and dispatch every alert, and
nothing would elect one of them (that is PostgreSQL's job, see `monitor.store.leader`). So the
second refuses to start. The lock is a `flock` on a file beside the database, held for the life of
the process: the kernel drops it when the process ends, however it ends, so a crash never
leaves a stale lock behind. The lock file stays on disk; removing it would let two processes
lock two different files of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from monitor.core.errors import StoreError

#: Room enough for any pid written into the lock file by its holder.
_PID_BYTES = 32


class SqliteGuard:
    """An exclusive, non-blocking lock for the SQLite database at `database_path`.

    Creating one takes the lock on `<database_path>.lock` (created with mode 0600) and writes
    this process's pid into it, or raises `StoreError` in one line naming the database and,
    when it can be read, the pid of the process holding it. `close()` (or leaving a `with`
    block) releases it; a second guard on the same file, even in the same process, is refused
    while the first is open.
    """

    def __init__(self, database_path: str | os.PathLike[str]) -> None:
        self.database_path = Path(database_path).resolve()
        self.lock_path = self.database_path.with_name(self.database_path.name + ".lock")
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot open the lock file {self.lock_path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = "another fastlaunch-monitor" + (f" (pid {holder})" if holder else "")
            raise StoreError(
                f"{who} is already using {self.database_path}; stop it first (two instances "
                "on one SQLite file would double every poll and alert)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {self.lock_path}: {exc.strerror or exc}") from None
        self._fd: int | None = fd
        # The pid only helps the message of a refused instance: failing to write it (a full
        # disk) must not stop this one, which holds the lock all the same.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    @property
    def held(self) -> bool:
        """True until `close()`."""
        return self._fd is not None

    def close(self) -> None:
        """Release the lock; closing twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> SqliteGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"SqliteGuard({str(self.database_path)!r}, {state})"


def acquire_sqlite_guard(url: str) -> SqliteGuard | None:
    """The guard of the SQLite file that `url` names, or None when there is no file to guard.

    None for a non-SQLite URL and for an in-memory SQLite database. Raises `StoreError` when
    another process (or another guard in this one) already holds the file, or when the lock
    file cannot be created.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy's message repeats the URL, password included.
        raise StoreError("the database URL cannot be parsed") from None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if parsed.query.get("uri"):
        database = database.removeprefix("file:").split("?", 1)[0]
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        return None
    return SqliteGuard(database)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class DatabaseFile:
    """The identity (device and inode) of a SQLite file, to notice that it is gone.

    A file deleted (or replaced) under a running daemon is written on unseen: SQLite keeps the
    deleted file open, and everything recorded since is lost at the next start. `lost()` says
    so, so that the daemon can stop and be restarted on a file that exists.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._identity = _identity(self.path)

    def lost(self) -> str | None:
        """What happened to the file since this was made, or `None` if it is still the same."""
        try:
            identity = _identity(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} was deleted"
        except OSError as exc:
            return f"the database file {self.path} cannot be read: {exc.strerror or exc}"
        if identity != self._identity:
            return f"the database file {self.path} was replaced by another file"
        return None


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino
