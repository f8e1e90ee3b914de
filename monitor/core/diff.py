"""Compare the stored images of one scope with a fresh poll of it (pure).

A transition is a change of `State` or of `StateTransitionTime`: an image can fail, be retried
and fail again between two polls, and only the time tells. Attribute changes (counts, launch
template, resource type) rewrite the stored record without being a transition. Removals are
only derived from a successful, complete poll, which is the only kind this function is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from monitor.core.model import REMOVED, FastLaunchImage, ImageDiff, Transition


def first_of_each(images: Iterable[FastLaunchImage]) -> dict[str, FastLaunchImage]:
    """Each image id's first record, in the order listed.

    AWS never lists an image twice; should a broken page do so, the first record wins — in the
    store and in the exposition alike, since both take them from here.
    """
    unique: dict[str, FastLaunchImage] = {}
    for image in images:
        unique.setdefault(image.image_id, image)
    return unique


def diff_images(
    previous: Mapping[str, FastLaunchImage],
    current: Iterable[FastLaunchImage],
    observed_at: datetime,
) -> ImageDiff:
    """Return what changed from `previous` (by image id) to the complete poll `current`."""
    transitions: list[Transition] = []
    upserts: list[FastLaunchImage] = []
    seen = first_of_each(current)
    for image in seen.values():
        before = previous.get(image.image_id)
        if before == image:
            continue
        upserts.append(image)
        if (
            before is None
            or before.state != image.state
            or before.state_transition_time != image.state_transition_time
        ):
            transitions.append(
                Transition(
                    image_id=image.image_id,
                    previous_state=None if before is None else before.state,
                    new_state=image.state,
                    transition_time=image.state_transition_time or observed_at,
                    reason=image.state_transition_reason,
                )
            )
    removed = tuple(image_id for image_id in previous if image_id not in seen)
    transitions.extend(
        Transition(
            image_id=image_id,
            previous_state=previous[image_id].state,
            new_state=REMOVED,
            transition_time=observed_at,
            reason="no longer listed by DescribeFastLaunchImages",
        )
        for image_id in removed
    )
    return ImageDiff(transitions=tuple(transitions), upserts=tuple(upserts), removed=removed)
