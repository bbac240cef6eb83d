"""The daily plan keeps a cut instead of a stretch factor: calendars changing less often than the cut
are stretched, the others keep `CALSYNC_RECONCILE_EVERY`; and the steady calls hour by hour, today and
the last day, from which the plan projects the rest of a day that outgrew the last one.

The old factor means nothing to the new plan: the column goes, the cut starts NULL (nothing
stretched) and the plan is due at once, so the next scheduler pass projects the day again.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 17:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("quota_budget", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reconcile_cut", sa.Float(), nullable=True))
        batch_op.drop_column("stretch")
        batch_op.add_column(sa.Column("steady_hours", sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column("steady_hours_before", sa.String(length=400), nullable=True))
    op.execute("UPDATE quota_budget SET planned_at = 0")


def downgrade() -> None:
    with op.batch_alter_table("quota_budget", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stretch", sa.Float(), nullable=False, server_default="0"))
        batch_op.drop_column("reconcile_cut")
        batch_op.drop_column("steady_hours")
        batch_op.drop_column("steady_hours_before")
    op.execute("UPDATE quota_budget SET planned_at = 0")
