"""Event JSON and the feed's before/after/fields as PostgreSQL `json`, not `jsonb`.

jsonb refuses `\\u0000` and lone surrogates (`\\ud800`); JSON allows both, so an event holding one
failed every page that carried it, and its calendar stopped. `json` keeps the text as written and
checks only its syntax. Nothing queries inside these columns on the server: every index is on the
columns derived beside them (status, times, ids). SQLite keeps its text columns unchanged.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (("events", "data"), ("changes", "fields"), ("changes", "before"), ("changes", "after"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE json USING "{column}"::text::json')


def downgrade() -> None:
    # Rows holding what jsonb refuses make this fail: such a database cannot go back.
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" TYPE jsonb USING "{column}"::jsonb')
