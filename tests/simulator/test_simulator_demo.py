from __future__ import annotations

from datetime import timedelta

from monitor.demo.simulator import FastLaunchSimulator, ManualClock, seed_demo
from monitor.demo.simulator.demo import DEMO_SECONDS


def test_the_demo_walks_its_images_through_their_stories(
    sim: FastLaunchSimulator, clock: ManualClock
) -> None:
    start = clock.now()
    story = seed_demo(sim)
    quick, slow, broken, flaky, retired, steady, shared = (image.image_id for image in story)

    def states_at(seconds: float) -> dict[str, str]:
        clock.set(start + timedelta(seconds=seconds))
        return {image.image_id: image.state for image in sim.images()}

    timeline = {
        seconds: states_at(seconds) for seconds in (0.0, 30, 45, 60, 75, 90, 120, DEMO_SECONDS)
    }

    assert 5 <= len(story) <= 8
    assert all(image.story for image in story)
    assert timeline[0] == {
        quick: "enabling",
        slow: "enabling",
        broken: "enabling",
        flaky: "enabled",
        retired: "enabled",
        steady: "enabled",
        shared: "enabled",
    }
    assert timeline[30][quick] == "enabled"
    assert timeline[45][broken] == "enabling-failed"
    assert timeline[60][flaky] == "enabled-failed"
    assert timeline[75][retired] == "disabling"
    assert timeline[90][slow] == "enabled"
    assert retired not in timeline[120]
    assert timeline[DEMO_SECONDS][flaky] == "enabled"
    assert timeline[DEMO_SECONDS] == {
        quick: "enabled",
        slow: "enabled",
        broken: "enabling-failed",
        flaky: "enabled",
        steady: "enabled",
        shared: "enabled",
    }


def test_the_demos_broken_image_says_its_launch_template_is_missing(
    sim: FastLaunchSimulator, clock: ManualClock
) -> None:
    broken = seed_demo(sim)[2].image_id

    clock.advance(DEMO_SECONDS)

    assert "does not exist" in sim.image(broken).state_transition_reason


def test_the_demos_shared_image_has_no_owner_nor_snapshot_configuration(
    sim: FastLaunchSimulator,
) -> None:
    shared = sim.image(seed_demo(sim)[-1].image_id)

    assert (shared.owner_id, shared.target_resource_count) == ("", None)
