"""The database schema, defined once with SQLAlchemy Core.

The Alembic migrations in `migrations/` create and change it; `alembic check` compares them with
this module, so the two cannot drift apart unnoticed. The naming convention, and explicit names
for every constraint or index over several columns, keep constraint names the same on SQLite and
PostgreSQL (PostgreSQL would otherwise truncate long generated names).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    text,
)
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

NAMING_CONVENTION: dict[str, str] = {
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class _SQLiteTimestamp(UserDefinedType[str]):
    """SQLite's DATETIME column, given text that `UTCDateTime` has already formatted.

    SQLAlchemy's own SQLite DATETIME would format and parse each value a second time, in
    Python; at ten thousand images a poll that is the bulk of the store's CPU time.
    """

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "DATETIME"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC `datetime`.

    PostgreSQL keeps it as `timestamptz`. SQLite has no time zones: the value is stored as naive
    UTC text in SQLAlchemy's own format (`2026-11-26 10:00:00.123000`, always with
    microseconds), so it sorts and compares as text correctly. A naive `datetime` given to it is
    taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _SQLiteTimestamp()
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        if dialect.name == "sqlite":
            return value.isoformat(" ", "microseconds")
        return value.replace(tzinfo=UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite hands back the stored text, PostgreSQL an aware datetime.
        read: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if read.tzinfo is None:
            return read.replace(tzinfo=UTC)
        return read.astimezone(UTC)


# SQLite only makes an INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL gets 64 bits.
_ID = BigInteger().with_variant(Integer(), "sqlite")

images = Table(
    "images",
    metadata,
    Column("account_id", String(), nullable=False),
    Column("region", String(), nullable=False),
    Column("image_id", String(), nullable=False),
    Column("target", String(), nullable=False),
    Column("state", String(), nullable=False),
    Column("state_transition_reason", Text(), nullable=False),
    Column("state_transition_time", UTCDateTime(), nullable=True),
    Column("resource_type", String(), nullable=True),
    Column("target_resource_count", Integer(), nullable=True),
    Column("max_parallel_launches", Integer(), nullable=True),
    Column("owner_id", String(), nullable=True),
    Column("launch_template_id", String(), nullable=True),
    Column("launch_template_name", String(), nullable=True),
    Column("launch_template_version", String(), nullable=True),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # An image is identified by (account, region, image id): the key is the unique constraint.
    PrimaryKeyConstraint("account_id", "region", "image_id"),
)

polls = Table(
    "polls",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("target", String(), nullable=False),
    Column("account_id", String(), nullable=False),
    Column("region", String(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("duration_seconds", Float(), nullable=False),
    Column("pages", Integer(), nullable=False),
    # NULL for a failed poll: it says nothing about how many images there are.
    Column("images", Integer(), nullable=True),
    Column("outcome", String(), nullable=False),
    Column("error_code", String(), nullable=True),
    Column("error_message", Text(), nullable=True),
    CheckConstraint("outcome IN ('ok', 'error')", name="outcome"),
    Index("ix_polls_scope_started_at", "target", "account_id", "region", "started_at"),
    # Retention walks the polls oldest first, a batch at a time.
    Index("ix_polls_started_at_id", "started_at", "id"),
)

history = Table(
    "history",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("target", String(), nullable=False),
    Column("account_id", String(), nullable=False),
    Column("region", String(), nullable=False),
    Column("image_id", String(), nullable=False),
    Column("previous_state", String(), nullable=True),
    Column("new_state", String(), nullable=False),
    Column("transition_time", UTCDateTime(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("observed_at", UTCDateTime(), nullable=False),
    Column("poll_id", _ID, ForeignKey("polls.id"), nullable=False),
    # The same transition seen twice (a poll applied again, two instances racing) records once.
    UniqueConstraint(
        "account_id",
        "region",
        "image_id",
        "new_state",
        "transition_time",
        name="uq_history_transition",
    ),
    Index("ix_history_transition_time", "transition_time"),
    Index("ix_history_image_id_transition_time", "image_id", "transition_time"),
    Index("ix_history_poll_id", "poll_id"),
)

#: What a firing and its resolve share: one alert (receiver, image, kind, state and since) in one
#: episode.
ALERT_EPISODE_KEY = (
    "receiver",
    "account_id",
    "region",
    "image_id",
    "kind",
    "state",
    "transition_time",
    "episode",
)


def same_alert_episode(one: Any, other: Any) -> Any:
    """The condition that rows of `one` and `other` (outbox aliases) are of one alert episode."""
    return and_(*(one.c[column] == other.c[column] for column in ALERT_EPISODE_KEY))


alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("event_id", String(), nullable=False, unique=True),
    Column("receiver", String(), nullable=False),
    Column("target", String(), nullable=False),
    Column("account_id", String(), nullable=False),
    Column("region", String(), nullable=False),
    Column("image_id", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("status", String(), nullable=False),
    Column("state", String(), nullable=False),
    Column("transition_time", UTCDateTime(), nullable=False),
    Column("payload", Text(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer(), nullable=False, server_default=text("0")),
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    # Alertmanager wants firing alerts re-sent while they last: when the next one is due.
    Column("resend_at", UTCDateTime(), nullable=True),
    # 0 for the first firing of an alert and its resolve; one more for each firing of the same
    # alert (same image, state and transition time) after a resolve: the image came back.
    Column("episode", Integer(), nullable=False, server_default=text("0")),
    CheckConstraint("kind IN ('failed', 'stuck')", name="kind"),
    CheckConstraint("status IN ('firing', 'resolved')", name="status"),
    # One alert per receiver, transition and episode, whatever retries or races happen upstream.
    UniqueConstraint(*ALERT_EPISODE_KEY, "status", name="uq_alert_outbox_alert"),
    # The dispatcher only ever looks for undelivered, unfailed rows that are due.
    Index(
        "ix_alert_outbox_due",
        "next_attempt_at",
        sqlite_where=text("delivered_at IS NULL AND failed_at IS NULL"),
        postgresql_where=text("delivered_at IS NULL AND failed_at IS NULL"),
    ),
    Index(
        "ix_alert_outbox_resend",
        "resend_at",
        sqlite_where=text("resend_at IS NOT NULL"),
        postgresql_where=text("resend_at IS NOT NULL"),
    ),
)

#: Every delivery attempt of an outbox entry: when, what came back, how long it took.
alert_attempts = Table(
    "alert_attempts",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column(
        "outbox_id",
        _ID,
        ForeignKey("alert_outbox.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("attempted_at", UTCDateTime(), nullable=False),
    Column("outcome", String(), nullable=False),
    Column("status_code", Integer(), nullable=True),
    Column("error", Text(), nullable=True),
    Column("duration_seconds", Float(), nullable=False),
    CheckConstraint("outcome IN ('delivered', 'retry', 'failed')", name="outcome"),
)

#: Receivers that answered 410 Gone, with a fingerprint of their config at the time: they stay
#: disabled until their config changes.
disabled_receivers = Table(
    "disabled_receivers",
    metadata,
    Column("receiver", String(), primary_key=True),
    Column("fingerprint", String(), nullable=False),
    Column("disabled_at", UTCDateTime(), nullable=False),
    Column("reason", Text(), nullable=False),
)
