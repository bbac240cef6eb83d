"""The notification log loses its two secondary indexes.

The log is bounded (the last `CALSYNC_NOTIFICATION_LOG_SIZE` rows) and is read only by the
dashboard, where a scan of it is quick; but every notification wrote an entry into both indexes,
and on SQLite each dirtied index page is copied into the write-ahead log at every commit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 19:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_received_at"))
        batch_op.drop_index(batch_op.f("ix_notifications_channel_id"))


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_channel_id"), ["channel_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_notifications_received_at"), ["received_at"], unique=False)
