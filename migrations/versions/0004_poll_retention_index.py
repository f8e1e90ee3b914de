"""Retention: an index to walk the polls oldest first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_polls_started_at_id", "polls", ["started_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_polls_started_at_id", table_name="polls")
