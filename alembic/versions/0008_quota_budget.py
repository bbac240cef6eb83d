"""Google's quota as a budget in the database, and claims in order of priority.

`quota_budget` holds one row per scope (the project, each user) that every process takes its
calls from. Calendars get `due_priority` (why their owed sync is owed) with an index that the claim
reads in order, and `last_changed_at` (how active they are). Existing calendars get the priority
their state implies: a sync owed after the first one is a notification's, a calendar without its
first sync waits for it, every other one waits for its reconciliation.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_budget",
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False, server_default="0"),
        sa.Column("hold_until", sa.Float(), nullable=False, server_default="0"),
        sa.Column("factor", sa.Float(), nullable=False, server_default="1"),
        sa.Column("factor_at", sa.Float(), nullable=False, server_default="0"),
        sa.Column("day", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("calls_today", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reconcile_today", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("first_sync_today", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("stretch", sa.Float(), nullable=False, server_default="0"),
        sa.Column("projected", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("planned_at", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_quota_budget")),
    )
    op.execute("INSERT INTO quota_budget (scope) VALUES ('project')")
    with op.batch_alter_table("calendars", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_priority", sa.SmallInteger(), nullable=False, server_default="3"))
        batch_op.add_column(sa.Column("last_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_calendars_due_priority_due_at", ["due_priority", "due_at"], unique=False)
    op.execute(
        "UPDATE calendars SET due_priority = CASE"
        " WHEN baseline_done AND sync_requested > sync_done THEN 1"
        " WHEN baseline_done THEN 4 ELSE 3 END"
    )


def downgrade() -> None:
    with op.batch_alter_table("calendars", schema=None) as batch_op:
        batch_op.drop_index("ix_calendars_due_priority_due_at")
        batch_op.drop_column("last_changed_at")
        batch_op.drop_column("due_priority")
    op.drop_table("quota_budget")
