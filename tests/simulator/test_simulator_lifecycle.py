"""EnableFastLaunch and DisableFastLaunch, and the state machine the clock drives."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from monitor.demo.simulator import (
    Ec2Error,
    FastLaunchSimulator,
    LaunchTemplateRef,
    ManualClock,
    Timings,
)


def state_of(ec2: Any, image_id: str) -> tuple[str, str] | None:
    listed = ec2.describe_fast_launch_images(ImageIds=[image_id])["FastLaunchImages"]
    if not listed:
        return None
    return listed[0]["State"], listed[0]["StateTransitionReason"]


@pytest.fixture
def image_id(sim: FastLaunchSimulator) -> str:
    sim.timings = Timings(enabling_seconds=120, disabling_seconds=30)
    return sim.register_images(1)[0]


def test_enabling_turns_into_enabled_once_the_clock_passes_the_enabling_time(
    sim: FastLaunchSimulator, ec2: Any, clock: ManualClock, image_id: str
) -> None:
    template = sim.create_launch_template("windows-base")
    started = clock.now()

    answer = ec2.enable_fast_launch(
        ImageId=image_id,
        ResourceType="snapshot",
        SnapshotConfiguration={"TargetResourceCount": 10},
        LaunchTemplate={"LaunchTemplateId": template.launch_template_id, "Version": "1"},
        MaxParallelLaunches=8,
    )
    clock.advance(119)
    still_enabling = state_of(ec2, image_id)
    clock.advance(1)
    (image,) = ec2.describe_fast_launch_images()["FastLaunchImages"]

    assert answer["State"] == "enabling"
    assert answer["StateTransitionReason"] == "Client.UserInitiated"
    assert answer["SnapshotConfiguration"] == {"TargetResourceCount": 10}
    assert answer["MaxParallelLaunches"] == 8
    assert answer["OwnerId"] == sim.account_id
    assert still_enabling == ("enabling", "Client.UserInitiated")
    assert image["State"] == "enabled"
    assert image["StateTransitionTime"] == started + timedelta(seconds=120)
    assert image["LaunchTemplate"] == {
        "LaunchTemplateId": template.launch_template_id,
        "LaunchTemplateName": "windows-base",
        "Version": "1",
    }


def test_a_late_look_reports_the_time_the_transition_happened(
    sim: FastLaunchSimulator, clock: ManualClock, image_id: str
) -> None:
    enabled_at = clock.now() + timedelta(seconds=120)
    sim.enable(image_id)

    clock.advance(3600)

    assert sim.image(image_id).state_transition_time == enabled_at


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (
            {"LaunchTemplateId": "lt-0123456789abcdef0", "Version": "1"},
            "InvalidLaunchTemplateId.NotFound",
        ),
        (
            {"LaunchTemplateName": "deleted-template", "Version": "1"},
            "InvalidLaunchTemplateName.NotFoundException",
        ),
    ],
)
def test_a_missing_launch_template_makes_enabling_fail_with_a_reason(
    ec2: Any, clock: ManualClock, image_id: str, template: dict[str, str], reason: str
) -> None:
    answer = ec2.enable_fast_launch(ImageId=image_id, LaunchTemplate=template)
    clock.advance(120)

    state = state_of(ec2, image_id)

    assert answer["State"] == "enabling"
    assert state is not None
    assert state[0] == "enabling-failed"
    assert reason in state[1]


def test_a_missing_launch_template_version_makes_enabling_fail(
    sim: FastLaunchSimulator, clock: ManualClock, image_id: str
) -> None:
    sim.create_launch_template("windows-base")

    sim.enable(image_id, launch_template=LaunchTemplateRef(None, "windows-base", "7"))
    clock.advance(120)

    image = sim.image(image_id)
    assert image.state == "enabling-failed"
    assert "version 7" in image.state_transition_reason


def test_without_a_launch_template_ec2_makes_a_default_one(
    sim: FastLaunchSimulator, ec2: Any, clock: ManualClock, image_id: str
) -> None:
    answer = ec2.enable_fast_launch(ImageId=image_id)
    clock.advance(120)

    template = answer["LaunchTemplate"]
    assert template["LaunchTemplateName"].startswith("EC2FastLaunchDefaultResourceCreation-")
    described = ec2.describe_launch_templates(LaunchTemplateIds=[template["LaunchTemplateId"]])
    assert len(described["LaunchTemplates"]) == 1
    assert state_of(ec2, image_id) == (
        "enabled",
        "Client.UserInitiated - Lifecycle state transition",
    )


def test_an_unknown_ami_cannot_be_enabled(ec2: Any, image_id: str) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidAMIID\.NotFound\)"):
        ec2.enable_fast_launch(ImageId="ami-00000000000000000")
    with pytest.raises(ClientError, match=r"\(InvalidAMIID\.Malformed\)"):
        ec2.enable_fast_launch(ImageId="snap-0123")


@pytest.mark.parametrize("parallel", [1, 5])
def test_fewer_than_six_parallel_launches_is_refused(
    ec2: Any, image_id: str, parallel: int
) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidParameterValue\).*MaxParallelLaunches"):
        ec2.enable_fast_launch(ImageId=image_id, MaxParallelLaunches=parallel)


def test_a_resource_type_other_than_snapshot_is_refused(ec2: Any, image_id: str) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidParameterValue\).*ResourceType"):
        ec2.enable_fast_launch(ImageId=image_id, ResourceType="volume")


def test_a_launch_template_named_both_by_id_and_name_is_refused(ec2: Any, image_id: str) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidParameterCombination\)"):
        ec2.enable_fast_launch(
            ImageId=image_id,
            LaunchTemplate={
                "LaunchTemplateId": "lt-0123456789abcdef0",
                "LaunchTemplateName": "x",
                "Version": "1",
            },
        )


@pytest.mark.parametrize("action", ["enable_fast_launch", "disable_fast_launch"])
def test_dry_run_of_a_change_answers_dry_run_operation_and_changes_nothing(
    sim: FastLaunchSimulator, ec2: Any, image_id: str, action: str
) -> None:
    with pytest.raises(ClientError, match=r"\(DryRunOperation\)") as dry:
        getattr(ec2, action)(ImageId=image_id, DryRun=True)

    assert dry.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert sim.images() == ()


def test_disabling_takes_the_image_off_the_list_after_the_disabling_time(
    sim: FastLaunchSimulator, ec2: Any, clock: ManualClock
) -> None:
    (image_id,) = sim.seed(1)

    answer = ec2.disable_fast_launch(ImageId=image_id)
    clock.advance(29)
    still_disabling = state_of(ec2, image_id)
    clock.advance(1)

    assert answer["State"] == "disabling"
    assert still_disabling == ("disabling", "Client.UserInitiated")
    assert state_of(ec2, image_id) is None


def test_a_failing_cleanup_ends_in_disabling_failed_until_forced(
    sim: FastLaunchSimulator, ec2: Any, clock: ManualClock
) -> None:
    (image_id,) = sim.seed(1)
    sim.fail_cleanup(image_id)

    ec2.disable_fast_launch(ImageId=image_id)
    clock.advance(30)
    failed = state_of(ec2, image_id)
    ec2.disable_fast_launch(ImageId=image_id)
    clock.advance(30)
    failed_again = state_of(ec2, image_id)
    forced = ec2.disable_fast_launch(ImageId=image_id, Force=True)
    clock.advance(30)

    assert failed is not None
    assert failed[0] == "disabling-failed"
    assert failed_again is not None
    assert failed_again[0] == "disabling-failed"
    assert forced["State"] == "disabling"
    assert state_of(ec2, image_id) is None


def test_an_image_being_disabled_cannot_be_enabled(sim: FastLaunchSimulator, ec2: Any) -> None:
    (image_id,) = sim.seed(1)
    ec2.disable_fast_launch(ImageId=image_id)

    with pytest.raises(ClientError, match=r"\(IncorrectState\)"):
        ec2.enable_fast_launch(ImageId=image_id)


def test_an_image_without_fast_launch_cannot_be_disabled(ec2: Any, image_id: str) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidParameterValue\).*not enabled"):
        ec2.disable_fast_launch(ImageId=image_id)


def test_a_failed_image_can_be_enabled_again(sim: FastLaunchSimulator, clock: ManualClock) -> None:
    (image_id,) = sim.seed(1, states="enabling-failed")

    sim.enable(image_id)
    clock.advance(sim.timings.enabling_seconds)

    assert sim.image(image_id).state == "enabled"


def test_force_state_puts_an_image_in_any_state_now_and_cancels_its_plan(
    sim: FastLaunchSimulator, ec2: Any, clock: ManualClock, image_id: str
) -> None:
    sim.enable(image_id)
    clock.advance(10)

    forced = sim.force_state(image_id, "enabled-failed", "Server.Boom: capacity")
    clock.advance(600)
    (image,) = ec2.describe_fast_launch_images()["FastLaunchImages"]

    assert forced.state_transition_time == clock.now() - timedelta(seconds=600)
    assert image["State"] == "enabled-failed"
    assert image["StateTransitionReason"] == "Server.Boom: capacity"
    assert image["StateTransitionTime"] == forced.state_transition_time


def test_force_state_gives_an_ami_without_fast_launch_an_entry(
    sim: FastLaunchSimulator, image_id: str
) -> None:
    forced = sim.force_state(image_id, "disabling-failed")

    assert sim.images() == (forced,)
    assert forced.state == "disabling-failed"
    assert forced.state_transition_reason != ""


def test_force_state_accepts_a_state_aws_has_not_documented(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    (image_id,) = sim.seed(1)

    sim.force_state(image_id, "paused", "")

    assert state_of(ec2, image_id) == ("paused", "")


def test_force_state_of_an_unknown_ami_is_refused(sim: FastLaunchSimulator) -> None:
    with pytest.raises(Ec2Error, match=r"InvalidAMIID\.NotFound"):
        sim.force_state("ami-00000000000000000", "enabled")


def test_scheduled_steps_play_out_as_the_clock_passes_them(
    sim: FastLaunchSimulator, clock: ManualClock
) -> None:
    (image_id,) = sim.seed(1)
    sim.schedule(image_id, 10, "enabled-failed", "Server.Boom")
    sim.schedule(image_id, 20, "enabled")
    sim.schedule(image_id, 30, None)

    seen = []
    for _ in range(3):
        seen.append(sim.image(image_id).state)
        clock.advance(10)

    assert seen == ["enabled", "enabled-failed", "enabled"]
    assert sim.images() == ()


def test_remove_takes_an_image_off_the_list_at_once(sim: FastLaunchSimulator) -> None:
    first, second = sim.seed(2)

    sim.remove(first)

    assert [image.image_id for image in sim.images()] == [second]
    with pytest.raises(KeyError):
        sim.remove(first)


def test_seed_gives_states_in_turn_with_the_settings_asked_for(
    sim: FastLaunchSimulator, clock: ManualClock
) -> None:
    seeded = sim.seed(
        4,
        states=["enabled", "enabling"],
        owner_id="444455556666",
        target_resource_count=12,
        max_parallel_launches=7,
    )

    images = {image.image_id: image for image in sim.images()}
    assert [images[i].state for i in seeded] == ["enabled", "enabling", "enabled", "enabling"]
    assert {images[i].owner_id for i in seeded} == {"444455556666"}
    assert {images[i].target_resource_count for i in seeded} == {12}
    assert {images[i].max_parallel_launches for i in seeded} == {7}
    assert {images[i].state_transition_time for i in seeded} == {clock.now()}


def test_seeded_images_are_real_moto_amis(sim: FastLaunchSimulator, ec2: Any) -> None:
    seeded = sim.seed(3)

    described = ec2.describe_images(ImageIds=seeded)["Images"]

    assert sorted(image["ImageId"] for image in described) == sorted(seeded)
    assert {image["Platform"] for image in described} == {"windows"}


def test_ten_thousand_images_are_seeded_in_well_under_a_few_seconds(
    sim: FastLaunchSimulator,
) -> None:
    started = time.perf_counter()
    sim.seed(10_000)
    elapsed = time.perf_counter() - started

    assert len(sim.images()) == 10_000
    assert elapsed < 5
