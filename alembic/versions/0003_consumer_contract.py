"""The consumer contract: typed change rows (snapshot and lifecycle), account refs, connect sessions.

`changes.kind` (created|updated|deleted) becomes `changes.type` (`event.created`, ...), which also
names lifecycle rows; those have no event, and an account's row no calendar, so both columns turn
nullable. Each row also names its account and the account's `ref` when it was written.
Deliveries get an index on `change_seq`, which deleting old changes (retention) cascades through.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ref", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_accounts_ref"), ["ref"], unique=False)
    op.execute("UPDATE accounts SET connected_at = created_at")

    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("type", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("account_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("ref", sa.String(length=200), nullable=True))
    op.execute("UPDATE changes SET type = 'event.' || kind")
    op.execute(
        "UPDATE changes SET account_id = (SELECT calendars.account_id FROM calendars"
        " WHERE calendars.id = changes.calendar_id)"
    )
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.alter_column("type", existing_type=sa.String(length=40), nullable=False)
        batch_op.alter_column("calendar_id", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("event_id", existing_type=sa.String(length=1024), nullable=True)
        batch_op.drop_column("kind")
        batch_op.create_foreign_key(
            batch_op.f("fk_changes_account_id_accounts"), "accounts", ["account_id"], ["id"], ondelete="CASCADE"
        )

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_change_seq", ["change_seq"], unique=False)

    op.create_table(
        "connect_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("return_to", sa.Text(), nullable=False),
        sa.Column("login_hint", sa.String(length=320), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_connect_sessions_account_id_accounts"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_connect_sessions")),
    )


def downgrade() -> None:
    op.drop_table("connect_sessions")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_change_seq")
    op.execute("DELETE FROM changes WHERE type NOT LIKE 'event.%' OR type = 'event.snapshot'")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=10), nullable=True))
    op.execute("UPDATE changes SET kind = substr(type, 7)")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_changes_account_id_accounts"), type_="foreignkey")
        batch_op.alter_column("kind", existing_type=sa.String(length=10), nullable=False)
        batch_op.alter_column("event_id", existing_type=sa.String(length=1024), nullable=False)
        batch_op.alter_column("calendar_id", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("ref")
        batch_op.drop_column("account_id")
        batch_op.drop_column("type")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_accounts_ref"))
        batch_op.drop_column("connected_at")
        batch_op.drop_column("ref")
