"""Which alerts one applied poll causes, per receiver (pure).

A webhook's alert **fires** once for each transition into one of its `states`, the first sight
of an image already in such a state included; the same state with a new `StateTransitionTime`
is a new failure and fires again. It **resolves** when the image next moves to a state not
listed, or is removed. A **stuck** alert fires once when an image has stayed in `enabling` or
`disabling` longer than `stuck_after`, and resolves when its state changes.

Every alert is keyed by (receiver, account, region, image, kind, state, since, status), where
`state` and `since` are those of the failing (or stuck) state the alert is about — for a
resolve too, so a resolve names its firing and Alertmanager and PagerDuty can match them. The
key makes writing the same alert twice (a poll applied twice, two instances racing) a no-op in
the outbox; the event id is derived from it, so it is the same for every copy.

Each firing has at most one resolve: a new failure of an image fires again without resolving
the earlier alert, and the next resolve resolves the newest. An image that comes back in the
very state (and transition time) whose alert was resolved fires again: the store counts such
returns as the alert's episodes, so a firing after a resolve is never taken for the one before.
The rules see the stored images, not the outbox, so the `since` they give a resolve is
provisional: the stored transition time, or this poll's time when AWS gave none (the firing was
keyed by the time of the poll that first saw the failure); and a stuck alert may never have
fired (no poll saw the image stuck before it moved on). The store pairs each resolve with its
firing as it writes it (`monitor.alerts.outbox.insert_alerts`): re-keyed by the `since` and
episode of the newest firing of its alert (`AlertEvent.resolving`), or dropped when nothing
fired.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from monitor.core.model import (
    TRANSIENT_STATES,
    FastLaunchImage,
    ImageDiff,
    Scope,
    Transition,
)
from monitor.core.times import rfc3339

FIRING = "firing"
RESOLVED = "resolved"
FAILED = "failed"
STUCK = "stuck"

# A fixed namespace: event ids are uuid5 of the alert's key, stable across processes.
_EVENT_NAMESPACE = uuid.UUID("6c1f0a52-4f0e-4d51-9a43-0b8a2f1f7e11")


@dataclass(frozen=True, slots=True)
class Receiver:
    """What the rules need to know of a webhook: its name and which states alert it."""

    name: str
    states: frozenset[str]
    send_resolved: bool = True


@dataclass(frozen=True, slots=True)
class AlertKey:
    """What makes an alert unique: the outbox's unique key, and the source of its event id.

    `state` and `since` name the failing (or stuck) state the alert is about, for a resolve too.
    `episode` tells apart the firings of one alert that a resolve separates (an image that came
    back in the state it left); the store sets it, the rules leave it 0.
    """

    receiver: str
    scope: Scope
    image_id: str
    kind: str
    state: str
    since: datetime
    status: str
    episode: int = 0

    @property
    def event_id(self) -> str:
        """The same key always gives the same id, in every process."""
        parts = [
            self.receiver,
            self.scope.account_id,
            self.scope.region,
            self.image_id,
            self.kind,
            self.state,
            rfc3339(self.since) or "",
            self.status,
        ]
        if self.episode:
            # The first episode keeps the ids alerts had before episodes were counted.
            parts.append(str(self.episode))
        return str(uuid.uuid5(_EVENT_NAMESPACE, "\x1f".join(parts)))


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert for one receiver, as written to the outbox.

    `payload` is the receiver-independent document (format `json`'s body), from
    which every format builds its request at delivery time.
    """

    key: AlertKey
    payload: Mapping[str, Any]

    @property
    def event_id(self) -> str:
        return self.key.event_id

    def resolving(self, since: datetime, episode: int) -> AlertEvent:
        """This resolve keyed by the firing it resolves, which was keyed by `since` and
        `episode`."""
        return self._rekeyed(replace(self.key, since=since, episode=episode))

    def in_episode(self, episode: int) -> AlertEvent:
        """This firing as the `episode`-th of its alert."""
        return self._rekeyed(replace(self.key, episode=episode))

    def _rekeyed(self, key: AlertKey) -> AlertEvent:
        if key == self.key:
            return self
        return AlertEvent(key=key, payload={**self.payload, "event_id": key.event_id})


def _event(
    key: AlertKey, transition: Transition, image: FastLaunchImage | None, observed_at: datetime
) -> AlertEvent:
    scope = key.scope
    payload = {
        "version": 1,
        "event_id": key.event_id,
        "status": key.status,
        "kind": key.kind,
        "target": scope.target,
        "account_id": scope.account_id,
        "region": scope.region,
        "image_id": transition.image_id,
        "state": transition.new_state,
        "previous_state": transition.previous_state,
        "state_transition_reason": transition.reason,
        "state_transition_time": rfc3339(transition.transition_time),
        "observed_at": rfc3339(observed_at),
        "target_resource_count": None if image is None else image.target_resource_count,
        "max_parallel_launches": None if image is None else image.max_parallel_launches,
        "launch_template": {
            "id": None if image is None else image.launch_template_id,
            "name": None if image is None else image.launch_template_name,
            "version": None if image is None else image.launch_template_version,
        },
    }
    return AlertEvent(key=key, payload=payload)


def _was_stuck(before: FastLaunchImage, stuck_after: float, observed_at: datetime) -> bool:
    return (
        stuck_after > 0
        and before.state in TRANSIENT_STATES
        and before.state_transition_time is not None
        and observed_at - before.state_transition_time >= timedelta(seconds=stuck_after)
    )


def alerts_for_poll(
    scope: Scope,
    previous: Mapping[str, FastLaunchImage],
    diff: ImageDiff,
    receivers: Sequence[Receiver],
    observed_at: datetime,
    *,
    stuck_after: float = 0.0,
    current: Iterable[FastLaunchImage] = (),
) -> list[AlertEvent]:
    """Every alert the poll of `scope` causes, for every receiver.

    `previous` is the stored state the poll was diffed against, `diff` the result, `current`
    every image of the poll (for the stuck check, which concerns images that did not change).
    A resolve's `since` is provisional until the store pairs it with its firing (see above).
    """
    if not receivers:
        return []
    images = {image.image_id: image for image in diff.upserts}
    events: list[AlertEvent] = []

    def add(
        receiver: Receiver,
        kind: str,
        status: str,
        state: str,
        since: datetime,
        transition: Transition,
        image: FastLaunchImage | None,
    ) -> None:
        key = AlertKey(receiver.name, scope, transition.image_id, kind, state, since, status)
        events.append(_event(key, transition, image, observed_at))

    for transition in diff.transitions:
        before = previous.get(transition.image_id)
        image = images.get(transition.image_id)
        for receiver in receivers:
            if transition.new_state in receiver.states:
                add(
                    receiver,
                    FAILED,
                    FIRING,
                    transition.new_state,
                    transition.transition_time,
                    transition,
                    image,
                )
            if before is None or not receiver.send_resolved:
                continue
            # Provisional: the store re-keys a resolve by its firing's `since`, or drops it.
            since = before.state_transition_time or observed_at
            if before.state in receiver.states and transition.new_state not in receiver.states:
                add(receiver, FAILED, RESOLVED, before.state, since, transition, image)
            if before.state != transition.new_state and _was_stuck(
                before, stuck_after, observed_at
            ):
                add(receiver, STUCK, RESOLVED, before.state, since, transition, image)
    for image in current:
        if image.state_transition_time is None or not _was_stuck(image, stuck_after, observed_at):
            continue
        # A stuck alert is about a state that has not changed: "from" and "to" are the same.
        still = Transition(
            image_id=image.image_id,
            previous_state=image.state,
            new_state=image.state,
            transition_time=image.state_transition_time,
            reason=image.state_transition_reason,
        )
        for receiver in receivers:
            add(receiver, STUCK, FIRING, image.state, image.state_transition_time, still, image)
    return events


#: Which alerts a poll causes: given the scope, its stored images before the poll, the diff,
#: the poll's images and the observation time (`alerts_for_poll` with its receivers bound).
AlertPolicy = Callable[
    [Scope, Mapping[str, FastLaunchImage], ImageDiff, Sequence[FastLaunchImage], datetime],
    list[AlertEvent],
]


def alert_policy(receivers: Sequence[Receiver], stuck_after: float) -> AlertPolicy:
    """The store's alert policy for these receivers: `alerts_for_poll` with them bound."""

    def policy(
        scope: Scope,
        previous: Mapping[str, FastLaunchImage],
        diff: ImageDiff,
        current: Sequence[FastLaunchImage],
        observed_at: datetime,
    ) -> list[AlertEvent]:
        return alerts_for_poll(
            scope, previous, diff, receivers, observed_at, stuck_after=stuck_after, current=current
        )

    return policy
