"""The SQLite guard: one instance per database file, refused in one clear line otherwise."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.core.errors import StoreError
from monitor.store.guard import SqliteGuard, acquire_sqlite_guard

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = (
    "is already using {path}; stop it first (two instances on one SQLite file would double "
    "every poll and alert)"
)

# Takes the guard in a process of its own, says so, and holds it until its stdin closes.
HOLD = """
import sys
from monitor.core.errors import StoreError
from monitor.store.guard import acquire_sqlite_guard
try:
    guard = acquire_sqlite_guard(sys.argv[1])
except StoreError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
print("held", flush=True)
sys.stdin.read()
"""


def run_holder(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "monitor.sqlite3"


@pytest.fixture
def holder(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the guard of `database`."""
    process = run_holder(f"sqlite:///{database}")
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_a_guard_takes_a_private_lock_file_beside_the_database(database: Path) -> None:
    guard = acquire_sqlite_guard(f"sqlite:///{database}")

    assert guard is not None
    with guard:
        lock_file = database.with_name("monitor.sqlite3.lock")

        assert guard.lock_path == lock_file
        assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
        assert lock_file.read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_another_process_is_refused_naming_the_holder_until_the_holder_exits(
    database: Path, holder: subprocess.Popen[str]
) -> None:
    url = f"sqlite:///{database}"

    with pytest.raises(StoreError) as raised:
        acquire_sqlite_guard(url)
    holder.communicate(input="", timeout=10)
    guard = acquire_sqlite_guard(url)

    assert str(raised.value) == (
        f"another fastlaunch-monitor (pid {holder.pid}) {REFUSAL.format(path=database)}"
    )
    assert guard is not None
    assert guard.held
    guard.close()


@pytest.mark.slow
def test_a_process_started_while_this_one_holds_the_file_exits_with_the_message(
    database: Path,
) -> None:
    with SqliteGuard(database):
        refused = run_holder(f"sqlite:///{database}")
        _, stderr = refused.communicate(input="", timeout=30)

    assert refused.returncode == 1
    assert stderr == (
        f"another fastlaunch-monitor (pid {os.getpid()}) {REFUSAL.format(path=database)}\n"
    )


def test_a_second_guard_in_the_same_process_is_refused_until_the_first_is_closed(
    database: Path,
) -> None:
    first = SqliteGuard(database)

    with pytest.raises(StoreError, match="already using"):
        SqliteGuard(database)
    first.close()
    second = SqliteGuard(database)

    assert second.held
    assert not first.held
    second.close()


def test_two_spellings_of_one_path_share_one_guard(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(database.parent)

    with SqliteGuard(database), pytest.raises(StoreError, match="already using"):
        acquire_sqlite_guard("sqlite:///./monitor.sqlite3")


def test_closing_a_guard_twice_is_harmless(database: Path) -> None:
    guard = SqliteGuard(database)

    guard.close()
    guard.close()

    assert not guard.held


def test_a_lock_file_that_cannot_be_created_is_a_clear_store_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "monitor.sqlite3"

    with pytest.raises(StoreError, match="cannot open the lock file"):
        acquire_sqlite_guard(f"sqlite:///{missing}")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://monitor:secret@db.example/monitor",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:shared?mode=memory&cache=shared&uri=true",
    ],
)
def test_there_is_nothing_to_guard_without_a_sqlite_file(url: str) -> None:
    assert acquire_sqlite_guard(url) is None


def test_an_unparsable_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot be parsed"):
        acquire_sqlite_guard("postgresql+psycopg://monitor:secret@db:port/monitor")
