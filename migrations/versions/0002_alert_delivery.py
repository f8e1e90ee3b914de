"""Alert delivery: every attempt recorded, Alertmanager re-sends, receivers disabled by 410.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("alert_outbox") as batch:
        batch.add_column(sa.Column("resend_at", _TIME, nullable=True))
    op.create_index(
        op.f("ix_alert_outbox_resend"),
        "alert_outbox",
        ["resend_at"],
        sqlite_where=sa.text("resend_at IS NOT NULL"),
        postgresql_where=sa.text("resend_at IS NOT NULL"),
    )
    op.create_table(
        "alert_attempts",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("outbox_id", _ID, nullable=False),
        sa.Column("attempted_at", _TIME, nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('delivered', 'retry', 'failed')", name=op.f("ck_alert_attempts_outcome")
        ),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["alert_outbox.id"],
            name=op.f("fk_alert_attempts_outbox_id_alert_outbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_attempts")),
    )
    op.create_index(op.f("ix_alert_attempts_outbox_id"), "alert_attempts", ["outbox_id"])
    op.create_table(
        "disabled_receivers",
        sa.Column("receiver", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("disabled_at", _TIME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("receiver", name=op.f("pk_disabled_receivers")),
    )


def downgrade() -> None:
    op.drop_table("disabled_receivers")
    op.drop_index(op.f("ix_alert_attempts_outbox_id"), table_name="alert_attempts")
    op.drop_table("alert_attempts")
    op.drop_index(op.f("ix_alert_outbox_resend"), table_name="alert_outbox")
    with op.batch_alter_table("alert_outbox") as batch:
        batch.drop_column("resend_at")
