"""Leadership on a real PostgreSQL: one instance leads, and the lead moves when it must."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from psycopg.rows import TupleRow
from sqlalchemy import Connection, make_url

from monitor.core.errors import StoreError
from monitor.store.leader import (
    FORCE_LEADER_VARIABLE,
    LEADER_KEY,
    AlwaysLeader,
    PostgresLeader,
    forced_leader,
    leadership_for,
)

PASSWORD = "s3cr3t-Pa55word"
ROOT = Path(__file__).resolve().parents[2]
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
    "tcp_user_timeout": "10000",
}


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def with_password(url: str) -> str:
    # The test server trusts loopback, so a password is carried but never checked: enough to
    # show it never reaches a log line.
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def a_closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class RecordingConnect:
    """Opens real connections like the default, and keeps them so a test can reach in."""

    def __init__(self) -> None:
        self.connections: list[psycopg.Connection[TupleRow]] = []

    def __call__(self, conninfo: str) -> psycopg.Connection[TupleRow]:
        connection = psycopg.connect(conninfo)
        self.connections.append(connection)
        return connection


@pytest.fixture
def admin(postgres_url: str) -> Iterator[Connection]:
    """A third connection to the same database, in autocommit, for inspecting and meddling."""
    engine = sqlalchemy.create_engine(
        make_url(postgres_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as connection:
        yield connection
    engine.dispose()


@pytest.fixture
def leaders(postgres_url: str) -> Iterator[list[PostgresLeader]]:
    """Instances made by a test through `leaders.append`, all released at the end."""
    made: list[PostgresLeader] = []
    yield made
    for leader in made:
        leader.release()


def leader_on(
    url: str, made: list[PostgresLeader], connect: RecordingConnect | None = None
) -> PostgresLeader:
    leader = PostgresLeader(url, connect=connect)
    made.append(leader)
    return leader


def lock_holder_pid(admin: Connection) -> int | None:
    pid: int | None = admin.execute(
        sqlalchemy.text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = CAST(:high AS bigint)::oid AND objid = CAST(:low AS bigint)::oid"
        ),
        {"high": (LEADER_KEY >> 32) & 0xFFFFFFFF, "low": LEADER_KEY & 0xFFFFFFFF},
    ).scalar()
    return pid


def test_exactly_one_of_two_instances_on_one_database_leads(
    postgres_url: str, leaders: list[PostgresLeader]
) -> None:
    first, second = leader_on(postgres_url, leaders), leader_on(postgres_url, leaders)

    answers = [(first.acquire_or_verify(), second.acquire_or_verify()) for _ in range(3)]

    assert answers == [(True, False)] * 3
    assert (first.is_leader, second.is_leader) == (True, False)


def test_the_lock_is_held_by_a_backend_of_the_leader_in_pg_locks(
    postgres_url: str, leaders: list[PostgresLeader], admin: Connection
) -> None:
    connect = RecordingConnect()
    leader = leader_on(postgres_url, leaders, connect=connect)

    assert lock_holder_pid(admin) is None
    leader.acquire_or_verify()

    assert lock_holder_pid(admin) == connect.connections[0].info.backend_pid


def test_a_released_lead_passes_to_the_standby_on_its_next_call(
    postgres_url: str, leaders: list[PostgresLeader]
) -> None:
    first, second = leader_on(postgres_url, leaders), leader_on(postgres_url, leaders)
    first.acquire_or_verify()
    second.acquire_or_verify()

    first.release()

    assert not first.is_leader
    assert second.acquire_or_verify()
    assert not first.acquire_or_verify()


@pytest.mark.slow
def test_the_lead_of_a_killed_process_passes_to_the_standby(
    postgres_url: str, leaders: list[PostgresLeader]
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from monitor.store.leader import PostgresLeader; "
            "leader = PostgresLeader(sys.argv[1]); "
            "print(leader.acquire_or_verify(), flush=True); sys.stdin.read()",
            postgres_url,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "True"
        standby = leader_on(postgres_url, leaders)
        assert not standby.acquire_or_verify()

        holder.kill()
        holder.wait(timeout=10)

        assert eventually(standby.acquire_or_verify)
    finally:
        holder.kill()
        holder.communicate(timeout=10)


def test_a_terminated_lock_session_steps_the_leader_down_and_the_standby_takes_over(
    postgres_url: str,
    leaders: list[PostgresLeader],
    admin: Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.store.leader")
    url = with_password(postgres_url)
    first, second = leader_on(url, leaders), leader_on(url, leaders)
    first.acquire_or_verify()
    second.acquire_or_verify()
    holder = lock_holder_pid(admin)

    # The two-argument form waits until the backend is gone, so its lock is released.
    assert admin.execute(
        sqlalchemy.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": holder}
    ).scalar()

    assert not first.acquire_or_verify()
    assert not first.is_leader
    assert second.acquire_or_verify()
    assert not first.acquire_or_verify()
    assert any("stepping down" in record.getMessage() for record in caplog.records)
    assert PASSWORD not in caplog.text


def test_a_leader_whose_session_was_cut_leads_again_when_no_one_else_has(
    postgres_url: str, leaders: list[PostgresLeader], admin: Connection
) -> None:
    leader = leader_on(postgres_url, leaders)
    leader.acquire_or_verify()
    admin.execute(
        sqlalchemy.text("SELECT pg_terminate_backend(:pid, 5000)"),
        {"pid": lock_holder_pid(admin)},
    )

    assert not leader.acquire_or_verify()
    assert leader.acquire_or_verify()


def test_the_leader_steps_down_when_its_session_no_longer_holds_the_lock(
    postgres_url: str, leaders: list[PostgresLeader], caplog: pytest.LogCaptureFixture
) -> None:
    connect = RecordingConnect()
    first = leader_on(postgres_url, leaders, connect=connect)
    second = leader_on(postgres_url, leaders)
    first.acquire_or_verify()
    # Only this session could drop its own lock; nothing errs, so only the check can tell.
    connect.connections[0].execute("SELECT pg_advisory_unlock_all()")

    assert not first.acquire_or_verify()
    assert second.acquire_or_verify()
    assert not first.acquire_or_verify()
    assert "no longer holds the leader lock" in caplog.text


def test_an_unreachable_database_means_standing_by_without_an_error_or_a_password_in_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="monitor.store.leader")
    port = a_closed_port()
    url = f"postgresql+psycopg://monitor:{PASSWORD}@127.0.0.1:{port}/monitor"
    leader = PostgresLeader(url, connect_timeout=2)

    answers = [leader.acquire_or_verify() for _ in range(3)]

    assert answers == [False, False, False]
    assert not leader.is_leader
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "an outage is logged once, not on every retry"
    assert f"postgresql database monitor on 127.0.0.1:{port}" in caplog.text
    assert PASSWORD not in caplog.text


def test_the_lock_connection_detects_dead_peers_and_bounds_its_statements(
    postgres_url: str, leaders: list[PostgresLeader]
) -> None:
    connect = RecordingConnect()
    leader_on(postgres_url, leaders, connect=connect).acquire_or_verify()
    connection = connect.connections[0]

    parameters = connection.info.get_parameters()
    statement_timeout = connection.execute("SHOW statement_timeout").fetchone()

    assert {key: parameters.get(key) for key in KEEPALIVES} == KEEPALIVES
    assert connection.autocommit
    assert statement_timeout == ("2s",)


def test_connection_options_in_the_url_win_over_the_defaults(
    postgres_url: str, leaders: list[PostgresLeader]
) -> None:
    connect = RecordingConnect()
    url = make_url(postgres_url).update_query_dict({"keepalives_idle": "30"})
    url_text = url.render_as_string(hide_password=False)

    leader_on(url_text, leaders, connect=connect).acquire_or_verify()

    assert connect.connections[0].info.get_parameters().get("keepalives_idle") == "30"


def test_many_threads_asking_at_once_still_see_one_leader(
    postgres_url: str, leaders: list[PostgresLeader]
) -> None:
    first, second = leader_on(postgres_url, leaders), leader_on(postgres_url, leaders)
    answers: dict[int, set[bool]] = {id(first): set(), id(second): set()}
    guard = threading.Lock()

    def ask(leader: PostgresLeader) -> None:
        for _ in range(20):
            answer = leader.acquire_or_verify()
            with guard:
                answers[id(leader)].add(answer)

    threads = [threading.Thread(target=ask, args=(leader,)) for leader in (first, second) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert {frozenset(seen) for seen in answers.values()} == {frozenset({True}), frozenset({False})}


def test_sqlite_always_leads() -> None:
    leadership = leadership_for("sqlite:////tmp/monitor.sqlite3", {})

    assert isinstance(leadership, AlwaysLeader)
    assert leadership.acquire_or_verify()
    leadership.release()
    assert leadership.is_leader


def test_postgresql_leads_by_the_advisory_lock_and_connects_only_when_asked() -> None:
    url = f"postgresql+psycopg://monitor:{PASSWORD}@127.0.0.1:{a_closed_port()}/monitor"

    leadership = leadership_for(url, {})

    assert isinstance(leadership, PostgresLeader)
    assert not leadership.is_leader


def test_the_force_leader_test_hook_leads_even_on_postgresql(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql+psycopg://monitor@127.0.0.1:{a_closed_port()}/monitor"

    leadership = leadership_for(url, {FORCE_LEADER_VARIABLE: "1"})

    assert isinstance(leadership, AlwaysLeader)
    assert leadership.acquire_or_verify()
    assert "test hook" in caplog.text


@pytest.mark.parametrize("value", ["", "0", "true", "yes"])
def test_the_force_leader_test_hook_takes_only_the_value_1(value: str) -> None:
    assert forced_leader({FORCE_LEADER_VARIABLE: value}) is None
    assert forced_leader({}) is None


def test_an_unparsable_url_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as raised:
        leadership_for(f"postgresql+psycopg://monitor:{PASSWORD}@127.0.0.1:port/db", {})

    assert PASSWORD not in str(raised.value)
