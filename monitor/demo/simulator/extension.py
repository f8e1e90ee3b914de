"""The moto extension: the three fast launch actions on moto's EC2, one simulator per backend.

moto's `EC2Response.call_action` dispatches an action to the method of the same name in
snake case, so adding the methods to the class is all it takes, under `mock_aws` and in the
moto server alike. Each simulator lives on moto's EC2 backend of its (account, region), which
is what moto resets.
"""

from __future__ import annotations

import threading
from typing import Any

from monitor.demo.simulator.actions import DescribeRequest, DisableRequest, EnableRequest
from monitor.demo.simulator.backend import MotoEc2
from monitor.demo.simulator.simulator import FastLaunchSimulator
from monitor.demo.simulator.table import LaunchTemplateRef
from monitor.demo.simulator.wire import CONTENT_TYPE, Ec2Error, Reply, error_reply

_ATTRIBUTE = "_fastlaunch_simulator"
_lock = threading.Lock()
_installed = False


def install() -> None:
    """Teach moto's EC2 `DescribeFastLaunchImages`, `EnableFastLaunch`, `DisableFastLaunch`.

    Idempotent and process-wide; call it before the first request (the moto server included).
    """
    global _installed  # noqa: PLW0603 - patching moto is once per process
    with _lock:
        if _installed:
            return
        from moto.ec2.responses import EC2Response

        for name, handler in _HANDLERS.items():
            setattr(EC2Response, name, handler)
        _installed = True


def simulator_for(account_id: str, region: str) -> FastLaunchSimulator:
    """The simulator of `account_id` in `region`, created on first use (installs the extension)."""
    install()
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[account_id][region]
    with _lock:
        simulator = getattr(backend, _ATTRIBUTE, None)
        if not isinstance(simulator, FastLaunchSimulator):
            simulator = FastLaunchSimulator(MotoEc2(backend))
            setattr(backend, _ATTRIBUTE, simulator)
        return simulator


def _answer(reply: Reply) -> tuple[str, dict[str, Any]]:
    return reply.body, {"status": reply.status, "Content-Type": CONTENT_TYPE}


def _simulator(response: Any) -> FastLaunchSimulator:
    return simulator_for(str(response.current_account), str(response.region))


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _integer(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Ec2Error("InvalidParameterValue", f"Invalid value for parameter {name}") from None


def _filters(raw: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    filters = []
    for item in raw or ():
        name = _text(item.get("Name"))
        if name is None:
            raise Ec2Error("InvalidParameterValue", "The filter 'null' is invalid")
        filters.append((name, tuple(str(value) for value in item.get("Values") or ())))
    return tuple(filters)


def _describe_fast_launch_images(response: Any) -> tuple[str, dict[str, Any]]:
    params = response.params
    try:
        request = DescribeRequest(
            image_ids=tuple(str(image_id) for image_id in params.get("ImageIds") or ()),
            filters=_filters(params.get("Filters")),
            max_results=_integer(params.get("MaxResults"), "MaxResults"),
            next_token=_text(params.get("NextToken")),
            dry_run=bool(params.get("DryRun", False)),
        )
    except Ec2Error as error:
        return _answer(error_reply(error))
    return _answer(_simulator(response).handle_describe(request))


def _enable_fast_launch(response: Any) -> tuple[str, dict[str, Any]]:
    params = response.params
    template = params.get("LaunchTemplate")
    snapshot = params.get("SnapshotConfiguration") or {}
    try:
        request = EnableRequest(
            image_id=str(params.get("ImageId") or ""),
            resource_type=_text(params.get("ResourceType")),
            target_resource_count=_integer(
                snapshot.get("TargetResourceCount"), "SnapshotConfiguration.TargetResourceCount"
            ),
            max_parallel_launches=_integer(
                params.get("MaxParallelLaunches"), "MaxParallelLaunches"
            ),
            launch_template=(
                None
                if template is None
                else LaunchTemplateRef(
                    _text(template.get("LaunchTemplateId")),
                    _text(template.get("LaunchTemplateName")),
                    _text(template.get("Version")),
                )
            ),
            dry_run=bool(params.get("DryRun", False)),
        )
    except Ec2Error as error:
        return _answer(error_reply(error))
    return _answer(_simulator(response).handle_enable(request))


def _disable_fast_launch(response: Any) -> tuple[str, dict[str, Any]]:
    params = response.params
    request = DisableRequest(
        image_id=str(params.get("ImageId") or ""),
        force=bool(params.get("Force", False)),
        dry_run=bool(params.get("DryRun", False)),
    )
    return _answer(_simulator(response).handle_disable(request))


_HANDLERS = {
    "describe_fast_launch_images": _describe_fast_launch_images,
    "enable_fast_launch": _enable_fast_launch,
    "disable_fast_launch": _disable_fast_launch,
}
