"""Applying polls to the store, on SQLite and PostgreSQL: what is recorded, and how cheaply."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from monitor.core.model import REMOVED, FastLaunchImage, PollResult, Scope
from monitor.store import Store
from monitor.store.schema import history, images, polls

SCOPE = Scope(target="prod", account_id="111111111111", region="us-east-1")
OTHER_REGION = Scope(target="prod", account_id="111111111111", region="eu-west-1")
T0 = datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=UTC)


def an_image(image_id: str = "ami-0001", **changes: Any) -> FastLaunchImage:
    image = FastLaunchImage(
        image_id=image_id,
        state="enabled",
        state_transition_reason="Client.UserInitiated",
        state_transition_time=T0,
        resource_type="snapshot",
        target_resource_count=5,
        max_parallel_launches=6,
        owner_id="111111111111",
        launch_template_id="lt-0abc",
        launch_template_name="fast-launch",
        launch_template_version="3",
    )
    return replace(image, **changes)


def many_images(count: int) -> tuple[FastLaunchImage, ...]:
    return tuple(an_image(f"ami-{n:08x}") for n in range(count))


def a_poll(*found: FastLaunchImage, scope: Scope = SCOPE, started_at: datetime = T0) -> PollResult:
    return PollResult(
        scope=scope, started_at=started_at, duration_seconds=0.25, pages=1, images=found
    )


def a_failed_poll(scope: Scope = SCOPE, started_at: datetime = T0) -> PollResult:
    return PollResult(
        scope=scope,
        started_at=started_at,
        duration_seconds=3.5,
        pages=0,
        images=None,
        error_code="RequestLimitExceeded",
        error_message="Request limit exceeded.",
    )


def count_rows(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement sent to the database while the test runs."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def test_the_first_poll_records_every_image_as_appeared(store: Store) -> None:
    applied = store.apply_poll(a_poll(an_image("ami-1"), an_image("ami-2")), T0)

    assert [(t.image_id, t.previous_state, t.new_state) for t in applied.transitions] == [
        ("ami-1", None, "enabled"),
        ("ami-2", None, "enabled"),
    ]
    assert [s.image for s in store.current_images()] == [an_image("ami-1"), an_image("ami-2")]
    assert {e.transition.image_id for e in store.history()} == {"ami-1", "ami-2"}


def test_one_poll_applied_twice_records_once(store: Store, engine: Engine) -> None:
    poll = a_poll(an_image("ami-1", state="enabling-failed"))

    first = store.apply_poll(poll, T0)
    second = store.apply_poll(poll, T0 + timedelta(minutes=5))

    assert len(first.transitions) == 1
    assert second.transitions == ()
    assert (second.upserts, second.removed) == (0, 0)
    assert count_rows(engine, history) == 1
    assert count_rows(engine, images) == 1
    assert count_rows(engine, polls) == 2


def test_a_transition_another_writer_already_recorded_is_not_recorded_again(
    store: Store, engine: Engine
) -> None:
    poll = a_poll(an_image("ami-1"))
    store.apply_poll(poll, T0)
    # As if a second instance had read the scope before the first one committed.
    with engine.begin() as connection:
        connection.execute(images.delete())

    store.apply_poll(poll, T0 + timedelta(seconds=1))

    assert count_rows(engine, history) == 1
    assert [s.image for s in store.current_images()] == [an_image("ami-1")]


def test_an_unchanged_poll_issues_the_same_few_statements_whatever_the_image_count(
    store: Store, statements: list[str]
) -> None:
    def statements_of_an_unchanged_poll(scope: Scope, count: int) -> int:
        poll = a_poll(*many_images(count), scope=scope)
        store.apply_poll(poll, T0)
        statements.clear()
        store.apply_poll(poll, T0 + timedelta(minutes=5))
        return len(statements)

    with_ten = statements_of_an_unchanged_poll(SCOPE, 10)
    with_a_thousand = statements_of_an_unchanged_poll(OTHER_REGION, 1_000)

    assert with_ten == with_a_thousand
    # SELECT the scope's images, INSERT the poll, and the BEGIN IMMEDIATE (SQLite) or the
    # scope's advisory lock (PostgreSQL).
    assert with_a_thousand <= 3


def test_an_unchanged_poll_writes_only_its_poll_row(store: Store, engine: Engine) -> None:
    poll = a_poll(an_image("ami-1"))
    store.apply_poll(poll, T0)
    before = store.current_images()

    applied = store.apply_poll(poll, T0 + timedelta(minutes=5))

    assert (applied.transitions, applied.upserts, applied.removed) == ((), 0, 0)
    assert store.current_images() == before
    assert count_rows(engine, polls) == 2
    assert count_rows(engine, history) == 1


def test_a_failed_poll_changes_no_image_and_records_its_error(store: Store, engine: Engine) -> None:
    store.apply_poll(a_poll(an_image("ami-1"), an_image("ami-2")), T0)
    before = store.current_images()

    applied = store.apply_poll(a_failed_poll(started_at=T0 + timedelta(minutes=5)), T0)

    assert applied.transitions == ()
    assert store.current_images() == before
    assert count_rows(engine, history) == 2
    [latest] = store.latest_polls()
    assert not latest.ok
    assert latest.images is None
    assert (latest.error_code, latest.error_message) == (
        "RequestLimitExceeded",
        "Request limit exceeded.",
    )


def test_a_failed_poll_without_an_error_code_still_reads_back_as_failed(store: Store) -> None:
    store.apply_poll(replace(a_failed_poll(), error_code=None), T0)

    [latest] = store.latest_polls()
    assert not latest.ok


def test_a_removed_image_is_recorded_as_removed_and_its_return_as_appeared(
    store: Store,
) -> None:
    store.apply_poll(a_poll(an_image("ami-1"), an_image("ami-2")), T0)

    removal = store.apply_poll(a_poll(an_image("ami-2")), T0 + timedelta(minutes=5))
    assert [(t.image_id, t.previous_state, t.new_state) for t in removal.transitions] == [
        ("ami-1", "enabled", REMOVED)
    ]
    assert [s.image.image_id for s in store.current_images()] == ["ami-2"]

    # Fast launch enabled again: AWS starts a new transition, with a new time.
    again = an_image("ami-1", state="enabling", state_transition_time=T0 + timedelta(hours=1))
    store.apply_poll(a_poll(again, an_image("ami-2")), T0 + timedelta(hours=1, minutes=1))

    recorded = [
        (e.transition.previous_state, e.transition.new_state, e.transition.transition_time)
        for e in store.history(image_id="ami-1")
    ]
    assert recorded == [
        (None, "enabling", T0 + timedelta(hours=1)),
        ("enabled", REMOVED, T0 + timedelta(minutes=5)),
        (None, "enabled", T0),
    ]
    assert [s.image for s in store.current_images() if s.image.image_id == "ami-1"] == [again]


def test_the_same_state_at_a_new_time_is_a_new_transition(store: Store) -> None:
    store.apply_poll(a_poll(an_image("ami-1", state="enabling-failed")), T0)
    retried = an_image(
        "ami-1", state="enabling-failed", state_transition_time=T0 + timedelta(minutes=3)
    )

    applied = store.apply_poll(a_poll(retried), T0 + timedelta(minutes=5))

    assert [(t.previous_state, t.new_state) for t in applied.transitions] == [
        ("enabling-failed", "enabling-failed")
    ]
    assert len(store.history(image_id="ami-1")) == 2


def test_a_changed_count_rewrites_the_image_without_a_transition(
    store: Store, engine: Engine
) -> None:
    store.apply_poll(a_poll(an_image("ami-1")), T0)
    bigger = an_image("ami-1", target_resource_count=10, launch_template_version="4")

    applied = store.apply_poll(a_poll(bigger), T0 + timedelta(minutes=5))

    assert (applied.transitions, applied.upserts) == ((), 1)
    assert [s.image for s in store.current_images()] == [bigger]
    assert count_rows(engine, history) == 1


def test_an_image_keeps_when_it_was_first_seen(store: Store, engine: Engine) -> None:
    store.apply_poll(a_poll(an_image("ami-1")), T0)
    store.apply_poll(a_poll(an_image("ami-1", state="disabling")), T0 + timedelta(hours=2))

    with engine.connect() as connection:
        first_seen, updated = connection.execute(
            select(images.c.first_seen_at, images.c.updated_at)
        ).one()
    assert (first_seen, updated) == (T0, T0 + timedelta(hours=2))


def test_an_image_without_optional_fields_round_trips(store: Store) -> None:
    bare = FastLaunchImage(
        image_id="ami-shared",
        state="enabling",
        state_transition_reason="",
        state_transition_time=None,
        resource_type=None,
        target_resource_count=None,
        max_parallel_launches=None,
        owner_id=None,
        launch_template_id=None,
        launch_template_name=None,
        launch_template_version=None,
    )

    applied = store.apply_poll(a_poll(bare), T0)
    again = store.apply_poll(a_poll(bare), T0 + timedelta(minutes=5))

    assert [s.image for s in store.current_images()] == [bare]
    # With no time from AWS, the transition is dated when it was observed, and only once.
    assert [t.transition_time for t in applied.transitions] == [T0]
    assert again.transitions == ()


def test_times_keep_their_milliseconds_and_come_back_in_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    when = datetime(2026, 11, 26, 11, 0, 0, 456000, tzinfo=paris)
    observed = datetime(2026, 11, 26, 11, 5, 0, 789000, tzinfo=paris)

    store.apply_poll(a_poll(an_image("ami-1", state_transition_time=when)), observed)

    [stored] = store.current_images()
    [entry] = store.history()
    for value in (
        stored.image.state_transition_time,
        entry.transition.transition_time,
        entry.observed_at,
    ):
        assert value is not None
        assert value.tzinfo == UTC
    assert stored.image.state_transition_time == datetime(
        2026, 11, 26, 10, 0, 0, 456000, tzinfo=UTC
    )
    assert entry.observed_at == datetime(2026, 11, 26, 10, 5, 0, 789000, tzinfo=UTC)


def test_scopes_are_kept_apart(store: Store) -> None:
    store.apply_poll(a_poll(an_image("ami-1")), T0)
    store.apply_poll(a_poll(an_image("ami-2"), scope=OTHER_REGION), T0)

    # A poll of one region says nothing about the other: no removal there.
    store.apply_poll(a_poll(scope=OTHER_REGION), T0 + timedelta(minutes=5))

    assert [s.image.image_id for s in store.current_images(SCOPE)] == ["ami-1"]
    assert store.current_images(OTHER_REGION) == []
    assert [(s.scope, s.image.image_id) for s in store.current_images()] == [(SCOPE, "ami-1")]


def test_history_is_newest_first_and_filtered_by_image_time_and_limit(store: Store) -> None:
    for minutes, state in enumerate(("enabling", "enabled", "disabling")):
        at = T0 + timedelta(minutes=minutes)
        store.apply_poll(
            a_poll(an_image("ami-1", state=state, state_transition_time=at), an_image("ami-2")),
            at,
        )

    newest_first = [e.transition.new_state for e in store.history(image_id="ami-1")]
    assert newest_first == ["disabling", "enabled", "enabling"]
    recent = store.history(image_id="ami-1", since=T0 + timedelta(minutes=1))
    assert [e.transition.new_state for e in recent] == ["disabling", "enabled"]
    assert [e.transition.new_state for e in store.history(limit=1)] == ["disabling"]
    assert {e.transition.image_id for e in store.history()} == {"ami-1", "ami-2"}
    assert all(e.scope == SCOPE for e in store.history())


def test_a_limit_below_one_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.history(limit=0)


def test_latest_polls_gives_the_newest_poll_of_every_scope(store: Store) -> None:
    store.apply_poll(a_failed_poll(started_at=T0), T0)
    store.apply_poll(a_poll(an_image("ami-1"), started_at=T0 + timedelta(minutes=5)), T0)
    store.apply_poll(a_failed_poll(scope=OTHER_REGION, started_at=T0 + timedelta(minutes=5)), T0)
    store.apply_poll(a_poll(scope=OTHER_REGION, started_at=T0), T0)

    latest = {summary.scope: summary for summary in store.latest_polls()}

    assert set(latest) == {SCOPE, OTHER_REGION}
    assert latest[SCOPE].ok
    assert latest[SCOPE].images == 1
    assert latest[SCOPE].started_at == T0 + timedelta(minutes=5)
    assert not latest[OTHER_REGION].ok


def test_the_database_answers_a_ping(store: Store) -> None:
    store.ping()


def test_ten_thousand_new_images_are_written_in_a_few_bulk_statements(
    store: Store, engine: Engine, statements: list[str]
) -> None:
    poll = a_poll(*many_images(10_000))

    started = time.process_time()
    applied = store.apply_poll(poll, T0)
    cpu_seconds = time.process_time() - started
    sent = len(statements)

    assert len(applied.transitions) == 10_000
    assert count_rows(engine, images) == 10_000
    # BEGIN, SELECT, INSERT the poll, then one executemany each for history and images.
    assert sent <= 5
    # A fraction of a second in bulk; row-at-a-time writes would take many seconds.
    assert cpu_seconds < 2.0


@pytest.mark.postgres
def test_two_writers_of_one_scope_on_postgresql_record_a_removal_once(postgres_url: str) -> None:
    import threading

    from monitor.store import create_engine_for, upgrade

    engine = create_engine_for(postgres_url, pool_size=4)
    upgrade(engine)
    Store(engine).apply_poll(a_poll(*many_images(50)), T0)
    start = threading.Barrier(2)

    def apply(seconds_later: int) -> None:
        # Two instances that both believe they lead, each seeing the images gone at its own
        # time: the unique keys alone could not tell that the removals are one.
        start.wait()
        Store(engine).apply_poll(a_poll(), T0 + timedelta(seconds=seconds_later))

    threads = [threading.Thread(target=apply, args=(n,)) for n in (60, 61)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with engine.connect() as connection:
        removals = connection.execute(
            select(func.count()).select_from(history).where(history.c.new_state == REMOVED)
        ).scalar_one()
    engine.dispose()
    assert removals == 50
