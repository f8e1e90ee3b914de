"""Alembic environment of fastlaunch-monitor.

At run time `monitor.store.migrations` passes the connection to migrate in
`config.attributes["connection"]`. From the developer's `alembic` command line (the repository's
`alembic.ini`), the URL comes from `-x url=...`, `sqlalchemy.url`, or
`$FASTLAUNCH_MONITOR_DATABASE_URL`.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from monitor.store.engine import create_engine_for
from monitor.store.migrations import migrating
from monitor.store.schema import metadata

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("FASTLAUNCH_MONITOR_DATABASE_URL")
    )
    if not url:
        raise SystemExit(
            "no database: pass -x url=..., set sqlalchemy.url or FASTLAUNCH_MONITOR_DATABASE_URL"
        )
    return url


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Print the SQL of the migrations instead of running it (`alembic upgrade head --sql`)."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate the given connection, or one opened from the developer's URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine_for(_url())
    try:
        with migrating(engine) as own_connection:
            _migrate(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
