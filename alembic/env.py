"""Alembic environment: the URL comes from calsync's settings (or a connection handed in)."""

from __future__ import annotations

from alembic.util.exc import CommandError
from sqlalchemy import Connection

from alembic import context
from calsync.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    try:
        url = config.get_main_option("sqlalchemy.url")
    except CommandError:  # no alembic.ini: `alembic` run from a checkout, configured by pyproject.toml
        url = None
    if url:
        return url
    from calsync.config import Settings

    return Settings.from_env().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=_url().startswith("sqlite")
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """A connection handed in is already set up by its owner (calsync.store.migrate.upgrade).
    Alembic's own command (`alembic upgrade`, `alembic downgrade`) gets the same procedure: with
    SQLite's foreign keys on, the table copies of a migration deleted rows through ON DELETE CASCADE."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from calsync.store.db import make_engine
    from calsync.store.migrate import migrating

    engine = make_engine(_url())
    try:
        with migrating(engine) as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
