"""The alert outbox: alerts enqueued with the transition that caused them, claimed and finished.

Enqueueing happens inside `Store.apply_poll`'s transaction (`insert_alerts`), so an alert exists
exactly when its transition does; there each resolve is paired with the firing it resolves.
Delivery claims due rows under a lease — `FOR UPDATE SKIP LOCKED` on PostgreSQL, so two
dispatchers never hold one row at once; SQLite has one writer at a time anyway — and finishing
a row is refused when its lease was lost, so a slow dispatcher whose lease expired cannot
overwrite the outcome of the one that took over.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)

from monitor.alerts.records import DeliveryOutcome, OutboxEntry
from monitor.alerts.rules import FIRING, RESOLVED, AlertEvent, AlertPolicy
from monitor.core.model import FastLaunchImage, ImageDiff, Scope
from monitor.store.engine import database_errors, dialect_insert, write_transaction
from monitor.store.repository import OnApplied
from monitor.store.schema import (
    alert_attempts,
    alert_outbox,
    disabled_receivers,
    same_alert_episode,
)

DELIVERED = "delivered"
RETRY = "retry"
FAILED = "failed"

_o = alert_outbox


#: Image ids per statement when looking up the earlier alerts of a poll's images.
_LOOKUP_CHUNK = 500

#: (receiver, account, region, image, kind, state): what a resolve and its firing share.
_Alert = tuple[str, str, str, str, str, str]


def _alert(event: AlertEvent) -> _Alert:
    key = event.key
    return (
        key.receiver,
        key.scope.account_id,
        key.scope.region,
        key.image_id,
        key.kind,
        key.state,
    )


@dataclass(slots=True)
class _Earlier:
    """What the outbox already holds of the alerts a poll's events are about."""

    #: The `since` and episode of the newest (last written) firing row of each alert.
    newest_firing: dict[_Alert, tuple[datetime, int]]
    #: The highest episode of each alert's firings at one `since`.
    episodes: dict[tuple[_Alert, datetime], int]
    #: The (alert, since, episode) that a resolve row ended.
    resolved: set[tuple[_Alert, datetime, int]]


def _earlier(connection: Connection, events: Sequence[AlertEvent]) -> _Earlier:
    wanted: dict[tuple[str, str], set[str]] = {}
    receivers: set[str] = set()
    for event in events:
        scope = event.key.scope
        wanted.setdefault((scope.account_id, scope.region), set()).add(event.key.image_id)
        receivers.add(event.key.receiver)
    earlier = _Earlier({}, {}, set())
    for (account_id, region), image_ids in wanted.items():
        ordered = sorted(image_ids)
        for start in range(0, len(ordered), _LOOKUP_CHUNK):
            rows = connection.execute(
                select(
                    _o.c.receiver,
                    _o.c.image_id,
                    _o.c.kind,
                    _o.c.state,
                    _o.c.transition_time,
                    _o.c.episode,
                    _o.c.status,
                )
                .where(
                    _o.c.receiver.in_(sorted(receivers)),
                    _o.c.account_id == account_id,
                    _o.c.region == region,
                    _o.c.image_id.in_(ordered[start : start + _LOOKUP_CHUNK]),
                )
                .order_by(_o.c.id)
            )
            for row in rows:
                alert = (row.receiver, account_id, region, row.image_id, row.kind, row.state)
                since, episode = row.transition_time, row.episode
                if row.status == RESOLVED:
                    earlier.resolved.add((alert, since, episode))
                    continue
                earlier.newest_firing[alert] = (since, episode)
                known = earlier.episodes.get((alert, since), -1)
                earlier.episodes[(alert, since)] = max(known, episode)
    return earlier


def _paired(connection: Connection, events: Sequence[AlertEvent]) -> list[AlertEvent]:
    """`events` keyed by what the outbox knows: resolves by their firing, firings by episode.

    Only the outbox knows which firing a resolve is about (see `monitor.alerts.rules`), and
    whether a firing repeats one that is still open (the same alert again: left alone) or
    follows its resolve (the image came back: a new episode, delivered again).
    """
    if not events:
        return []
    # A poll's firings and resolves are never about one alert (a resolve is about the state
    # an image left, a firing about the state it is in), so earlier polls' rows are all there is.
    earlier = _earlier(connection, events)
    paired: list[AlertEvent] = []
    for event in events:
        alert = _alert(event)
        if event.key.status == RESOLVED:
            newest = earlier.newest_firing.get(alert)
            if newest is not None:
                paired.append(event.resolving(*newest))
            # Else nothing fired, so there is nothing to resolve: no receiver hears of it.
            continue
        since = event.key.since
        episode = earlier.episodes.get((alert, since))
        if episode is None:
            paired.append(event)
        elif (alert, since, episode) in earlier.resolved:
            paired.append(event.in_episode(episode + 1))
        # Else this alert fired and is still open (a stuck image is seen stuck at every poll):
        # it is in the outbox already, and its Alertmanager re-sends must go on.
    return paired


def alert_writer(policy: AlertPolicy) -> OnApplied:
    """What `Store.apply_poll` calls in a poll's transaction: the alerts `policy` gives for
    the poll, enqueued."""

    def write(
        connection: Connection,
        scope: Scope,
        previous: Mapping[str, FastLaunchImage],
        diff: ImageDiff,
        current: Sequence[FastLaunchImage],
        observed_at: datetime,
    ) -> None:
        events = policy(scope, previous, diff, current, observed_at)
        if events:
            insert_alerts(connection, events, observed_at)

    return write


def insert_alerts(connection: Connection, events: Sequence[AlertEvent], now: datetime) -> None:
    """Enqueue `events` in the caller's transaction; an alert already there is left alone.

    Every resolve is first paired with the newest firing row of its alert (receiver, account,
    region, image, kind, state): keyed by that firing's `since` and episode, so it resolves
    that firing and waits for it, or dropped when no firing exists. A firing whose alert was
    resolved before is the next episode of it; one whose alert is still open is dropped.

    A new alert about an image also ends the Alertmanager re-sends of that image's older alerts
    of the same kind: a resolve ends its firing, a new failure replaces the previous one.
    """
    events = _paired(connection, events)
    if not events:
        return
    groups = {
        (e.key.receiver, e.key.scope.account_id, e.key.scope.region, e.key.image_id, e.key.kind)
        for e in events
    }
    for receiver, account_id, region, image_id, kind in groups:
        connection.execute(
            update(_o)
            .where(
                _o.c.receiver == receiver,
                _o.c.account_id == account_id,
                _o.c.region == region,
                _o.c.image_id == image_id,
                _o.c.kind == kind,
                _o.c.resend_at.is_not(None),
            )
            .values(resend_at=None)
        )
    statement = dialect_insert(connection)(_o).on_conflict_do_nothing()
    connection.execute(
        statement,
        [
            {
                "event_id": event.event_id,
                "receiver": event.key.receiver,
                "target": event.key.scope.target,
                "account_id": event.key.scope.account_id,
                "region": event.key.scope.region,
                "image_id": event.key.image_id,
                "kind": event.key.kind,
                "status": event.key.status,
                "state": event.key.state,
                "transition_time": event.key.since,
                "episode": event.key.episode,
                "payload": json.dumps(event.payload),
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
            }
            for event in events
        ],
    )


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One recorded delivery attempt, for `fastlaunch-monitor alerts`."""

    attempted_at: datetime
    outcome: str
    status_code: int | None
    error: str | None
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class OutboxView:
    """An outbox entry with where it stands and its attempts, newest attempt first."""

    entry: OutboxEntry
    next_attempt_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    last_error: str | None
    attempts: tuple[AttemptView, ...]

    @property
    def outcome(self) -> str:
        if self.failed_at is not None:
            return FAILED
        return DELIVERED if self.delivered_at is not None else "pending"


def _due(now: datetime, receivers: Collection[str]) -> Any:
    firing = _o.alias("firing")
    # A resolve waits for its firing: a receiver must never see them in the other order.
    firing_pending = exists().where(
        same_alert_episode(firing, _o),
        firing.c.status == FIRING,
        firing.c.delivered_at.is_(None),
        firing.c.failed_at.is_(None),
    )
    return and_(
        _o.c.receiver.in_(list(receivers)),
        _o.c.failed_at.is_(None),
        or_(
            and_(_o.c.delivered_at.is_(None), _o.c.next_attempt_at <= now),
            _o.c.resend_at <= now,
        ),
        or_(_o.c.lease_until.is_(None), _o.c.lease_until <= now),
        not_(and_(_o.c.status == RESOLVED, firing_pending)),
    )


def _entry(row: Any) -> OutboxEntry:
    fields = row._mapping
    return OutboxEntry(
        id=fields["id"],
        event_id=fields["event_id"],
        receiver=fields["receiver"],
        kind=fields["kind"],
        status=fields["status"],
        scope=Scope(fields["target"], fields["account_id"], fields["region"]),
        image_id=fields["image_id"],
        state=fields["state"],
        since=fields["transition_time"],
        payload=json.loads(fields["payload"]),
        attempts=fields["attempts"],
        created_at=fields["created_at"],
        lease_until=fields["lease_until"],
        resending=fields["delivered_at"] is not None,
    )


class Outbox:
    """The dispatcher's and the `alerts` command's view of the outbox."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim_due(
        self, now: datetime, *, receivers: Collection[str], lease: float, limit: int = 100
    ) -> list[OutboxEntry]:
        """Lease up to `limit` due entries of `receivers`, oldest due first."""
        if not receivers:
            return []
        lease_until = now + timedelta(seconds=lease)
        due_ids = (
            select(_o.c.id)
            .where(_due(now, receivers))
            .order_by(func.coalesce(_o.c.resend_at, _o.c.next_attempt_at), _o.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with (
            database_errors(self._engine, "claiming due alerts"),
            write_transaction(self._engine) as c,
        ):
            rows = c.execute(
                update(_o)
                .where(_o.c.id.in_(due_ids.scalar_subquery()))
                .values(lease_until=lease_until)
                .returning(*_o.columns)
            ).all()
        return sorted((_entry(row) for row in rows), key=lambda e: e.id)

    def next_due(self, now: datetime, *, receivers: Collection[str]) -> datetime | None:
        """When the next entry of `receivers` falls due (None: nothing is waiting)."""
        if not receivers:
            return None
        query = select(func.min(func.coalesce(_o.c.resend_at, _o.c.next_attempt_at))).where(
            _o.c.receiver.in_(list(receivers)),
            _o.c.failed_at.is_(None),
            or_(_o.c.delivered_at.is_(None), _o.c.resend_at.is_not(None)),
        )
        with database_errors(self._engine, "reading the outbox"), self._engine.connect() as c:
            value: datetime | None = c.execute(query).scalar_one()
        return value

    def finish(
        self,
        entry: OutboxEntry,
        outcome: DeliveryOutcome,
        now: datetime,
        *,
        result: str,
        next_attempt_at: datetime | None = None,
        resend_at: datetime | None = None,
    ) -> bool:
        """Record one attempt and its consequence; False if the entry's lease was lost.

        `result` is `delivered`, `retry` (due again at `next_attempt_at`) or `failed`.
        `resend_at` keeps a delivered (or re-sent) Alertmanager alert coming back.
        """
        error = outcome.error or (None if outcome.delivered else f"HTTP {outcome.status}")
        values: dict[str, Any] = {
            "attempts": _o.c.attempts + 1,
            "lease_until": None,
            "last_error": None if outcome.delivered else error,
        }
        if entry.resending:
            values["resend_at"] = resend_at
        elif result == DELIVERED:
            values.update(delivered_at=now, resend_at=resend_at)
        elif result == FAILED:
            values.update(failed_at=now, resend_at=None)
        else:
            values["next_attempt_at"] = next_attempt_at or now
        with (
            database_errors(self._engine, "recording a delivery"),
            write_transaction(self._engine) as c,
        ):
            updated = c.execute(
                update(_o)
                .where(_o.c.id == entry.id, _o.c.lease_until == entry.lease_until)
                .values(**values)
            ).rowcount
            if updated:
                c.execute(
                    insert(alert_attempts).values(
                        outbox_id=entry.id,
                        attempted_at=now,
                        outcome=result,
                        status_code=outcome.status,
                        error=error,
                        duration_seconds=outcome.seconds,
                    )
                )
        return bool(updated)

    def bring_forward(self, seconds: float, now: datetime) -> int:
        """Make each retry and re-send still ahead of `now` due `seconds` earlier.

        For a wall clock stepped back by `seconds`: the times written before the step are that
        much too late, and would hold a retry back for the length of the step; moved, each
        comes when its backoff meant it to. Returns how many entries moved.
        """
        shift = timedelta(seconds=seconds)
        ahead = select(_o.c.id, _o.c.next_attempt_at, _o.c.resend_at).where(
            _o.c.failed_at.is_(None),
            or_(
                and_(_o.c.delivered_at.is_(None), _o.c.next_attempt_at > now),
                _o.c.resend_at > now,
            ),
        )
        with (
            database_errors(self._engine, "rescheduling alerts"),
            write_transaction(self._engine) as c,
        ):
            rows = c.execute(ahead).all()
            for row in rows:
                values = {
                    column: when - shift
                    for column, when in (
                        ("next_attempt_at", row.next_attempt_at),
                        ("resend_at", row.resend_at),
                    )
                    if when is not None and when > now
                }
                c.execute(update(_o).where(_o.c.id == row.id).values(**values))
        return len(rows)

    def release(self, entries: Sequence[OutboxEntry]) -> None:
        """Give back the leases of claimed entries that were not attempted (a shutdown)."""
        if not entries:
            return
        with (
            database_errors(self._engine, "releasing alerts"),
            write_transaction(self._engine) as c,
        ):
            for entry in entries:
                c.execute(
                    update(_o)
                    .where(_o.c.id == entry.id, _o.c.lease_until == entry.lease_until)
                    .values(lease_until=None)
                )

    def release_all(self) -> None:
        """Forget every lease: only for a database no other process can use (SQLite)."""
        with (
            database_errors(self._engine, "releasing alerts"),
            write_transaction(self._engine) as c,
        ):
            c.execute(update(_o).where(_o.c.lease_until.is_not(None)).values(lease_until=None))

    def pending_counts(self) -> dict[str, int]:
        """Entries neither delivered nor failed, per receiver."""
        query = (
            select(_o.c.receiver, func.count())
            .where(_o.c.delivered_at.is_(None), _o.c.failed_at.is_(None))
            .group_by(_o.c.receiver)
        )
        with database_errors(self._engine, "reading the outbox"), self._engine.connect() as c:
            return dict(c.execute(query).all())

    def listing(self, *, pending_only: bool = False, limit: int = 100) -> list[OutboxView]:
        """The newest entries (only undelivered, unfailed ones with `pending_only`)."""
        query = select(_o).order_by(_o.c.created_at.desc(), _o.c.id.desc()).limit(limit)
        if pending_only:
            query = query.where(_o.c.delivered_at.is_(None), _o.c.failed_at.is_(None))
        with database_errors(self._engine, "reading the outbox"), self._engine.connect() as c:
            rows = c.execute(query).all()
            ids = [row.id for row in rows]
            attempts: dict[int, list[AttemptView]] = {i: [] for i in ids}
            if ids:
                for a in c.execute(
                    select(alert_attempts)
                    .where(alert_attempts.c.outbox_id.in_(ids))
                    .order_by(alert_attempts.c.attempted_at.desc(), alert_attempts.c.id.desc())
                ):
                    attempts[a.outbox_id].append(
                        AttemptView(
                            a.attempted_at, a.outcome, a.status_code, a.error, a.duration_seconds
                        )
                    )
        return [
            OutboxView(
                entry=_entry(row),
                next_attempt_at=row.next_attempt_at,
                delivered_at=row.delivered_at,
                failed_at=row.failed_at,
                last_error=row.last_error,
                attempts=tuple(attempts[row.id]),
            )
            for row in rows
        ]

    def disabled_receivers(self) -> dict[str, str]:
        """Receivers disabled by a 410 answer, with the config fingerprint they had then."""
        with database_errors(self._engine, "reading receivers"), self._engine.connect() as c:
            rows = c.execute(
                select(disabled_receivers.c.receiver, disabled_receivers.c.fingerprint)
            )
            return dict(rows.all())

    def disable_receiver(self, receiver: str, fingerprint: str, now: datetime, reason: str) -> None:
        """Stop delivering to `receiver` until its config (`fingerprint`) changes."""
        statement = dialect_insert(self._engine)(disabled_receivers).values(
            receiver=receiver, fingerprint=fingerprint, disabled_at=now, reason=reason
        )
        statement = statement.on_conflict_do_update(
            index_elements=[disabled_receivers.c.receiver],
            set_={"fingerprint": fingerprint, "disabled_at": now, "reason": reason},
        )
        with (
            database_errors(self._engine, "disabling a receiver"),
            write_transaction(self._engine) as c,
        ):
            c.execute(statement)

    def enable_receiver(self, receiver: str) -> None:
        """Deliver to `receiver` again (its config changed since it answered 410)."""
        with (
            database_errors(self._engine, "enabling a receiver"),
            write_transaction(self._engine) as c,
        ):
            c.execute(delete(disabled_receivers).where(disabled_receivers.c.receiver == receiver))
