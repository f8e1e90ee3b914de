from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.demo.simulator.table import FastLaunchTable, SimulatedImage, to_millis

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def entry(image_id: str, state: str = "enabled", owner_id: str = "123456789012") -> SimulatedImage:
    return SimulatedImage(
        image_id=image_id,
        state=state,
        state_transition_reason="",
        state_transition_time=T0,
        owner_id=owner_id,
        resource_type="snapshot",
        target_resource_count=5,
        max_parallel_launches=6,
        launch_template=None,
    )


def everything(image: SimulatedImage) -> bool:
    return True


def test_times_are_truncated_to_milliseconds() -> None:
    assert to_millis(T0.replace(microsecond=123456)) == T0.replace(microsecond=123000)


def test_a_planned_step_applies_at_its_own_time_even_when_settled_later() -> None:
    table = FastLaunchTable()
    table.put(entry("ami-1", "enabling"))
    table.plan("ami-1", T0 + timedelta(seconds=60), "enabled", "done")

    table.settle(T0 + timedelta(seconds=59))
    assert table.get("ami-1") == entry("ami-1", "enabling")

    table.settle(T0 + timedelta(hours=3))
    image = table.get("ami-1")
    assert image is not None
    assert (image.state, image.state_transition_reason) == ("enabled", "done")
    assert image.state_transition_time == T0 + timedelta(seconds=60)


def test_steps_due_together_apply_in_time_order() -> None:
    table = FastLaunchTable()
    table.put(entry("ami-1"))
    table.plan("ami-1", T0 + timedelta(seconds=20), "enabled", "second")
    table.plan("ami-1", T0 + timedelta(seconds=10), "enabled-failed", "first")

    table.settle(T0 + timedelta(seconds=30))

    image = table.get("ami-1")
    assert image is not None
    assert (image.state, image.state_transition_reason) == ("enabled", "second")


def test_a_step_without_state_takes_the_image_off_the_list() -> None:
    table = FastLaunchTable()
    table.put(entry("ami-1", "disabling"))
    table.plan("ami-1", T0 + timedelta(seconds=30), None, "")

    table.settle(T0 + timedelta(seconds=30))

    assert "ami-1" not in table
    assert table.snapshot() == ()


def test_replacing_an_entry_cancels_its_plan() -> None:
    table = FastLaunchTable()
    table.put(entry("ami-1", "enabling"))
    table.plan("ami-1", T0 + timedelta(seconds=60), "enabled", "")

    table.put(entry("ami-1", "enabled-failed"))
    table.settle(T0 + timedelta(hours=1))

    image = table.get("ami-1")
    assert image is not None
    assert image.state == "enabled-failed"


def test_a_dropped_and_readded_image_does_not_inherit_the_old_plan() -> None:
    table = FastLaunchTable()
    table.put(entry("ami-1", "disabling"))
    table.plan("ami-1", T0 + timedelta(seconds=30), None, "")
    assert table.drop("ami-1")

    table.put(entry("ami-1", "enabling"))
    table.settle(T0 + timedelta(hours=1))

    assert "ami-1" in table
    assert not table.drop("ami-2")


def test_pages_follow_image_id_order_and_say_whether_more_follow() -> None:
    table = FastLaunchTable()
    for image_id in ("ami-3", "ami-1", "ami-2"):
        table.put(entry(image_id))

    first, more = table.page(after="", limit=2, matches=everything)
    rest, more_after = table.page(after=first[-1].image_id, limit=2, matches=everything)

    assert [i.image_id for i in first] == ["ami-1", "ami-2"]
    assert more
    assert [i.image_id for i in rest] == ["ami-3"]
    assert not more_after


def test_a_page_stays_stable_when_images_come_and_go_before_it() -> None:
    table = FastLaunchTable()
    for image_id in ("ami-1", "ami-2", "ami-3", "ami-4"):
        table.put(entry(image_id))
    first, _ = table.page(after="", limit=2, matches=everything)

    table.drop("ami-1")
    table.drop("ami-2")
    table.put(entry("ami-0"))
    rest, more = table.page(after=first[-1].image_id, limit=2, matches=everything)

    assert [i.image_id for i in rest] == ["ami-3", "ami-4"]
    assert not more


def test_a_page_can_be_restricted_to_given_ids_and_a_predicate() -> None:
    table = FastLaunchTable()
    for image_id, state in (("ami-1", "enabled"), ("ami-2", "enabling"), ("ami-3", "enabled")):
        table.put(entry(image_id, state))

    found, more = table.page(
        after="",
        limit=None,
        matches=lambda image: image.state == "enabled",
        only=["ami-3", "ami-2", "ami-9"],
    )

    assert [i.image_id for i in found] == ["ami-3"]
    assert not more
