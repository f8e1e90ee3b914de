"""Opening the database: SQLite tuning, write transactions, and errors without secrets."""

from __future__ import annotations

import os
import socket
import stat
import threading
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Engine, event, func, make_url, select

from monitor.core.errors import StoreError
from monitor.core.model import FastLaunchImage, PollResult, Scope
from monitor.store import Store, create_engine_for, describe_url, upgrade
from monitor.store.schema import polls
from tests.builders import an_image

PASSWORD = "s3cr3t-Pa55word"
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def a_poll(scope: Scope, n: int) -> PollResult:
    image = FastLaunchImage(
        image_id=f"ami-{n:04d}",
        state="enabling",
        state_transition_reason="",
        state_transition_time=T0 + timedelta(seconds=n),
        resource_type="snapshot",
        target_resource_count=1,
        max_parallel_launches=6,
        owner_id=None,
        launch_template_id=None,
        launch_template_name=None,
        launch_template_version=None,
    )
    return PollResult(scope=scope, started_at=T0, duration_seconds=0.1, pages=1, images=(image,))


def a_closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def everything_said_about(error: BaseException) -> str:
    """The message, the repr and the whole chained traceback, as a log would show them."""
    return "\n".join([str(error), repr(error), *traceback.format_exception(error)])


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_engine_for(sqlite_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_sqlite_database_is_created_in_wal_mode_with_a_busy_timeout_and_foreign_keys(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    with sqlite_engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA busy_timeout").scalar() >= 5_000
        assert pragma("PRAGMA foreign_keys").scalar() == 1
    assert Path(make_url(sqlite_url).database or "").is_file()


def test_writes_begin_immediate_and_reads_begin_deferred(sqlite_engine: Engine) -> None:
    store = Store(sqlite_engine)
    begins: list[str] = []

    def record(*args: Any) -> None:
        if args[2].startswith("BEGIN"):
            begins.append(args[2])

    event.listen(sqlite_engine, "before_cursor_execute", record)
    store.apply_poll(a_poll(Scope("t", "1", "r"), 1), T0)
    assert begins == ["BEGIN IMMEDIATE"]

    begins.clear()
    store.current_images()
    store.history()
    assert begins == ["BEGIN", "BEGIN"]


def test_two_writers_on_one_sqlite_file_wait_for_each_other_instead_of_failing(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    failures: list[BaseException] = []

    def write(region: str) -> None:
        engine = create_engine_for(sqlite_url)
        store = Store(engine)
        try:
            for n in range(25):
                store.apply_poll(a_poll(Scope("t", "1", region), n), T0)
        except StoreError as exc:
            failures.append(exc)
        finally:
            engine.dispose()

    writers = [threading.Thread(target=write, args=(region,)) for region in ("r1", "r2")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)

    assert failures == []
    with sqlite_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(polls)).scalar_one() == 50


def test_a_sqlite_database_in_a_missing_folder_is_refused_naming_the_folder(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no" / "such"

    with pytest.raises(StoreError, match=str(missing)):
        create_engine_for(f"sqlite:///{missing / 'monitor.sqlite3'}")


def test_an_unparseable_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(StoreError) as raised:
        create_engine_for(f"postgresql+psycopg://bob:{PASSWORD}@db.example:notaport/monitor")

    assert PASSWORD not in everything_said_about(raised.value)


def test_an_unsupported_database_is_refused_without_its_password() -> None:
    with pytest.raises(StoreError, match="unsupported database 'mysql'") as raised:
        create_engine_for(f"mysql://bob:{PASSWORD}@db.example/monitor")

    assert PASSWORD not in everything_said_about(raised.value)


def test_a_plain_postgresql_url_uses_psycopg_3() -> None:
    engine = create_engine_for("postgresql://bob@db.example/monitor")

    assert engine.dialect.driver == "psycopg"


def test_an_unreachable_postgresql_is_a_store_error_that_never_shows_the_password() -> None:
    url = f"postgresql+psycopg://bob:{PASSWORD}@127.0.0.1:{a_closed_port()}/monitor"
    engine = create_engine_for(url)

    with pytest.raises(StoreError, match=r"postgresql database monitor on 127\.0\.0\.1") as raised:
        Store(engine).ping()

    assert PASSWORD not in everything_said_about(raised.value)
    assert PASSWORD not in repr(engine)


def test_a_database_is_described_by_scheme_host_and_name_only() -> None:
    url = make_url(f"postgresql+psycopg://bob:{PASSWORD}@db.example:5433/monitor")

    assert describe_url(url) == "postgresql database monitor on db.example:5433"


@pytest.mark.postgres
def test_a_postgresql_connection_dropped_by_the_server_is_replaced(postgres_url: str) -> None:
    engine = create_engine_for(postgres_url)
    store = Store(engine)
    store.ping()
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    admin.dispose()

    store.ping()

    engine.dispose()


def test_concurrent_writers_of_one_process_queue_for_sqlite_without_timing_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A busy timeout this short makes SQLite's own waiting fail at once: only the process's
    # own queue for the writer keeps these polls from "database is locked".
    monkeypatch.setattr("monitor.store.engine.SQLITE_BUSY_TIMEOUT_MS", 1)
    engine = create_engine_for(f"sqlite:///{tmp_path / 'busy.sqlite3'}", pool_size=8)
    upgrade(engine)
    store = Store(engine)
    images = tuple(an_image(image_id=f"ami-{n:05d}") for n in range(1500))
    now = datetime(2026, 11, 26, tzinfo=UTC)
    errors: list[Exception] = []
    start = threading.Barrier(8)

    def apply(region: int) -> None:
        start.wait()
        scope = Scope("prod", "111111111111", f"eu-west-{region}")
        try:
            store.apply_poll(PollResult(scope, now, 0.1, 8, images), now)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=apply, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine.dispose()
    assert errors == []


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask of most logins, under which new files are readable by every user."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask_022")
def test_a_new_sqlite_database_and_its_journals_are_readable_by_their_owner_only(
    tmp_path: Path,
):
    path = tmp_path / "history.sqlite3"
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        upgrade(engine)
        Store(engine).apply_poll(a_poll(Scope("t", "1", "r"), 1), T0)
        # While a connection is open, SQLite keeps the -wal and -shm files.
        with engine.connect():
            modes = {
                file.name: stat.S_IMODE(file.stat().st_mode)
                for file in tmp_path.iterdir()
                if file.name.startswith(path.name)
            }
    finally:
        engine.dispose()

    assert modes == {
        "history.sqlite3": 0o600,
        "history.sqlite3-wal": 0o600,
        "history.sqlite3-shm": 0o600,
    }
