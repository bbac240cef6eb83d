"""Calendars keep a decayed rate of their changes, so the daily quota stretches the least active first;
the budget keeps the last day's steady calls, from which the plan projects the rest of today.

NULL for every existing calendar: until a sync finds its next change, its quiet time since the last
one stands in (as before this column).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("calendars", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activity", sa.Float(), nullable=True))
    with op.batch_alter_table("quota_budget", schema=None) as batch_op:
        batch_op.add_column(sa.Column("steady_before", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("quota_budget", schema=None) as batch_op:
        batch_op.drop_column("steady_before")
    with op.batch_alter_table("calendars", schema=None) as batch_op:
        batch_op.drop_column("activity")
