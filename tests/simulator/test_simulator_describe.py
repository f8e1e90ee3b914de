"""DescribeFastLaunchImages through real botocore, with moto in-process."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from monitor.demo.simulator import FastLaunchSimulator, ManualClock


def describe_all(ec2: Any, **kwargs: Any) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_fast_launch_images").paginate(**kwargs)
    return [image for page in pages for image in page["FastLaunchImages"]]


def test_450_images_come_in_pages_of_200_200_and_50_through_the_paginator(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    seeded = sim.seed(450)

    pages = list(
        ec2.get_paginator("describe_fast_launch_images").paginate(
            PaginationConfig={"PageSize": 200}
        )
    )

    assert [len(page["FastLaunchImages"]) for page in pages] == [200, 200, 50]
    assert "NextToken" not in pages[-1]
    listed = [image["ImageId"] for page in pages for image in page["FastLaunchImages"]]
    assert listed == sorted(seeded)


def test_every_field_parses_as_botocore_models_it(
    sim: FastLaunchSimulator, ec2: Any, clock: ManualClock
) -> None:
    clock.advance(0.123456)
    template = sim.create_launch_template("windows-base")
    (image_id,) = sim.seed(
        1,
        states="enabling-failed",
        target_resource_count=7,
        max_parallel_launches=9,
        launch_template=template,
        reason="Client.Something: <went> & wrong",
    )

    (image,) = ec2.describe_fast_launch_images()["FastLaunchImages"]

    assert image == {
        "ImageId": image_id,
        "ResourceType": "snapshot",
        "SnapshotConfiguration": {"TargetResourceCount": 7},
        "LaunchTemplate": {
            "LaunchTemplateId": template.launch_template_id,
            "LaunchTemplateName": "windows-base",
            "Version": "1",
        },
        "MaxParallelLaunches": 9,
        "OwnerId": sim.account_id,
        "State": "enabling-failed",
        "StateTransitionReason": "Client.Something: <went> & wrong",
        "StateTransitionTime": image["StateTransitionTime"],
    }
    # Milliseconds survive the wire; finer precision does not, as with EC2.
    assert image["StateTransitionTime"].astimezone(UTC) == clock.now() - timedelta(microseconds=456)


def test_a_shared_ami_comes_with_an_empty_owner_and_snapshot_configuration(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    (image_id,) = sim.seed(1, shared=True)

    (image,) = ec2.describe_fast_launch_images()["FastLaunchImages"]

    assert image["ImageId"] == image_id
    assert image["OwnerId"] == ""
    assert image["SnapshotConfiguration"] == {}


def test_the_answer_matches_the_simulators_own_view(sim: FastLaunchSimulator, ec2: Any) -> None:
    sim.seed(3, states=["enabled", "enabling", "enabled-failed"])

    listed = ec2.describe_fast_launch_images()["FastLaunchImages"]

    assert [(i["ImageId"], i["State"]) for i in listed] == [
        (i.image_id, i.state) for i in sim.images()
    ]


def test_without_max_results_every_image_comes_in_one_answer(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    sim.seed(250)

    answer = ec2.describe_fast_launch_images()

    assert len(answer["FastLaunchImages"]) == 250
    assert "NextToken" not in answer


def test_image_ids_select_images_and_ignore_ones_without_fast_launch(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    first, _, third = sim.seed(3)
    (plain,) = sim.register_images(1)

    listed = describe_all(ec2, ImageIds=[third, first, plain])

    assert [image["ImageId"] for image in listed] == sorted([first, third])


def test_a_malformed_image_id_is_refused(sim: FastLaunchSimulator, ec2: Any) -> None:
    with pytest.raises(ClientError, match=r"InvalidAMIID\.Malformed"):
        ec2.describe_fast_launch_images(ImageIds=["i-0123"])


def test_values_of_one_filter_are_ored_and_filters_are_anded(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    enabled, failed, _ = sim.seed(3, states=["enabled", "enabling-failed", "enabling"])
    (foreign,) = sim.seed(1, states="enabled", owner_id="999999999999")

    by_state = describe_all(
        ec2, Filters=[{"Name": "state", "Values": ["enabled", "enabling-failed"]}]
    )
    by_both = describe_all(
        ec2,
        Filters=[
            {"Name": "state", "Values": ["enabled"]},
            {"Name": "owner-id", "Values": [sim.account_id]},
            {"Name": "resource-type", "Values": ["snapshot"]},
        ],
    )

    assert sorted(i["ImageId"] for i in by_state) == sorted([enabled, failed, foreign])
    assert [i["ImageId"] for i in by_both] == [enabled]


def test_filter_values_take_wildcards(sim: FastLaunchSimulator, ec2: Any) -> None:
    enabling, _, failed = sim.seed(3, states=["enabling", "enabled", "enabling-failed"])

    listed = describe_all(ec2, Filters=[{"Name": "state", "Values": ["enabling*"]}])

    assert sorted(i["ImageId"] for i in listed) == sorted([enabling, failed])


def test_filters_apply_before_paging(sim: FastLaunchSimulator, ec2: Any) -> None:
    sim.seed(300, states=["enabled", "enabling"])

    pages = list(
        ec2.get_paginator("describe_fast_launch_images").paginate(
            Filters=[{"Name": "state", "Values": ["enabling"]}],
            PaginationConfig={"PageSize": 100},
        )
    )

    assert [len(page["FastLaunchImages"]) for page in pages] == [100, 50]


def test_an_unknown_filter_is_refused(sim: FastLaunchSimulator, ec2: Any) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidParameterValue\).*'image-name'"):
        ec2.describe_fast_launch_images(Filters=[{"Name": "image-name", "Values": ["x"]}])


@pytest.mark.parametrize("max_results", [0, 201, 1000])
def test_max_results_outside_1_to_200_is_refused(
    sim: FastLaunchSimulator, ec2: Any, max_results: int
) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidParameterValue\).*MaxResults") as refused:
        ec2.describe_fast_launch_images(MaxResults=max_results)

    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_token_the_simulator_never_issued_is_refused(sim: FastLaunchSimulator, ec2: Any) -> None:
    with pytest.raises(ClientError, match=r"\(InvalidParameterValue\)"):
        ec2.describe_fast_launch_images(MaxResults=5, NextToken="eyJhZnRlciI6ICJhbWktMSJ9")


def test_a_token_is_only_good_for_the_query_it_came_from(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    sim.seed(10)
    token = ec2.describe_fast_launch_images(MaxResults=5)["NextToken"]

    with pytest.raises(ClientError, match=r"\(InvalidParameterValue\)"):
        ec2.describe_fast_launch_images(
            MaxResults=5, NextToken=token, Filters=[{"Name": "state", "Values": ["enabled"]}]
        )


def test_paging_is_stable_while_images_come_and_go(sim: FastLaunchSimulator, ec2: Any) -> None:
    seeded = sorted(sim.seed(6))
    first = ec2.describe_fast_launch_images(MaxResults=3)

    sim.remove(seeded[0])
    sim.remove(seeded[4])
    second = ec2.describe_fast_launch_images(MaxResults=3, NextToken=first["NextToken"])

    assert [i["ImageId"] for i in first["FastLaunchImages"]] == seeded[:3]
    assert [i["ImageId"] for i in second["FastLaunchImages"]] == [seeded[3], seeded[5]]
    assert "NextToken" not in second


def test_dry_run_answers_dry_run_operation_with_412(sim: FastLaunchSimulator, ec2: Any) -> None:
    with pytest.raises(ClientError, match=r"\(DryRunOperation\)") as dry:
        ec2.describe_fast_launch_images(DryRun=True)

    assert dry.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert (
        dry.value.response["Error"]["Message"]
        == "Request would have succeeded, but DryRun flag is set."
    )
