"""Retention: what a prune removes, what it must never remove, and in how many transactions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, func, insert, select

from monitor.alerts.outbox import DELIVERED, Outbox, alert_writer
from monitor.alerts.records import DeliveryOutcome
from monitor.alerts.rules import Receiver, alert_policy
from monitor.core.model import FAILED_STATES, FastLaunchImage, PollResult, Scope
from monitor.store import Store, create_engine_for, upgrade
from monitor.store import retention as retention_module
from monitor.store.retention import Retention, prune, vacuum
from monitor.store.schema import alert_attempts, alert_outbox, history, images, polls
from tests.builders import an_image

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
KEEP_30_DAYS = Retention(polls=30 * 86400, alerts=30 * 86400, history=30 * 86400)
POLLS_30_DAYS = Retention(polls=30 * 86400, alerts=0, history=0)

_ids = count(1)


def _poll(c: Connection, started_at: datetime, *, region: str = "eu-west-1") -> int:
    return int(
        c.execute(
            insert(polls)
            .values(
                target="prod",
                account_id="123456789012",
                region=region,
                started_at=started_at,
                duration_seconds=0.5,
                pages=1,
                images=1,
                outcome="ok",
            )
            .returning(polls.c.id)
        ).scalar_one()
    )


def _transition(c: Connection, poll_id: int, image_id: str, new_state: str, at: datetime) -> None:
    c.execute(
        insert(history).values(
            target="prod",
            account_id="123456789012",
            region="eu-west-1",
            image_id=image_id,
            previous_state=None,
            new_state=new_state,
            transition_time=at,
            reason="Client.UserInitiated",
            observed_at=at,
            poll_id=poll_id,
        )
    )


def _image(c: Connection, image_id: str, state: str) -> None:
    c.execute(
        insert(images).values(
            account_id="123456789012",
            region="eu-west-1",
            image_id=image_id,
            target="prod",
            state=state,
            state_transition_reason="",
            first_seen_at=NOW - 400 * DAY,
            updated_at=NOW,
        )
    )


def _alert(
    c: Connection,
    image_id: str,
    status: str,
    created_at: datetime,
    *,
    finished: str | None = "delivered",
    state: str = "enabled-failed",
    since: datetime = NOW - 200 * DAY,
    episode: int = 0,
) -> int:
    outbox_id = int(
        c.execute(
            insert(alert_outbox)
            .values(
                event_id=f"event-{next(_ids)}",
                receiver="ops",
                target="prod",
                account_id="123456789012",
                region="eu-west-1",
                image_id=image_id,
                kind="failed",
                status=status,
                state=state,
                transition_time=since,
                episode=episode,
                payload="{}",
                created_at=created_at,
                next_attempt_at=created_at,
                attempts=1,
                delivered_at=created_at if finished == "delivered" else None,
                failed_at=created_at if finished == "failed" else None,
            )
            .returning(alert_outbox.c.id)
        ).scalar_one()
    )
    c.execute(
        insert(alert_attempts).values(
            outbox_id=outbox_id,
            attempted_at=created_at,
            outcome="delivered" if finished == "delivered" else "retry",
            duration_seconds=0.1,
        )
    )
    return outbox_id


def _rows(engine: Engine, table: Any) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())


def _alert_ids(engine: Engine) -> set[int]:
    with engine.connect() as c:
        return set(c.execute(select(alert_outbox.c.id)).scalars())


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention_module, "POLL_BATCH", 3)
    monkeypatch.setattr(retention_module, "HISTORY_BATCH", 3)
    monkeypatch.setattr(retention_module, "ALERT_BATCH", 2)


def test_polls_older_than_the_retention_are_removed_in_batches_of_bounded_size(
    engine: Engine, small_batches: None
) -> None:
    with engine.begin() as c:
        for age in range(40, 30, -1):
            _poll(c, NOW - age * DAY)
        for age in range(29, 0, -1):
            _poll(c, NOW - age * DAY)

    deleted: list[int] = []

    def count_deleted(_c: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("DELETE FROM polls"):
            deleted.append(cursor.rowcount)

    event.listen(engine, "after_cursor_execute", count_deleted)
    pruned = prune(engine, POLLS_30_DAYS, NOW)

    assert pruned.removed["polls"] == 10
    assert _rows(engine, polls) == 29
    # Three, three, three, and the last one with the rest.
    assert deleted == [3, 3, 3, 1]
    assert pruned.complete


def test_the_newest_poll_of_every_scope_and_a_poll_with_transitions_are_kept(
    engine: Engine,
) -> None:
    with engine.begin() as c:
        _poll(c, NOW - 50 * DAY, region="us-east-1")
        kept_newest = _poll(c, NOW - 40 * DAY, region="us-east-1")
        with_transition = _poll(c, NOW - 45 * DAY)
        _transition(c, with_transition, "ami-1", "enabled", NOW - 45 * DAY)
        _poll(c, NOW - 44 * DAY)
        _poll(c, NOW - DAY)

    pruned = prune(engine, POLLS_30_DAYS, NOW)

    assert pruned.removed["polls"] == 2
    with engine.connect() as c:
        old = select(polls.c.id).where(polls.c.started_at < NOW - 30 * DAY)
        left = set(c.execute(old).scalars())
    assert left == {kept_newest, with_transition}


def test_old_transitions_go_but_the_newest_of_every_image_stays(
    engine: Engine, small_batches: None
) -> None:
    with engine.begin() as c:
        poll_id = _poll(c, NOW - DAY)
        for age, state in ((100, "enabling"), (90, "enabled"), (80, "enabled-failed")):
            _transition(c, poll_id, "ami-1", state, NOW - age * DAY)
        for age, state in ((70, "enabling"), (5, "enabled")):
            _transition(c, poll_id, "ami-2", state, NOW - age * DAY)
        _transition(c, poll_id, "ami-3", "enabled", NOW - 300 * DAY)

    pruned = prune(engine, KEEP_30_DAYS, NOW)

    with engine.connect() as c:
        left = set(c.execute(select(history.c.image_id, history.c.new_state)))
    assert left == {("ami-1", "enabled-failed"), ("ami-2", "enabled"), ("ami-3", "enabled")}
    assert pruned.removed["history"] == 3


def test_a_retention_of_zero_keeps_everything(engine: Engine) -> None:
    with engine.begin() as c:
        poll_id = _poll(c, NOW - 900 * DAY)
        _poll(c, NOW - 800 * DAY)
        _transition(c, poll_id, "ami-1", "enabling", NOW - 900 * DAY)
        _transition(c, poll_id, "ami-1", "enabled", NOW - 899 * DAY)
        _alert(c, "ami-1", "firing", NOW - 900 * DAY)

    pruned = prune(engine, Retention(polls=0, alerts=0, history=0), NOW)

    assert pruned.total == 0
    assert (_rows(engine, polls), _rows(engine, history), _rows(engine, alert_outbox)) == (2, 2, 1)


def test_an_ended_alert_goes_with_its_resolve_and_their_attempts(
    engine: Engine, small_batches: None
) -> None:
    with engine.begin() as c:
        _image(c, "ami-1", "enabled")
        for episode in range(3):
            _alert(c, "ami-1", "firing", NOW - (100 - episode) * DAY, episode=episode)
            _alert(c, "ami-1", "resolved", NOW - (99 - episode) * DAY, episode=episode)

    pruned = prune(engine, KEEP_30_DAYS, NOW)

    assert pruned.removed["alert_outbox"] == 6
    assert pruned.removed["alert_attempts"] == 6
    assert _rows(engine, alert_outbox) == _rows(engine, alert_attempts) == 0


def test_a_firing_whose_image_still_alerts_is_never_removed(engine: Engine) -> None:
    with engine.begin() as c:
        _image(c, "ami-1", "enabled-failed")
        still_firing = _alert(c, "ami-1", "firing", NOW - 300 * DAY)

    prune(engine, KEEP_30_DAYS, NOW)

    assert _alert_ids(engine) == {still_firing}


def test_a_firing_without_resolve_goes_once_its_image_left_the_state(engine: Engine) -> None:
    with engine.begin() as c:
        _image(c, "ami-1", "enabled")
        _alert(c, "ami-1", "firing", NOW - 300 * DAY, finished="failed")

    pruned = prune(engine, KEEP_30_DAYS, NOW)

    assert pruned.removed["alert_outbox"] == 1
    assert _alert_ids(engine) == set()


def test_pending_alerts_and_a_firing_whose_resolve_is_kept_stay(engine: Engine) -> None:
    with engine.begin() as c:
        _image(c, "ami-1", "enabled")
        _image(c, "ami-2", "enabled")
        _image(c, "ami-3", "enabled")
        pending = _alert(c, "ami-1", "firing", NOW - 300 * DAY, finished=None)
        waits_for_resolve = _alert(c, "ami-2", "firing", NOW - 300 * DAY)
        pending_resolve = _alert(c, "ami-2", "resolved", NOW - 299 * DAY, finished=None)
        resolved_lately = _alert(c, "ami-3", "firing", NOW - 300 * DAY)
        young_resolve = _alert(c, "ami-3", "resolved", NOW - 2 * DAY)

    pruned = prune(engine, KEEP_30_DAYS, NOW)

    assert pruned.removed["alert_outbox"] == 0
    assert _alert_ids(engine) == {
        pending,
        waits_for_resolve,
        pending_resolve,
        resolved_lately,
        young_resolve,
    }


def test_a_prune_told_to_stop_stops_between_batches(engine: Engine, small_batches: None) -> None:
    with engine.begin() as c:
        for age in range(60, 30, -1):
            _poll(c, NOW - age * DAY)
        _poll(c, NOW)
    batches = iter([True, True, False])

    pruned = prune(engine, POLLS_30_DAYS, NOW, keep_going=lambda: next(batches))

    assert not pruned.complete
    assert pruned.removed["polls"] == 6
    assert _rows(engine, polls) == 25


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_engine_for(sqlite_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _file_size(engine: Engine) -> int:
    assert engine.url.database is not None
    with engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(engine.url.database)


def test_a_new_sqlite_file_gives_back_the_space_a_prune_frees(sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as c:
        mode = c.exec_driver_sql("PRAGMA auto_vacuum").scalar()
        assert mode == retention_module.SQLITE_INCREMENTAL
        c.execute(
            insert(polls),
            [
                {
                    "target": "prod",
                    "account_id": "123456789012",
                    "region": "eu-west-1",
                    "started_at": NOW - 40 * DAY + timedelta(seconds=i),
                    "duration_seconds": 0.5,
                    "pages": 1,
                    "images": 1,
                    "outcome": "error",
                    "error_message": "x" * 500,
                }
                for i in range(20_000)
            ],
        )
    full = _file_size(sqlite_engine)

    pruned = prune(sqlite_engine, KEEP_30_DAYS, NOW)

    assert pruned.removed["polls"] == 19_999
    assert pruned.vacuumed_pages > 0
    with sqlite_engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    assert _file_size(sqlite_engine) < full / 5


def test_vacuum_turns_an_older_sqlite_file_to_incremental_vacuum(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    sqlite3.connect(path).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 0

        vacuum(engine)

        with engine.connect() as c:
            mode = c.exec_driver_sql("PRAGMA auto_vacuum").scalar()
            assert mode == retention_module.SQLITE_INCREMENTAL
            assert c.exec_driver_sql("SELECT x FROM t").scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_vacuum_on_postgresql_vacuums_the_pruned_tables(postgres_url: str) -> None:
    engine = create_engine_for(postgres_url)
    try:
        upgrade(engine)
        vacuum(engine)
        with engine.connect() as c:
            vacuumed = c.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'polls' "
                "AND (last_vacuum IS NOT NULL OR vacuum_count > 0)"
            ).scalar()
        assert vacuumed == 1
    finally:
        engine.dispose()


def _deliver_everything(engine: Engine, now: datetime) -> None:
    outbox = Outbox(engine)
    for entry in outbox.claim_due(now, receivers=["ops"], lease=60):
        assert outbox.finish(entry, DeliveryOutcome(200, None, 0.01), now, result=DELIVERED)


def test_a_delivered_alert_of_a_still_failed_image_survives_and_does_not_fire_again(
    engine: Engine,
) -> None:
    store = Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 0)))
    scope = Scope("prod", "123456789012", "eu-west-1")
    failed = an_image("enabled-failed", when=NOW - 200 * DAY)

    def poll(at: datetime, *found: FastLaunchImage) -> None:
        store.apply_poll(PollResult(scope, at, 0.1, 1, found), at)
        _deliver_everything(engine, at)

    poll(NOW - 200 * DAY, failed)
    prune(engine, KEEP_30_DAYS, NOW)
    poll(NOW, failed)
    assert _rows(engine, alert_outbox) == 1

    poll(NOW + DAY, an_image("enabled", when=NOW + DAY))
    prune(engine, KEEP_30_DAYS, NOW + 100 * DAY)
    assert _rows(engine, alert_outbox) == 0

    poll(NOW + 101 * DAY, an_image("enabled-failed", when=NOW + 101 * DAY))
    assert _rows(engine, alert_outbox) == 1
