"""Turn one raw `DescribeFastLaunchImages` item into a `FastLaunchImage` (pure).

AWS leaves fields out or empty in practice: shared AMIs come back with
`"SnapshotConfiguration": {}` and `"OwnerId": ""`, and a launch template may be named by id
or by name only. None of that is an error; an unknown `State` is kept as text (AWS adds states
before SDKs document them) and reported once through `on_unknown_state`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from monitor.errors import SourceError
from monitor.model import KNOWN_STATES, FastLaunchImage

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


def _count(value: object) -> int | None:
    # bool is an int subclass; AWS never sends one here, so treat it as garbage.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def normalise_image(raw: Mapping[str, Any]) -> FastLaunchImage:
    """Build the record for one item; raises `SourceError` only if it has no image id."""
    image_id = _text(raw.get("ImageId"))
    if image_id is None:
        raise SourceError("InvalidResponse", "a fast launch image without ImageId")
    snapshot = raw.get("SnapshotConfiguration") or {}
    template = raw.get("LaunchTemplate") or {}
    when = raw.get("StateTransitionTime")
    return FastLaunchImage(
        image_id=image_id,
        state=_shared(raw.get("State")) or "unknown",
        state_transition_reason=_shared(raw.get("StateTransitionReason")) or "",
        state_transition_time=to_utc(when) if isinstance(when, datetime) else None,
        resource_type=_shared(raw.get("ResourceType")),
        target_resource_count=_count(snapshot.get("TargetResourceCount")),
        max_parallel_launches=_count(raw.get("MaxParallelLaunches")),
        owner_id=_shared(raw.get("OwnerId")),
        launch_template_id=_shared(template.get("LaunchTemplateId")),
        launch_template_name=_shared(template.get("LaunchTemplateName")),
        launch_template_version=_shared(template.get("Version")),
    )


def normalise_images(
    raw_items: Iterable[Mapping[str, Any]],
    on_unknown_state: Callable[[str], None] | None = None,
) -> tuple[FastLaunchImage, ...]:
    """Normalise every item of a poll; `on_unknown_state` hears each unknown state name."""
    images = tuple(normalise_image(item) for item in raw_items)
    if on_unknown_state is not None:
        for state in {image.state for image in images} - _KNOWN:
            on_unknown_state(state)
    return images
