"""The parameters of the three fast launch actions, and the checks EC2 makes of them (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from monitor.demo.simulator.table import LaunchTemplateRef, SimulatedImage
from monitor.demo.simulator.wire import Ec2Error

DEFAULT_TARGET_RESOURCE_COUNT = 5
MIN_PARALLEL_LAUNCHES = 6
MAX_RESULTS = 200
RESOURCE_TYPE = "snapshot"

_IMAGE_ID = re.compile(r"ami-[0-9a-f]+")

_FILTER_FIELDS: dict[str, Callable[[SimulatedImage], str]] = {
    "state": lambda image: image.state,
    "owner-id": lambda image: image.owner_id,
    "resource-type": lambda image: image.resource_type,
}


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """The parameters of one `DescribeFastLaunchImages` call."""

    image_ids: tuple[str, ...] = ()
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    max_results: int | None = None
    next_token: str | None = None
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class EnableRequest:
    """The parameters of one `EnableFastLaunch` call."""

    image_id: str
    resource_type: str | None = None
    target_resource_count: int | None = None
    max_parallel_launches: int | None = None
    launch_template: LaunchTemplateRef | None = None
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class DisableRequest:
    """The parameters of one `DisableFastLaunch` call."""

    image_id: str
    force: bool = False
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class EnableSettings:
    """What `EnableFastLaunch` asked for, checked, with EC2's defaults filled in."""

    resource_type: str
    target_resource_count: int
    max_parallel_launches: int
    launch_template: LaunchTemplateRef | None


def dry_run_error() -> Ec2Error:
    """What EC2 answers a permitted call made with `DryRun`."""
    return Ec2Error(
        "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", status=412
    )


def invalid(message: str) -> Ec2Error:
    """EC2's `InvalidParameterValue`."""
    return Ec2Error("InvalidParameterValue", message)


def check_image_id(image_id: str) -> None:
    """Refuse an absent or malformed AMI id as EC2 does."""
    if not image_id:
        raise Ec2Error("MissingParameter", "The request must contain the parameter ImageId")
    if not _IMAGE_ID.fullmatch(image_id):
        raise Ec2Error("InvalidAMIID.Malformed", f'Invalid id: "{image_id}" (expecting "ami-...")')


def check_describe(request: DescribeRequest) -> None:
    """Refuse a describe call EC2 would: `MaxResults` outside 1..200, unknown filter, bad id."""
    limit = request.max_results
    if limit is not None and not 1 <= limit <= MAX_RESULTS:
        raise invalid(
            f"Value ({limit}) for parameter MaxResults is invalid. "
            f"Expecting a value between 1 and {MAX_RESULTS}."
        )
    for name, _ in request.filters:
        if name not in _FILTER_FIELDS:
            raise invalid(f"The filter '{name}' is invalid")
    for image_id in request.image_ids:
        check_image_id(image_id)


def matcher(filters: Sequence[tuple[str, Sequence[str]]]) -> Callable[[SimulatedImage], bool]:
    """A predicate for checked `filters`: values of one filter OR-ed, filters AND-ed.

    A filter without values constrains nothing.
    """
    checks = [(_FILTER_FIELDS[name], tuple(values)) for name, values in filters if values]

    def matches(image: SimulatedImage) -> bool:
        return all(
            any(_matches(field(image), value) for value in values) for field, values in checks
        )

    return matches


def _matches(value: str, pattern: str) -> bool:
    # EC2 filter values take * and ? wildcards.
    if "*" in pattern or "?" in pattern:
        return fnmatchcase(value, pattern)
    return value == pattern


def enable_settings(
    resource_type: str | None,
    target_resource_count: int | None,
    max_parallel_launches: int | None,
    launch_template: LaunchTemplateRef | None,
) -> EnableSettings:
    """Check what `EnableFastLaunch` asks for and fill in EC2's defaults.

    Refused: a resource type other than `snapshot`, fewer than 6 parallel launches, fewer
    than 1 target resource, a launch template named by both id and name, or by neither, or
    without a version. A launch template that does not exist is not refused here: EC2
    accepts it and enabling fails later.
    """
    kind = RESOURCE_TYPE if resource_type is None else resource_type
    if kind != RESOURCE_TYPE:
        raise invalid(
            f"Value ({kind}) for parameter ResourceType is invalid. Valid values: {RESOURCE_TYPE}."
        )
    parallel = MIN_PARALLEL_LAUNCHES if max_parallel_launches is None else max_parallel_launches
    if parallel < MIN_PARALLEL_LAUNCHES:
        raise invalid(
            f"Value ({parallel}) for parameter MaxParallelLaunches is invalid. "
            f"The value must be {MIN_PARALLEL_LAUNCHES} or greater."
        )
    target = (
        DEFAULT_TARGET_RESOURCE_COUNT if target_resource_count is None else target_resource_count
    )
    if target < 1:
        raise invalid(
            f"Value ({target}) for parameter SnapshotConfiguration.TargetResourceCount "
            "is invalid. The value must be 1 or greater."
        )
    if launch_template is not None:
        _check_launch_template(launch_template)
    return EnableSettings(kind, target, parallel, launch_template)


def _check_launch_template(spec: LaunchTemplateRef) -> None:
    if spec.launch_template_id is not None and spec.launch_template_name is not None:
        raise Ec2Error(
            "InvalidParameterCombination",
            "You can specify either LaunchTemplateId or LaunchTemplateName, but not both.",
        )
    if spec.launch_template_id is None and spec.launch_template_name is None:
        raise Ec2Error(
            "MissingParameter",
            "The request must contain the parameter LaunchTemplateId or LaunchTemplateName",
        )
    if not spec.version:
        raise Ec2Error(
            "MissingParameter", "The request must contain the parameter LaunchTemplate.Version"
        )
