"""Database fixtures shared by the whole suite: real SQLite, and real PostgreSQL when available.

PostgreSQL tests need `FASTLAUNCH_MONITOR_TEST_POSTGRES_URL` (for instance
`postgresql+psycopg://postgres@127.0.0.1:5432/postgres`); each test gets a database of its own,
created for it and dropped after. Without a reachable server they are skipped, except under
`CI=true`, where a silently skipped PostgreSQL suite would hide failures: there they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from monitor.store import Store, create_engine_for, upgrade

POSTGRES_URL_VARIABLE = "FASTLAUNCH_MONITOR_TEST_POSTGRES_URL"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that asks for `postgres_url` directly, so `-m "not postgres"` works."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def _postgres_unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"PostgreSQL TESTS CANNOT RUN IN CI: {reason}. Start PostgreSQL and set "
            f"{POSTGRES_URL_VARIABLE}; CI must not skip them.",
            pytrace=False,
        )
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL of a SQLite file that does not exist yet, in the test's own folder."""
    return f"sqlite:///{tmp_path / 'monitor.sqlite3'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    base = os.environ.get(POSTGRES_URL_VARIABLE)
    if not base:
        _postgres_unavailable(f"{POSTGRES_URL_VARIABLE} is not set")
    server = make_url(base).set(drivername="postgresql+psycopg")
    name = f"fastlaunch_test_{uuid.uuid4().hex[:16]}"
    # pool_pre_ping: a test may restart the server; the drop afterwards must still work.
    admin = sqlalchemy.create_engine(
        server,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        admin.dispose()
        _postgres_unavailable(f"cannot create a database on {server.host}: {exc}".splitlines()[0])
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty database, once for SQLite and once for PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to the newest schema (both dialects)."""
    migrated = create_engine_for(database_url)
    upgrade(migrated)
    yield migrated
    migrated.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    """A `Store` on a migrated database (both dialects)."""
    return Store(engine)
