"""Writes through calsync: the origin of each feed row, idempotency keys, webhook origin filters.

Every change row says whether calsync wrote it on an app's behalf (`api`, with the app's
`Idempotency-Key` if it gave one) or found it in Google (`google`); rows written before this
revision were all found by syncs, so the column's default makes them `google`. Idempotency keys
of event creations are kept (and pruned after a day) in a table of their own. A webhook
subscription may ask for one origin only.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=10), nullable=False, server_default="google"))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))

    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=10), nullable=True))

    op.create_table(
        "idempotency_keys",
        sa.Column("calendar_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=1024), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["calendar_id"],
            ["calendars.id"],
            name=op.f("fk_idempotency_keys_calendar_id_calendars"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("calendar_id", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_idempotency_keys_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.drop_column("origin")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("origin")
