"""One simulator per account and region, under mock_aws."""

from __future__ import annotations

from typing import Any

from moto import mock_aws

from monitor.demo.simulator import FastLaunchSimulator, ManualClock, install, simulator_for

OTHER_ACCOUNT = "222222222222"


def test_an_assumed_role_sees_only_its_own_accounts_images(
    sim: FastLaunchSimulator, ec2: Any, connect: Any
) -> None:
    mine = sim.seed(2)
    theirs = simulator_for(OTHER_ACCOUNT, sim.region).seed(3)
    credentials = connect("sts").assume_role(
        RoleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/X", RoleSessionName="monitor"
    )["Credentials"]
    assumed = connect(
        "ec2",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )

    their_view = assumed.describe_fast_launch_images()["FastLaunchImages"]
    my_view = ec2.describe_fast_launch_images()["FastLaunchImages"]

    assert sorted(i["ImageId"] for i in their_view) == sorted(theirs)
    assert sorted(i["ImageId"] for i in my_view) == sorted(mine)


def test_regions_of_one_account_are_apart(sim: FastLaunchSimulator, connect: Any) -> None:
    sim.seed(2)
    (irish,) = simulator_for(sim.account_id, "eu-west-1").seed(1)

    listed = connect("ec2", region="eu-west-1").describe_fast_launch_images()["FastLaunchImages"]

    assert [i["ImageId"] for i in listed] == [irish]


def test_the_same_account_and_region_give_the_same_simulator(sim: FastLaunchSimulator) -> None:
    assert simulator_for(sim.account_id, sim.region) is sim
    assert simulator_for(OTHER_ACCOUNT, sim.region) is not sim


def test_installing_twice_changes_nothing(sim: FastLaunchSimulator, ec2: Any) -> None:
    sim.seed(1)

    install()
    install()

    assert len(ec2.describe_fast_launch_images()["FastLaunchImages"]) == 1


def test_a_new_mock_starts_without_the_previous_ones_images(clock: ManualClock) -> None:
    with mock_aws():
        simulator_for("123456789012", "us-east-1").seed(5)

    with mock_aws():
        assert simulator_for("123456789012", "us-east-1").images() == ()
