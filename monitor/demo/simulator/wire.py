"""EC2 query-protocol XML for the three fast launch actions, and EC2's error documents (pure).

Element names are the `locationName`s of botocore's EC2 service model
(`fastLaunchImageSet`/`item`, `snapshotConfiguration`, `nextToken`, ...).
`stateTransitionTime` is a `MillisecondDateTime`: ISO 8601 UTC with milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from monitor.demo.simulator.table import SimulatedImage

_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

CONTENT_TYPE = "text/xml;charset=UTF-8"


class Ec2Error(Exception):
    """An error EC2 would answer: its code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status and XML body."""

    status: int
    body: str


def timestamp(when: datetime) -> str:
    """`when` as EC2 writes a `MillisecondDateTime`: `2026-11-26T10:00:00.123Z`."""
    utc = when.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _request_id() -> str:
    return str(uuid.uuid4())


def _image_fields(image: SimulatedImage) -> str:
    parts = [
        f"<imageId>{escape(image.image_id)}</imageId>",
        f"<resourceType>{escape(image.resource_type)}</resourceType>",
    ]
    if image.target_resource_count is None:
        parts.append("<snapshotConfiguration/>")
    else:
        parts.append(
            "<snapshotConfiguration><targetResourceCount>"
            f"{image.target_resource_count}"
            "</targetResourceCount></snapshotConfiguration>"
        )
    template = image.launch_template
    if template is not None:
        parts.append("<launchTemplate>")
        if template.launch_template_id is not None:
            parts.append(
                f"<launchTemplateId>{escape(template.launch_template_id)}</launchTemplateId>"
            )
        if template.launch_template_name is not None:
            parts.append(
                f"<launchTemplateName>{escape(template.launch_template_name)}</launchTemplateName>"
            )
        if template.version is not None:
            parts.append(f"<version>{escape(template.version)}</version>")
        parts.append("</launchTemplate>")
    parts.append(f"<maxParallelLaunches>{image.max_parallel_launches}</maxParallelLaunches>")
    parts.append(f"<ownerId>{escape(image.owner_id)}</ownerId>")
    parts.append(f"<state>{escape(image.state)}</state>")
    parts.append(
        f"<stateTransitionReason>{escape(image.state_transition_reason)}</stateTransitionReason>"
    )
    parts.append(
        f"<stateTransitionTime>{timestamp(image.state_transition_time)}</stateTransitionTime>"
    )
    return "".join(parts)


def _document(action: str, content: str) -> str:
    return (
        f'{_DECLARATION}<{action}Response xmlns="{_NAMESPACE}">'
        f"<requestId>{_request_id()}</requestId>{content}</{action}Response>"
    )


def describe_reply(images: Iterable[SimulatedImage], next_token: str | None) -> Reply:
    """The `DescribeFastLaunchImages` answer for one page."""
    items = "".join(f"<item>{_image_fields(image)}</item>" for image in images)
    token = f"<nextToken>{escape(next_token)}</nextToken>" if next_token else ""
    body = _document(
        "DescribeFastLaunchImages", f"<fastLaunchImageSet>{items}</fastLaunchImageSet>{token}"
    )
    return Reply(200, body)


def image_reply(action: str, image: SimulatedImage) -> Reply:
    """The answer of `EnableFastLaunch` or `DisableFastLaunch`: the image's entry."""
    return Reply(200, _document(action, _image_fields(image)))


def error_reply(error: Ec2Error) -> Reply:
    """EC2's error document for `error`, with its HTTP status."""
    body = (
        f"{_DECLARATION}<Response><Errors><Error>"
        f"<Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message>"
        f"</Error></Errors><RequestID>{_request_id()}</RequestID></Response>"
    )
    return Reply(error.status, body)


def garbage_reply(action: str) -> Reply:
    """A 200 answer cut off mid-document, as a broken proxy or connection might deliver."""
    body = (
        f'{_DECLARATION}<{action}Response xmlns="{_NAMESPACE}">'
        f"<requestId>{_request_id()}</requestId><fastLaunchImageSet><item><imageId>ami-"
    )
    return Reply(200, body)


def foreign_reply() -> Reply:
    """A 200 answer that is not EC2's: the login page of a proxy or a captive portal."""
    body = (
        "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
        '<body><form action="/login"><input name="user"></form></body></html>'
    )
    return Reply(200, body)
