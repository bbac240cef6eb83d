"""Each webhook subscription follows the feed with a cursor of its own.

Deliveries used to be written by the feed's writer, in every sync's commit, one per matching
subscription. Now the worker moves each subscription's cursor over the committed feed and queues
the deliveries itself. Existing subscriptions start at the newest seq: everything up to it was
queued the old way already.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 11:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cursor_seq", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE webhook_subscriptions SET cursor_seq = "
        "COALESCE((SELECT value FROM counters WHERE name = 'change_seq'), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.drop_column("cursor_seq")
