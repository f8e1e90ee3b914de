from datetime import UTC, datetime, timedelta, timezone

import pytest

from monitor.aws.normalise import normalise_image, normalise_images
from monitor.core.errors import SourceError

FULL_ITEM = {
    "ImageId": "ami-0123456789abcdef0",
    "ResourceType": "snapshot",
    "SnapshotConfiguration": {"TargetResourceCount": 5},
    "LaunchTemplate": {"LaunchTemplateId": "lt-0abc", "LaunchTemplateName": "win", "Version": "3"},
    "MaxParallelLaunches": 6,
    "OwnerId": "123456789012",
    "State": "enabled",
    "StateTransitionReason": "Client.UserInitiated",
    "StateTransitionTime": datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=UTC),
}


def test_a_full_item_keeps_every_field():
    image = normalise_image(FULL_ITEM)
    assert image.image_id == "ami-0123456789abcdef0"
    assert image.state == "enabled"
    assert image.state_transition_reason == "Client.UserInitiated"
    assert image.resource_type == "snapshot"
    assert image.target_resource_count == 5
    assert image.max_parallel_launches == 6
    assert image.owner_id == "123456789012"
    assert (image.launch_template_id, image.launch_template_name) == ("lt-0abc", "win")
    assert image.launch_template_version == "3"


def test_transition_time_is_utc_and_keeps_its_milliseconds():
    cet = timezone(timedelta(hours=1))
    item = {**FULL_ITEM, "StateTransitionTime": datetime(2026, 11, 26, 11, 0, 0, 456000, cet)}
    when = normalise_image(item).state_transition_time
    assert when == datetime(2026, 11, 26, 10, 0, 0, 456000, tzinfo=UTC)
    assert when is not None
    assert when.utcoffset() == timedelta(0)


def test_a_naive_transition_time_is_taken_as_utc():
    item = {**FULL_ITEM, "StateTransitionTime": datetime(2026, 11, 26, 10, 0, 0, 1000)}
    assert normalise_image(item).state_transition_time == datetime(
        2026, 11, 26, 10, 0, 0, 1000, tzinfo=UTC
    )


def test_a_shared_ami_with_empty_snapshot_configuration_and_owner_is_not_an_error():
    item = {**FULL_ITEM, "SnapshotConfiguration": {}, "OwnerId": ""}
    image = normalise_image(item)
    assert image.target_resource_count is None
    assert image.owner_id is None


def test_missing_optional_fields_become_none():
    image = normalise_image({"ImageId": "ami-1", "State": "enabling"})
    assert image.target_resource_count is None
    assert image.max_parallel_launches is None
    assert image.launch_template_id is None
    assert image.state_transition_time is None
    assert image.state_transition_reason == ""


def test_a_launch_template_named_only_by_name_keeps_the_name():
    item = {**FULL_ITEM, "LaunchTemplate": {"LaunchTemplateName": "win", "Version": "1"}}
    image = normalise_image(item)
    assert image.launch_template_id is None
    assert image.launch_template_name == "win"


def test_an_item_without_image_id_is_an_invalid_response():
    with pytest.raises(SourceError) as caught:
        normalise_image({"State": "enabled"})
    assert caught.value.code == "InvalidResponse"


def test_an_unknown_state_is_kept_as_text_and_reported_once():
    heard: list[str] = []
    items = [
        {"ImageId": "ami-1", "State": "hibernating"},
        {"ImageId": "ami-2", "State": "hibernating"},
        {"ImageId": "ami-3", "State": "enabled"},
    ]
    images = normalise_images(items, heard.append)
    assert [i.state for i in images] == ["hibernating", "hibernating", "enabled"]
    assert heard == ["hibernating"]


def test_texts_many_images_share_are_held_once_however_many_copies_the_response_had():
    def item(n: int) -> dict[str, object]:
        # "".join makes a new string object each time, as the XML parser does.
        return {
            "ImageId": f"ami-{n}",
            "State": "".join(["enab", "led"]),
            "StateTransitionReason": "".join(["Launch template ", "is valid"]),
            "OwnerId": "".join(["1111", "22223333"]),
            "LaunchTemplate": {"LaunchTemplateName": "".join(["windows-", "fast-launch"])},
        }

    first, second = normalise_images([item(1), item(2)])

    assert first.state is second.state
    assert first.state_transition_reason is second.state_transition_reason
    assert first.owner_id is second.owner_id
    assert first.launch_template_name is second.launch_template_name
    assert first.image_id is not second.image_id


@pytest.mark.parametrize(
    ("field", "item"),
    [
        (
            "TargetResourceCount",
            {**FULL_ITEM, "SnapshotConfiguration": {"TargetResourceCount": 2**31}},
        ),
        (
            "TargetResourceCount",
            {**FULL_ITEM, "SnapshotConfiguration": {"TargetResourceCount": 2**63}},
        ),
        (
            "TargetResourceCount",
            {**FULL_ITEM, "SnapshotConfiguration": {"TargetResourceCount": -1}},
        ),
        ("MaxParallelLaunches", {**FULL_ITEM, "MaxParallelLaunches": 2**31}),
        ("MaxParallelLaunches", {**FULL_ITEM, "MaxParallelLaunches": -6}),
        ("MaxParallelLaunches", {**FULL_ITEM, "MaxParallelLaunches": "6"}),
        (
            "StateTransitionTime",
            {**FULL_ITEM, "StateTransitionTime": datetime(1, 1, 1, tzinfo=UTC)},
        ),
        (
            "StateTransitionTime",
            {
                **FULL_ITEM,
                "StateTransitionTime": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
            },
        ),
        (
            "StateTransitionTime",
            {**FULL_ITEM, "StateTransitionTime": datetime(9999, 12, 31, 23, 59, tzinfo=UTC)},
        ),
        ("StateTransitionTime", {**FULL_ITEM, "StateTransitionTime": "yesterday"}),
    ],
)
def test_a_value_no_image_can_have_is_left_out_and_reported_and_the_rest_kept(field, item):
    dropped: list[tuple[str, str, object]] = []

    image = normalise_image(item, lambda *what: dropped.append(what))

    assert [(image_id, name) for image_id, name, _ in dropped] == [("ami-0123456789abcdef0", field)]
    values = {
        "TargetResourceCount": image.target_resource_count,
        "MaxParallelLaunches": image.max_parallel_launches,
        "StateTransitionTime": image.state_transition_time,
    }
    assert values.pop(field) is None
    assert None not in values.values()
    assert image.state == "enabled"


def test_the_largest_counts_aws_can_send_are_kept():
    item = {
        **FULL_ITEM,
        "SnapshotConfiguration": {"TargetResourceCount": 2**31 - 1},
        "MaxParallelLaunches": 0,
    }
    image = normalise_image(item, lambda *what: pytest.fail(f"dropped {what}"))
    assert (image.target_resource_count, image.max_parallel_launches) == (2**31 - 1, 0)
