"""Initial schema: images, polls, history and the alert outbox.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen here on purpose: a migration must keep meaning what it meant when it was written.
# Names are final (`op.f`): the naming convention of the metadata must not rename them.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_UNDELIVERED = sa.text("delivered_at IS NULL AND failed_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("region", sa.String(), nullable=False),
        sa.Column("image_id", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("state_transition_reason", sa.Text(), nullable=False),
        sa.Column("state_transition_time", _TIME, nullable=True),
        sa.Column("resource_type", sa.String(), nullable=True),
        sa.Column("target_resource_count", sa.Integer(), nullable=True),
        sa.Column("max_parallel_launches", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.String(), nullable=True),
        sa.Column("launch_template_id", sa.String(), nullable=True),
        sa.Column("launch_template_name", sa.String(), nullable=True),
        sa.Column("launch_template_version", sa.String(), nullable=True),
        sa.Column("first_seen_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "region", "image_id", name=op.f("pk_images")),
    )
    op.create_table(
        "polls",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("region", sa.String(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.CheckConstraint("outcome IN ('ok', 'error')", name=op.f("ck_polls_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_polls")),
    )
    op.create_index(
        op.f("ix_polls_scope_started_at"), "polls", ["target", "account_id", "region", "started_at"]
    )
    op.create_table(
        "history",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("region", sa.String(), nullable=False),
        sa.Column("image_id", sa.String(), nullable=False),
        sa.Column("previous_state", sa.String(), nullable=True),
        sa.Column("new_state", sa.String(), nullable=False),
        sa.Column("transition_time", _TIME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("observed_at", _TIME, nullable=False),
        sa.Column("poll_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(["poll_id"], ["polls.id"], name=op.f("fk_history_poll_id_polls")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history")),
        sa.UniqueConstraint(
            "account_id",
            "region",
            "image_id",
            "new_state",
            "transition_time",
            name=op.f("uq_history_transition"),
        ),
    )
    op.create_index(op.f("ix_history_transition_time"), "history", ["transition_time"])
    op.create_index(
        op.f("ix_history_image_id_transition_time"), "history", ["image_id", "transition_time"]
    )
    op.create_index(op.f("ix_history_poll_id"), "history", ["poll_id"])
    op.create_table(
        "alert_outbox",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("receiver", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("region", sa.String(), nullable=False),
        sa.Column("image_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("transition_time", _TIME, nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_until", _TIME, nullable=True),
        sa.Column("delivered_at", _TIME, nullable=True),
        sa.Column("failed_at", _TIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('failed', 'stuck')", name=op.f("ck_alert_outbox_kind")),
        sa.CheckConstraint("status IN ('firing', 'resolved')", name=op.f("ck_alert_outbox_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_alert_outbox_event_id")),
        sa.UniqueConstraint(
            "receiver",
            "account_id",
            "region",
            "image_id",
            "kind",
            "state",
            "transition_time",
            "status",
            name=op.f("uq_alert_outbox_alert"),
        ),
    )
    op.create_index(
        op.f("ix_alert_outbox_due"),
        "alert_outbox",
        ["next_attempt_at"],
        sqlite_where=_UNDELIVERED,
        postgresql_where=_UNDELIVERED,
    )


def downgrade() -> None:
    op.drop_table("alert_outbox")
    op.drop_table("history")
    op.drop_table("polls")
    op.drop_table("images")
