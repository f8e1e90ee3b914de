"""The simulator behind a real HTTP moto server, as the daemon and the demo reach it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError

from monitor.demo.simulator import ManualClock, SimulatorServer, simulator_for

pytestmark = pytest.mark.slow

ACCOUNT = "123456789012"
REGION = "eu-west-1"


def test_the_server_listens_on_loopback_on_a_free_port(served: SimulatorServer) -> None:
    assert served.endpoint_url == f"http://127.0.0.1:{served.port}"
    assert served.port > 0


def test_the_server_answers_from_the_simulators_of_this_process(
    served: SimulatorServer, connect: Any
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    seeded = sim.seed(450, states=["enabled", "enabling-failed"])
    ec2 = connect("ec2", served.endpoint_url, region=REGION)

    pages = list(
        ec2.get_paginator("describe_fast_launch_images").paginate(
            PaginationConfig={"PageSize": 200}
        )
    )

    assert [len(page["FastLaunchImages"]) for page in pages] == [200, 200, 50]
    assert [i["ImageId"] for page in pages for i in page["FastLaunchImages"]] == sorted(seeded)
    assert sim.calls == 3


def test_state_changes_made_over_http_are_seen_in_process_and_back(
    served: SimulatorServer, connect: Any, clock: ManualClock
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    (image_id,) = sim.register_images(1)
    ec2 = connect("ec2", served.endpoint_url, region=REGION)

    ec2.enable_fast_launch(ImageId=image_id, MaxParallelLaunches=6)
    enabling = sim.image(image_id).state
    clock.advance(sim.timings.enabling_seconds)
    sim.force_state(image_id, "enabled-failed", "Server.Boom")
    (image,) = ec2.describe_fast_launch_images()["FastLaunchImages"]

    assert enabling == "enabling"
    assert (image["State"], image["StateTransitionReason"]) == ("enabled-failed", "Server.Boom")
    assert image["StateTransitionTime"] == clock.now()


def test_errors_keep_their_code_and_status_over_http(served: SimulatorServer, connect: Any) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    ec2 = connect("ec2", served.endpoint_url, region=REGION)

    with pytest.raises(ClientError, match=r"\(DryRunOperation\)") as dry:
        ec2.describe_fast_launch_images(DryRun=True)
    sim.throttle(1)
    with pytest.raises(ClientError, match=r"\(RequestLimitExceeded\)") as throttled:
        ec2.describe_fast_launch_images()
    sim.deny()
    with pytest.raises(ClientError, match=r"\(UnauthorizedOperation\)") as denied:
        ec2.describe_fast_launch_images(DryRun=True)
    sim.allow()
    sim.garbage(1)
    with pytest.raises(ResponseParserError):
        ec2.describe_fast_launch_images()

    statuses = [
        error.value.response["ResponseMetadata"]["HTTPStatusCode"]
        for error in (dry, throttled, denied)
    ]
    assert statuses == [412, 503, 403]


def test_an_assumed_role_sees_its_own_accounts_images_over_http(
    served: SimulatorServer, connect: Any
) -> None:
    simulator_for(ACCOUNT, REGION).seed(2)
    theirs = simulator_for("222222222222", REGION).seed(3)
    sts = connect("sts", served.endpoint_url, region=REGION)

    credentials = sts.assume_role(
        RoleArn="arn:aws:iam::222222222222:role/FastLaunchMonitor", RoleSessionName="monitor"
    )["Credentials"]
    ec2 = connect(
        "ec2",
        served.endpoint_url,
        region=REGION,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )

    listed = ec2.describe_fast_launch_images()["FastLaunchImages"]
    assert sorted(i["ImageId"] for i in listed) == sorted(theirs)
    assert {i["OwnerId"] for i in listed} == {"222222222222"}


def test_concurrent_pollers_each_see_every_image(served: SimulatorServer, connect: Any) -> None:
    seeded = simulator_for(ACCOUNT, REGION).seed(120)
    clients = [connect("ec2", served.endpoint_url, region=REGION) for _ in range(6)]

    def poll(ec2: Any) -> list[str]:
        pages = ec2.get_paginator("describe_fast_launch_images").paginate(
            PaginationConfig={"PageSize": 25}
        )
        return [image["ImageId"] for page in pages for image in page["FastLaunchImages"]]

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        results = list(pool.map(poll, clients))

    assert results == [sorted(seeded)] * len(clients)


def test_reset_forgets_every_image_and_fault(served: SimulatorServer, connect: Any) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    sim.seed(3)
    sim.deny()

    served.reset()

    ec2 = connect("ec2", served.endpoint_url, region=REGION)
    assert ec2.describe_fast_launch_images()["FastLaunchImages"] == []
    assert simulator_for(ACCOUNT, REGION) is not sim
