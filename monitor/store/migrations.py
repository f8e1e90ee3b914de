"""Alembic, driven from code: the schema is created and changed only by `migrations/`.

No ini file is needed at run time: the configuration is built here, pointed at the migrations
folder of this installation, and handed the connection to migrate.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

import monitor
from monitor.core.errors import SchemaBehindError, StoreError
from monitor.store.engine import database_errors, writer

# Instances sharing a PostgreSQL database may all start at once; this lock lets one migrate.
_POSTGRES_MIGRATION_LOCK = 0x464C4D5F4D494752  # "FLM_MIGR"


def migrations_dir() -> Path:
    """The Alembic folder: `monitor/_migrations` in a wheel, `<repo>/migrations` in a checkout."""
    package = Path(monitor.__file__).parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError(f"the database migrations are missing from this installation ({package})")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic `Config` for the migrations of this installation, migrating `connection`."""
    config = Config()
    # The value goes through ConfigParser interpolation, which would choke on a '%' in the path.
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection in one write transaction, set up to run migrations, committed at the end.

    On PostgreSQL it holds a lock that makes concurrent migrations take turns. On SQLite,
    foreign keys are checked once at the end instead of at each statement: batch mode rebuilds
    a table by copying and dropping it, which would break (or cascade through) the rows of
    other tables that refer to it.
    """
    with writer(engine).connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Only outside a transaction does SQLite honour this pragma.
            _sqlite_driver(connection).execute("PRAGMA foreign_keys = OFF")
        try:
            with connection.begin():
                if not sqlite:
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _POSTGRES_MIGRATION_LOCK},
                    )
                yield connection
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise StoreError("a migration left rows that break a foreign key")
        finally:
            if sqlite:
                _sqlite_driver(connection).execute("PRAGMA foreign_keys = ON")


def _sqlite_driver(connection: Connection) -> sqlite3.Connection:
    return cast(sqlite3.Connection, connection.connection.driver_connection)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to `revision` in one transaction."""
    with database_errors(engine, "upgrading the schema"), migrating(engine) as connection:
        try:
            command.upgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise StoreError(f"cannot upgrade the schema to {revision!r}: {exc}") from None


def downgrade(engine: Engine, revision: str) -> None:
    """Revert the migrations down to `revision` (`"base"` drops every table) in one transaction."""
    with database_errors(engine, "downgrading the schema"), migrating(engine) as connection:
        try:
            command.downgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise StoreError(f"cannot downgrade the schema to {revision!r}: {exc}") from None


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or `None` when it has no schema yet."""
    with database_errors(engine, "reading the schema revision"), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@functools.cache
def head_revision() -> str:
    """The newest revision this version of the monitor knows (read once: it is installed)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError(f"no migration found in {migrations_dir()}")
    return head


def ensure_schema_current(engine: Engine) -> None:
    """Raise `SchemaBehindError` unless the database is at `head_revision()`.

    A revision this monitor does not know (the database was upgraded by a newer version) is a
    plain `StoreError`: `db upgrade` cannot help there.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaBehindError(
            "the database has no schema yet: run `fastlaunch-monitor db upgrade`"
        )
    try:
        known = ScriptDirectory.from_config(alembic_config()).get_revision(current)
    except CommandError:
        known = None
    if known is None:
        raise StoreError(
            f"the database schema is at revision {current}, which this version of "
            "fastlaunch-monitor does not know: a newer version upgraded it"
        )
    raise SchemaBehindError(
        f"the database schema is at revision {current}, older than {head}: "
        "run `fastlaunch-monitor db upgrade`"
    )
