"""Frozen records that cross module borders.

Neither botocore dicts nor ORM rows leave their adapter; these records do. Times are always
timezone-aware UTC `datetime`s, keeping milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: The states AWS documents for `DescribeFastLaunchImages`, in lifecycle order. The metrics
#: export one `fastlaunch_image_state` series per state in this tuple.
KNOWN_STATES: tuple[str, ...] = (
    "enabling",
    "enabling-failed",
    "enabled",
    "enabled-failed",
    "disabling",
    "disabling-failed",
)

FAILED_STATES: frozenset[str] = frozenset(s for s in KNOWN_STATES if s.endswith("-failed"))

#: States in which an image is on its way somewhere; `stuck_after` applies to them.
TRANSIENT_STATES: frozenset[str] = frozenset({"enabling", "disabling"})

#: The pseudo state recorded in history when a successful poll no longer lists an image.
REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Scope:
    """One (target, region) pair: the unit that is polled and persisted in one transaction."""

    target: str
    account_id: str
    region: str


@dataclass(frozen=True, slots=True)
class FastLaunchImage:
    """One image as `DescribeFastLaunchImages` reported it, normalised.

    Optional fields are `None` when AWS left them out or empty (shared AMIs come back with
    `"SnapshotConfiguration": {}` and an empty `OwnerId`).
    """

    image_id: str
    state: str
    state_transition_reason: str
    state_transition_time: datetime | None
    resource_type: str | None
    target_resource_count: int | None
    max_parallel_launches: int | None
    owner_id: str | None
    launch_template_id: str | None
    launch_template_name: str | None
    launch_template_version: str | None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of `State` or `StateTransitionTime` of one image, or its first or last sight.

    `previous_state` is `None` the first time an image is seen; `new_state` is `REMOVED` when
    a complete poll no longer lists it. `transition_time` is AWS's `StateTransitionTime`, or the
    poll's observation time for a removal or when AWS gave no time.
    """

    image_id: str
    previous_state: str | None
    new_state: str
    transition_time: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class ImageDiff:
    """What one poll of a scope changed compared with the stored state.

    `upserts` are the images whose stored record must be written (new, transitioned, or with
    changed attributes such as `TargetResourceCount`); `removed` the image ids to delete.
    """

    transitions: tuple[Transition, ...]
    upserts: tuple[FastLaunchImage, ...]
    removed: tuple[str, ...]

    @property
    def is_empty(self) -> bool:
        return not (self.transitions or self.upserts or self.removed)


@dataclass(frozen=True, slots=True)
class PollResult:
    """The outcome of one poll of one scope, as recorded in the poll table.

    `images` is `None` when the poll failed: a failed poll says nothing about the images.
    """

    scope: Scope
    started_at: datetime
    duration_seconds: float
    pages: int
    images: tuple[FastLaunchImage, ...] | None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.images is not None


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image's current record as the store keeps it, with the scope it belongs to."""

    scope: Scope
    image: FastLaunchImage


@dataclass(frozen=True, slots=True)
class AppliedPoll:
    """What the store did with one poll: the transitions it recorded (empty for a failed poll)."""

    result: PollResult
    transitions: tuple[Transition, ...]
    upserts: int
    removed: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded transition, with the scope of its image and when the monitor saw it."""

    scope: Scope
    transition: Transition
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class PollSummary:
    """One recorded poll of a scope (`images` is `None` for a failed poll)."""

    scope: Scope
    started_at: datetime
    duration_seconds: float
    pages: int
    images: int | None
    error_code: str | None
    error_message: str | None

    @property
    def ok(self) -> bool:
        return self.error_code is None
