"""The store: what the rest of the monitor reads from and writes to the database.

Records from `monitor.core.model` go in and come out; rows never leave this module. Writes are Core
statements executed in bulk, so the cost of applying a poll grows with what changed, not with
how many images there are: an unchanged poll of any size is one SELECT and one INSERT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, bindparam, delete, func, insert, select, text

from monitor.aws.normalise import to_utc
from monitor.core.diff import diff_images
from monitor.core.model import (
    AppliedPoll,
    FastLaunchImage,
    HistoryEntry,
    ImageDiff,
    PollResult,
    PollSummary,
    Scope,
    StoredImage,
    Transition,
)
from monitor.store.engine import database_errors, dialect_insert, write_transaction
from monitor.store.schema import history, images, polls

# The columns that make up a FastLaunchImage, in the order of its fields after image_id.
_IMAGE_COLUMNS = (
    images.c.image_id,
    images.c.state,
    images.c.state_transition_reason,
    images.c.state_transition_time,
    images.c.resource_type,
    images.c.target_resource_count,
    images.c.max_parallel_launches,
    images.c.owner_id,
    images.c.launch_template_id,
    images.c.launch_template_name,
    images.c.launch_template_version,
)
_IMAGE_KEY = (images.c.account_id, images.c.region, images.c.image_id)

#: What `poll.error_code` says for a failed poll that came without one, so a failed poll can
#: always be told from a successful one.
UNKNOWN_ERROR = "UnknownError"


#: Writes what else a poll causes in the poll's own transaction (the alerts' outbox), so it
#: exists exactly when the poll's transitions do: given the connection, the scope, its stored
#: images before the poll, the diff, the poll's images and the observation time.
OnApplied = Callable[
    [
        Connection,
        Scope,
        Mapping[str, FastLaunchImage],
        ImageDiff,
        Sequence[FastLaunchImage],
        datetime,
    ],
    None,
]


class Store:
    """Reads and writes the monitor's state; every method is one short transaction.

    Database failures come out as `StoreError`, naming the database but never its password.
    Safe to share between threads: each call takes its own connection from the engine's pool.
    """

    def __init__(self, engine: Engine, on_applied: OnApplied | None = None) -> None:
        self._engine = engine
        self._on_applied = on_applied

    def apply_poll(self, result: PollResult, observed_at: datetime) -> AppliedPoll:
        """Record one poll of one scope, and what it changed, in one transaction.

        A failed poll writes only its poll row: the last known state of every image stays.
        A successful poll is diffed against the scope's stored images; its transitions go to
        the history, changed images are written and images it no longer lists are deleted
        (and recorded as `removed`). Applying the same poll again records nothing more.
        """
        observed_at = to_utc(observed_at)
        scope = result.scope
        action = f"recording the poll of {scope.target} in {scope.region}"
        with database_errors(self._engine, action), write_transaction(self._engine) as connection:
            if result.images is None:
                _insert_poll(connection, result)
                return AppliedPoll(result=result, transitions=(), upserts=0, removed=0)
            _lock_scope(connection, scope)
            previous = _scope_images(connection, scope)
            diff = diff_images(previous, result.images, observed_at)
            poll_id = _insert_poll(connection, result)
            if diff.transitions:
                _insert_history(connection, scope, diff.transitions, observed_at, poll_id)
            if diff.upserts:
                _upsert_images(connection, scope, diff.upserts, observed_at)
            if self._on_applied is not None:
                self._on_applied(connection, scope, previous, diff, result.images, observed_at)
            if diff.removed:
                connection.execute(
                    delete(images).where(
                        images.c.account_id == scope.account_id,
                        images.c.region == scope.region,
                        images.c.image_id == bindparam("removed_id"),
                    ),
                    [{"removed_id": image_id} for image_id in diff.removed],
                )
        return AppliedPoll(
            result=result,
            transitions=diff.transitions,
            upserts=len(diff.upserts),
            removed=len(diff.removed),
        )

    def current_images(self, scope: Scope | None = None) -> list[StoredImage]:
        """The current record of every image, or of one scope's (by account and region)."""
        query = select(images.c.target, images.c.account_id, images.c.region, *_IMAGE_COLUMNS)
        if scope is not None:
            query = query.where(
                images.c.account_id == scope.account_id, images.c.region == scope.region
            )
        query = query.order_by(images.c.target, *_IMAGE_KEY)
        with database_errors(self._engine, "reading the images"), self._engine.connect() as conn:
            return [
                StoredImage(
                    scope=Scope(target=row[0], account_id=row[1], region=row[2]),
                    image=_image(row[3:]),
                )
                for row in conn.execute(query).all()
            ]

    def history(
        self,
        *,
        image_id: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[HistoryEntry]:
        """Recorded transitions, newest first, at most `limit` of them.

        `image_id` keeps one image's (in any account and region); `since` keeps the transitions
        at or after that time.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        query = select(history)
        if image_id is not None:
            query = query.where(history.c.image_id == image_id)
        if since is not None:
            query = query.where(history.c.transition_time >= to_utc(since))
        query = query.order_by(history.c.transition_time.desc(), history.c.id.desc()).limit(limit)
        with database_errors(self._engine, "reading the history"), self._engine.connect() as conn:
            return [_history_entry(row) for row in conn.execute(query)]

    def latest_polls(self) -> list[PollSummary]:
        """The newest recorded poll of every (target, account, region) ever polled."""
        newest_first = func.row_number().over(
            partition_by=(polls.c.target, polls.c.account_id, polls.c.region),
            order_by=(polls.c.started_at.desc(), polls.c.id.desc()),
        )
        ranked = select(polls, newest_first.label("newness")).subquery()
        query = (
            select(ranked)
            .where(ranked.c.newness == 1)
            .order_by(ranked.c.target, ranked.c.account_id, ranked.c.region)
        )
        with database_errors(self._engine, "reading the polls"), self._engine.connect() as conn:
            return [_poll_summary(row) for row in conn.execute(query)]

    def ping(self) -> None:
        """Raise `StoreError` unless the database answers a trivial query."""
        with database_errors(self._engine, "reaching the database"), self._engine.connect() as c:
            c.execute(text("SELECT 1"))


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit key for a PostgreSQL advisory lock named by `parts`."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_scope(connection: Connection, scope: Scope) -> None:
    # Correctness never depends on who believes it leads: two writers of one scope queue here
    # until the first commits, and the second then re-reads what the first wrote. SQLite needs
    # no lock of its own: its write transactions already begin IMMEDIATE, one at a time.
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"),
            {"key": advisory_key("fastlaunch-monitor scope", scope.account_id, scope.region)},
        )


# The statements of every poll are built once: building a Core statement costs more than
# executing it against SQLite, and one is executed for each of a thousand scopes a cycle.
_SELECT_SCOPE_IMAGES = select(*_IMAGE_COLUMNS).where(
    images.c.account_id == bindparam("account_id"), images.c.region == bindparam("region")
)
_INSERT_POLL = insert(polls).returning(polls.c.id)


def _scope_images(connection: Connection, scope: Scope) -> dict[str, FastLaunchImage]:
    rows = connection.execute(
        _SELECT_SCOPE_IMAGES, {"account_id": scope.account_id, "region": scope.region}
    ).all()
    return {row[0]: _image(row) for row in rows}


def _image(values: Sequence[Any]) -> FastLaunchImage:
    return FastLaunchImage(*values)


def _insert_poll(connection: Connection, result: PollResult) -> int:
    failed = result.images is None
    poll_id: int = connection.execute(
        _INSERT_POLL,
        {
            "target": result.scope.target,
            "account_id": result.scope.account_id,
            "region": result.scope.region,
            "started_at": result.started_at,
            "duration_seconds": result.duration_seconds,
            "pages": result.pages,
            "images": None if result.images is None else len(result.images),
            "outcome": "error" if failed else "ok",
            "error_code": (result.error_code or UNKNOWN_ERROR) if failed else None,
            "error_message": result.error_message if failed else None,
        },
    ).scalar_one()
    return poll_id


def _insert_history(
    connection: Connection,
    scope: Scope,
    transitions: Sequence[Transition],
    observed_at: datetime,
    poll_id: int,
) -> None:
    # DO NOTHING: a transition another writer already recorded is not an error, just done.
    statement = dialect_insert(connection)(history).on_conflict_do_nothing()
    connection.execute(
        statement,
        [
            {
                "target": scope.target,
                "account_id": scope.account_id,
                "region": scope.region,
                "image_id": transition.image_id,
                "previous_state": transition.previous_state,
                "new_state": transition.new_state,
                "transition_time": transition.transition_time,
                "reason": transition.reason,
                "observed_at": observed_at,
                "poll_id": poll_id,
            }
            for transition in transitions
        ],
    )


def _upsert_images(
    connection: Connection,
    scope: Scope,
    upserts: Sequence[FastLaunchImage],
    observed_at: datetime,
) -> None:
    statement = dialect_insert(connection)(images)
    # Everything but the key and first_seen_at follows the latest poll.
    kept = {column.name for column in _IMAGE_KEY} | {"first_seen_at"}
    statement = statement.on_conflict_do_update(
        index_elements=list(_IMAGE_KEY),
        set_={
            column.name: statement.excluded[column.name]
            for column in images.columns
            if column.name not in kept
        },
    )
    connection.execute(statement, [_image_row(scope, image, observed_at) for image in upserts])


def _image_row(scope: Scope, image: FastLaunchImage, observed_at: datetime) -> dict[str, Any]:
    return {
        "account_id": scope.account_id,
        "region": scope.region,
        "image_id": image.image_id,
        "target": scope.target,
        "state": image.state,
        "state_transition_reason": image.state_transition_reason,
        "state_transition_time": image.state_transition_time,
        "resource_type": image.resource_type,
        "target_resource_count": image.target_resource_count,
        "max_parallel_launches": image.max_parallel_launches,
        "owner_id": image.owner_id,
        "launch_template_id": image.launch_template_id,
        "launch_template_name": image.launch_template_name,
        "launch_template_version": image.launch_template_version,
        "first_seen_at": observed_at,
        "updated_at": observed_at,
    }


def _history_entry(row: Row[Any]) -> HistoryEntry:
    fields = row._mapping
    return HistoryEntry(
        scope=Scope(
            target=fields["target"], account_id=fields["account_id"], region=fields["region"]
        ),
        transition=Transition(
            image_id=fields["image_id"],
            previous_state=fields["previous_state"],
            new_state=fields["new_state"],
            transition_time=fields["transition_time"],
            reason=fields["reason"],
        ),
        observed_at=fields["observed_at"],
    )


def _poll_summary(row: Row[Any]) -> PollSummary:
    fields = row._mapping
    return PollSummary(
        scope=Scope(
            target=fields["target"], account_id=fields["account_id"], region=fields["region"]
        ),
        started_at=fields["started_at"],
        duration_seconds=fields["duration_seconds"],
        pages=fields["pages"],
        images=fields["images"],
        error_code=fields["error_code"],
        error_message=fields["error_message"],
    )
