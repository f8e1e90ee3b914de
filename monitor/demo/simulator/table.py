"""The fast launch list of one account and region, and its planned transitions (pure).

Each image's entry is a frozen `SimulatedImage`, replaced on every change. Future transitions
are planned steps in a heap ordered by time; `settle(now)` applies the ones that are due, each
at its own planned time, so a transition observed late still carries the time it happened.
Replacing an image's entry cancels its plan (a generation number makes stale steps no-ops).
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime


def to_millis(when: datetime) -> datetime:
    """`when` truncated to milliseconds, the precision EC2 reports `StateTransitionTime` in."""
    return when.replace(microsecond=when.microsecond - when.microsecond % 1000)


@dataclass(frozen=True, slots=True)
class LaunchTemplateRef:
    """A launch template as fast launch reports it; any part may be unknown (`None`)."""

    launch_template_id: str | None = None
    launch_template_name: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class SimulatedImage:
    """One entry of `DescribeFastLaunchImages`, as the simulator will answer it.

    `owner_id` is `""` and `target_resource_count` is `None` (an empty `SnapshotConfiguration`)
    for an AMI shared from another account, as AWS reports those.
    """

    image_id: str
    state: str
    state_transition_reason: str
    state_transition_time: datetime
    owner_id: str
    resource_type: str
    target_resource_count: int | None
    max_parallel_launches: int
    launch_template: LaunchTemplateRef | None


@dataclass(frozen=True, slots=True, order=True)
class _Step:
    at: datetime
    seq: int
    image_id: str
    generation: int
    state: str | None  # None: the image leaves the list
    reason: str


class FastLaunchTable:
    """The entries of one (account, region), with their planned transitions. Not thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, SimulatedImage] = {}
        self._generations: dict[str, int] = {}
        self._steps: list[_Step] = []
        self._seq = itertools.count()
        self._order: list[str] | None = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._entries

    def get(self, image_id: str) -> SimulatedImage | None:
        """The entry of `image_id`, or `None` when fast launch is not on for it."""
        return self._entries.get(image_id)

    def put(self, image: SimulatedImage) -> None:
        """Store `image` as the entry of its id, cancelling whatever was planned for it."""
        if image.image_id not in self._entries:
            self._order = None
        self._entries[image.image_id] = image
        self._bump(image.image_id)

    def drop(self, image_id: str) -> bool:
        """Take `image_id` off the list now; returns whether it was on it."""
        if self._entries.pop(image_id, None) is None:
            return False
        self._order = None
        self._bump(image_id)
        return True

    def plan(self, image_id: str, at: datetime, state: str | None, reason: str) -> None:
        """Plan `image_id` to move to `state` (or off the list, for `None`) at `at`."""
        if image_id not in self._entries:
            raise KeyError(image_id)
        step = _Step(
            at=to_millis(at),
            seq=next(self._seq),
            image_id=image_id,
            generation=self._generations[image_id],
            state=state,
            reason=reason,
        )
        heapq.heappush(self._steps, step)

    def settle(self, now: datetime) -> None:
        """Apply, in time order, every planned step due at `now` or earlier."""
        while self._steps and self._steps[0].at <= now:
            step = heapq.heappop(self._steps)
            current = self._entries.get(step.image_id)
            if current is None or self._generations[step.image_id] != step.generation:
                continue
            if step.state is None:
                self._entries.pop(step.image_id)
                self._order = None
            else:
                self._entries[step.image_id] = replace(
                    current,
                    state=step.state,
                    state_transition_reason=step.reason,
                    state_transition_time=step.at,
                )

    def snapshot(self) -> tuple[SimulatedImage, ...]:
        """Every entry, ordered by image id."""
        return tuple(self._entries[key] for key in self._ordered())

    def page(
        self,
        *,
        after: str,
        limit: int | None,
        matches: Callable[[SimulatedImage], bool],
        only: Collection[str] | None = None,
    ) -> tuple[list[SimulatedImage], bool]:
        """Up to `limit` matching entries with an id greater than `after`, in id order.

        `only` restricts the entries to those ids. Returns the entries and whether more
        matching entries follow. Paging by id rather than by position keeps pages stable
        while images come and go between two calls.
        """
        keys = (
            sorted(set(only).intersection(self._entries)) if only is not None else self._ordered()
        )
        found: list[SimulatedImage] = []
        for key in itertools.islice(keys, bisect_right(keys, after), None):
            image = self._entries[key]
            if not matches(image):
                continue
            if limit is not None and len(found) == limit:
                return found, True
            found.append(image)
        return found, False

    def _ordered(self) -> list[str]:
        if self._order is None:
            self._order = sorted(self._entries)
        return self._order

    def _bump(self, image_id: str) -> None:
        self._generations[image_id] = self._generations.get(image_id, 0) + 1
