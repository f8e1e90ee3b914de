"""Turn one raw `DescribeFastLaunchImages` item into a `FastLaunchImage` (pure).

AWS leaves fields out or empty in practice: shared AMIs come back with
`"SnapshotConfiguration": {}` and `"OwnerId": ""`, and a launch template may be named by id
or by name only. None of that is an error; an unknown `State` is kept as text (AWS adds states
before SDKs document them) and reported once through `on_unknown_state`.

A value no real image can have — a negative count, one past a 32-bit integer, a transition
time before 1970 or in the fourth millennium — is dropped from that image (as if AWS had left
it out) and reported through `on_invalid`: one broken field must never keep the other images
of its scope, and their failures, from being recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from monitor.core.errors import SourceError
from monitor.core.model import KNOWN_STATES, FastLaunchImage

_KNOWN = frozenset(KNOWN_STATES)


def to_utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _shared(value: object) -> str | None:
    # The images of a fleet share a few states, reasons, owners and launch templates; each
    # response holds its own copy of every one. Interned, the current state of 100,000 images
    # holds each text once (some 30 MB less).
    text = _text(value)
    return None if text is None else sys.intern(text)


#: AWS's counts are 32-bit integers; the database keeps them as such.
MAX_COUNT = 2**31 - 1

#: The transition times a real image can have: fast launch is younger than the Unix epoch,
#: and a time centuries ahead is a broken answer, not a clock.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(3000, 1, 1, tzinfo=UTC)

#: Hears (image id, field name, the value dropped) for each value no real image can have.
InvalidField = Callable[[str, str, object], None]


def _ignore(image_id: str, field: str, value: object) -> None:
    """The default `InvalidField`: drop the value silently."""


def _count(value: object, image_id: str, field: str, on_invalid: InvalidField) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; AWS never sends one here, so treat it as garbage.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    on_invalid(image_id, field, value)
    return None


def _time(value: object, image_id: str, on_invalid: InvalidField) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        try:
            when = to_utc(value)
        except OverflowError:
            # Year 1 with a zone east of UTC, or year 9999 west of it: not a moment at all.
            when = None
        if when is not None and EARLIEST_TIME <= when < LATEST_TIME:
            return when
    on_invalid(image_id, "StateTransitionTime", value)
    return None


def normalise_image(raw: Mapping[str, Any], on_invalid: InvalidField = _ignore) -> FastLaunchImage:
    """Build the record for one item; raises `SourceError` only if it has no image id.

    A value out of its range is left out of the record and told to `on_invalid`.
    """
    image_id = _text(raw.get("ImageId"))
    if image_id is None:
        raise SourceError("InvalidResponse", "a fast launch image without ImageId")
    snapshot = raw.get("SnapshotConfiguration") or {}
    template = raw.get("LaunchTemplate") or {}
    return FastLaunchImage(
        image_id=image_id,
        state=_shared(raw.get("State")) or "unknown",
        state_transition_reason=_shared(raw.get("StateTransitionReason")) or "",
        state_transition_time=_time(raw.get("StateTransitionTime"), image_id, on_invalid),
        resource_type=_shared(raw.get("ResourceType")),
        target_resource_count=_count(
            snapshot.get("TargetResourceCount"), image_id, "TargetResourceCount", on_invalid
        ),
        max_parallel_launches=_count(
            raw.get("MaxParallelLaunches"), image_id, "MaxParallelLaunches", on_invalid
        ),
        owner_id=_shared(raw.get("OwnerId")),
        launch_template_id=_shared(template.get("LaunchTemplateId")),
        launch_template_name=_shared(template.get("LaunchTemplateName")),
        launch_template_version=_shared(template.get("Version")),
    )


def normalise_images(
    raw_items: Iterable[Mapping[str, Any]],
    on_unknown_state: Callable[[str], None] | None = None,
    on_invalid: InvalidField = _ignore,
) -> tuple[FastLaunchImage, ...]:
    """Normalise every item of a poll; `on_unknown_state` hears each unknown state name,
    `on_invalid` each value dropped."""
    images = tuple(normalise_image(item, on_invalid) for item in raw_items)
    if on_unknown_state is not None:
        for state in {image.state for image in images} - _KNOWN:
            on_unknown_state(state)
    return images
