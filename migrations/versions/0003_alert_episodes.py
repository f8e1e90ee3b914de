"""Alert episodes: a firing that follows a resolve of the same alert is a new alert.

An image removed (or recovered) and then listed again in the same failed state with the same
`StateTransitionTime` fires again; its key differs from the earlier firing's by its episode.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_KEY = ("receiver", "account_id", "region", "image_id", "kind", "state", "transition_time")


def upgrade() -> None:
    with op.batch_alter_table("alert_outbox") as batch:
        batch.add_column(
            sa.Column("episode", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.drop_constraint("uq_alert_outbox_alert", type_="unique")
        batch.create_unique_constraint("uq_alert_outbox_alert", [*_KEY, "episode", "status"])


def downgrade() -> None:
    # Later episodes of an alert cannot be told apart without the column: only the first stays.
    op.execute(
        "DELETE FROM alert_attempts WHERE outbox_id IN "
        "(SELECT id FROM alert_outbox WHERE episode > 0)"
    )
    op.execute("DELETE FROM alert_outbox WHERE episode > 0")
    with op.batch_alter_table("alert_outbox") as batch:
        batch.drop_constraint("uq_alert_outbox_alert", type_="unique")
        batch.create_unique_constraint("uq_alert_outbox_alert", [*_KEY, "status"])
        batch.drop_column("episode")
