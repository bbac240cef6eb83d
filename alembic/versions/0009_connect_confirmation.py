"""Connect sessions hold the connection their consent made until the app confirms it.

The consent's tokens wait (encrypted) on the session's row, with the hash of a one-time code and
the time by which the app must confirm; only the app's confirmation for the session's own ref
stores the account and attaches the ref.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("connect_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("connection_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("connection_state", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("connection_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("email", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("credentials", sa.LargeBinary(), nullable=True))
        batch_op.add_column(
            sa.Column("scopes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True)
        )
        batch_op.create_unique_constraint(batch_op.f("uq_connect_sessions_connection_hash"), ["connection_hash"])
        batch_op.create_index(batch_op.f("ix_connect_sessions_connection_until"), ["connection_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("connect_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_connect_sessions_connection_until"))
        batch_op.drop_constraint(batch_op.f("uq_connect_sessions_connection_hash"), type_="unique")
        batch_op.drop_column("scopes")
        batch_op.drop_column("credentials")
        batch_op.drop_column("email")
        batch_op.drop_column("connection_until")
        batch_op.drop_column("connection_state")
        batch_op.drop_column("connection_hash")
