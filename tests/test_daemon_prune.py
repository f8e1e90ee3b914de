"""The daemon's retention step: only the leader prunes, and it stops when the daemon stops."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from monitor.config.settings import parse_settings
from monitor.service.daemon import Daemon, Runtime, open_runtime
from monitor.store.schema import polls

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


class SwitchedLeadership:
    """Leadership a test hands out and takes back."""

    def __init__(self) -> None:
        self.leading = False

    @property
    def is_leader(self) -> bool:
        return self.leading

    def acquire_or_verify(self) -> bool:
        return self.leading

    def release(self) -> None:
        self.leading = False


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    text = (
        f"[database]\nurl = 'sqlite:///{tmp_path / 'db.sqlite3'}'\npoll_retention = '30d'\n"
        "[aws]\nendpoint_url = 'http://127.0.0.1:9'\n"
        "[[targets]]\nname = 'prod'\nregions = ['eu-west-1']\n"
    )
    settings = parse_settings(text, source="config.toml", env={}, base_dir=tmp_path)
    opened = open_runtime(settings)
    with opened.engine.begin() as c:
        c.execute(
            insert(polls),
            [
                {
                    "target": "prod",
                    "account_id": "123456789012",
                    "region": "eu-west-1",
                    "started_at": NOW - timedelta(days=age),
                    "duration_seconds": 0.1,
                    "pages": 1,
                    "images": 0,
                    "outcome": "ok",
                }
                for age in (50, 40, 1)
            ],
        )
    yield opened
    opened.close()
    # open_runtime froze the heap for a long-lived daemon; this process is a test run.
    gc.unfreeze()


def _polls(runtime: Runtime) -> int:
    with runtime.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(polls)).scalar_one())


def test_a_standby_does_not_prune_and_the_leader_does(runtime: Runtime) -> None:
    leadership = SwitchedLeadership()
    daemon = Daemon(runtime, leadership=leadership)

    assert daemon.prune_step(NOW) is None
    assert _polls(runtime) == 3

    leadership.leading = True
    daemon._check_leadership()
    pruned = daemon.prune_step(NOW)

    assert pruned is not None
    assert pruned.removed["polls"] == 2
    assert _polls(runtime) == 1


def test_a_stopping_daemon_prunes_nothing_more(runtime: Runtime) -> None:
    leadership = SwitchedLeadership()
    leadership.leading = True
    daemon = Daemon(runtime, leadership=leadership)
    daemon._check_leadership()
    runtime.stop.set()

    pruned = daemon.prune_step(NOW)

    assert pruned is not None
    assert not pruned.complete
    assert _polls(runtime) == 3
