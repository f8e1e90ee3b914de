"""The in-memory current state the metrics are rendered from."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

from monitor.core.model import FastLaunchImage, PollResult, Scope, StoredImage
from monitor.exposition.current import CurrentState
from monitor.store import Store, create_engine_for, upgrade

PROD_EU = Scope("prod", "111111111111", "eu-west-1")
PROD_US = Scope("prod", "111111111111", "us-east-1")
TEST_EU = Scope("test", "222222222222", "eu-west-1")
T = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def image(image_id: str, **changes: object) -> FastLaunchImage:
    base = FastLaunchImage(
        image_id=image_id,
        state="enabled",
        state_transition_reason="",
        state_transition_time=datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=UTC),
        resource_type="snapshot",
        target_resource_count=5,
        max_parallel_launches=6,
        owner_id="111111111111",
        launch_template_id=None,
        launch_template_name=None,
        launch_template_version=None,
    )
    return replace(base, **changes)


def ids(current: CurrentState) -> list[tuple[Scope, str]]:
    return [(item.scope, item.image.image_id) for item in current.snapshot()]


def ids_of(snapshot: tuple[StoredImage, ...]) -> list[str]:
    return [item.image.image_id for item in snapshot]


def test_a_new_state_is_empty():
    assert CurrentState().snapshot() == ()


def test_a_replaced_scope_holds_exactly_the_images_of_its_last_poll():
    current = CurrentState()
    current.replace_scope(PROD_EU, [image("ami-1"), image("ami-2")])
    current.replace_scope(PROD_EU, [image("ami-2", state="enabled-failed"), image("ami-3")])

    assert current.snapshot() == (
        StoredImage(PROD_EU, image("ami-2", state="enabled-failed")),
        StoredImage(PROD_EU, image("ami-3")),
    )


def test_replacing_one_scope_leaves_the_others_alone():
    current = CurrentState()
    current.replace_scope(PROD_EU, [image("ami-1")])
    current.replace_scope(PROD_US, [image("ami-2")])

    current.replace_scope(PROD_US, [image("ami-3")])

    assert ids(current) == [(PROD_EU, "ami-1"), (PROD_US, "ami-3")]


def test_a_poll_that_lists_nothing_empties_its_scope():
    current = CurrentState()
    current.replace_scope(PROD_EU, [image("ami-1")])

    current.replace_scope(PROD_EU, [])

    assert current.snapshot() == ()


def test_a_snapshot_is_grouped_by_scope_and_ordered_by_image_id():
    current = CurrentState()
    current.replace_scope(TEST_EU, [image("ami-b"), image("ami-a")])
    current.replace_scope(PROD_US, [image("ami-d"), image("ami-c")])
    current.replace_scope(PROD_EU, [image("ami-f"), image("ami-e")])

    assert ids(current) == [
        (PROD_EU, "ami-e"),
        (PROD_EU, "ami-f"),
        (PROD_US, "ami-c"),
        (PROD_US, "ami-d"),
        (TEST_EU, "ami-a"),
        (TEST_EU, "ami-b"),
    ]


def test_an_image_listed_twice_in_one_poll_keeps_its_first_record_as_the_store_does(tmp_path):
    listed_twice = [image("ami-1"), image("ami-1", state="enabling")]
    engine = create_engine_for(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    upgrade(engine)
    store = Store(engine)
    store.apply_poll(PollResult(PROD_EU, T, 0.1, 1, tuple(listed_twice)), T)
    current = CurrentState()

    current.replace_scope(PROD_EU, listed_twice)

    assert [item.image.state for item in current.snapshot()] == ["enabled"]
    assert current.snapshot() == tuple(store.current_images())
    engine.dispose()


def test_loading_replaces_everything_with_the_stored_images():
    current = CurrentState()
    current.replace_scope(TEST_EU, [image("ami-old")])

    current.load(
        [
            StoredImage(PROD_US, image("ami-2")),
            StoredImage(PROD_EU, image("ami-1")),
            StoredImage(PROD_US, image("ami-3")),
        ]
    )

    assert ids(current) == [(PROD_EU, "ami-1"), (PROD_US, "ami-2"), (PROD_US, "ami-3")]


def test_clearing_forgets_every_image():
    current = CurrentState()
    current.replace_scope(PROD_EU, [image("ami-1")])
    current.replace_scope(TEST_EU, [image("ami-2")])

    current.clear()

    assert current.snapshot() == ()


def test_a_snapshot_taken_before_a_change_stays_as_it_was():
    current = CurrentState()
    current.replace_scope(PROD_EU, [image("ami-1")])
    before = current.snapshot()

    current.replace_scope(PROD_EU, [image("ami-2")])

    assert ids_of(before) == ["ami-1"]
    assert ids_of(current.snapshot()) == ["ami-2"]


def test_a_snapshot_never_mixes_two_polls_of_a_scope_while_another_thread_replaces_it():
    current = CurrentState()
    done = threading.Event()
    seen_mixed: list[set[str]] = []

    def poll_repeatedly() -> None:
        for generation in range(300):
            images = [image(f"ami-{n}", state=f"gen-{generation}") for n in range(50)]
            current.replace_scope(PROD_EU, images)
        done.set()

    writer = threading.Thread(target=poll_repeatedly)
    writer.start()
    while not done.is_set():
        snapshot = current.snapshot()
        states = {item.image.state for item in snapshot}
        if len(states) > 1 or len(snapshot) not in (0, 50):
            seen_mixed.append(states)
    writer.join()

    assert seen_mixed == []
    assert {item.image.state for item in current.snapshot()} == {"gen-299"}


def test_an_unchanged_poll_keeps_the_very_tuple_of_its_scope_and_tells_no_watcher():
    current = CurrentState()
    heard: list[tuple[Scope, tuple[StoredImage, ...]]] = []
    current.watch(lambda scope, images: heard.append((scope, images)))
    current.replace_scope(PROD_EU, [image("ami-1"), image("ami-2")])
    (before,) = [images for scope, images in current.scopes()]

    current.replace_scope(PROD_EU, [image("ami-2"), image("ami-1")])

    (after,) = [images for scope, images in current.scopes()]
    assert after is before
    assert heard == [(PROD_EU, before)]


def test_watchers_hear_each_changed_scope_and_an_empty_tuple_for_each_scope_gone():
    current = CurrentState()
    current.replace_scope(PROD_EU, [image("ami-1")])
    current.replace_scope(TEST_EU, [image("ami-2")])
    heard: list[tuple[Scope, list[str]]] = []
    current.watch(lambda scope, images: heard.append((scope, ids_of(images))))

    current.replace_scope(PROD_EU, [image("ami-1", state="enabled-failed")])
    current.load([StoredImage(PROD_US, image("ami-3")), StoredImage(TEST_EU, image("ami-2"))])
    current.clear()

    assert heard[:3] == [(PROD_EU, ["ami-1"]), (PROD_EU, []), (PROD_US, ["ami-3"])]
    assert sorted(heard[3:], key=str) == sorted([(PROD_US, []), (TEST_EU, [])], key=str)


def test_scopes_lists_each_scope_with_its_images_in_snapshot_order():
    current = CurrentState()
    current.replace_scope(TEST_EU, [image("ami-b"), image("ami-a")])
    current.replace_scope(PROD_EU, [image("ami-c")])

    scopes = current.scopes()

    assert [scope for scope, _ in scopes] == [PROD_EU, TEST_EU]
    assert tuple(item for _, images in scopes for item in images) == current.snapshot()
