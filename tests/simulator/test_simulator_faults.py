"""Faults injected into DescribeFastLaunchImages, seen through real botocore."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, PaginationError
from botocore.parsers import ResponseParserError

from monitor.demo.simulator import FastLaunchSimulator


def test_throttling_answers_the_next_calls_with_request_limit_exceeded_and_503(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    sim.seed(2)
    sim.throttle(2)

    for _ in range(2):
        with pytest.raises(ClientError, match=r"\(RequestLimitExceeded\)") as throttled:
            ec2.describe_fast_launch_images()
        assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503

    assert len(ec2.describe_fast_launch_images()["FastLaunchImages"]) == 2


def test_botocore_retries_a_throttled_call_until_it_succeeds(
    sim: FastLaunchSimulator, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.seed(1)
    sim.throttle(2)
    # botocore backs off between attempts; this test is about the answers, not the waiting.
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    retrying = connect("ec2", config=Config(retries={"mode": "standard", "total_max_attempts": 3}))

    answer = retrying.describe_fast_launch_images()

    assert len(answer["FastLaunchImages"]) == 1
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert sim.calls == 3


def test_garbage_answers_200_with_a_body_botocore_cannot_parse(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    sim.seed(1)
    sim.garbage(1)

    with pytest.raises(ResponseParserError):
        ec2.describe_fast_launch_images()

    assert len(ec2.describe_fast_launch_images()["FastLaunchImages"]) == 1


def test_a_looping_next_token_repeats_on_every_page(sim: FastLaunchSimulator, ec2: Any) -> None:
    sim.seed(5)
    sim.loop_next_token()

    first = ec2.describe_fast_launch_images(MaxResults=2)
    second = ec2.describe_fast_launch_images(MaxResults=2, NextToken=first["NextToken"])
    third = ec2.describe_fast_launch_images(MaxResults=2, NextToken=second["NextToken"])

    assert first["NextToken"] == second["NextToken"] == third["NextToken"]
    with pytest.raises(PaginationError, match="same next token"):
        list(
            ec2.get_paginator("describe_fast_launch_images").paginate(
                PaginationConfig={"PageSize": 2}
            )
        )


def test_a_looping_next_token_appears_even_when_one_page_would_do(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    sim.seed(1)
    sim.loop_next_token()

    first = ec2.describe_fast_launch_images(MaxResults=200)
    second = ec2.describe_fast_launch_images(MaxResults=200, NextToken=first["NextToken"])

    assert second["NextToken"] == first["NextToken"]
    sim.loop_next_token(enabled=False)
    assert "NextToken" not in ec2.describe_fast_launch_images(MaxResults=200)


def test_deny_answers_unauthorized_operation_with_403_dry_run_included(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    sim.deny()

    for dry_run in (False, True):
        with pytest.raises(ClientError, match=r"\(UnauthorizedOperation\)") as denied:
            ec2.describe_fast_launch_images(DryRun=dry_run)
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    sim.allow()
    with pytest.raises(ClientError, match=r"\(DryRunOperation\)"):
        ec2.describe_fast_launch_images(DryRun=True)


def test_latency_delays_every_answer(sim: FastLaunchSimulator, ec2: Any) -> None:
    sim.latency(0.2)

    started = time.monotonic()
    ec2.describe_fast_launch_images()
    delayed = time.monotonic() - started
    sim.latency(0)
    started = time.monotonic()
    ec2.describe_fast_launch_images()
    prompt = time.monotonic() - started

    assert delayed >= 0.2
    assert prompt < 0.2


def test_calls_counts_every_describe_request_faulty_ones_included(
    sim: FastLaunchSimulator, ec2: Any
) -> None:
    sim.throttle(1)
    with pytest.raises(ClientError):
        ec2.describe_fast_launch_images()
    with pytest.raises(ClientError):
        ec2.describe_fast_launch_images(DryRun=True)
    ec2.describe_fast_launch_images()
    (image_id,) = sim.register_images(1)
    ec2.enable_fast_launch(ImageId=image_id)

    assert sim.calls == 3


def test_clear_faults_heals_every_fault(sim: FastLaunchSimulator, ec2: Any) -> None:
    sim.seed(1)
    sim.throttle(5)
    sim.garbage(5)
    sim.deny()
    sim.loop_next_token()
    sim.latency(5)

    sim.clear_faults()

    answer = ec2.describe_fast_launch_images(MaxResults=5)
    assert len(answer["FastLaunchImages"]) == 1
    assert "NextToken" not in answer


def test_faults_stay_in_their_own_account_and_region(
    sim: FastLaunchSimulator, connect: Any
) -> None:
    sim.throttle(1)

    elsewhere = connect("ec2", region="eu-west-1").describe_fast_launch_images()

    assert elsewhere["FastLaunchImages"] == []
